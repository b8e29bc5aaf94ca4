"""barrier(): equal to a naive per-lambda loop on every data form, chunking and loss; BarrierCurve values."""

import copy
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmc_lib as lmc
from contract import same_state
from strategies import build_mlp

matplotlib.use("Agg")

TOLERANCE = 1e-5


def naive_curve(a, b, data, lambdas, loss_fn=None):
    """Per lambda: copy A, load (1 - l) theta_A + l theta_B, run the data; mean loss and accuracy over targets."""
    losses, accuracies = [], []
    state_a, state_b = a.state_dict(), b.state_dict()
    for lam in lambdas:
        model = copy.deepcopy(a).eval()
        model.load_state_dict(
            {k: (1 - lam) * v + lam * state_b[k] if v.is_floating_point() else v for k, v in state_a.items()}
        )
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in data:
                out = model(x)
                logits = out.logits if hasattr(out, "logits") else out
                valid = y != -100
                if loss_fn is None:
                    total += float(
                        F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100, reduction="sum")
                    )
                else:
                    total += float(loss_fn(logits, y)[valid].double().sum())
                correct += int((logits.argmax(-1) == y)[valid].sum())
                count += int(valid.sum())
        losses.append(total / count)
        accuracies.append(correct / count)
    return np.array(losses), np.array(accuracies)


def assert_matches_naive(curve, a, b, data, loss_fn=None):
    losses, accuracies = naive_curve(a, b, data, curve.lambdas, loss_fn)
    np.testing.assert_allclose(curve.losses, losses, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(curve.accuracies, accuracies, rtol=0, atol=1e-12)


def classification_data(in_features, classes, n=96, batch=32, seed=0, labeller=None):
    """Gaussian inputs; labels drawn at random, or ``labeller``'s predictions (a model that fits them)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    if labeller is not None:
        with torch.no_grad():
            y = labeller(x).argmax(-1)
    return list(zip(x.split(batch), y.split(batch)))


def pair(config, seed=0):
    """A (weights scaled up, so it is confident) and B = A with its hidden units permuted."""
    a = build_mlp(config, seed)
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(3)
    generator = torch.Generator().manual_seed(seed)
    return a, lmc.transform(a, lmc.random_transform(lmc.spec_for(a), ("permutation",), generator))


def pair_and_data(config):
    """A, B and data that both fit: B computes A's function, so the barrier is all in the middle."""
    a, b = pair(config)
    return a, b, classification_data(config.in_features, config.out_features, labeller=a)


CONFIGS = [
    lmc.MLPConfig(6, (8,), 3),
    lmc.MLPConfig(6, (10, 7), 4, activation="tanh", bias=False),
    lmc.MLPConfig(6, (5, 9, 6), 5, activation="gelu"),
    lmc.MLPConfig(6, (8, 8), 3, activation="identity"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.activation}-{c.widths}")
@pytest.mark.parametrize(
    "lambdas", [11, 4, [0.25, 0.5], torch.tensor([0.9, 0.1, 0.5])], ids=["11", "4", "list", "tensor"]
)
def test_barrier_equals_a_naive_loop(config, lambdas):
    a, b, data = pair_and_data(config)
    curve = lmc.barrier(a, b, data, lambdas, progress=False)
    assert_matches_naive(curve, a, b, data)


def test_lambda_grid_is_sorted_with_both_ends():
    a, b = pair(CONFIGS[0])
    data = classification_data(6, 3, n=8)
    assert np.array_equal(lmc.barrier(a, b, data, 3, progress=False).lambdas, [0.0, 0.5, 1.0])
    assert np.array_equal(lmc.barrier(a, b, data, [0.75, 0.25, 0.25], progress=False).lambdas, [0.0, 0.25, 0.75, 1.0])


def test_barrier_reads_a_dataloader_and_a_generator():
    config = CONFIGS[1]
    a, b, data = pair_and_data(config)
    reference = lmc.barrier(a, b, data, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*map(torch.cat, zip(*data))), batch_size=20)
    from_loader = lmc.barrier(a, b, loader, progress=False)
    # a one-shot generator, read in several passes (one lambda per pass)
    from_generator = lmc.barrier(a, b, (batch for batch in data), memory_budget=1, progress=False)
    # a one-shot iterator that has a length: sizing the chunks must not consume its first batch
    curves = [from_loader, from_generator]
    for strategy in ("vmap", "loop"):
        curves.append(lmc.barrier(a, b, iter(loader), strategy=strategy, progress=False))
        curves.append(lmc.barrier(a, b, iter(loader), strategy=strategy, memory_budget=1, progress=False))
    for curve in curves:
        np.testing.assert_allclose(curve.losses, reference.losses, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_array_equal(curve.accuracies, reference.accuracies)


@pytest.mark.parametrize(
    "options",
    [{"memory_budget": 1}, {"memory_budget": 30_000}, {"strategy": "loop"}, {"strategy": "auto"}, {"device": "cpu"}],
)
def test_chunking_and_strategies_give_the_same_curve(options):
    config = CONFIGS[2]
    a, b, data = pair_and_data(config)
    reference = lmc.barrier(a, b, data, progress=False)
    curve = lmc.barrier(a, b, data, progress=False, **options)
    np.testing.assert_allclose(curve.losses, reference.losses, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_array_equal(curve.accuracies, reference.accuracies)


def test_barrier_of_a_model_with_itself_is_zero():
    a, _ = pair(CONFIGS[1])
    curve = lmc.barrier(a, a, classification_data(6, 4), progress=False)
    assert abs(curve.barrier) <= 1e-6 and np.ptp(curve.losses) <= 1e-6


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.activation}-{c.widths}")
def test_barrier_is_positive_between_permuted_copies(config):
    a, b, data = pair_and_data(config)
    curve = lmc.barrier(a, b, data, progress=False)
    assert curve.losses[0] == pytest.approx(curve.losses[-1], rel=1e-5) and curve.accuracies[0] == 1.0
    assert curve.barrier > 0.05 and curve.accuracy_barrier > 0
    assert curve.barrier == pytest.approx(float(curve.loss_gaps.max()))


def test_custom_per_target_loss():
    config = CONFIGS[0]
    a, b, data = pair_and_data(config)

    def squared_error(logits, targets):
        return ((logits - F.one_hot(targets, logits.shape[-1]).to(logits)) ** 2).mean(-1)

    curve = lmc.barrier(a, b, data, 5, loss_fn=squared_error, progress=False)
    assert_matches_naive(curve, a, b, data, loss_fn=squared_error)


# -- a language-model-shaped case ----------------------------------------------------------------

VOCAB, SEQ = 11, 6


class TinyLM(nn.Module):
    """(batch, seq) token ids -> an object whose .logits are (batch, seq, vocab)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        return SimpleNamespace(logits=self.head(torch.tanh(self.mix(self.embed(ids)))))


def token_data(n=12, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ + 1), generator=generator)
    targets = ids[:, 1:].clone()
    targets[::3, :2] = -100  # ignored positions (e.g. padding)
    return list(zip(ids[:, :-1].split(batch), targets.split(batch)))


def test_language_model_with_ignored_targets_equals_a_naive_loop():
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    data = token_data()
    curve = lmc.barrier(a, b, data, 6, progress=False)
    assert_matches_naive(curve, a, b, data)
    chunked = lmc.barrier(a, b, data, 6, memory_budget=1, progress=False)
    np.testing.assert_allclose(chunked.losses, curve.losses, rtol=TOLERANCE, atol=TOLERANCE)


def test_an_ignored_sequence_counts_as_a_removed_one():
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    data = token_data()
    ignored = [(x, torch.cat([torch.full_like(y[:1], -100), y[1:]])) for x, y in data]
    removed = [(x[1:], y[1:]) for x, y in data]
    np.testing.assert_allclose(
        lmc.barrier(a, b, ignored, 3, progress=False).losses,
        lmc.barrier(a, b, removed, 3, progress=False).losses,
        rtol=1e-6,
    )
    all_ignored = [(x, torch.full_like(y, -100)) for x, y in data]
    with pytest.raises(ValueError, match="data yielded no targets"):
        lmc.barrier(a, b, all_ignored, 3, progress=False)


# -- refusals ------------------------------------------------------------------------------------


def test_barrier_refuses_different_architectures():
    a, b = build_mlp(lmc.MLPConfig(6, (8,), 3), 0), build_mlp(lmc.MLPConfig(6, (9,), 3), 0)
    with pytest.raises(ValueError, match=r"models A and B differ at module 'fc1': out_features = 8 vs 9"):
        lmc.barrier(a, b, classification_data(6, 3), progress=False)
    with pytest.raises(ValueError, match="models A and B have different tensors"):
        lmc.barrier(a, build_mlp(lmc.MLPConfig(6, (8,), 3, bias=False), 0), classification_data(6, 3), progress=False)
    with pytest.raises(ValueError, match=r"models A and B differ at tensor 'fc1.weight': dtype torch.float32 vs "
                                         r"torch.float64; cast one of them first"):
        lmc.barrier(a, copy.deepcopy(a).double(), classification_data(6, 3), progress=False)


@pytest.mark.parametrize(
    "lambdas, error, message",
    [
        ([-0.1, 0.5], ValueError, r"lambdas: point = -0.1 lies outside \[0, 1\]; extrapolation is not supported"),
        ([0.5, 1.5], ValueError, r"lambdas: point = 1.5 lies outside \[0, 1\]"),
        (11.0, ValueError, r"lambdas: point = 11.0 lies outside"),
        ([float("nan")], ValueError, "lambdas: point is NaN"),
        (torch.tensor([0.5, float("nan")]), ValueError, "lambdas: point is NaN"),
        ([], ValueError, "lambdas: no points given"),
        (np.array([]), ValueError, "lambdas: no points given"),
        (1, ValueError, "lambdas: need at least 2 points, got 1"),
        (np.int64(-3), ValueError, "lambdas: need at least 2 points, got -3"),
        (True, TypeError, "lambdas: expected a count .* got bool"),
        ([True, False], TypeError, "lambdas: expected a count .* got list of dtype bool"),
        (torch.tensor(True), TypeError, "lambdas: expected a count .* got Tensor of dtype bool"),
        ("11", TypeError, "lambdas: expected a count .* got str"),
    ],
)
def test_barrier_refuses_bad_lambdas(lambdas, error, message):
    a, b = pair(CONFIGS[0])
    with pytest.raises(error, match=message):
        lmc.barrier(a, b, classification_data(6, 3), lambdas, progress=False)


@pytest.mark.parametrize(
    "lambdas, grid",
    [
        (np.int64(5), np.linspace(0, 1, 5)),
        (torch.tensor(3), [0.0, 0.5, 1.0]),
        (np.float64(0.25), [0.0, 0.25, 1.0]),
        (torch.tensor(0.75), [0.0, 0.75, 1.0]),
        (np.array([0.5, 0.25], dtype=np.float32), [0.0, 0.25, 0.5, 1.0]),
        ([0, 1], [0.0, 1.0]),
    ],
    ids=["numpy int", "0-d int tensor", "numpy float", "0-d float tensor", "float32 array", "int points"],
)
def test_numpy_and_tensor_scalars_are_counts_or_points(lambdas, grid):
    a, b = pair(CONFIGS[0])
    curve = lmc.barrier(a, b, classification_data(6, 3, n=8), lambdas, progress=False)
    np.testing.assert_allclose(curve.lambdas, grid)


@pytest.mark.parametrize("endpoint", ["A", "B"])
def test_barrier_names_the_model_with_a_nan(endpoint):
    a, b = pair(CONFIGS[0])
    with torch.no_grad():
        (a if endpoint == "A" else b).fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"model {endpoint}: tensor 'fc2.weight' has NaN or infinite entries"):
        lmc.barrier(a, b, classification_data(6, 3), progress=False)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_barrier_refuses_non_finite_losses(strategy):
    a, b = pair(CONFIGS[0])
    with torch.no_grad():
        b.fc2.weight.mul_(1e38)  # finite weights whose logits overflow to inf
    with pytest.raises(ValueError, match=r"non-finite loss at the points with weights \[\["):
        lmc.barrier(a, b, classification_data(6, 3), strategy=strategy, progress=False)


def test_barrier_refuses_a_loss_of_the_wrong_shape():
    a, b = pair(CONFIGS[0])
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per target, shape \(32,\); got \(\)"):
        lmc.barrier(
            a, b, classification_data(6, 3), loss_fn=lambda logits, y: F.cross_entropy(logits, y), progress=False
        )


@pytest.mark.parametrize("budget", [-1, 0, float("nan"), float("inf"), True, "1GB"])
def test_barrier_refuses_a_memory_budget_that_is_not_a_positive_number(budget):
    a, b = pair(CONFIGS[0])
    with pytest.raises(ValueError, match=f"memory_budget must be a positive number of bytes, got {budget!r}"):
        lmc.barrier(a, b, classification_data(6, 3), memory_budget=budget, progress=False)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("target", [3, -1, 7])
def test_barrier_refuses_targets_that_are_not_class_indices(strategy, target):
    a, b = pair(CONFIGS[0])
    data = classification_data(6, 3)
    data[1][1][2] = target
    with pytest.raises(ValueError, match=rf"data: batch 1: target {target} is not a class index in \[0, 3\) "
                                         r"\(the model has 3 outputs\) nor -100"):
        lmc.barrier(a, b, data, strategy=strategy, progress=False)


def test_barrier_refuses_empty_data_and_unknown_strategies():
    a, b = pair(CONFIGS[0])
    for strategy in ("vmap", "loop"):
        with pytest.raises(ValueError, match="data yielded no"):
            lmc.barrier(a, b, [], strategy=strategy, progress=False)
    with pytest.raises(ValueError, match=r"strategy must be one of \('auto', 'vmap', 'loop'\), got 'fast'"):
        lmc.barrier(a, b, classification_data(6, 3), strategy="fast", progress=False)


# -- interpolate and untouched inputs ------------------------------------------------------------


@pytest.mark.parametrize(
    "lam", [0.0, 0.3, 1.0, np.float32(0.3), torch.tensor(0.3, dtype=torch.float64), 1, torch.tensor(0)]
)
def test_interpolate_is_the_weighted_average(lam):
    a, b = pair(CONFIGS[1])
    mixed = lmc.interpolate(a, b, lam)
    lam = float(lam)
    for name, tensor in mixed.state_dict().items():
        expected = (1 - lam) * a.state_dict()[name].double() + lam * b.state_dict()[name].double()
        torch.testing.assert_close(tensor, expected.float(), rtol=1e-6, atol=1e-7, msg=name)
    assert same_state(lmc.interpolate(a, b, 0.0), a) and same_state(lmc.interpolate(a, b, 1.0), b)


@pytest.mark.parametrize(
    "lam, error, message",
    [
        (1.5, ValueError, r"interpolate: lam = 1.5 lies outside \[0, 1\]; extrapolation is not supported"),
        (-0.5, ValueError, r"interpolate: lam = -0.5 lies outside \[0, 1\]"),
        (float("nan"), ValueError, "interpolate: lam is NaN"),
        (True, TypeError, "interpolate: lam must be a real number in \\[0, 1\\], got bool"),
        ("0.5", TypeError, "interpolate: lam must be a real number .* got str"),
        (torch.tensor([0.5]), TypeError, "interpolate: lam must be a real number .* got Tensor"),
    ],
)
def test_interpolate_refuses_extrapolation_and_non_numbers(lam, error, message):
    a, b = pair(CONFIGS[0])
    with pytest.raises(error, match=message):
        lmc.interpolate(a, b, lam)


def test_interpolate_refuses_other_models_naming_them():
    a, b = pair(CONFIGS[0])
    with pytest.raises(TypeError, match="interpolate: model a must be an nn.Module, got OrderedDict"):
        lmc.interpolate(a.state_dict(), b, 0.5)
    with pytest.raises(ValueError, match="models A and B differ at module 'fc1': out_features = 8 vs 9"):
        lmc.interpolate(a, build_mlp(lmc.MLPConfig(6, (9,), 3), 0), 0.5)
    with torch.no_grad():
        b.fc1.bias[1] = float("inf")
    with pytest.raises(ValueError, match="model B: tensor 'fc1.bias' has NaN or infinite entries"):
        lmc.interpolate(a, b, 0.5)


@pytest.mark.parametrize("training", [True, False])
def test_barrier_and_interpolate_leave_the_models_untouched(training):
    a, b = pair(CONFIGS[2])
    a.train(training), b.train(not training)
    a_copy, b_copy = copy.deepcopy(a), copy.deepcopy(b)
    data = classification_data(6, 5)
    for strategy in ("vmap", "loop"):
        lmc.barrier(a, b, data, strategy=strategy, progress=False)
    lmc.interpolate(a, b, 0.5)
    assert same_state(a, a_copy) and same_state(b, b_copy)
    assert (a.training, b.training) == (training, not training)
    assert all(p.requires_grad for p in a.parameters())


# -- BarrierCurve ----------------------------------------------------------------------------------


def hand_curve() -> lmc.BarrierCurve:
    return lmc.BarrierCurve(
        np.array([0.0, 0.25, 0.5, 1.0]), np.array([1.0, 2.0, 3.0, 2.0]), np.array([0.9, 0.8, 0.5, 0.7])
    )


def test_barrier_curve_values_by_hand():
    curve = hand_curve()
    # linear loss path: 1, 1.25, 1.5, 2; linear accuracy path: 0.9, 0.85, 0.8, 0.7
    np.testing.assert_allclose(curve.loss_gaps, [0.0, 0.75, 1.5, 0.0])
    assert curve.barrier == pytest.approx(1.5)
    assert curve.accuracy_barrier == pytest.approx(0.3)


def test_barrier_curve_of_a_convex_path_is_zero():
    curve = lmc.BarrierCurve(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 2.0]), np.array([0.5, 0.9, 0.7]))
    assert curve.barrier == 0.0 and curve.accuracy_barrier == 0.0


def test_barrier_curve_plot_returns_axes():
    import matplotlib.pyplot as plt

    curve = hand_curve()
    ax = curve.plot(label="A-B")
    assert np.array_equal(ax.lines[0].get_ydata(), curve.losses) and ax.get_legend() is not None
    _, other = plt.subplots()
    assert curve.plot(other, metric="accuracy") is other
    assert np.array_equal(other.lines[0].get_ydata(), curve.accuracies)
    with pytest.raises(ValueError, match="metric must be 'loss' or 'accuracy'"):
        curve.plot(metric="error")
    plt.close("all")


def test_auto_stacks_small_batches_on_the_cpu_and_everything_on_a_gpu():
    """The default (benchmarks/barrier_strategies.py): on a CPU stacked when the per-call overhead
    dominates (one text window, one image), one point after another on the batches people evaluate
    with (there a point's activations stay in the caches); stacked on a GPU; the loop for models the
    stacked path may not run, whatever the batch."""
    from lmc_lib.book.recipes import RECIPES

    mlp = build_mlp(lmc.MLPConfig(784, (512, 512), 10), 0)
    gpt2 = RECIPES["gpt2-shakespeare"]["book"].model.build().eval()
    images, windows = torch.randn(500, 1, 28, 28), torch.randint(0, 65, (100, 64))
    for model, batch in ((mlp, images), (gpt2, windows)):
        assert lmc.barrier_strategy(model, "cpu", batch[:1]) == "vmap"
        assert lmc.barrier_strategy(model, "cpu", batch) == "loop"
        assert lmc.barrier_strategy(model, "cpu") == "loop"  # batches taken to be large
        assert lmc.barrier_strategy(model, "cuda", batch) == "vmap" and lmc.barrier_strategy(model, "cuda") == "vmap"
    hooked = copy.deepcopy(mlp)
    hooked.act1.register_forward_hook(lambda module, args, out: out)
    assert lmc.barrier_strategy(hooked, "cpu", images[:1]) == "loop" and lmc.barrier_strategy(hooked, "cuda") == "loop"


def family_pair(family):
    """Models A and B of ``family`` and data for them (test_evaluation's builders, imported here:
    test_evaluation imports this module)."""
    if family == "mlp":
        return pair_and_data(CONFIGS[2])
    import test_evaluation

    (a, b, _), data = {"vit": test_evaluation.vit_models, "gpt2": test_evaluation.gpt2_models}[family]()
    return a, b, data


@pytest.mark.parametrize("strategy", ["loop", "vmap", "auto"])
@pytest.mark.parametrize("family", ["mlp", "vit", "gpt2"])
def test_every_strategy_equals_a_naive_loop_on_every_family(family, strategy):
    a, b, data = family_pair(family)
    curve = lmc.barrier(a, b, data, 6, strategy=strategy, progress=False)
    assert_matches_naive(curve, a, b, data)
    tiny = lmc.barrier(a, b, data, 6, strategy=strategy, memory_budget=1, progress=False)
    np.testing.assert_allclose(tiny.losses, curve.losses, rtol=TOLERANCE, atol=TOLERANCE)
