"""Loss and accuracy along the linear path theta_l = (1 - l) theta_A + l theta_B, and the barrier.

B_l = L(theta_l) - ((1 - l) L(theta_A) + l L(theta_B)); the loss barrier is max_l B_l.

Evaluating K interpolation points one model at a time costs K passes over the data. With
``strategy="vmap"`` all points of a chunk share one pass: the parameters are stacked along a new
leading axis and the model is run with ``torch.func.functional_call`` under ``vmap``. When the
family exposes an affine *stem* (the first Linear of an MLP), its output is linear in l, so it is
computed once per endpoint and blended: stem_l(x) = (1 - l) stem_A(x) + l stem_B(x).

Stacking saves per-call overhead and the stem's arithmetic, nothing else: a model whose forward
is bound by large matrix products (a Transformer on the CPU) runs faster one lambda at a time.
``strategy="auto"`` picks by :func:`barrier_strategy`, as measured in ``benchmarks/barrier_strategies.py``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from .alignment import check_pair
from .family import FAMILIES, load_state

__all__ = [
    "BarrierCurve", "barrier", "interpolate", "cross_entropy", "evaluating", "barrier_strategy",
]
STRATEGIES = ("auto", "vmap", "loop")

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-target cross-entropy: logits (..., C), targets (...) -> losses (...); -100 marks ignored targets."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)


def _logits(output) -> Tensor:
    return output.logits if hasattr(output, "logits") else output


def interpolate(a: nn.Module, b: nn.Module, lam: float) -> nn.Module:
    """A new model with floating tensors (1 - lam) theta_A + lam theta_B (others taken from A)."""
    check_pair(a, b)
    state_b = b.state_dict()
    state = {
        k: torch.lerp(v.double(), state_b[k].double(), lam) if v.is_floating_point() else v
        for k, v in a.state_dict().items()
    }
    return load_state(a, state)


@dataclass(frozen=True, eq=False)
class BarrierCurve:
    """Loss and accuracy at each lambda (sorted, with 0 and 1 included)."""

    lambdas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray

    @property
    def loss_gaps(self) -> np.ndarray:
        """B_l = L(theta_l) - ((1 - l) L_A + l L_B) for every lambda."""
        return self.losses - ((1 - self.lambdas) * self.losses[0] + self.lambdas * self.losses[-1])

    @property
    def barrier(self) -> float:
        """The loss barrier max_l B_l."""
        return float(self.loss_gaps.max())

    @property
    def accuracy_barrier(self) -> float:
        """max_l ((1 - l) acc_A + l acc_B - acc(theta_l)): the accuracy lost along the path."""
        linear = (1 - self.lambdas) * self.accuracies[0] + self.lambdas * self.accuracies[-1]
        return float((linear - self.accuracies).max())

    def plot(self, ax=None, *, metric: str = "loss", label: str | None = None, **kwargs):
        """Plot loss (or accuracy) against lambda on ``ax`` (a new figure if None); returns the axes."""
        import matplotlib.pyplot as plt

        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
        ax = plt.subplots(figsize=(5, 3.5))[1] if ax is None else ax
        values = self.losses if metric == "loss" else self.accuracies
        ax.plot(self.lambdas, values, marker="o", markersize=3, label=label, **kwargs)
        ax.set_xlabel(r"$\lambda$")
        ax.set_ylabel("test loss" if metric == "loss" else "test accuracy")
        if label is not None:
            ax.legend()
        return ax


def _lambda_grid(lambdas: int | Sequence[float] | Tensor) -> np.ndarray:
    if isinstance(lambdas, int):
        if lambdas < 2:
            raise ValueError(f"lambdas: need at least 2 points, got {lambdas}")
        grid = np.linspace(0.0, 1.0, lambdas)
    else:
        grid = np.asarray(torch.as_tensor(lambdas, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
        if grid.size == 0 or not np.isfinite(grid).all() or grid.min() < 0 or grid.max() > 1:
            raise ValueError("lambdas: every value must lie in [0, 1]")
    return np.unique(np.concatenate([grid, [0.0, 1.0]]))


def _leaf_output_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of every leaf module's output on one batch: an upper bound on one model's activations."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for out in output if isinstance(output, tuple) else (output,):
            if isinstance(out, Tensor):
                total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block, then restore every module's own training flag."""
    flags = {module: module.training for model in models for module in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def _split_stem(model: nn.Module):
    family = next((f for f in FAMILIES if f.accepts(model)), None)
    return family.split_stem if family is not None else None


def barrier_strategy(model: nn.Module, device: torch.device | str) -> str:
    """"vmap" on a GPU, and on the CPU for a family with an affine stem (whose arithmetic stacking
    saves); "loop" otherwise: there stacked matrix products and elementwise passes over K times
    larger activations cost more than the per-call overhead they save."""
    if torch.device(device).type != "cpu" or _split_stem(model) is not None:
        return "vmap"
    return "loop"


def _blend(a: Tensor, b: Tensor, lams: Tensor) -> Tensor:
    """(K, *a.shape): a + l (b - a) for each of the K lambdas."""
    weight = lams.to(a.dtype).view(-1, *([1] * a.ndim))
    return a.unsqueeze(0) + weight * (b - a).unsqueeze(0)


class _StackedEvaluator:
    """Runs a chunk of lambdas on one batch: parameters stacked along a leading lambda axis."""

    def __init__(self, a: nn.Module, b: nn.Module, device: torch.device) -> None:
        self.model = _eval_copy(a).to(device)
        split = _split_stem(self.model)
        self.stem, self.rest = split(self.model) if split else (None, self.model)
        self.params_a = {k: v.to(device) for k, v in a.state_dict().items()}
        self.params_b = {k: v.to(device) for k, v in b.state_dict().items()}
        rest_names = self.rest.state_dict().keys()
        self.floating = [k for k in rest_names if self.params_a[k].is_floating_point()]
        self.fixed = {k: self.params_a[k] for k in rest_names if not self.params_a[k].is_floating_point()}
        stem_names = self.stem.state_dict().keys() if self.stem is not None else ()
        self.stem_a = {k: self.params_a[k] for k in stem_names}
        self.stem_b = {k: self.params_b[k] for k in stem_names}

    def bytes_per_lambda(self, x: Tensor) -> int:
        params = sum(self.params_a[k].numel() * self.params_a[k].element_size() for k in self.floating)
        return params + _leaf_output_bytes(self.model, x)

    def stack(self, lams: Tensor) -> dict[str, Tensor]:
        return {k: _blend(self.params_a[k], self.params_b[k], lams) for k in self.floating}

    def __call__(self, stacked: dict[str, Tensor], lams: Tensor, x: Tensor) -> Tensor:
        def run(params, inputs):
            return _logits(functional_call(self.rest, {**params, **self.fixed}, (inputs,)))

        with warnings.catch_warnings():
            # CPU flash attention has no vmap batching rule; the fallback is correct, only slower
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            if self.stem is None:
                return vmap(run, in_dims=(0, None))(stacked, x)
            h_a = functional_call(self.stem, self.stem_a, (x,))
            h_b = functional_call(self.stem, self.stem_b, (x,))
            return vmap(run, in_dims=(0, 0))(stacked, _blend(h_a, h_b, lams))


def _accumulate(logits: Tensor, y: Tensor, loss_fn: LossFn, totals: np.ndarray, offset: int) -> None:
    """Add each lambda's loss sum, correct count and target count (targets of -100 are ignored)."""
    valid = y != -100
    for k in range(logits.shape[0]):
        losses = loss_fn(logits[k], y)
        if losses.shape != y.shape:
            raise ValueError(f"loss_fn must return one loss per target, shape {tuple(y.shape)}; got {tuple(losses.shape)}")
        totals[offset + k] += (
            float(losses[valid].double().sum()),
            float((logits[k].argmax(-1) == y)[valid].sum()),
            float(valid.sum()),
        )


def barrier(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    lambdas: int | Sequence[float] = 11,
    *,
    loss_fn: LossFn = cross_entropy,
    memory_budget: int = 2**30,
    device: torch.device | str | None = None,
    strategy: str = "auto",
    progress: bool = True,
) -> BarrierCurve:
    """Loss and accuracy of theta_l = (1 - l) theta_A + l theta_B for every lambda, and the barrier.

    ``data`` yields (inputs, targets) batches; ``loss_fn(logits, targets)`` returns one loss per
    target (default: cross-entropy over all examples or tokens). With ``strategy="vmap"`` lambdas
    are evaluated in chunks whose stacked parameters and activations fit ``memory_budget`` bytes,
    one pass over ``data`` per chunk; ``strategy="loop"`` builds one interpolated model per lambda;
    ``"auto"`` takes :func:`barrier_strategy` (the faster of the two where measured). All three
    give the same curve up to float rounding.
    """
    check_pair(a, b)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    grid = _lambda_grid(lambdas)
    device = torch.device(device) if device is not None else next(a.parameters()).device
    if strategy == "auto":
        strategy = barrier_strategy(a, device)
    if not hasattr(data, "__len__") and iter(data) is data:
        data = list(data)  # a one-shot iterator cannot be read once per chunk
    totals = np.zeros((grid.size, 3))  # loss sum, correct, count per lambda
    with torch.no_grad():
        if strategy == "vmap":
            evaluator = _StackedEvaluator(a, b, device)
            first = next(iter(data), None)
            if first is None:
                raise ValueError("barrier: data yielded no batches")
            per_lambda = evaluator.bytes_per_lambda(first[0].to(device))
            size = int(max(1, min(grid.size, memory_budget // max(per_lambda, 1))))
        else:
            size = 1
        chunks = [list(range(i, min(i + size, grid.size))) for i in range(0, grid.size, size)]
        total = len(chunks) * len(data) if hasattr(data, "__len__") else None
        desc = f"barrier: {grid.size} lambdas in {len(chunks)} passes"
        with tqdm(total=total, disable=not progress, desc=desc, leave=False) as bar:
            for chunk in chunks:
                lams = torch.tensor(grid[chunk], dtype=torch.float64, device=device)
                if strategy == "vmap":
                    stacked = evaluator.stack(lams)
                    run = lambda x: evaluator(stacked, lams, x)  # noqa: E731
                else:
                    model = _eval_copy(interpolate(a, b, float(lams[0]))).to(device)
                    run = lambda x: _logits(model(x)).unsqueeze(0)  # noqa: E731
                for x, y in data:
                    _accumulate(run(x.to(device)), y.to(device), loss_fn, totals, chunk[0])
                    bar.update()
    sums, correct, counts = totals.T
    if (counts == 0).any():
        raise ValueError("barrier: data yielded no targets")
    losses = sums / counts
    if not np.isfinite(losses).all():
        raise ValueError(f"barrier: non-finite loss at lambdas {grid[~np.isfinite(losses)].tolist()}")
    return BarrierCurve(grid, losses, correct / counts)
