"""Datasets as in-memory tensors, read from a local root or downloaded when online.

The data root is ``root=`` if given, else ``$LMC_DATA_DIR``, else ``~/.cache/lmc_lib/data``.
Offline machines point ``LMC_DATA_DIR`` at a folder that already holds the files (for MNIST the
torchvision layout ``MNIST/raw/*-ubyte``); with a network the loaders download what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TensorData", "data_root", "mnist", "cifar10", "digits", "mnist_loader", "tiny_shakespeare", "TINY_SHAKESPEARE_URL"]

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
    return TensorData((images - mean) / std, torch.as_tensor(dataset.targets).long(), f"cifar10-{'train' if train else 'test'}")


def digits(train: bool = True, *, test_size: int = 397, seed: int = 0) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1,797 images; no download), standardised, as (N, 64) floats."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
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


def tiny_shakespeare(
    split: str = "train",
    *,
    block_size: int = 256,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    test_fraction: float = 0.05,
    val_fraction: float = 0.05,
) -> tuple[TensorData, list[str]]:
    """Character-level Tiny Shakespeare as (token_ids, next_token_ids) windows of ``block_size``.

    Contiguous split as in the paper's code: the last ``test_fraction`` of the text is "test", the
    ``val_fraction`` before it "val", the rest "train". Returns the data and the vocabulary
    (sorted characters of the whole corpus, so every split shares one encoding).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"tiny_shakespeare: split must be 'train', 'val' or 'test', got {split!r}")
    text = _tiny_shakespeare_text(data_root(root), download)
    vocabulary = sorted(set(text))
    index = {c: i for i, c in enumerate(vocabulary)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_test, n_val = int(len(ids) * test_fraction), int(len(ids) * val_fraction)
    bounds = {"train": (0, len(ids) - n_test - n_val), "val": (len(ids) - n_test - n_val, len(ids) - n_test), "test": (len(ids) - n_test, len(ids))}
    start, stop = bounds[split]
    part = ids[start:stop]
    windows = (len(part) - 1) // block_size
    if windows < 1:
        raise ValueError(f"tiny_shakespeare: the {split} split ({len(part)} characters) is shorter than one block of {block_size}")
    inputs = part[: windows * block_size].view(windows, block_size)
    targets = part[1 : windows * block_size + 1].view(windows, block_size)
    return TensorData(inputs, targets, f"tinyshakespeare-{split}-{block_size}"), vocabulary
