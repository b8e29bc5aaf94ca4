"""The GPU paths: each public operation on CUDA models gives what it gives on the CPU.

Skipped where there is no CUDA device (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
``LMC_TEST_DEVICE=cpu`` runs the same code paths on the CPU (a check of the tests themselves).
"""

import os

import numpy as np
import pytest
import torch

import lmc_lib as lmc
from contract import max_relative_error, outputs
from strategies import build_mlp
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit
from test_recipes import shared_root, tiny  # noqa: F401 (shared_root is a fixture)

DEVICE = torch.device(os.environ.get("LMC_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")

PAPER = {"residual": ("orthogonal",), "heads": ("permutation",), "mlp": ("permutation",)}
MLP = lmc.MLPConfig(12, (16, 16), 5)


GPT2 = dict(n_embd=16, n_layer=2, n_head=2, n_inner=24)
VIT = dict(embed_dim=16, depth=2, num_heads=2)


def data_for(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three small batches of inputs the model takes, with random targets."""
    generator = torch.Generator().manual_seed(0)
    if isinstance(model, lmc.MLP):
        return [
            (torch.randn(32, 12, generator=generator), torch.randint(0, 5, (32,), generator=generator))
            for _ in range(3)
        ]
    if hasattr(model, "patch_embed"):
        return [(images(model, generator, 8), torch.randint(0, 5, (8,), generator=generator)) for _ in range(3)]
    return [(x[:, :-1], x[:, 1:]) for x in (tokens(generator, 4, 11) for _ in range(3))]


def mlp_pair():
    a = build_mlp(MLP, 0)
    return a, build_mlp(MLP, 1), data_for(a), ("permutation",)


def gpt2_pair():
    a = gpt2(GPT2, 0)
    return a, gpt2(GPT2, 1), data_for(a), PAPER


def vit_pair():
    a = vit(VIT, 0)
    return a, vit(VIT, 1), data_for(a), PAPER


PAIRS = [mlp_pair, gpt2_pair, vit_pair]
IDS = ["mlp", "gpt2", "vit"]


def on_device(*models):
    return [model.to(DEVICE) for model in models]


def assert_on_device(model):
    assert all(t.device.type == DEVICE.type for t in model.state_dict().values())


def assert_same_transforms(x: lmc.Alignment, y: lmc.Alignment, tolerance: float = 1e-6):
    assert x.transforms.keys() == y.transforms.keys()
    for name, t in x.transforms.items():
        if isinstance(t, lmc.Permutation):
            assert torch.equal(t.indices.cpu(), y.transforms[name].indices.cpu()), name
        else:
            torch.testing.assert_close(t.matrix.cpu(), y.transforms[name].matrix.cpu(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_barrier_on_cuda_equals_the_cpu_curve(pair, strategy):
    a, b, data, _ = pair()
    cpu = lmc.barrier(a, b, data, lambdas=5, strategy=strategy, progress=False)
    moved = lmc.barrier(*on_device(a, b), data, lambdas=5, strategy=strategy, progress=False)  # data stays on the CPU
    asked = lmc.barrier(a.cpu(), b.cpu(), data, lambdas=5, strategy=strategy, device=DEVICE, progress=False)
    for curve in (moved, asked):
        np.testing.assert_allclose(curve.losses, cpu.losses, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(curve.accuracies, cpu.accuracies, atol=1e-12)


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_matching_on_cuda_equals_the_cpu_alignment(pair):
    a, b, data, classes = pair()
    cpu_weights = lmc.weight_matching(a, b, classes=classes)
    cpu_activations = lmc.activation_matching(a, b, data, classes=classes)
    a, b = on_device(a, b)
    assert_same_transforms(lmc.weight_matching(a, b, classes=classes), cpu_weights)
    assert_same_transforms(lmc.activation_matching(a, b, data, classes=classes), cpu_activations, tolerance=1e-4)
    assert_on_device(cpu_weights.apply(b))


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_transforms_keep_function_and_device_on_device(pair):
    a, _, data, classes = pair()
    (a,) = on_device(a)
    spec = lmc.spec_for(a)
    x = data[0][0].to(DEVICE)
    wide = ("semi_permutation",) if classes == ("permutation",) else classes  # the MLP is ReLU: semi-permutations
    inside = (
        ("permutation",) if classes == ("permutation",) else {**classes, "qk": ("invertible",), "ov": ("invertible",)}
    )
    for chosen, expand in ((wide, 1.5), (inside, 1.0)):
        moved = lmc.transform(a, lmc.random_transform(spec, chosen, torch.Generator().manual_seed(0), expand=expand))
        assert_on_device(moved)
        assert max_relative_error(outputs(a, x), outputs(moved, x)) < 1e-5


@pytest.mark.parametrize("build, config", [(gpt2, GPT2), (vit, VIT)], ids=["gpt2", "vit"])
def test_canonical_form_and_circuit_pair_on_device(build, config):
    (original,) = on_device(build(config, 0, canonical=False))
    canonical = lmc.canonicalize(original)
    assert_on_device(canonical)
    x = data_for(original)[0][0].to(DEVICE)
    assert max_relative_error(outputs(original, x), outputs(canonical, x)) < 1e-5
    if build is gpt2:
        a, b = build(config, 0), build(config, 1)
        data = data_for(a)
        on_cpu = lmc.barrier(*lmc.circuit_pair(a, b), data, lambdas=3, progress=False)
        lifted = lmc.circuit_pair(*on_device(a, b))
        assert_on_device(lifted[0])
        on_gpu = lmc.barrier(*lifted, data, lambdas=3, progress=False)
        np.testing.assert_allclose(on_gpu.losses, on_cpu.losses, rtol=1e-4, atol=1e-5)


def test_training_on_cuda_follows_the_cpu_run():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=generator)
    data = lmc.TensorData(x, (x[:, :5] ** 2).argmax(1), name="squares")
    config = lmc.TrainConfig(epochs=2, batch_size=32, lr=1e-2)
    build = lambda: lmc.MLP(MLP)  # noqa: E731
    cpu = lmc.train(build, data, config, seed=0, progress=False)
    gpu = lmc.train(build, data, config, seed=0, progress=False, device=DEVICE)
    assert_on_device(gpu)
    for name, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[name].cpu(), value, rtol=1e-3, atol=1e-4)
    loss_cpu, _ = lmc.evaluate(cpu, data.batches(64))
    loss_gpu, _ = lmc.evaluate(gpu, [(xb.to(DEVICE), yb.to(DEVICE)) for xb, yb in data.batches(64)])
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-3)


@pytest.mark.parametrize("name", ["vit-mnist", "gpt2-shakespeare"])
def test_trained_pair_hands_back_models_and_batches_on_the_device(name, shared_root, tmp_path):  # noqa: F811
    pair = lmc.book.trained_pair(tiny(name), root=shared_root, cache=tmp_path, device=DEVICE)
    assert_on_device(pair.a) and assert_on_device(pair.b)
    assert all(x.device.type == y.device.type == DEVICE.type for x, y in pair.test_batches + pair.train_batches)
    loss, _ = lmc.evaluate(pair.a, pair.test_batches)
    curve = lmc.barrier(pair.a, pair.b, pair.test_batches, lambdas=3, progress=False)
    assert curve.losses[0] == pytest.approx(loss, rel=1e-5)
