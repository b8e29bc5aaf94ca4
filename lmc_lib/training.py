"""Train models reproducibly, with an on-disk cache keyed by configuration and seed.

A seed fixes the initialisation, the data order and dropout: everything runs under forked RNGs
seeded with it (the CPU's, and the training device's when that is an accelerator), so the caller's
generators, on every device, are untouched and re-runs are identical.
Trained weights are stored as safetensors under ``$LMC_CACHE_DIR`` (default
``~/.cache/lmc_lib/models``), named by a hash of the model key, the data, the config and the seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import TensorData, checked_batches
from .evaluation import cross_entropy, evaluating, logits_of, model_device, point_totals

__all__ = ["TrainConfig", "train", "evaluate", "cache_dir"]


def _is_count(value: object) -> bool:
    """Whether ``value`` is an integer (a numpy one too), not a bool or a float such as 2.5."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule: ``optimizer`` in {"sgd", "adam", "adamw"}, ``schedule`` in {"cosine", "constant"}.

    ``patience``: with validation data given to :func:`train`, stop once the validation loss (measured
    after every epoch) has not improved for this many epochs, and keep the weights of the best epoch
    (early stopping; the schedule still spans ``epochs``). None: train every epoch.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"TrainConfig: unknown optimizer {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig: unknown schedule {self.schedule!r}")
        valid = {
            "epochs": _is_count(self.epochs) and self.epochs >= 0,
            "batch_size": _is_count(self.batch_size) and self.batch_size >= 1,
            "lr": self.lr > 0,  # also refuses NaN
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": _is_count(self.warmup_steps) and self.warmup_steps >= 0,
            "patience": self.patience is None or (_is_count(self.patience) and self.patience >= 1),
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in valid.items() if not ok]
        if bad:
            raise ValueError(
                f"TrainConfig: invalid {', '.join(bad)} (need integers epochs >= 0, batch_size >= 1, "
                "warmup_steps >= 0 and patience >= 1 or None, and lr > 0, 0 <= momentum < 1, weight_decay >= 0)"
            )


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else $LMC_CACHE_DIR, else ~/.cache/lmc_lib/models."""
    return Path(path or os.environ.get("LMC_CACHE_DIR", "~/.cache/lmc_lib/models")).expanduser()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(progress, 1.0))).item())

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fit(
    model: nn.Module, data: TensorData, config: TrainConfig, seed: int, progress: bool,
    device: torch.device | str | None, validation: TensorData | None = None,
) -> None:
    """Minimise the mean cross-entropy over ``data``, in place on ``device``, by ``config``'s optimiser and
    schedule; with ``validation`` and ``config.patience``, stop early and keep the best epoch's weights."""
    model.to(device)  # before the optimizer is built: it holds the parameters
    optimizer = _optimizer(model, config)
    steps_per_epoch = -(-len(data) // config.batch_size)
    scheduler = _schedule(optimizer, config, config.epochs * steps_per_epoch)
    model.train()
    bar = tqdm(range(config.epochs), disable=not progress, desc=f"train seed {seed}", leave=False)
    best: tuple[float, dict[str, Tensor] | None] = (math.inf, None)
    waited = 0
    for epoch in bar:
        for x, y in data.batches(config.batch_size, shuffle=True, seed=seed * 100_003 + epoch):
            x, y = x.to(device), y.to(device)
            loss = cross_entropy(logits_of(model(x)), y)[y != -100].mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                                         "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if validation is not None and config.patience is not None:
            score = evaluate(model, validation.batches(config.batch_size))[0]
            if score < best[0]:
                best, waited = (score, {k: v.detach().clone() for k, v in model.state_dict().items()}), 0
            elif (waited := waited + 1) >= config.patience:
                break
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()


@contextmanager
def _seeded_accelerator(device: torch.device, seed: int) -> Iterator[None]:
    """Seed ``device``'s generator (for dropout there) for the block, then restore the caller's state;
    nothing for the CPU, whose generator the caller forks, and no accelerator is touched then."""
    if device.type == "cpu":
        yield
        return
    backend = torch.get_device_module(device.type)
    index = device.index if device.index is not None else getattr(backend, "current_device", lambda: 0)()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        else:  # single-device backends (MPS)
            backend.manual_seed(seed)
        yield


def train(
    build: Callable[[], nn.Module],
    data: TensorData,
    config: TrainConfig,
    *,
    seed: int,
    cache_key: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    validation: TensorData | None = None,
) -> nn.Module:
    """Build a model with ``build()`` under ``seed`` and train a copy of it on ``data`` with mean cross-entropy.

    With ``validation`` data and ``config.patience``, training stops early on the validation loss
    and returns the best epoch's weights (see :class:`TrainConfig`); ValueError for one without the other.

    With ``cache_key`` (a string that identifies the architecture, e.g. ``repr(MLPConfig(...))``)
    the trained weights are loaded from, or saved to, the cache folder. The model is trained on,
    and returned on, ``device`` (default: where ``build()`` puts it). ``build`` and ``data`` are not
    modified; inputs with NaN or inf are refused.
    """
    if isinstance(build, nn.Module) or not callable(build):
        raise TypeError(f"train: build must be a function that returns a new model (e.g. lambda: MLP(config)), "
                        f"got {type(build).__name__}")
    if not isinstance(data, TensorData):
        raise TypeError(f"train: data must be a TensorData (its batches are drawn per epoch), "
                        f"got {type(data).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}")
    if data.inputs.is_floating_point() and not torch.isfinite(data.inputs).all():
        raise ValueError(f"train: the inputs of {data.name} hold NaN or infinite values")
    if (validation is None) != (config.patience is None):
        raise ValueError("train: early stopping needs both validation data and TrainConfig.patience; got "
                         f"validation={'given' if validation is not None else None}, patience={config.patience!r}")
    if validation is not None and not isinstance(validation, TensorData):
        raise TypeError(f"train: validation must be a TensorData, got {type(validation).__name__}")
    path = None
    if cache_key is not None:
        settings = {k: v for k, v in asdict(config).items() if not (k == "patience" and v is None)}  # older keys hold
        described = {"model": cache_key, "data": data.name, "n": len(data), "config": settings, "seed": seed}
        if validation is not None:
            described["validation"] = [validation.name, len(validation)]
        key = json.dumps(described, sort_keys=True)
        path = cache_dir(cache) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also reseed every accelerator's generator
        torch.random.default_generator.manual_seed(seed)
        model = copy.deepcopy(build())  # a model that build() hands back from outside stays untouched
        if not isinstance(model, nn.Module):
            raise TypeError(f"train: build() must return an nn.Module, got {type(model).__name__}")
        if path is not None and path.exists():
            model.load_state_dict(load_file(str(path)))
            return model.to(device).eval()
        target = torch.device(device) if device is not None else model_device(model, "train")
        with _seeded_accelerator(target, seed):
            _fit(model, data, config, seed, progress, device, validation)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"key": key})
        tmp.replace(path)
    return model


def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over all targets in ``data`` (moved to the model's device).

    Targets of -100 are ignored. The batches are checked as :func:`lmc_lib.data.check_batch` says;
    ValueError when no target is counted or the mean loss is not finite. The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate: model must be an nn.Module, got {type(model).__name__}")
    device = model_device(model, "evaluate")
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with evaluating(model), torch.no_grad():
        for index, (x, y) in enumerate(checked_batches(data)):
            logits = logits_of(model(x.to(device))).unsqueeze(0)
            totals += point_totals(logits, y.to(device), cross_entropy, batch=index)[0].cpu()
    loss, correct, count = totals.tolist()
    if count == 0:
        raise ValueError("evaluate: data yielded no targets")
    if not math.isfinite(loss):
        raise ValueError(f"evaluate: the mean loss is {loss / count}; the model's outputs overflow or hold NaN")
    return loss / count, correct / count
