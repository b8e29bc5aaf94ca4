"""Weight matching of spaces that declare circuits (attention heads: QK and OV products)."""

import torch

from lmc_lib.matching import _WeightState, solve_assignment
from lmc_lib.spec import Axis, Circuit, Space, SymmetrySpec
from lmc_lib.symmetry import Invertible, Permutation
from lmc_lib.transform import transform_state

H, D_HEAD, D = 5, 3, 7


def _heads_spec() -> SymmetrySpec:
    """H heads of D_HEAD rows in q, k, v (with biases) and columns of o: QK and OV circuits per head."""
    rows = lambda p: Axis(p, 0, block=D_HEAD)  # noqa: E731
    heads = Space(
        "heads", H, ("permutation",),
        writes=(rows("q.weight"), rows("q.bias"), rows("k.weight"), rows("k.bias"), rows("v.weight")),
        reads=(Axis("o.weight", 1, block=D_HEAD),),
        circuits=(
            Circuit((rows("q.weight"), rows("q.bias")), (rows("k.weight"), rows("k.bias"))),
            Circuit((Axis("o.weight", 1, block=D_HEAD),), (rows("v.weight"),)),
        ),
    )
    inner = [
        Space(f"qk{h}", D_HEAD, ("invertible",),
              writes=(Axis("q.weight", 0, h * D_HEAD, D_HEAD), Axis("q.bias", 0, h * D_HEAD, D_HEAD)),
              reads=(Axis("k.weight", 0, h * D_HEAD, D_HEAD), Axis("k.bias", 0, h * D_HEAD, D_HEAD)))
        for h in range(H)
    ] + [
        Space(f"ov{h}", D_HEAD, ("invertible",),
              writes=(Axis("v.weight", 0, h * D_HEAD, D_HEAD),), reads=(Axis("o.weight", 1, h * D_HEAD, D_HEAD),))
        for h in range(H)
    ]
    return SymmetrySpec("toy-attention", {s.name: s for s in [heads, *inner]})


def _state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "q.weight": torch.randn(H * D_HEAD, D, generator=generator, dtype=torch.float64),
        "q.bias": torch.randn(H * D_HEAD, generator=generator, dtype=torch.float64),
        "k.weight": torch.randn(H * D_HEAD, D, generator=generator, dtype=torch.float64),
        "k.bias": torch.randn(H * D_HEAD, generator=generator, dtype=torch.float64),
        "v.weight": torch.randn(H * D_HEAD, D, generator=generator, dtype=torch.float64),
        "o.weight": torch.randn(D, H * D_HEAD, generator=generator, dtype=torch.float64),
    }


def _score(spec: SymmetrySpec, state_a: dict, state_b: dict) -> torch.Tensor:
    """Weight matching's score of the heads space, no other space matched."""
    return _WeightState(spec, {"heads": "permutation"}, state_a, state_b, torch.float64).statistics("heads").cross


def _circuits(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised (H, D+1, D+1) QK circuits and (H, D, D) OV circuits."""
    q = torch.cat([state["q.weight"], state["q.bias"][:, None]], 1).view(H, D_HEAD, D + 1)
    k = torch.cat([state["k.weight"], state["k.bias"][:, None]], 1).view(H, D_HEAD, D + 1)
    v = state["v.weight"].view(H, D_HEAD, D)
    o = state["o.weight"].view(D, H, D_HEAD).permute(1, 0, 2)
    return q.transpose(1, 2) @ k, o @ v


def test_circuit_score_equals_inner_products_of_materialised_circuits(generator):
    spec = _heads_spec()
    state_a, state_b = _state(generator), _state(generator)
    score = _score(spec, state_a, state_b)
    (qk_a, ov_a), (qk_b, ov_b) = _circuits(state_a), _circuits(state_b)
    expected = torch.einsum("ixy,jxy->ij", qk_a, qk_b) + torch.einsum("ixy,jxy->ij", ov_a, ov_b)
    torch.testing.assert_close(score, expected)


def test_head_permutation_recovered_through_invertible_scrambling(generator):
    """B = A with heads permuted and every head's QK/OV factors mixed by random invertible maps:
    raw rows no longer match, circuits still do."""
    spec = _heads_spec()
    state_a = _state(generator)
    planted = Permutation.random(H, generator)
    scramble = {f"{kind}{h}": Invertible.random(D_HEAD, generator) for kind in ("qk", "ov") for h in range(H)}
    state_b = transform_state(transform_state(state_a, spec, {"heads": planted}), spec, scramble)
    found = solve_assignment(_score(spec, state_a, state_b))
    assert torch.equal(found.indices, planted.inverse().indices)
    aligned = transform_state(state_b, spec, {"heads": found})
    for circuit_a, circuit_b in zip(_circuits(state_a), _circuits(aligned)):
        torch.testing.assert_close(circuit_b, circuit_a)
