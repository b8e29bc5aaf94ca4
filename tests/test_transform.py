"""transform / random_transform: every class preserves the function of random MLPs; errors are refused clearly."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmc_lib as lmc
from lmc_lib.transform import transform_tensors
from contract import outputs, same_state
from lmc_lib.transform import apply_along
from strategies import build_mlp, mlp_configs
from test_spec import fused_spec, fused_state

TOLERANCE = 1e-5  # max |f(x) - f_T(x)| for float32 models; the transform itself is float64


def max_difference(model, new, x) -> float:
    return float((outputs(model, x) - outputs(new, x)).abs().max())


@given(config=mlp_configs(), seed=st.integers(0, 2**31 - 1), expand=st.sampled_from([1.0, 1.5, 2.0]))
def test_every_admitted_class_preserves_the_function(config, seed, expand):
    model = build_mlp(config, seed)
    spec = lmc.spec_for(model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, config.in_features, generator=generator)
    admitted = set(spec.spaces["fc1"].classes)
    for kind in admitted:
        transforms = lmc.random_transform(spec, (kind,), generator, expand=expand)
        assert {t.kind for t in transforms.values()} == {kind}
        new = lmc.transform(model, transforms)
        assert all(v.dtype == torch.float32 for v in new.state_dict().values())
        assert max_difference(model, new, x) <= TOLERANCE, f"{kind} (expand {expand}) on {config}"


@given(
    config=mlp_configs(activations=("relu", "leaky_relu")),
    seed=st.integers(0, 2**31 - 1),
    expand=st.sampled_from([1.5, 2.0, 3.0]),
)
def test_semi_permutation_writes_a_relu_mlp_as_an_equivalent_wider_one(config, seed, expand):
    model = build_mlp(config, seed)
    generator = torch.Generator().manual_seed(seed)
    wide = lmc.transform(
        model, lmc.random_transform(lmc.spec_for(model), ("semi_permutation",), generator, expand=expand)
    )
    widths = tuple(max(w, round(expand * w)) for w in config.widths)
    assert wide.config.widths == widths
    assert lmc.spec_for(wide).sizes() == {f"fc{i}": w for i, w in enumerate(widths, start=1)}
    x = torch.randn(32, config.in_features, generator=generator)
    assert max_difference(model, wide, x) <= TOLERANCE


def test_rectangular_orthogonal_lifts_a_linear_mlp():
    model = build_mlp(lmc.MLPConfig(6, (4, 5), 3, activation="identity"), 0)
    generator = torch.Generator().manual_seed(0)
    wide = lmc.transform(model, lmc.random_transform(lmc.spec_for(model), ("orthogonal",), generator, expand=2.0))
    assert wide.config.widths == (8, 10)
    assert max_difference(model, wide, torch.randn(16, 6, generator=generator)) <= TOLERANCE


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_two_transforms_equal_their_composition(seed):
    model = build_mlp(lmc.MLPConfig(5, (7, 6), 3, activation="identity"), seed)
    spec = lmc.spec_for(model)
    generator = torch.Generator().manual_seed(seed)
    for classes in (("permutation",), ("invertible",)):
        first, second = (lmc.random_transform(spec, classes, generator) for _ in range(2))
        twice = lmc.transform(lmc.transform(model, first), second)
        once = lmc.transform(model, {name: second[name].compose(first[name]) for name in spec.spaces})
        for name, tensor in once.state_dict().items():
            torch.testing.assert_close(twice.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_permutation_moves_rows_and_columns_exactly():
    model = build_mlp(lmc.MLPConfig(3, (4,), 2), 0)
    p = lmc.Permutation(torch.tensor([3, 1, 0, 2]))
    new = lmc.transform(model, {"fc1": p})
    assert torch.equal(new.fc1.weight, model.fc1.weight[p.indices])
    assert torch.equal(new.fc1.bias, model.fc1.bias[p.indices])
    assert torch.equal(new.fc2.weight, model.fc2.weight[:, p.indices])
    assert torch.equal(new.fc2.bias, model.fc2.bias)


def test_empty_transform_is_the_identity():
    model = build_mlp(lmc.MLPConfig(3, (4, 4), 2), 0)
    new = lmc.transform(model, {})
    assert same_state(model, new) and new is not model


def test_apply_along_acts_on_blocks_of_a_slice():
    w = fused_state()["w"]
    q, k = fused_spec().spaces["q"].writes[0], fused_spec().spaces["k"].writes[0]
    swapped = apply_along(w, q, lmc.Permutation(torch.tensor([1, 0])))
    assert torch.equal(swapped, torch.cat([w[2:4], w[0:2], w[4:6]]))
    doubled = apply_along(w, k, 2 * torch.eye(2, dtype=w.dtype))
    assert torch.equal(doubled, torch.cat([w[:4], 2 * w[4:]]))


def test_transform_state_keeps_dtypes_and_integer_tensors():
    state = {**fused_state(), "w": fused_state()["w"].to(torch.bfloat16)}
    new = lmc.transform_state(state, fused_spec(), {"k": lmc.Orthogonal.random(2)})
    assert new["w"].dtype == torch.bfloat16 and torch.equal(new["step"], state["step"])
    assert new["step"] is not state["step"]


def test_random_transform_picks_the_most_general_admitted_class():
    relu = lmc.spec_for(build_mlp(lmc.MLPConfig(3, (4, 4), 2), 0))
    linear = lmc.spec_for(build_mlp(lmc.MLPConfig(3, (4, 4), 2, activation="identity"), 0))
    assert {t.kind for t in lmc.random_transform(relu, ("permutation", "semi_permutation")).values()} == {
        "semi_permutation"
    }
    classes = ("permutation", "semi_permutation", "orthogonal")
    assert {t.kind for t in lmc.random_transform(linear, classes).values()} == {"orthogonal"}
    with pytest.raises(ValueError, match=r"random_transform: no space of the mlp spec admits 'orthogonal'"):
        lmc.random_transform(relu, classes)


# -- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def relu_mlp() -> lmc.MLP:
    return build_mlp(lmc.MLPConfig(3, (4, 5), 2), 0)


def test_transform_refuses_unknown_space(relu_mlp):
    with pytest.raises(KeyError, match=r"spaces that the mlp spec does not have: \['fc9'\]"):
        lmc.transform(relu_mlp, {"fc9": lmc.Permutation.random(4)})


def test_transform_refuses_a_class_the_space_does_not_admit(relu_mlp):
    with pytest.raises(ValueError, match=r"space 'fc1' admits \('permutation', 'semi_permutation'\), not orthogonal"):
        lmc.transform(relu_mlp, {"fc1": lmc.Orthogonal.random(4)})


def test_transform_refuses_size_mismatch(relu_mlp):
    with pytest.raises(ValueError, match="space 'fc2' has size 5 but its permutation acts on 4 coordinates"):
        lmc.transform(relu_mlp, {"fc2": lmc.Permutation.random(4)})


def test_resizing_a_space_that_shares_a_dimension_is_refused():
    spec, state = fused_spec(), fused_state()
    transforms = {"q": lmc.Permutation.random(2), "k": lmc.Orthogonal.random(2, 3)}
    with pytest.raises(ValueError, match="space 'k' changes size and shares w dim 0 with space 'q'"):
        lmc.transform_state(state, spec, transforms)
    alone = lmc.transform_state(state, spec, {"k": transforms["k"]})
    assert alone["w"].shape == (7, 4) and torch.equal(alone["w"][:4], state["w"][:4])


def test_random_transform_refuses_unknown_class(relu_mlp):
    with pytest.raises(ValueError, match=r"unknown symmetry class 'rotation'; expected one of"):
        lmc.random_transform(lmc.spec_for(relu_mlp), ("permutation", "rotation"))
    with pytest.raises(ValueError, match="expand must be >= 1, got 0.5"):
        lmc.random_transform(lmc.spec_for(relu_mlp), ("semi_permutation",), expand=0.5)


# -- inputs untouched ----------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_transform_and_canonicalize_leave_the_model_untouched(training):
    model = build_mlp(lmc.MLPConfig(3, (4, 5), 2), 0).train(training)
    before = copy.deepcopy(model)
    spec = lmc.spec_for(model)
    for classes, expand in ((("permutation",), 1.0), (("semi_permutation",), 2.0)):
        lmc.transform(model, lmc.random_transform(spec, classes, expand=expand))
    canonical = lmc.canonicalize(model)
    assert canonical is not model and same_state(canonical, model)
    assert same_state(model, before) and model.training == training
    assert model.config == before.config and model.fc1.out_features == 4


def test_transform_tensors_is_differentiable_and_matches_transform_state(generator):
    model = build_mlp(lmc.MLPConfig(5, (6, 4), 3, activation="identity"), 0)
    spec = lmc.spec_for(model)
    elements = lmc.random_transform(spec, ("invertible",), generator)
    state = {k: v.detach().double().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    latent = elements["fc1"].matrix.clone().requires_grad_(True)
    maps = {"fc1": (latent, torch.linalg.inv(latent).T), "fc2": elements["fc2"]}
    moved = transform_tensors(state, spec, maps)
    expected = lmc.transform_state(model.state_dict(), spec, elements)
    for name, tensor in expected.items():
        torch.testing.assert_close(moved[name].float(), tensor, rtol=1e-5, atol=1e-6)
    sum(t.square().sum() for t in moved.values()).backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0
    assert all(t.grad is not None for t in state.values())


def test_transform_state_refuses_what_only_the_family_can_lift():
    from test_models_gpt2 import gpt2

    model = gpt2(dict(n_embd=8, n_layer=1, n_head=2))
    spec = lmc.spec_for(model)
    lift = {"residual": lmc.Orthogonal.random(8, 12, torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match="space 'residual' is read through norms.*use lmc.transform"):
        lmc.transform_state(model.state_dict(), spec, lift)
    assert lmc.transform(model, lift).config.n_embd == 12


def test_invertible_maps_the_dtype_cannot_carry_are_refused():
    model = build_mlp(lmc.MLPConfig(4, (5,), 2, activation="identity"), 0)
    ill = lmc.Invertible(torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1e-5], dtype=torch.float64)))
    with pytest.raises(
        ValueError, match=r"space 'fc1': the invertible map's condition number 1e\+05 exceeds 8.39e\+03"
    ):
        lmc.transform(model, {"fc1": ill})
    lmc.transform(model.double(), {"fc1": ill})  # float64 carries it


def test_transform_refuses_a_spec_of_another_model():
    from test_models_gpt2 import gpt2

    original = gpt2(dict(n_embd=8, n_layer=1, n_head=2), canonical=False)
    canonical_spec = lmc.spec_for(lmc.canonicalize(original))
    elements = lmc.random_transform(canonical_spec, "paper", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not the one the spec describes.*call lmc.canonicalize"):
        lmc.transform(original, elements, spec=canonical_spec)


def test_float64_arithmetic_runs_on_the_cpu_for_devices_without_float64():
    from lmc_lib.transform import float64_device

    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("cpu")) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
