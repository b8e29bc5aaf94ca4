"""Where the ``lmc`` command reads its models and data from: local folders, timm specs, hub names,
datasets by name, text files, tensor files and image folders.

Every failure is a :class:`CommandError` whose message names what and where in one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from . import io
from .family import family_of, spec_for

__all__ = ["CommandError", "open_model", "read_data", "check_fits", "first_line", "quiet_transformers"]

class CommandError(Exception):
    """Bad input: the command prints the message on one line and exits with status 1."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off while a command runs (then as they were)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --- models -------------------------------------------------------------------------------------

def _where(label: str, spec: str) -> str:
    """"model A 'path'" (or "model 'path'" without a label): where a message points."""
    return f"model {label} {spec!r}" if label else f"model {spec!r}"


def _timm_model(spec: str, label: str) -> nn.Module:
    """``timm:NAME:WEIGHTS``: timm.create_model(NAME, pretrained=False) with the weights of a local file."""
    import timm

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise CommandError(f"{_where(label, spec)}: a timm model is timm:NAME:WEIGHTS (a local weights file)")
    name, weights = parts[1], Path(parts[2])
    if not timm.is_model(name):
        raise CommandError(f"{_where(label, spec)}: timm has no model named {name!r}")
    if not weights.is_file():
        raise CommandError(f"{_where(label, spec)}: weights file {str(weights)!r} not found")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as error:  # not a weights file
        where = _where(label, spec)
        raise CommandError(f"{where}: cannot read weights {str(weights)!r}: {first_line(error)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CommandError(f"{_where(label, spec)}: {str(weights)!r} holds no state dict of tensors")
    head = state.get("head.weight")
    model = timm.create_model(name, pretrained=False, num_classes=0 if head is None else head.shape[0])
    if _family_name(model) != "timm-vit":
        raise CommandError(f"{_where(label, spec)}: {name} is a timm {type(model).__name__}; lmc_lib supports "
                           "timm VisionTransformer models")
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise CommandError(f"{_where(label, spec)}: the weights do not fit {name}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _family_name(model: nn.Module) -> str | None:
    """The lmc_lib family of ``model``, None when no family accepts it."""
    try:
        return family_of(model).name
    except TypeError:
        return None


def _state_mismatch(expected: dict[str, Tensor], found: dict[str, Tensor]) -> str | None:
    """The first difference between a model's state dict and a weights file, in words."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        return f"{len(missing)} tensors missing, e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected tensors, e.g. {extra[0]!r}"
    for name, tensor in expected.items():
        if tensor.shape != found[name].shape:
            return f"{name!r} has shape {tuple(found[name].shape)} in the file, {tuple(tensor.shape)} in the model"
    return None


def _hub_model(spec: str, label: str) -> nn.Module:
    """``hf:NAME``: a GPT-2 from the Hugging Face hub (needs a network)."""
    import transformers

    name = spec.removeprefix("hf:")
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        if config.model_type != "gpt2":
            raise CommandError(f"{_where(label, spec)}: a {config.model_type!r} model; lmc_lib supports GPT-2")
        return transformers.GPT2LMHeadModel.from_pretrained(name).eval()
    except OSError as error:
        raise CommandError(f"{_where(label, spec)}: could not fetch it from the Hugging Face hub: "
                           f"{first_line(error)}") from None


def open_model(spec: str, label: str = "") -> tuple[nn.Module, dict]:
    """(model, its sidecar or {}) for a MODEL argument; CommandError naming ``label`` (A, B) and ``spec`` otherwise."""
    if spec.startswith("timm:"):
        model, sidecar = _timm_model(spec, label), {}
    elif spec.startswith("hf:"):
        model, sidecar = _hub_model(spec, label), {}
    else:
        path = Path(spec)
        if not path.exists():
            raise CommandError(f"{_where(label, spec)}: no such folder "
                               "(a MODEL is a folder, timm:NAME:WEIGHTS or hf:NAME)")
        if not path.is_dir():
            raise CommandError(f"{_where(label, spec)}: a file, not a model folder (timm weights: timm:NAME:{spec})")
        try:
            model, sidecar = io.load(path), io.read_sidecar(path)
        except (ValueError, OSError, KeyError, RuntimeError, TypeError) as error:
            message = first_line(error).removeprefix(f"{path}: ")
            raise CommandError(f"{_where(label, spec)}: {message}") from None
    try:
        spec_for(model)
    except (TypeError, ValueError) as error:
        raise CommandError(f"{_where(label, spec)}: {first_line(error)}") from None
    for module in model.modules():  # HF models remember their folder, which the pair check counts as a difference
        if isinstance(getattr(module, "name_or_path", None), str):
            module.name_or_path = ""
    return model, sidecar


# --- data ---------------------------------------------------------------------------------------

def _text_windows(path: Path, tokenizer: str | None, block_size: int) -> tuple[Tensor, Tensor]:
    if tokenizer is None:
        raise CommandError(f"data {str(path)!r}: a text file needs --tokenizer FOLDER (e.g. a GPT-2 BPE tokenizer)")
    from transformers import GPT2TokenizerFast

    try:
        encoder = GPT2TokenizerFast.from_pretrained(tokenizer, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CommandError(f"--tokenizer {tokenizer!r}: not a tokenizer folder ({first_line(error)})") from None
    ids = torch.tensor(encoder(path.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)
    windows = (ids.numel() - 1) // block_size
    if windows < 1:
        raise CommandError(f"data {str(path)!r}: {ids.numel()} tokens, fewer than one window of {block_size} + 1")
    inputs = ids[: windows * block_size].view(windows, block_size)
    return inputs, ids[1 : windows * block_size + 1].view(windows, block_size)


def _block_size(args: argparse.Namespace, model: nn.Module) -> int:
    if args.block_size is not None:
        return args.block_size
    config = getattr(model, "config", None)
    return min(getattr(config, "n_positions", 256), 256)


def _image_folder(path: Path, model: nn.Module, limit: int | None) -> tuple[Tensor, Tensor]:
    """Images of a class-per-subfolder folder (torchvision ImageFolder), resized, cropped and normalised by
    the model's own timm data config, at the resolution and channels its patch embedding reads."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    embed = getattr(model, "patch_embed", None)
    if embed is None:
        raise CommandError(f"data {str(path)!r}: an image folder needs a timm ViT to read it (its data config)")
    channels, size = embed.proj.in_channels, tuple(embed.img_size)
    config = resolve_data_config({}, model=model)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    if len(mean) != channels:  # a grey-scale model: the mean of the colour statistics
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    config.update(input_size=(channels, *size), mean=mean, std=std, crop_pct=1.0)
    transform = create_transform(**config)
    mode = "L" if channels == 1 else "RGB"
    folder = ImageFolder(str(path), transform=transform, loader=lambda file: _open_image(file, mode))
    count = len(folder) if limit is None else min(limit, len(folder))
    if count == 0:
        raise CommandError(f"data {str(path)!r}: no images found (expected one subfolder of images per class)")
    images = [folder[i] for i in range(count)]
    return torch.stack([x for x, _ in images]), torch.tensor([y for _, y in images])


def _open_image(file: str, mode: str):
    from PIL import Image

    with Image.open(file) as image:
        return image.convert(mode)


def read_data(args: argparse.Namespace, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """The batches ``--data`` names (``--split``, ``--limit`` examples, ``--batch-size``); CommandError otherwise."""
    from . import data as datasets

    name, train = args.data, args.split == "train"
    path = Path(name)
    try:
        if name == "mnist":
            part = datasets.mnist(train=train, download=False)
            inputs, targets = part.inputs, part.targets
        elif name == "digits":
            part = datasets.digits(train=train)
            inputs, targets = part.inputs, part.targets
        elif name == "tiny_shakespeare":
            split = "train" if train else "test"
            part, _ = datasets.tiny_shakespeare(split, block_size=_block_size(args, model), download=False)
            inputs, targets = part.inputs, part.targets
        elif path.is_file() and path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if not {"inputs", "targets"} <= tensors.keys():
                raise CommandError(f"data {name!r}: needs tensors 'inputs' and 'targets', has {sorted(tensors)}")
            inputs, targets = tensors["inputs"], tensors["targets"]
        elif path.is_file():
            inputs, targets = _text_windows(path, args.tokenizer, _block_size(args, model))
        elif path.is_dir():
            inputs, targets = _image_folder(path, model, args.limit)
        else:
            raise CommandError(f"data {name!r}: unknown; expected mnist, digits, tiny_shakespeare, a .safetensors "
                               "file of inputs and targets, a text file with --tokenizer, or an image folder")
    except (FileNotFoundError, ValueError, OSError) as error:
        raise CommandError(f"data {name!r}: {first_line(error)}") from None
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise CommandError(f"data {name!r}: {len(inputs)} inputs and {len(targets)} targets")
    if args.limit is not None:
        inputs, targets = inputs[: args.limit], targets[: args.limit]
    return list(zip(inputs.split(args.batch_size), targets.split(args.batch_size)))


def _misfit(model: nn.Module, x: Tensor) -> str | None:
    """Why inputs ``x`` cannot be fed to ``model``, in words; None when they can."""
    family = family_of(model).name
    shape = tuple(x.shape)
    if family == "hf-gpt2":
        if not hasattr(model, "lm_head"):
            return "it is a GPT2Model without an LM head (no logits to score)"
        if x.is_floating_point() or x.ndim != 2:
            return f"a language model reads (batch, seq) token ids; the inputs are {x.dtype} of shape {shape}"
        if x.shape[1] > model.config.n_positions:
            return f"windows of {x.shape[1]} tokens exceed the model's context of {model.config.n_positions}"
    elif family == "timm-vit":
        embed = model.patch_embed
        expected = (embed.proj.in_channels, *embed.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            return f"the ViT reads images of shape {expected}; the inputs have shape {shape[1:]}"
        if model.num_classes == 0:
            return "the ViT has no classification head (num_classes=0)"
    else:
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        flatten = isinstance(next(iter(model.children())), nn.Flatten)
        features = x[0].numel() if flatten else x.shape[-1]
        if features != first.in_features:
            return f"the MLP reads {first.in_features} features per example; the inputs have shape {shape[1:]}"
    return None


def check_fits(model: nn.Module, data: list[tuple[Tensor, Tensor]], name: str, label: str,
               device: torch.device) -> None:
    """CommandError unless the first batch of ``data`` runs through ``model``, every token id (language
    models) is in its vocabulary and every target is one of its classes (or -100: ignored)."""
    x, y = data[0]
    problem = _misfit(model, x)
    if problem is None and hasattr(model, "lm_head"):
        vocabulary = model.config.vocab_size
        low, high = min(int(x.min()) for x, _ in data), max(int(x.max()) for x, _ in data)
        if low < 0 or high >= vocabulary:
            problem = f"token id {low if low < 0 else high} is outside the model's vocabulary of {vocabulary}"
    if problem is None:
        try:
            with torch.no_grad():
                out = model(x[:2].to(device))
            classes = (out.logits if hasattr(out, "logits") else out).shape[-1]
        except Exception as error:  # any failure of the forward pass is a misfit of the data
            problem = f"{type(error).__name__}: {first_line(error)}"
        else:
            low, high = min(int(y.min()) for _, y in data), max(int(y.max()) for _, y in data)
            if y.is_floating_point() or high >= classes or low < -100:
                problem = f"targets must be class indices below {classes}; they are {y.dtype} in [{low}, {high}]"
    if problem is not None:
        raise CommandError(f"data {name!r} does not fit model {label}: {problem}")
