"""Circuit-space interpolation: exact endpoints, interpolated circuits, blindness to maps inside heads."""

import pytest
import torch

import lmc_lib as lmc
from contract import max_relative_error, outputs
from lmc_lib.spec import flatten_axis
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit

# (builder, config): scaled and unscaled attention, per-layer scaling, eager and sdpa, with and without qkv bias
CASES = [
    (gpt2, dict(n_embd=16, n_layer=2, n_head=2)),
    (gpt2, dict(n_embd=16, n_layer=2, n_head=4, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                attention="eager")),
    (gpt2, dict(n_embd=16, n_layer=1, n_head=2, scale_attn_weights=False, canonical=False)),
    (vit, dict(embed_dim=16, depth=2, num_heads=2)),
    (vit, dict(embed_dim=24, depth=1, num_heads=3, qkv_bias=False, global_pool="avg", class_token=False)),
]
IDS = ["gpt2", "gpt2-eager-layer-scaled", "gpt2-unscaled", "vit", "vit-no-qkv-bias"]


def inputs(build, model, generator):
    return tokens(generator) if build is gpt2 else images(model, generator)


def circuits(model) -> list[torch.Tensor]:
    """Every head's circuits, (heads, features, features) per circuit and block: L_i^T R_i from the spec."""
    state = {k: v.double() for k, v in model.state_dict().items()}
    found = []
    for space in lmc.spec_for(model).spaces.values():
        for circuit in space.circuits:
            left, right = (torch.cat([flatten_axis(state[a.param], a, keep_block=True) for a in axes], -1)
                           for axes in (circuit.left, circuit.right))
            found.append(torch.einsum("hrf,hrg->hfg", left, right))
    return found


@pytest.mark.parametrize("build, config", CASES, ids=IDS)
def test_circuit_pair_endpoints_compute_the_original_functions(build, config, generator):
    a, b = build(config, 0), build(config, 1)
    a2, b2 = lmc.circuit_pair(a, b)
    x = inputs(build, a, generator)
    assert type(a2) is type(a)
    assert max_relative_error(outputs(a, x), outputs(a2, x)) <= 1e-5
    assert max_relative_error(outputs(b, x), outputs(b2, x)) <= 1e-5


@pytest.mark.parametrize("build, config", CASES, ids=IDS)
def test_interpolating_the_pair_interpolates_every_circuit(build, config):
    a, b = build(config, 0), build(config, 1)
    a2, b2 = lmc.circuit_pair(a, b)
    lam = 0.3
    middle = lmc.interpolate(a2, b2, lam)
    assert all(c.shape[0] > 0 for c in circuits(middle))
    for got, at_a, at_b in zip(circuits(middle), circuits(a2), circuits(b2)):
        torch.testing.assert_close(got, (1 - lam) * at_a + lam * at_b, rtol=1e-5, atol=1e-6)
    # the pair keeps each model's circuits (the queries carry the change of attention scale, a constant)
    for wide, narrow in zip(circuits(a2), circuits(a)):
        ratio = wide.norm() / narrow.norm()
        torch.testing.assert_close(wide, ratio * narrow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build, config", CASES[::3], ids=IDS[::3])
def test_circuit_interpolation_does_not_see_invertible_maps_inside_heads(build, config, generator):
    a = build(config, 0)
    spec = lmc.spec_for(a)
    inside = lmc.random_transform(spec, {"qk": ("invertible",), "ov": ("invertible",)}, generator)
    b = lmc.transform(a, inside)
    x = inputs(build, a, generator)
    reference = outputs(a, x)
    assert max_relative_error(reference, outputs(lmc.interpolate(a, b, 0.5), x)) > 1e-2  # the factors disagree
    a2, b2 = lmc.circuit_pair(a, b)
    assert max_relative_error(reference, outputs(lmc.interpolate(a2, b2, 0.5), x)) <= 1e-5  # the circuits do not


@pytest.mark.parametrize("build, config", CASES[::3], ids=IDS[::3])
def test_barrier_of_the_pair_is_the_same_stacked_or_looped(build, config, generator):
    a, b = build(config, 0), build(config, 1)
    a2, b2 = lmc.circuit_pair(a, b)
    x = inputs(build, a, generator)
    data = [(x[:, :-1], x[:, 1:])] if build is gpt2 else [(x, torch.randint(0, 5, (x.shape[0],), generator=generator))]
    fast = lmc.barrier(a2, b2, data, lambdas=5, strategy="vmap", progress=False)
    slow = lmc.barrier(a2, b2, data, lambdas=5, strategy="loop", progress=False)
    assert abs(fast.losses - slow.losses).max() < 1e-5
    plain = lmc.barrier(a, b, data, lambdas=5, progress=False)
    assert fast.losses[[0, -1]] == pytest.approx(plain.losses[[0, -1]], rel=1e-5)


def test_k_models_combine_their_circuits_convexly(generator):
    config = dict(n_embd=16, n_layer=2, n_head=2)
    models = [gpt2(config, seed) for seed in range(3)]
    wide = lmc.circuits.circuit_models(models)
    x = tokens(generator)
    for model, widened in zip(models, wide):
        assert max_relative_error(outputs(model, x), outputs(widened, x)) <= 1e-5
    weights = (0.2, 0.3, 0.5)
    states = [m.state_dict() for m in wide]
    mixed = lmc.family.load_state(
        wide[0], {k: sum(w * s[k].double() for w, s in zip(weights, states)) for k in states[0]}
    )
    for got, *each in zip(circuits(mixed), *(circuits(m) for m in wide)):
        torch.testing.assert_close(got, sum(w * c for w, c in zip(weights, each)), rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused():
    a = gpt2(dict(n_embd=16, n_layer=1, n_head=2), 0)
    with pytest.raises(ValueError, match="models differ at module 'transformer': embed_dim = 16 vs 24"):
        lmc.circuit_pair(a, gpt2(dict(n_embd=24, n_layer=1, n_head=2), 0))
    with pytest.raises(ValueError, match="models are of different classes: GPT2LMHeadModel vs VisionTransformer"):
        lmc.circuit_pair(a, vit(dict(embed_dim=16, depth=1, num_heads=2)))
    with pytest.raises(ValueError, match="needs at least two models, got 1"):
        lmc.circuits.circuit_models([a])
    mlp = lmc.MLP(lmc.MLPConfig(4, (8,), 2))
    with pytest.raises(ValueError, match="mlp models have no attention heads"):
        lmc.circuit_pair(mlp, mlp)


@pytest.mark.parametrize("build, config", [CASES[0], CASES[3]], ids=["gpt2", "vit"])
def test_mix_circuits_combines_the_circuits_of_k_models_and_is_differentiable(build, config):
    models = [build(config, seed) for seed in range(3)]
    family = lmc.family.family_of(models[0])
    wide_models = [family.widen_heads(model, 3) for model in models]
    wide = [{k: v.detach().double().clone().requires_grad_(v.is_floating_point())
             for k, v in model.state_dict().items()} for model in wide_models]
    values = (0.2, 0.5, 0.3)
    weights = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    mixed = lmc.circuits.mix_circuits(wide, weights, lmc.spec_for(wide_models[0]))
    # the same model as the convex combination of circuit_models' three models
    reference = [m.state_dict() for m in lmc.circuits.circuit_models(models)]
    for name, tensor in mixed.items():
        expected = sum(w * state[name].double() for w, state in zip(values, reference))
        torch.testing.assert_close(tensor.detach(), expected, rtol=1e-6, atol=1e-7)
    # and its circuits are the combination of the models' (widened) circuits
    mixed_model = lmc.family.load_state(wide_models[0], {k: v.detach() for k, v in mixed.items()})
    for got, *each in zip(circuits(mixed_model), *(circuits(m) for m in wide_models)):
        torch.testing.assert_close(got, sum(w * c for w, c in zip(values, each)), rtol=1e-5, atol=1e-6)
    sum(t.square().sum() for t in mixed.values() if t.is_floating_point()).backward()
    assert weights.grad is not None and torch.isfinite(weights.grad).all()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for state in wide for k, t in state.items()
               if t.is_floating_point() and t.abs().sum() > 0)
