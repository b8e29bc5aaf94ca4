"""Datasets: TensorData batching, the offline MNIST / Tiny Shakespeare roots, and scikit-learn's digits."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lmc_lib as lmc
from lmc_lib.data import MNIST_MEAN, MNIST_STD

#: the offline data folder: $LMC_DATA_DIR, else ../shared/data beside the repository (CI has it)
SHARED = Path(os.environ.get("LMC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_root() -> Path:
    if not (SHARED / "MNIST" / "raw").is_dir():
        pytest.skip(f"offline data folder {SHARED} has no MNIST/raw (set LMC_DATA_DIR to ../shared/data)")
    return SHARED


# -- TensorData ----------------------------------------------------------------------------------


def test_tensor_data_refuses_length_mismatch():
    with pytest.raises(ValueError, match="toy: 5 inputs but 4 targets"):
        lmc.TensorData(torch.zeros(5, 2), torch.zeros(4), "toy")


def numbered(n: int) -> lmc.TensorData:
    """Example i has input row [i, -i] and target i, so every batch says which examples it holds."""
    index = torch.arange(n)
    return lmc.TensorData(torch.stack([index, -index], 1).float(), index, f"numbered-{n}")


@given(n=st.integers(1, 60), batch_size=st.integers(1, 25), shuffle=st.booleans(), seed=st.integers(0, 1000))
def test_batches_cover_every_example_once(n, batch_size, shuffle, seed):
    data = numbered(n)
    batches = data.batches(batch_size, shuffle=shuffle, seed=seed)
    assert all(len(y) == batch_size for _, y in batches[:-1]) and 1 <= len(batches[-1][1]) <= batch_size
    targets = torch.cat([y for _, y in batches])
    assert sorted(targets.tolist()) == list(range(n))
    assert all(torch.equal(x[:, 0].long(), y) for x, y in batches), "inputs stay paired with their targets"
    if not shuffle:
        assert torch.equal(targets, torch.arange(n))
    again = torch.cat([y for _, y in data.batches(batch_size, shuffle=shuffle, seed=seed)])
    assert torch.equal(again, targets)


def test_shuffle_order_depends_on_the_seed():
    data = numbered(50)
    orders = [torch.cat([y for _, y in data.batches(10, shuffle=True, seed=s)]) for s in (0, 1)]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], torch.arange(50))


def test_subset_keeps_the_first_examples():
    part = numbered(10).subset(4)
    assert len(part) == 4 and torch.equal(part.targets, torch.arange(4)) and part.name == "numbered-10[:4]"


# -- data roots ----------------------------------------------------------------------------------


def test_data_root_prefers_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LMC_DATA_DIR", str(tmp_path / "env"))
    assert lmc.data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert lmc.data.data_root() == tmp_path / "env"
    monkeypatch.delenv("LMC_DATA_DIR")
    assert lmc.data.data_root() == Path("~/.cache/lmc_lib/data").expanduser()


@pytest.mark.parametrize("loader", [lmc.mnist, lmc.cifar10], ids=["mnist", "cifar10"])
def test_missing_root_without_download_names_the_folder(loader, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"not found under {missing}"):
        loader(train=False, root=missing, download=False)


def test_missing_tiny_shakespeare_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"not found at {tmp_path / 'tinyshakespeare' / 'input.txt'}"):
        lmc.tiny_shakespeare(root=tmp_path, download=False)


# -- MNIST (offline subset: 8,000 train / 2,000 test) --------------------------------------------


@pytest.mark.parametrize("train, size", [(True, 8000), (False, 2000)])
def test_mnist_shapes_and_normalisation(shared_root, train, size):
    data = lmc.mnist(train=train, root=shared_root, download=False)
    assert data.inputs.shape == (size, 1, 28, 28) and data.inputs.dtype == torch.float32
    assert data.targets.shape == (size,) and data.targets.dtype == torch.long
    assert set(data.targets.unique().tolist()) == set(range(10))
    # pixels 0..255 mapped by (p / 255 - mean) / std: the blank background is the minimum
    assert float(data.inputs.min()) == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-6)
    assert float(data.inputs.max()) <= (1 - MNIST_MEAN) / MNIST_STD + 1e-6
    assert abs(float(data.inputs.mean())) < 0.1 and abs(float(data.inputs.std()) - 1) < 0.1


def test_mnist_reads_the_environment_root(shared_root, monkeypatch):
    monkeypatch.setenv("LMC_DATA_DIR", str(shared_root))
    assert len(lmc.mnist(train=False, download=False)) == 2000


def test_mnist_loader_gives_the_same_images(shared_root):
    loader = lmc.data.mnist_loader(train=False, batch_size=16, root=shared_root)
    x, y = next(iter(loader))
    data = lmc.mnist(train=False, root=shared_root, download=False)
    torch.testing.assert_close(x, data.inputs[:16], rtol=0, atol=1e-5)
    assert torch.equal(y, data.targets[:16])


# -- Tiny Shakespeare and digits -----------------------------------------------------------------


def test_tiny_shakespeare_windows_predict_the_next_character(shared_root):
    test, vocabulary = lmc.tiny_shakespeare("test", block_size=64, root=shared_root, download=False)
    assert len(vocabulary) == 65 and test.inputs.shape[1] == 64 and test.inputs.shape == test.targets.shape
    assert torch.equal(test.inputs[:, 1:], test.targets[:, :-1])
    assert torch.equal(test.inputs[1:, 0], test.targets[:-1, -1]), "windows are contiguous"
    text = (shared_root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert "".join(vocabulary[i] for i in test.inputs[0].tolist()) == text[len(text) - int(len(text) * 0.05) :][:64]
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test'"):
        lmc.tiny_shakespeare("dev", root=shared_root)


def test_digits_shapes_and_split():
    train, test = lmc.digits(train=True), lmc.digits(train=False)
    assert train.inputs.shape == (1400, 64) and test.inputs.shape == (397, 64)
    assert train.targets.dtype == torch.long and set(train.targets.tolist()) == set(range(10))
    torch.testing.assert_close(train.inputs.mean(0), torch.zeros(64), rtol=0, atol=1e-5)
    assert torch.equal(lmc.digits(train=False).inputs, test.inputs), "the split is seeded"
    assert not torch.equal(lmc.digits(train=False, seed=1).inputs, test.inputs)
