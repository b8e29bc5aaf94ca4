"""SymmetrySpec: axes, spaces, the derived reverse index, and the checks against a state dict."""

import pytest
import torch
from hypothesis import given

import lmc_lib as lmc
from lmc_lib.spec import flatten_axis
from strategies import build_mlp, mlp_configs



def fused_spec() -> lmc.spec.SymmetrySpec:
    """Two spaces sharing the rows of one fused tensor "w" (6 x 4): q owns rows 0-3 in blocks of 2, k rows 4-5."""
    q = lmc.spec.Space(
        "q", 2, ("permutation",), writes=(lmc.spec.Axis("w", 0, 0, 4, block=2),), reads=(lmc.spec.Axis("v", 1),)
    )
    k = lmc.spec.Space("k", 2, ("permutation", "orthogonal"), writes=(lmc.spec.Axis("w", 0, 4, 2),), reads=())
    return lmc.spec.SymmetrySpec("fused", {"q": q, "k": k}, invariant=("b",))


def fused_state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(24.0).view(6, 4), "v": torch.zeros(3, 2), "b": torch.zeros(3), "step": torch.tensor(7)}


def test_axis_extent_and_whole_dimension():
    shape = torch.Size([6, 4])
    assert lmc.spec.Axis("w", 0).extent(shape) == 6 and lmc.spec.Axis("w", 0).covers_whole_dim(shape)
    assert lmc.spec.Axis("w", 0, 4).extent(shape) == 2 and not lmc.spec.Axis("w", 0, 4).covers_whole_dim(shape)
    assert lmc.spec.Axis("w", 1, 0, 3).extent(shape) == 3 and not lmc.spec.Axis("w", 1, 0, 3).covers_whole_dim(shape)


def test_flatten_axis_gives_one_row_per_coordinate():
    w = torch.arange(24.0).view(6, 4)
    rows = flatten_axis(w, lmc.spec.Axis("w", 0, 0, 4, block=2))
    assert torch.equal(rows, torch.cat([w[0:2].reshape(1, -1), w[2:4].reshape(1, -1)]))
    columns = flatten_axis(w, lmc.spec.Axis("w", 1))
    assert torch.equal(columns, w.T)
    tail = flatten_axis(w, lmc.spec.Axis("w", -2, 4, 2))
    assert torch.equal(tail, w[4:6])


def test_space_refuses_unknown_class():
    with pytest.raises(ValueError, match=r"space 'h': unknown symmetry classes \['rotation'\]"):
        lmc.spec.Space("h", 3, ("permutation", "rotation"), writes=(), reads=())


def test_most_general_admitted_class():
    space = lmc.spec.Space("h", 3, ("permutation", "semi_permutation"), writes=(), reads=())
    assert space.most_general(("permutation", "semi_permutation", "orthogonal")) == "semi_permutation"
    assert space.most_general(("permutation", "invertible")) == "permutation"
    assert space.most_general(("orthogonal",)) is None


def test_spec_key_must_match_space_name():
    space = lmc.spec.Space("h", 3, ("permutation",), writes=(), reads=())
    with pytest.raises(ValueError, match="spec key 'g' differs from its space's name 'h'"):
        lmc.spec.SymmetrySpec("toy", {"g": space})


def test_reverse_index_lists_every_axis_once():
    spec = fused_spec()
    assert [(name, role) for name, _, role in spec.axes_of("w")] == [("q", "write"), ("k", "write")]
    assert [(name, role) for name, _, role in spec.axes_of("v")] == [("q", "read")]
    assert spec.axes_of("b") == () and set(spec.params) == {"w", "v"}
    assert spec.sizes() == {"q": 2, "k": 2}


def test_spaces_are_read_only():
    spec = fused_spec()
    with pytest.raises(TypeError):
        spec.spaces["extra"] = spec.spaces["q"]
    with pytest.raises(AttributeError):
        spec.family = "other"


def test_check_accepts_a_matching_state():
    fused_spec().check(fused_state())  # integer tensors ("step") need no declaration


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("v"), r"space 'q': parameter 'v' is not in the model"),
        (lambda s: s.update(v=torch.zeros(3)), r"space 'q': v has no dimension 1"),
        (lambda s: s.update(w=torch.zeros(5, 4)), r"space 'k' of size 2 \(block 1\) does not fit w dim 0"),
        (lambda s: s.update(v=torch.zeros(3, 5)), r"space 'q' of size 2 \(block 1\) does not fit v dim 1"),
        (
            lambda s: s.update(extra=torch.zeros(2)),
            r"floating tensors in no space and not declared invariant: \['extra'\]",
        ),
    ],
)
def test_check_names_what_does_not_fit(change, message):
    state = fused_state()
    change(state)
    with pytest.raises(ValueError, match=message):
        fused_spec().check(state)


@given(config=mlp_configs())
def test_mlp_spec_has_one_space_per_hidden_layer(config):
    model = build_mlp(config, 0)
    spec = lmc.spec_for(model)
    depth = len(config.widths)
    assert list(spec.spaces) == [f"fc{i}" for i in range(1, depth + 1)]
    assert spec.sizes() == {f"fc{i}": w for i, w in enumerate(config.widths, start=1)}
    assert spec.invariant == ((f"fc{depth + 1}.bias",) if config.bias else ())
    for name, space in spec.spaces.items():
        index = int(name[2:])
        assert [(a.param, a.dim) for a in space.reads] == [(f"fc{index + 1}.weight", 1)]
        assert [(a.param, a.dim) for a in space.writes][0] == (f"{name}.weight", 0)
        assert len(space.writes) == (2 if config.bias else 1)
        assert space.probe == (name if config.activation == "identity" else f"act{index}")
    # the reverse index is derived from the spaces: every axis found again under its parameter
    for space in spec.spaces.values():
        for axis in space.axes:
            assert any(name == space.name and found == axis for name, found, _ in spec.axes_of(axis.param))
