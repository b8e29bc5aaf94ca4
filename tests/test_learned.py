"""Learned matching: gradients reach every latent, the result is an exact alignment, and it lowers barriers."""

import pytest
import torch

import lmc_lib as lmc
from contract import max_relative_error, outputs
from lmc_lib.learned import (
    _Latent, _latents, _Path, clipped_normal, fixed, learned_matching, learned_matching_two_sided, uniform,
)
from strategies import build_mlp
from test_models_gpt2 import gpt2, tokens

CONFIG = lmc.MLPConfig(6, (8, 7), 3)


def mlp_data(n: int = 96, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    return list(zip(x.split(batch), y.split(batch)))


def token_data(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(tokens(generator, 3, 8), tokens(generator, 3, 8)) for _ in range(n)]


@pytest.mark.parametrize("circuits", [False, True])
def test_gradients_reach_every_latent(circuits):
    a, b = gpt2(dict(n_embd=16, n_layer=2, n_head=2), 0), gpt2(dict(n_embd=16, n_layer=2, n_head=2), 1)
    path = _Path(a, b, circuits)
    kinds = lmc.alignment.resolve_classes(path.spec, "paper", ("permutation", "orthogonal"), caller="test")
    latents = _latents(path.spec, kinds, torch.device("cpu"))
    maps = {name: latent.project(True) for name, latent in latents.items()}
    x, y = token_data(1)[0]
    path.loss(path.tensors(maps, 0.5), x, y, lmc.evaluation.cross_entropy).backward()
    assert set(latents) >= {"residual", "transformer.h.0.attn.heads", "transformer.h.1.mlp"}
    for name, latent in latents.items():
        assert latent.tensor.grad is not None and torch.isfinite(latent.tensor.grad).all(), name
        assert latent.tensor.grad.abs().sum() > 0, name


def test_the_orthogonal_projection_is_exact_and_its_gradient_finite_at_the_identity():
    latent = _Latent("orthogonal", torch.zeros(6, 6, requires_grad=True))
    rotation, _ = latent.project(True)
    torch.testing.assert_close(rotation, torch.eye(6))
    (rotation * torch.randn(6, 6, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.isfinite(latent.tensor.grad).all() and latent.tensor.grad.abs().sum() > 0
    with torch.no_grad():
        latent.tensor.add_(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    element = latent.element()
    torch.testing.assert_close(element.matrix.T @ element.matrix, torch.eye(6, dtype=torch.float64))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_the_permutation_projection_passes_gradients_straight_through(dim):
    """Forward: P x by indexing; backward: the gradients of the dense product L x for the latent, of P x for x."""
    generator = torch.Generator().manual_seed(0)
    latent = _Latent("permutation", (torch.eye(4) + 0.01 * torch.randn(4, 4, generator=generator)).requires_grad_(True))
    latent.tensor.data[[0, 2]] = latent.tensor.data[[2, 0]]  # the assignment is a swap, not the identity
    straight, _ = latent.project(True)
    shape = [3, 5, 2]
    shape[dim] = 4
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    upstream = torch.randn(*shape, generator=generator)
    (straight.along(x, dim) * upstream).sum().backward()
    hard = torch.zeros(4, 4)
    hard[torch.arange(4), latent.indices] = 1.0
    dense = lambda matrix, t: torch.tensordot(matrix, t, dims=([1], [dim])).movedim(0, dim)  # noqa: E731
    torch.testing.assert_close(straight.along(x, dim).detach(), dense(hard, x.detach()))
    reference_latent = latent.tensor.detach().clone().requires_grad_(True)
    reference_x = x.detach().clone().requires_grad_(True)
    ste = hard + reference_latent - reference_latent.detach()
    (dense(ste, reference_x) * upstream).sum().backward()
    torch.testing.assert_close(latent.tensor.grad, reference_latent.grad)
    torch.testing.assert_close(x.grad, dense(hard.T, upstream))


@pytest.mark.parametrize("family", ["mlp", "gpt2"])
def test_the_alignment_is_exact(family):
    if family == "mlp":
        a, b, data, classes = build_mlp(CONFIG, 0), build_mlp(CONFIG, 1), mlp_data(), "permutations"
        x = data[0][0]
    else:
        a, b = gpt2(dict(n_embd=16, n_layer=1, n_head=2), 0), gpt2(dict(n_embd=16, n_layer=1, n_head=2), 1)
        data, classes, x = token_data(), "paper", token_data(1)[0][0]
    alignment = learned_matching(a, b, data, classes=classes, steps=12, eval_every=4, lr=0.1)
    assert len(alignment.history) == 3
    assert max_relative_error(outputs(b, x), outputs(alignment.apply(b), x)) <= 1e-5


def test_a_planted_permutation_stays_found():
    a = build_mlp(CONFIG, 0)
    b = lmc.transform(a, lmc.random_transform(lmc.spec_for(a), ("permutation",), torch.Generator().manual_seed(3)))
    alignment = learned_matching(a, b, mlp_data(), classes="permutations", steps=30, lr=0.01)
    aligned = alignment.apply(b)
    assert all(torch.equal(aligned.state_dict()[k], v) for k, v in a.state_dict().items())


def test_learned_matching_lowers_the_held_out_barrier_below_weight_matching():
    train, test = lmc.digits(True), lmc.digits(False)
    config, schedule = lmc.MLPConfig(64, (64, 64), 10), lmc.TrainConfig(epochs=20, batch_size=64, lr=1e-3)
    a, b = (lmc.train(lambda: lmc.MLP(config), train, schedule, seed=seed, progress=False) for seed in (0, 1))
    weight = lmc.weight_matching(a, b)
    learned = learned_matching(a, b, train.batches(64, shuffle=True), init=weight, classes="permutations",
                               steps=300, lr=0.01)
    held_out = test.batches(400)
    before = lmc.barrier(a, weight.apply(b), held_out, progress=False).barrier
    after = lmc.barrier(a, learned.apply(b), held_out, progress=False).barrier
    assert after < before


def test_validation_keeps_the_best_latents_and_stops_early():
    a, b = build_mlp(CONFIG, 0), build_mlp(CONFIG, 1)
    alignment = learned_matching(a, b, mlp_data(), classes="permutations", steps=400, eval_every=5, lr=0.5,
                                 validation=mlp_data(seed=1), patience=2)
    assert len(alignment.history) < 400 // 5


def test_samplers_draw_inside_the_unit_interval():
    generator = torch.Generator().manual_seed(0)
    for sampler in (uniform(0.4, 0.6), clipped_normal(0.5, 2.0), fixed(0.25)):
        draws = [sampler(generator) for _ in range(200)]
        assert all(0 <= draw <= 1 for draw in draws)
    assert {fixed(0.25)(generator)} == {0.25}
    with pytest.raises(ValueError, match="uniform: need 0 <= low <= high <= 1"):
        uniform(0.5, 1.5)


@pytest.mark.parametrize("call, error, message", [
    (lambda a, b: learned_matching(a, b, [torch.randn(4, 6)], classes="permutations"), TypeError, "batch 0"),
    (lambda a, b: learned_matching(a, b, mlp_data(), classes="permutations", sampler=lambda g: 1.5), ValueError,
     r"sampler drew lambda = 1.5, outside \[0, 1\]"),
    (lambda a, b: learned_matching(a, b, mlp_data(), classes="permutations", steps=0), ValueError, "steps"),
    (lambda a, b: learned_matching(a, b, mlp_data(), classes="permutations", init="identity"), TypeError, "init"),
    (lambda a, b: learned_matching(a, b, mlp_data(), classes=("orthogonal",)), ValueError, "admits 'orthogonal'"),
])
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call(build_mlp(CONFIG, 0), build_mlp(CONFIG, 1))


def test_an_orthogonal_residual_needs_canonical_models():
    a, b = (gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed, canonical=False) for seed in (0, 1))
    with pytest.raises(ValueError, match="call lmc.canonicalize"):
        learned_matching(a, b, token_data(), classes="paper")


def test_two_sided_learning_moves_both_endpoints_exactly():
    a, b = gpt2(dict(n_embd=16, n_layer=1, n_head=2), 0), gpt2(dict(n_embd=16, n_layer=1, n_head=2), 1)
    for_a, for_b = learned_matching_two_sided(a, b, token_data(), classes="paper", steps=20, lr=0.2)
    x = token_data(1)[0][0]
    assert max_relative_error(outputs(a, x), outputs(for_a.apply(a), x)) <= 1e-5
    assert max_relative_error(outputs(b, x), outputs(for_b.apply(b), x)) <= 1e-5
    rotation = for_a.transforms["residual"].matrix
    assert not torch.allclose(rotation, torch.eye(16, dtype=torch.float64), atol=1e-4)  # A moved too


def test_soft_permutations_are_a_soft_endpoint_never_an_alignment():
    from lmc_lib.soft import SoftEndpoint, soft_matching

    a, b = build_mlp(CONFIG, 0), build_mlp(CONFIG, 1)
    soft = soft_matching(a, b, mlp_data(), steps=20, lr=0.1, temperature=0.5)
    assert isinstance(soft, SoftEndpoint) and not isinstance(soft, lmc.Alignment)
    for matrix in soft.matrices.values():  # doubly stochastic, and not a permutation at this temperature
        torch.testing.assert_close(matrix.sum(0), torch.ones(matrix.shape[0]), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(matrix.sum(1), torch.ones(matrix.shape[0]), rtol=1e-2, atol=1e-2)  # Sinkhorn
        assert (matrix > 1e-3).sum() > matrix.shape[0]
    x = mlp_data()[0][0]
    assert max_relative_error(outputs(b, x), outputs(soft.model, x)) > 1e-3  # not B's function
    curve = lmc.barrier(a, soft.model, mlp_data(), progress=False)  # measured against its own endpoint
    assert curve.losses[-1] == pytest.approx(lmc.evaluate(soft.model, mlp_data())[0], rel=1e-6)
    with pytest.raises(TypeError, match="not a symmetry element"):
        _Latent("soft", torch.eye(3)).element()
