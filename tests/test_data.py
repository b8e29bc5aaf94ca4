"""Datasets: TensorData batching, the offline MNIST / Tiny Shakespeare roots, scikit-learn's digits, and the
batch checks that every function reading data shares."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lmc_lib as lmc
from lmc_lib.data import MNIST_MEAN, MNIST_STD, check_batch, checked_batches, rebatched, reusable

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


def test_tiny_shakespeare_bpe_is_the_papers_tokens_split_contiguously(shared_root):
    splits = {name: lmc.tiny_shakespeare(name, block_size=128, root=shared_root, download=False, tokens="bpe")
              for name in ("train", "val", "test")}
    vocabulary = splits["test"][1]
    assert len(vocabulary) == 50257
    tokenizer = lmc.data.gpt2_tokenizer(shared_root, download=False)
    text = (shared_root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == 338025
    test = splits["test"][0]
    n_test = int(len(ids) * 0.05)
    assert test.inputs[0].tolist() == ids[len(ids) - n_test:][:128]
    assert torch.equal(test.inputs[:, 1:], test.targets[:, :-1]) and test.name.endswith("-bpe")
    val = splits["val"][0]
    assert val.inputs[0].tolist() == ids[len(ids) - 2 * n_test:][:128]
    test.inputs.zero_()  # the cached ids are not the caller's to change
    assert lmc.tiny_shakespeare("test", block_size=128, root=shared_root, download=False, tokens="bpe")[0].inputs.any()


def test_the_gpt2_tokenizer_offline_names_its_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gpt2_tokenizer \(vocab.json, merges.txt; download=False\)"):
        lmc.data.gpt2_tokenizer(tmp_path, download=False)
    with pytest.raises(ValueError, match="tokens must be 'chars' or 'bpe'"):
        lmc.tiny_shakespeare("test", root=tmp_path, tokens="words")


def test_tiny_shakespeare_windows_predict_the_next_character(shared_root):
    test, vocabulary = lmc.tiny_shakespeare("test", block_size=64, root=shared_root, download=False)
    assert len(vocabulary) == 65 and test.inputs.shape[1] == 64 and test.inputs.shape == test.targets.shape
    assert torch.equal(test.inputs[:, 1:], test.targets[:, :-1])
    assert torch.equal(test.inputs[1:, 0], test.targets[:-1, -1]), "windows are contiguous"
    text = (shared_root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert "".join(vocabulary[i] for i in test.inputs[0].tolist()) == text[len(text) - int(len(text) * 0.05) :][:64]
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test'"):
        lmc.tiny_shakespeare("dev", root=shared_root)


@pytest.mark.parametrize("test_size", [0, -1, 1797, 5000, 2.5, True])
def test_digits_refuses_a_test_size_that_does_not_split_the_images(test_size):
    with pytest.raises(ValueError, match=rf"digits: test_size must be an int in \[1, 1797\) .* got {test_size!r}"):
        lmc.digits(test_size=test_size)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"block_size": 0}, "block_size must be a positive int, got 0"),
        ({"block_size": 2.5}, "block_size must be a positive int, got 2.5"),
        ({"test_fraction": 1.5}, r"test_fraction must lie in \[0, 1\), got 1.5"),
        ({"val_fraction": float("nan")}, r"val_fraction must lie in \[0, 1\), got nan"),
        ({"test_fraction": 0.6, "val_fraction": 0.5}, "test_fraction \\+ val_fraction = 1.1 leaves no training text"),
    ],
)
def test_tiny_shakespeare_refuses_bad_sizes_before_reading(options, message, tmp_path):
    with pytest.raises(ValueError, match=f"tiny_shakespeare: {message}"):
        lmc.tiny_shakespeare(root=tmp_path, download=False, **options)


def test_digits_shapes_and_split():
    train, test = lmc.digits(train=True), lmc.digits(train=False)
    assert train.inputs.shape == (1400, 64) and test.inputs.shape == (397, 64)
    assert train.targets.dtype == torch.long and set(train.targets.tolist()) == set(range(10))
    torch.testing.assert_close(train.inputs.mean(0), torch.zeros(64), rtol=0, atol=1e-5)
    assert torch.equal(lmc.digits(train=False).inputs, test.inputs), "the split is seeded"
    assert not torch.equal(lmc.digits(train=False, seed=1).inputs, test.inputs)


# -- batch checks, shared by every function that reads data ----------------------------------------

X, Y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize(
    "batch, error, message",
    [
        ({"inputs": X, "targets": Y}, TypeError, r"data: batch 7 is a dict; expected an \(inputs, targets\) pair"),
        ((X, Y, Y), TypeError, r"data: batch 7 is a tuple of 3 items; expected an \(inputs, targets\) pair"),
        (X, TypeError, r"data: batch 7 is a Tensor; expected an \(inputs, targets\) pair of tensors"),
        ((X.numpy(), Y), TypeError, "data: batch 7: the inputs are a ndarray; expected a Tensor"),
        ((X, None), TypeError, "data: batch 7: the targets are a NoneType; expected a Tensor"),
        ((X, Y[:3]), ValueError, r"batch 7 has inputs of shape \(4, 3\) and targets of shape \(3,\); both need"),
        ((X, torch.tensor(1)), ValueError, r"targets of shape \(\); both need one row per example"),
        ((X.index_fill(1, torch.tensor([2]), float("nan")), Y), ValueError, "data: batch 7: the inputs hold NaN or"),
        ((X.index_fill(0, torch.tensor([1]), float("-inf")), Y), ValueError, "data: batch 7: the inputs hold NaN"),
    ],
    ids=["dict", "3-tuple", "bare tensor", "numpy inputs", "no targets", "fewer targets", "0-d targets", "nan", "inf"],
)
def test_check_batch_refuses_what_it_cannot_use(batch, error, message):
    with pytest.raises(error, match=message):
        check_batch(batch, 7)


def test_check_batch_accepts_pairs_and_inputs_only_batches_where_asked():
    assert check_batch([X, Y], 0)[0] is X  # a DataLoader's default collation gives lists
    token_ids = torch.randint(0, 5, (4, 6))
    assert check_batch((token_ids, token_ids), 0)[1] is token_ids
    assert check_batch((X, None), 0, targets=False)[1] is None
    large = torch.full((4, 3), 3e38)  # finite, though their sum overflows
    assert check_batch((large, Y), 0)[0] is large
    with pytest.raises(ValueError, match="the inputs hold NaN"):
        check_batch((torch.full((2, 2), float("nan")), None), 0, targets=False)


def test_checked_batches_refuses_empty_and_non_iterable_data():
    with pytest.raises(ValueError, match="data yielded no batches"):
        list(checked_batches([]))
    with pytest.raises(TypeError, match=r"data: expected an iterable of \(inputs, targets\) batches, got a TensorData "
                                        r"\(call its .batches\(\)\)"):
        list(checked_batches(numbered(4)))
    with pytest.raises(TypeError, match="data: batch 1 is a dict"):
        list(checked_batches([(X, Y), {"x": X}]))


def test_reusable_reads_one_shot_iterators_only():
    batches = [(X, Y), (X, Y)]
    assert reusable(batches) is batches
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=2)
    assert reusable(loader) is loader
    for one_shot in ((b for b in batches), iter(batches), iter(loader)):
        again = reusable(one_shot)
        assert isinstance(again, list) and len(again) == 2 and len(list(again)) == 2


def test_rebatched_keeps_every_example_in_order():
    x, y = torch.arange(23.0).view(23, 1), torch.arange(23)
    batches = [(x[:5], y[:5]), (x[5:6], y[5:6]), (x[6:], y[6:])]
    for size in (1, 4, 5, 7, 23, 40):
        again = rebatched(batches, size)
        assert [len(b[0]) for b in again[:-1]] == [size] * (len(again) - 1) and 0 < len(again[-1][0]) <= size
        assert torch.equal(torch.cat([b[0] for b in again]), x) and torch.equal(torch.cat([b[1] for b in again]), y)
    for size in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="rebatched: batch_size must be a positive integer"):
            rebatched(batches, size)
    with pytest.raises(ValueError, match="data yielded no batches"):
        rebatched([], 3)


def _callers():
    """name -> call(data) for every public function that reads data."""
    model = lmc.MLP(lmc.MLPConfig(3, (4,), 2))
    other = lmc.MLP(lmc.MLPConfig(3, (4,), 2))
    return {
        "barrier vmap": lambda data: lmc.barrier(model, other, data, 3, strategy="vmap", progress=False),
        "barrier loop": lambda data: lmc.barrier(model, other, data, 3, strategy="loop", progress=False),
        "evaluate_mixtures": lambda data: lmc.evaluation.evaluate_mixtures([model, other], [[0.5, 0.5]], data,
                                                                          progress=False),
        "evaluate": lambda data: lmc.evaluate(model, data),
        "input_moments": lambda data: lmc.ot.input_moments(model, data),
        "activation_matching": lambda data: lmc.activation_matching(model, other, data),
    }


CALLERS = list(_callers())
GOOD = (torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"input_ids": GOOD[0], "labels": GOOD[1]}, TypeError, r"data: batch 1 is a dict; expected an \(inputs,"),
        ((*GOOD, GOOD[1]), TypeError, "data: batch 1 is a tuple of 3 items"),
        (GOOD[0], TypeError, "data: batch 1 is a Tensor"),
        ((GOOD[0].index_fill(0, torch.tensor([2]), float("nan")), GOOD[1]), ValueError,
         "data: batch 1: the inputs hold NaN or infinite values"),
    ],
    ids=["dict", "3-tuple", "bare tensor", "nan inputs"],
)
def test_every_reader_of_data_refuses_a_bad_batch_naming_it(caller, bad, error, message):
    with pytest.raises(error, match=message):
        _callers()[caller]([GOOD, bad])


@pytest.mark.parametrize("caller", CALLERS)
def test_every_reader_of_data_refuses_empty_data(caller):
    with pytest.raises(ValueError, match="data yielded no batches"):
        _callers()[caller](iter([]))


@pytest.mark.parametrize("caller", [c for c in CALLERS if c not in ("input_moments", "activation_matching")])
@pytest.mark.parametrize("targets", [torch.tensor([[0], [1], [1], [0]]), torch.zeros(4, 2, dtype=torch.long)],
                         ids=["column", "two per example"])
def test_every_evaluation_refuses_targets_of_the_wrong_shape(caller, targets):
    shape = str(tuple(targets.shape)).replace("(", r"\(").replace(")", r"\)")
    message = rf"data: batch 0: targets have shape {shape}, but the model's logits \(4, 2\) need targets of shape \(4,"
    with pytest.raises(ValueError, match=message):
        _callers()[caller]([(GOOD[0], targets)])
