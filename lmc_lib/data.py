"""Datasets as in-memory tensors, read from a local root or downloaded when online.

The data root is ``root=`` if given, else ``$LMC_DATA_DIR``, else ``~/.cache/lmc_lib/data``.
Offline machines point ``LMC_DATA_DIR`` at a folder that already holds the files (for MNIST the
torchvision layout ``MNIST/raw/*-ubyte``); with a network the loaders download what is missing.

Every function that reads ``data`` (an iterable of ``(inputs, targets)`` batches) reads it through
:func:`checked_batches`, so that a batch the library cannot use is refused in the same words
everywhere, naming the batch; :func:`reusable` reads a one-shot iterator into a list before a
function that needs several passes.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "gpt2_tokenizer", "token_counts", "check_max_batches",
    "TensorData", "data_root", "mnist", "cifar10", "digits", "mnist_loader", "tiny_shakespeare", "TINY_SHAKESPEARE_URL",
    "check_batch", "checked_batches", "reusable", "rebatched",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True, eq=False)
class TensorData:
    """Inputs (N, ...) and targets (N, ...) held in memory, with a name used in cache keys."""

    inputs: Tensor
    targets: Tensor
    name: str

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"{self.name}: {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, n: int) -> TensorData:
        """The first n examples."""
        return TensorData(self.inputs[:n], self.targets[:n], f"{self.name}[:{n}]")

    def batches(self, batch_size: int = 500, *, shuffle: bool = False, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
        """A list of (inputs, targets) batches; shuffled by a seeded generator if asked."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle else None
        inputs, targets = (self.inputs, self.targets) if order is None else (self.inputs[order], self.targets[order])
        return list(zip(inputs.split(batch_size), targets.split(batch_size)))


Batch = tuple[Tensor, Tensor]


def check_batch(batch: object, index: int, *, targets: bool = True) -> Batch:
    """``batch`` as an (inputs, targets) pair of tensors with the examples along dim 0 of both.

    TypeError for anything but a pair (a tuple or a list) of tensors; ValueError when the two hold
    different numbers of examples or floating inputs hold NaN or inf. Messages name the batch. With
    ``targets=False`` (a caller that reads only the inputs) the targets may be None.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = type(batch).__name__ + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        raise TypeError(f"data: batch {index} is a {got}; expected an (inputs, targets) pair of tensors")
    inputs, labels = batch
    if not isinstance(inputs, Tensor):
        raise TypeError(f"data: batch {index}: the inputs are a {type(inputs).__name__}; expected a Tensor")
    if not isinstance(labels, Tensor) and (targets or labels is not None):
        raise TypeError(f"data: batch {index}: the targets are a {type(labels).__name__}; expected a Tensor")
    if inputs.ndim == 0 or (labels is not None and (labels.ndim == 0 or inputs.shape[0] != labels.shape[0])):
        shape = None if labels is None else tuple(labels.shape)
        raise ValueError(f"data: batch {index} has inputs of shape {tuple(inputs.shape)} and targets of shape "
                         f"{shape}; both need one row per example along dim 0")
    # the sum is NaN or inf whenever an entry is, and one reduction is ~20x cheaper than isfinite().all();
    # only a sum that overflows takes the exact test
    if inputs.is_floating_point() and not torch.isfinite(inputs.sum()) and not torch.isfinite(inputs).all():
        raise ValueError(f"data: batch {index}: the inputs hold NaN or infinite values")
    return inputs, labels


def checked_batches(data: Iterable[Batch], *, targets: bool = True) -> Iterator[Batch]:
    """The batches of ``data``, each through :func:`check_batch`; ValueError once ``data`` ends if it held none."""
    if not isinstance(data, Iterable):
        hint = " (call its .batches())" if isinstance(data, TensorData) else ""
        raise TypeError(f"data: expected an iterable of (inputs, targets) batches, got a {type(data).__name__}{hint}")
    index = -1
    for index, batch in enumerate(data):
        yield check_batch(batch, index, targets=targets)
    if index < 0:
        raise ValueError("data yielded no batches")


def check_max_batches(max_batches: int | None, caller: str) -> None:
    """ValueError unless ``max_batches`` is None (all batches) or a positive integer."""
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"{caller}: max_batches must be None (every batch) or a positive integer, got {max_batches!r}")


def token_counts(data: Iterable[Batch], vocab_size: int) -> Tensor:
    """How often each token id in [0, vocab_size) occurs among the inputs of ``data`` (token batches)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for x, _ in checked_batches(data):
        if x.dtype.is_floating_point or (x.numel() and (x.min() < 0 or x.max() >= vocab_size)):
            raise ValueError(f"token_counts: inputs must be token ids in [0, {vocab_size})")
        counts += torch.bincount(x.flatten().cpu(), minlength=vocab_size)
    return counts


def reusable(data: Iterable[Batch]) -> Iterable[Batch]:
    """``data`` itself when it can be read again; a one-shot iterator (a generator) read into a list."""
    return list(data) if isinstance(data, Iterator) else data


def rebatched(data: Iterable[Batch], batch_size: int) -> list[Batch]:
    """The examples of ``data``, in their order, cut into batches of ``batch_size`` (the last may hold fewer).

    A step of learned matching costs what its batch costs: smaller batches make more, cheaper steps
    from the same examples."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"rebatched: batch_size must be a positive integer, got {batch_size!r}")
    batches: list[Batch] = []
    held: list[Batch] = []  # pieces of the batch being filled
    count = 0
    for x, y in checked_batches(data):
        start = 0
        while start < len(x):
            piece = (x[start:start + batch_size - count], y[start:start + batch_size - count])
            held.append(piece)
            count, start = count + len(piece[0]), start + len(piece[0])
            if count == batch_size:
                batches.append(_joined(held))
                held, count = [], 0
    if held:
        batches.append(_joined(held))
    return batches


def _joined(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat([x for x, _ in pieces]), torch.cat([y for _, y in pieces])


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else $LMC_DATA_DIR, else ~/.cache/lmc_lib/data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("LMC_DATA_DIR", "~/.cache/lmc_lib/data")).expanduser()


def _torchvision_dataset(cls, name: str, root: Path, train: bool, download: bool | None, **kwargs):
    try:
        return cls(str(root), train=train, download=False, **kwargs)
    except RuntimeError as missing:
        if download is False:
            raise FileNotFoundError(f"{name} not found under {root} (download=False): {missing}") from None
    try:
        return cls(str(root), train=train, download=True, **kwargs)
    except Exception as error:  # no network, or the mirror refused: say where the files were expected
        raise FileNotFoundError(
            f"{name} is not under {root} and could not be downloaded ({type(error).__name__}: {error}); "
            f"set LMC_DATA_DIR or pass root= to a folder that holds it"
        ) from error


def mnist(train: bool = True, *, root: str | os.PathLike | None = None, download: bool | None = None) -> TensorData:
    """MNIST digits as normalised float tensors (N, 1, 28, 28) and labels (N,).

    Reads ``<root>/MNIST/raw``; downloads into it when missing unless ``download=False``.
    """
    from torchvision.datasets import MNIST

    dataset = _torchvision_dataset(MNIST, "MNIST", data_root(root), train, download)
    images = (dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)).unsqueeze(1)
    return TensorData(images, dataset.targets.long(), f"mnist-{'train' if train else 'test'}-{len(dataset)}")


def cifar10(train: bool = True, *, root: str | os.PathLike | None = None, download: bool | None = None) -> TensorData:
    """CIFAR-10 as normalised float tensors (N, 3, 32, 32) and labels (N,) (needs a network or a local copy)."""
    from torchvision.datasets import CIFAR10

    dataset = _torchvision_dataset(CIFAR10, "CIFAR-10", data_root(root), train, download)
    images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).float().div(255)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return TensorData(
        (images - mean) / std, torch.as_tensor(dataset.targets).long(), f"cifar10-{'train' if train else 'test'}"
    )


def digits(train: bool = True, *, test_size: int = 397, seed: int = 0) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1,797 images; no download), standardised, as (N, 64) floats."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    size = len(bunch.target)
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Integral) or not 1 <= test_size < size:
        raise ValueError(f"digits: test_size must be an int in [1, {size}) (the {size} images are split in two), "
                         f"got {test_size!r}")
    order = torch.randperm(len(bunch.target), generator=torch.Generator().manual_seed(seed))
    inputs = torch.as_tensor(bunch.data, dtype=torch.float32)[order] / 16.0
    targets = torch.as_tensor(bunch.target).long()[order]
    train_inputs = inputs[test_size:]
    mean, std = train_inputs.mean(0), train_inputs.std(0).clamp_min(1e-3)
    part = slice(test_size, None) if train else slice(0, test_size)
    return TensorData((inputs[part] - mean) / std, targets[part], f"digits-{'train' if train else 'test'}-{seed}")


def mnist_loader(
    train: bool = False, *, batch_size: int = 500, root: str | os.PathLike | None = None, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """A plain torchvision DataLoader over MNIST (decodes and normalises each image on every pass)."""
    from torchvision import transforms
    from torchvision.datasets import MNIST

    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    dataset = _torchvision_dataset(MNIST, "MNIST", data_root(root), train, None, transform=to_tensor)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _tiny_shakespeare_text(root: Path, download: bool | None) -> str:
    path = root / "tinyshakespeare" / "input.txt"
    if not path.exists():
        if download is False:
            raise FileNotFoundError(f"Tiny Shakespeare not found at {path} (download=False)")
        import urllib.request

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            urllib.request.urlretrieve(TINY_SHAKESPEARE_URL, path)
        except Exception as error:  # offline: say where the file was expected
            raise FileNotFoundError(
                f"Tiny Shakespeare is not at {path} and could not be downloaded ({type(error).__name__}: {error}); "
                "set LMC_DATA_DIR or pass root= to a folder that holds tinyshakespeare/input.txt"
            ) from error
    return path.read_text(encoding="utf-8")


def gpt2_tokenizer(root: str | os.PathLike | None = None, *, download: bool | None = None):
    """The GPT-2 BPE tokenizer: from ``<root>/gpt2_tokenizer`` (vocab.json, merges.txt) when it is there,
    else from the hub (unless ``download=False``); FileNotFoundError saying where it was looked for."""
    from transformers import GPT2TokenizerFast

    folder = data_root(root) / "gpt2_tokenizer"
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return GPT2TokenizerFast.from_pretrained(str(folder))
    if download is False:
        raise FileNotFoundError(f"the GPT-2 tokenizer is not at {folder} (vocab.json, merges.txt; download=False)")
    try:
        return GPT2TokenizerFast.from_pretrained("gpt2")
    except Exception as error:  # offline: say where the files were expected
        raise FileNotFoundError(f"the GPT-2 tokenizer is not at {folder} and could not be downloaded "
                                f"({type(error).__name__}); put vocab.json and merges.txt there") from error


@functools.lru_cache(maxsize=2)
def _bpe_ids(text: str, root: Path, download: bool | None) -> tuple[Tensor, list[str]]:
    """The corpus's BPE ids and the vocabulary (tokenising takes seconds: kept for the other splits)."""
    tokenizer = gpt2_tokenizer(root, download=download)
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def tiny_shakespeare(
    split: str = "train",
    *,
    block_size: int = 256,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    test_fraction: float = 0.05,
    val_fraction: float = 0.05,
    tokens: str = "chars",
) -> tuple[TensorData, list[str]]:
    """Tiny Shakespeare as (token_ids, next_token_ids) windows of ``block_size`` tokens.

    ``tokens="chars"``: characters (the vocabulary is the sorted characters of the whole corpus, so
    every split shares one encoding); ``tokens="bpe"``: the GPT-2 BPE tokens the paper uses (338,025
    for the corpus; the vocabulary is GPT-2's 50,257 tokens, by id), with the tokenizer read from
    ``<root>/gpt2_tokenizer`` (vocab.json, merges.txt) or, when that is missing and downloads are
    allowed, from the hub. Contiguous split as in the paper's code: the last ``test_fraction`` of
    the tokens is "test", the ``val_fraction`` before it "val", the rest "train".
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"tiny_shakespeare: split must be 'train', 'val' or 'test', got {split!r}")
    if tokens not in ("chars", "bpe"):
        raise ValueError(f"tiny_shakespeare: tokens must be 'chars' or 'bpe', got {tokens!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"tiny_shakespeare: block_size must be a positive int, got {block_size!r}")
    for name, fraction in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= fraction < 1:  # also refuses NaN
            raise ValueError(f"tiny_shakespeare: {name} must lie in [0, 1), got {fraction!r}")
    if test_fraction + val_fraction >= 1:
        raise ValueError(f"tiny_shakespeare: test_fraction + val_fraction = {test_fraction + val_fraction} leaves "
                         "no training text; they must sum to less than 1")
    text = _tiny_shakespeare_text(data_root(root), download)
    if tokens == "bpe":
        ids, vocabulary = _bpe_ids(text, data_root(root), download)
    else:
        vocabulary = sorted(set(text))
        index = {c: i for i, c in enumerate(vocabulary)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_test, n_val = int(len(ids) * test_fraction), int(len(ids) * val_fraction)
    train_end, val_end = len(ids) - n_test - n_val, len(ids) - n_test
    bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, len(ids))}
    start, stop = bounds[split]
    part = ids[start:stop].clone()  # the BPE ids are cached: a caller may write into its windows
    windows = (len(part) - 1) // block_size
    if windows < 1:
        raise ValueError(f"tiny_shakespeare: the {split} split ({len(part)} tokens) is shorter than one block "
                         f"of {block_size}")
    inputs = part[: windows * block_size].view(windows, block_size)
    targets = part[1 : windows * block_size + 1].view(windows, block_size)
    name = f"tinyshakespeare-{split}-{block_size}" + ("-bpe" if tokens == "bpe" else "")
    return TensorData(inputs, targets, name), vocabulary
