"""evaluate_mixtures(): K-endpoint mixtures equal a per-point loop over mixed models on every family and
strategy, chunking, batch slicing and scoring; the stacked path runs only models a family fully describes,
and "auto" equals the loop; the fast argmax is argmax."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import lmc_lib as lmc
from contract import same_state
from lmc_lib import evaluation
from lmc_lib.evaluation import evaluate_mixtures, mix, mixture_weights
from lmc_lib.points import Footprint
from lmc_lib.scoring import first_argmax
from strategies import build_mlp
from test_barrier import classification_data, naive_curve
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit

TOLERANCE = 1e-5

#: corners, the centre, edges and interior points of the 2-simplex
WEIGHTS = np.array([
    [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3],
    [0.5, 0.25, 0.25], [0.1, 0.7, 0.2], [0.0, 0.5, 0.5],
])


def naive_mixtures(models, weights, data):
    """Per row: copy models[0], load sum_k w_k theta_k (float64 sums), run the data; mean loss and accuracy."""
    states = [m.state_dict() for m in models]
    losses, accuracies = [], []
    for row in weights:
        model = copy.deepcopy(models[0]).eval()
        mixed = {}
        for name, tensor in states[0].items():
            weighted = sum(float(w) * state[name].double() for w, state in zip(row, states))
            mixed[name] = weighted.to(tensor.dtype) if tensor.is_floating_point() else tensor
        model.load_state_dict(mixed)
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in data:
                out = model(x)
                logits = out.logits if hasattr(out, "logits") else out
                valid = y != -100
                total += float(F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=-100, reduction="sum"))
                correct += int((logits.argmax(-1) == y)[valid].sum())
                count += int(valid.sum())
        losses.append(total / count)
        accuracies.append(correct / count)
    return np.array(losses), np.array(accuracies)


def mlp_models():
    config = lmc.MLPConfig(6, (10, 7), 4, activation="gelu")
    models = [build_mlp(config, seed) for seed in range(3)]
    return models, classification_data(6, 4, labeller=models[0])


def vit_models():
    models = [vit(dict(embed_dim=16, depth=2, num_heads=2), seed) for seed in range(3)]
    generator = torch.Generator().manual_seed(0)
    return models, [(images(models[0], generator, 6), torch.randint(0, 5, (6,), generator=generator)) for _ in range(2)]


def gpt2_models(**options):
    models = [gpt2(dict(n_embd=16, n_layer=2, n_head=2), seed, **options) for seed in range(3)]
    generator = torch.Generator().manual_seed(0)
    return models, [(x[:, :-1], x[:, 1:]) for x in (tokens(generator, 3, 9) for _ in range(2))]


FAMILIES = {
    "mlp": mlp_models,
    "vit": vit_models,
    "gpt2": gpt2_models,
    "gpt2-tied": lambda: gpt2_models(canonical=False),
}


@pytest.mark.parametrize(
    "options",
    [{"strategy": "vmap"}, {"strategy": "vmap", "memory_budget": 1}, {"strategy": "loop"},
     {"strategy": "loop", "memory_budget": 1}, {"strategy": "auto"}],
    ids=["vmap", "vmap-tiny-budget", "loop", "loop-tiny-budget", "auto"],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_three_endpoint_mixtures_equal_a_per_point_loop(family, options):
    models, data = FAMILIES[family]()
    result = evaluate_mixtures(models, WEIGHTS, data, progress=False, **options)
    losses, accuracies = naive_mixtures(models, WEIGHTS, data)
    np.testing.assert_allclose(result.losses, losses, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(result.accuracies, accuracies, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.weights, WEIGHTS)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_batches_and_scoring_point_by_point_equal_a_per_point_loop(monkeypatch, family, strategy):
    """One example per slice (both strategies cut batches whose activations are large on a CPU) and one
    point's logits scored at a time give the same numbers as whole batches scored together."""
    monkeypatch.setattr(evaluation, "SLICE_BYTES", 1)
    monkeypatch.setattr(evaluation, "SCORED_TOGETHER", 1)
    models, data = FAMILIES[family]()
    result = evaluate_mixtures(models, WEIGHTS, data, strategy=strategy, progress=False)
    losses, accuracies = naive_mixtures(models, WEIGHTS, data)
    np.testing.assert_allclose(result.losses, losses, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(result.accuracies, accuracies, rtol=0, atol=1e-12)


def test_stacked_slices_keep_all_points_activations_under_the_slice_size():
    cost = Footprint(activation_bytes=2**22, largest_output_bytes=2**20, multiply_adds=1, calls=1)
    cpu = torch.device("cpu")
    assert evaluation._slice_rows("loop", cpu, cost, points=8) == evaluation.SLICE_BYTES // 2**20
    assert evaluation._slice_rows("vmap", cpu, cost, points=8) == evaluation.SLICE_BYTES // 2**23
    assert evaluation._slice_rows("vmap", torch.device("meta"), cost, points=8) is None  # not a CPU: whole batches
    assert evaluation._slice_rows("vmap", cpu, None, points=8) is None  # a model run as it is: whole batches


class Counted(list):
    """Batches that count how often they are read."""

    reads = 0

    def __iter__(self):
        self.reads += 1
        return super().__iter__()


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("budget, passes", [(2**30, 1), (1, len(WEIGHTS))])
def test_the_data_is_read_once_per_chunk(strategy, budget, passes):
    models, data = mlp_models()
    data = Counted(data)
    evaluate_mixtures(models, WEIGHTS, data, strategy=strategy, memory_budget=budget, progress=False)
    assert data.reads == 1 + passes  # the first batch is read once to size the chunks


@pytest.mark.parametrize("classes", [10, 5000, 50257, 4352])
def test_first_argmax_is_argmax_with_ties_and_nan(classes):
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randint(-3, 3, (6, 5, classes), generator=generator).float()  # ties everywhere
    logits[0, 1, classes // 2] = logits[2, 3, -1] = float("nan")
    logits[1] = 0.0
    logits[3, 2, -1] = 100.0
    torch.testing.assert_close(first_argmax(logits), logits.argmax(-1), rtol=0, atol=0)
    wide = torch.randn(4, classes, generator=generator)
    torch.testing.assert_close(first_argmax(wide), wide.argmax(-1), rtol=0, atol=0)


def test_tied_gpt2_is_stacked_and_equals_the_loop():
    (a, b, _), data = gpt2_models(canonical=False)
    assert a.lm_head.weight is a.transformer.wte.weight and lmc.barrier_strategy(a, "cuda") == "vmap"
    stacked = lmc.barrier(a, b, data, 5, strategy="vmap", progress=False)
    looped = lmc.barrier(a, b, data, 5, strategy="loop", progress=False)
    np.testing.assert_allclose(stacked.losses, looped.losses, rtol=TOLERANCE, atol=TOLERANCE)
    naive = naive_curve(a, b, data, stacked.lambdas)[0]
    np.testing.assert_allclose(stacked.losses, naive, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_two_endpoints_are_the_barrier(strategy):
    (a, b, _), data = mlp_models()
    curve = lmc.barrier(a, b, data, 7, strategy=strategy, progress=False)
    weights = np.stack([1 - curve.lambdas, curve.lambdas], axis=1)
    result = evaluate_mixtures([a, b], weights, data, strategy=strategy, progress=False)
    np.testing.assert_array_equal(result.losses, curve.losses)
    np.testing.assert_array_equal(result.accuracies, curve.accuracies)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_one_endpoint_is_the_model_itself(strategy):
    (a, _, _), data = mlp_models()
    result = evaluate_mixtures([a], [[1.0], [1.0]], data, strategy=strategy, progress=False)
    loss, accuracy = lmc.evaluate(a, data)
    np.testing.assert_allclose(result.losses, [loss, loss], rtol=1e-6)
    np.testing.assert_allclose(result.accuracies, [accuracy, accuracy])


def test_mix_is_the_weighted_sum_and_exact_at_the_corners():
    models, _ = mlp_models()
    mixed = mix(models, [0.2, 0.3, 0.5])
    for name, tensor in mixed.state_dict().items():
        expected = sum(w * m.state_dict()[name].double() for w, m in zip((0.2, 0.3, 0.5), models))
        torch.testing.assert_close(tensor, expected.float(), rtol=1e-6, atol=1e-7, msg=name)
    assert all(same_state(mix(models, np.eye(3)[k]), models[k]) for k in range(3))
    assert same_state(mix(models, torch.tensor([0.0, 1.0, 0.0])), models[1])
    with pytest.raises(ValueError, match="weights: row 0 sums to 1.1; every row of mixture weights must sum to 1"):
        mix(models, [0.5, 0.6, 0.0])
    with pytest.raises(ValueError, match=r"weights: expected a \(points, 3\) matrix"):
        mix(models, [0.5, 0.5])


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, error, message",
    [
        ([[0.5, 0.5, 0.5]], ValueError, r"weights: row 0 sums to 1.5; every row of mixture weights must sum to 1"),
        ([[1.0, 0.0, 0.0], [0.3, 0.3, 0.3]], ValueError, r"weights: row 1 sums to 0.9"),
        ([[1.5, -0.5, 0.0]], ValueError, r"weights\[0, 1\] = -0.5: mixture weights must be finite and >= 0"),
        ([[float("nan"), 0.5, 0.5]], ValueError, r"weights\[0, 0\] = nan: mixture weights must be finite"),
        ([0.2, 0.3, 0.5], ValueError, r"weights: expected a \(points, 3\) matrix, one row of 3 weights per point; "
                                      r"got shape \(3,\)"),
        ([[0.5, 0.5]], ValueError, r"weights: expected a \(points, 3\) matrix, .* got shape \(1, 2\)"),
        (np.zeros((0, 3)), ValueError, r"got shape \(0, 3\)"),
        ([[True, False, False]], TypeError, "weights: expected real numbers, got an array of dtype bool"),
    ],
)
def test_weights_must_be_convex_rows(weights, error, message):
    models, data = mlp_models()
    with pytest.raises(error, match=message):
        evaluate_mixtures(models, weights, data, progress=False)


def test_float32_weights_within_rounding_are_accepted():
    third = np.full((1, 3), 1 / 3, dtype=np.float32)
    assert abs(third.astype(np.float64).sum() - 1) > 1e-8 and mixture_weights(third, 3).shape == (1, 3)


def test_models_must_share_an_architecture_and_be_finite():
    models, data = mlp_models()
    other = build_mlp(lmc.MLPConfig(6, (10, 8), 4, activation="gelu"), 0)
    with pytest.raises(ValueError, match="models 0 and 2 differ at module 'fc2': out_features = 7 vs 8"):
        evaluate_mixtures([*models[:2], other], WEIGHTS, data, progress=False)
    with pytest.raises(ValueError, match="models first and third differ"):
        evaluate_mixtures([*models[:2], other], WEIGHTS, data, labels=("first", "second", "third"), progress=False)
    broken = copy.deepcopy(models[2])
    with torch.no_grad():
        broken.fc1.bias[0] = float("inf")
    with pytest.raises(ValueError, match="model 2: tensor 'fc1.bias' has NaN or infinite entries"):
        evaluate_mixtures([*models[:2], broken], WEIGHTS, data, progress=False)
    with pytest.raises(TypeError, match="model 1 must be an nn.Module, got str"):
        evaluate_mixtures([models[0], "b"], [[0.5, 0.5]], data, progress=False)
    with pytest.raises(ValueError, match="models: expected a non-empty sequence of nn.Module, got a list"):
        evaluate_mixtures([], np.zeros((1, 0)), data, progress=False)
    with pytest.raises(ValueError, match="labels: 2 labels for 3 models"):
        evaluate_mixtures(models, WEIGHTS, data, labels=("a", "b"), progress=False)


def test_a_parameter_free_model_is_refused():
    data = classification_data(6, 3)
    model = nn.Sequential(nn.Flatten())
    with pytest.raises(ValueError, match=r"model A \(Sequential\) has no floating parameters or buffers"):
        lmc.barrier(model, copy.deepcopy(model), data, progress=False)
    with pytest.raises(ValueError, match="evaluate: the Sequential has no parameters or buffers"):
        lmc.evaluate(model, data)


# -- the stacked path only for models a family fully describes -------------------------------------


class Doubled(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class Scale(nn.Module):
    def forward(self, weight):
        return 1.5 * weight


def with_hook(model, pre=False):
    if pre:
        model[2].register_forward_pre_hook(lambda module, args: (args[0] + 1,))
    else:
        model[1].register_forward_hook(lambda module, args, out: out * 2)
    return model


def parametrized(model):
    parametrize.register_parametrization(model[0], "weight", Scale())
    return model


def reused_relu():
    relu = nn.ReLU()
    return nn.Sequential(nn.Linear(6, 8), relu, nn.Linear(8, 8), relu, nn.Linear(8, 3))


def reused_linear():
    shared = nn.Linear(8, 8)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(8, 3))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


#: name -> (build, message naming why the stacked path refuses it)
UNDESCRIBED = {
    "layernorm first": (lambda: nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
                        r"no model family fully describes it \(TypeError: MLP spec: unsupported module '0' "
                        r"\(LayerNorm\)"),
    "conv2d first": (lambda: nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(4, 3)),
                     r"unsupported module '0' \(Conv2d\)"),
    "own forward": (lambda: Doubled(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
                    "Doubled overrides nn.Sequential.forward"),
    "reused activation": (reused_relu, "modules '1' and '3' are the same ReLU object"),
    "reused linear": (reused_linear, "modules '2' and '4' are the same Linear object"),
    "forward hook": (lambda: with_hook(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))),
                     r"module '1' \(ReLU\) of model A has forward hooks"),
    "pre-hook": (lambda: with_hook(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), pre=True),
                 r"module '2' \(Linear\) of model A has forward hooks"),
    "parametrization": (lambda: parametrized(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))),
                        r"module '0' \(ParametrizedLinear\) of model A has parametrizations of \['weight'\]"),
    "no family": (TinyNet, "no symmetry spec for TinyNet"),
}


def undescribed_data(name):
    """Six features per example; the Conv2d reads them as one 2 x 3 image."""
    data = classification_data(6, 3)
    return [(x.view(-1, 1, 2, 3), y) for x, y in data] if name == "conv2d first" else data


def undescribed_pair(name):
    torch.manual_seed(0)
    a = UNDESCRIBED[name][0]()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(3)
        for p in b.parameters():
            p.copy_(3 * torch.randn_like(p))
    return a, b


@pytest.mark.parametrize("name", UNDESCRIBED)
def test_auto_loops_over_undescribed_models_and_equals_the_loop(name):
    a, b = undescribed_pair(name)
    data = undescribed_data(name)
    assert lmc.barrier_strategy(a, "cpu") == "loop" and lmc.barrier_strategy(a, "cuda") == "loop"
    curve = lmc.barrier(a, b, data, 5, progress=False)
    losses, accuracies = naive_curve(a, b, data, curve.lambdas)
    np.testing.assert_allclose(curve.losses, losses, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(curve.accuracies, accuracies, atol=1e-12)


@pytest.mark.parametrize("name", UNDESCRIBED)
def test_vmap_refuses_undescribed_models_saying_why(name):
    a, b = undescribed_pair(name)
    with pytest.raises(ValueError, match="strategy='vmap' cannot evaluate these models: .*" + UNDESCRIBED[name][1]):
        lmc.barrier(a, b, undescribed_data(name), 5, strategy="vmap", progress=False)


def test_a_hook_on_either_endpoint_sends_auto_to_the_loop():
    a, b = undescribed_pair("own forward")
    a, b = nn.Sequential(*a), nn.Sequential(*b)
    b[1].register_forward_hook(lambda module, args, out: out)
    with pytest.raises(ValueError, match=r"module '1' \(ReLU\) of model B has forward hooks"):
        lmc.barrier(a, b, classification_data(6, 3), strategy="vmap", progress=False)


# -- model outputs -------------------------------------------------------------------------------


class Returning(nn.Module):
    """An MLP body whose logits come back as a tensor, the first element of a tuple, an object's .logits or a dict."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        logits = self.body(x)
        return {"tensor": logits, "tuple": (logits, x), "object": SimpleNamespace(logits=logits),
                "dict": {"logits": logits}}[self.kind]


@pytest.mark.parametrize("kind", ["tuple", "object"])
def test_tuple_and_object_outputs_give_the_tensor_curve(kind):
    torch.manual_seed(0)
    a, b = Returning("tensor"), Returning("tensor")
    data = classification_data(6, 3)
    reference = lmc.barrier(a, b, data, 5, progress=False)
    other_a, other_b = Returning(kind), Returning(kind)
    other_a.load_state_dict(a.state_dict()), other_b.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(lmc.barrier(other_a, other_b, data, 5, progress=False).losses, reference.losses)
    assert lmc.evaluate(other_a, data) == lmc.evaluate(a, data)


def test_other_outputs_are_refused():
    a = Returning("dict")
    with pytest.raises(TypeError, match="the model returned a dict; expected a Tensor of logits"):
        lmc.barrier(a, copy.deepcopy(a), classification_data(6, 3), progress=False)
