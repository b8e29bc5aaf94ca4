"""The four symmetry classes: validation, dense matrices, read-side inverses, random elements, composition."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lmc_lib as lmc
from lmc_lib.symmetry import CLASS_ORDER, identity

EYE = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731


def random_element(kind: str, n: int, m: int, seed: int) -> lmc.Transform:
    """A random element of ``kind`` acting on n coordinates (m outputs where the class allows m > n)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "permutation":
        return lmc.Permutation.random(n, generator)
    if kind == "semi_permutation":
        return lmc.SemiPermutation.random(n, m, generator)
    if kind == "orthogonal":
        return lmc.Orthogonal.random(n, m, generator)
    return lmc.Invertible.random(n, generator)


# -- validation on construction ------------------------------------------------------------------


@pytest.mark.parametrize(
    "indices, message",
    [
        ([0, 0, 2], r"index 0 repeats \(2 times\)"),
        ([2, 1, 1], r"index 1 repeats"),
        ([0, 1, 3], r"indices must lie in \[0, 3\)"),
        ([-1, 0, 1], r"indices must lie in \[0, 3\)"),
        ([0.0, 1.0], r"integer"),
        ([[0, 1], [1, 0]], r"1-D integer"),
    ],
)
def test_permutation_refuses_non_permutations(indices, message):
    with pytest.raises(ValueError, match=message):
        lmc.Permutation(torch.tensor(indices))


@pytest.mark.parametrize(
    "cls, matrix, message",
    [
        (lmc.SemiPermutation, [[0.5, 0.0], [0.0, 1.0]], r"column 0 sums to 0.5, not 1"),
        (lmc.SemiPermutation, [[1.0, 0.0], [0.0, 1.0], [0.0, 0.5]], r"column 1 sums to 1.5"),
        (lmc.SemiPermutation, [[0.5, 0.5], [0.5, 0.5]], r"row 0 has 2 positive entries"),
        (lmc.SemiPermutation, [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], r"row 2 has 0 positive entries"),
        (lmc.SemiPermutation, [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], r"needs M >= N rows, got a 2x3"),
        (lmc.SemiPermutation, [[1.5, 0.0], [-0.5, 1.0]], r"non-negative"),
        (lmc.SemiPermutation, [[float("nan"), 0.0], [0.0, 1.0]], r"NaN"),
        (lmc.SemiPermutation, [1.0, 1.0], r"2-D matrix"),
        (lmc.Orthogonal, [[1.0, 0.1], [0.0, 1.0]], r"not orthogonal, max \|O\^T O - I\|"),
        (lmc.Orthogonal, [[2.0, 0.0], [0.0, 1.0]], r"not orthogonal"),
        (lmc.Orthogonal, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], r"needs M >= N rows"),
        (lmc.Orthogonal, [[float("nan"), 0.0], [0.0, 1.0]], r"NaN"),
        (lmc.Orthogonal, [[float("inf"), 0.0], [0.0, 1.0]], r"infinite"),
        (lmc.Invertible, [[1.0, 2.0], [2.0, 4.0]], r"singular"),
        (lmc.Invertible, [[0.0, 0.0], [0.0, 0.0]], r"singular"),
        (lmc.Invertible, [[1.0, 0.0], [0.0, 1e-14]], r"singular or nearly so"),
        (lmc.Invertible, [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], r"square matrix, got 3x2"),
        (lmc.Invertible, [[1.0, float("nan")], [0.0, 1.0]], r"NaN"),
    ],
)
def test_matrix_classes_refuse_invalid_matrices(cls, matrix, message):
    with pytest.raises(ValueError, match=f"{cls.__name__}: .*{message}"):
        cls(torch.tensor(matrix))


def test_orthogonal_tolerance_is_an_option():
    nearly = torch.tensor([[1.0, 1e-3], [0.0, 1.0]])
    with pytest.raises(ValueError, match="not orthogonal"):
        lmc.Orthogonal(nearly)
    assert lmc.Orthogonal(nearly, atol=1e-2).matrix.dtype == torch.float64


# -- dense matrices and read-side inverses -------------------------------------------------------


def test_permutation_matrix_moves_coordinate_indices_i_to_i():
    p = lmc.Permutation(torch.tensor([2, 0, 1]))
    expected = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    assert torch.equal(p.matrix, expected)
    x = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    assert torch.equal(p.matrix @ x, x[p.indices])
    assert p.kind == "permutation" and p.size_in == p.size_out == 3


def test_semi_permutation_copies_on_write_and_weights_on_read():
    weights = torch.tensor([[0.25, 0.0], [0.0, 1.0], [0.75, 0.0]])
    s = lmc.SemiPermutation(weights)
    assert torch.equal(s.matrix, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert torch.equal(s.read_matrix, weights.T.double())
    assert torch.equal(s.source, torch.tensor([0, 1, 0]))
    assert (s.size_out, s.size_in) == (3, 2)
    rebuilt = lmc.SemiPermutation.from_source(s.source, weights.max(1).values, 2)
    assert torch.equal(rebuilt.weights, s.weights)


@given(
    kind=st.sampled_from(CLASS_ORDER),
    n=st.integers(1, 12),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_elements_are_valid_members_with_a_read_side_inverse(kind, n, extra, seed):
    element = random_element(kind, n, n + extra, seed)
    matrix, m = element.matrix, element.size_out
    assert matrix.shape == (m, n) and element.read_matrix.shape == (n, m)
    assert matrix.dtype == element.read_matrix.dtype == torch.float64
    torch.testing.assert_close(element.read_matrix @ matrix, EYE(n), rtol=0, atol=1e-10)
    if kind == "permutation":
        assert sorted(element.indices.tolist()) == list(range(n))
        assert ((matrix == 0) | (matrix == 1)).all() and (matrix.sum(0) == 1).all() and (matrix.sum(1) == 1).all()
    elif kind == "semi_permutation":
        assert m == n + extra and (matrix.sum(0) >= 1).all(), "every unit keeps at least one copy"
        lmc.SemiPermutation(element.weights)  # re-validates: stochastic columns, one positive entry per row
    elif kind == "orthogonal":
        assert m == n + extra
        lmc.Orthogonal(matrix, atol=1e-10)
    else:
        assert float(torch.linalg.cond(matrix)) <= math.exp(2) + 1e-6
    again = random_element(kind, n, n + extra, seed)
    assert torch.equal(again.matrix, matrix), "the same seed gives the same element"


@pytest.mark.parametrize("kind", CLASS_ORDER)
def test_identity_elements(kind):
    element = identity(kind, 4)
    assert element.kind == kind
    assert torch.equal(element.matrix, EYE(4)) and torch.equal(element.read_matrix, EYE(4))


def test_identity_refuses_unknown_class():
    with pytest.raises(ValueError, match="unknown symmetry class 'rotation'"):
        identity("rotation", 3)


def test_random_refuses_narrowing():
    with pytest.raises(ValueError, match="m=2 must be >= n=3"):
        lmc.SemiPermutation.random(3, 2)
    with pytest.raises(ValueError, match="m=2 must be >= n=3"):
        lmc.Orthogonal.random(3, 2)


@given(n=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_nearest_orthogonal_maximises_the_inner_product(n, seed):
    generator = torch.Generator().manual_seed(seed)
    score = torch.randn(n, n, generator=generator, dtype=torch.float64)
    best = float((lmc.Orthogonal.nearest(score).matrix * score).sum())
    for _ in range(10):
        other = lmc.Orthogonal.random(n, generator=generator).matrix
        assert float((other * score).sum()) <= best + 1e-9
    rotation = lmc.Orthogonal.random(n, generator=generator)
    torch.testing.assert_close(lmc.Orthogonal.nearest(rotation.matrix).matrix, rotation.matrix)


@given(n=st.integers(2, 12), null=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_nearest_orthogonal_is_closest_to_the_identity_on_the_null_space(n, null, seed):
    """C = X Y^T with rows of X and Y orthogonal to the same ``null`` directions N (as centring makes
    the mean direction): every maximiser agrees off N, and the one returned maps N to itself, so it
    commutes with any rotation Q of the space (Q C Q^T -> Q O Q^T) whatever null vectors the SVD picks."""
    null = min(null, n - 1)
    generator = torch.Generator().manual_seed(seed)
    basis = lmc.Orthogonal.random(n, generator=generator).matrix
    keep = basis[:, null:]  # the complement of N = basis[:, :null]
    x = keep @ torch.randn(n - null, 7, generator=generator, dtype=torch.float64)
    y = keep @ torch.randn(n - null, 7, generator=generator, dtype=torch.float64)
    c = x @ y.T
    o = lmc.Orthogonal.nearest(c).matrix
    assert float((o * c).sum()) == pytest.approx(float(torch.linalg.matrix_norm(c, "nuc")), rel=1e-9)
    torch.testing.assert_close(o @ basis[:, :null], basis[:, :null], rtol=1e-8, atol=1e-8)
    q = lmc.Orthogonal.random(n, generator=generator).matrix
    torch.testing.assert_close(lmc.Orthogonal.nearest(q @ c @ q.T).matrix, q @ o @ q.T, rtol=1e-8, atol=1e-8)


# -- composition ---------------------------------------------------------------------------------


@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_permutation_after_permutation_is_the_matrix_product(n, seed):
    generator = torch.Generator().manual_seed(seed)
    p, q = lmc.Permutation.random(n, generator), lmc.Permutation.random(n, generator)
    composed = p.compose(q)
    assert isinstance(composed, lmc.Permutation)
    assert torch.equal(composed.matrix, p.matrix @ q.matrix)
    assert torch.equal(p.compose(p.inverse()).indices, torch.arange(n))


# (self kind, other kind, self widens to, class of the result): self acts after other.
COMPOSITIONS = [
    ("permutation", "orthogonal", 0, lmc.Orthogonal),
    ("orthogonal", "permutation", 0, lmc.Orthogonal),
    ("orthogonal", "orthogonal", 3, lmc.Orthogonal),
    ("permutation", "semi_permutation", 0, lmc.SemiPermutation),
    ("semi_permutation", "permutation", 2, lmc.SemiPermutation),
    ("semi_permutation", "semi_permutation", 2, lmc.SemiPermutation),
    ("orthogonal", "invertible", 0, lmc.Invertible),
    ("invertible", "permutation", 0, lmc.Invertible),
    ("invertible", "invertible", 0, lmc.Invertible),
]


@pytest.mark.parametrize("self_kind, other_kind, widen, expected", COMPOSITIONS)
def test_mixed_composition_gives_the_right_class(self_kind, other_kind, widen, expected):
    n = 5
    other = random_element(other_kind, n, n + 2, seed=1)
    first = random_element(self_kind, other.size_out, other.size_out + widen, seed=2)
    composed = first.compose(other)
    assert isinstance(composed, expected)
    torch.testing.assert_close(composed.matrix, first.matrix @ other.matrix, rtol=0, atol=1e-12)
    torch.testing.assert_close(composed.read_matrix, other.read_matrix @ first.read_matrix, rtol=1e-9, atol=1e-12)


def test_composition_refuses_mismatched_sizes():
    with pytest.raises(
        ValueError, match="cannot compose permutation of input size 3 after permutation of output size 4"
    ):
        lmc.Permutation.random(3).compose(lmc.Permutation.random(4))
    with pytest.raises(
        ValueError, match="cannot compose orthogonal of input size 5 after semi_permutation of output size 6"
    ):
        lmc.Orthogonal.random(5).compose(lmc.SemiPermutation.random(5, 6))


@pytest.mark.parametrize(
    "first, second",
    [
        (lmc.Invertible.random(6), lmc.SemiPermutation.random(4, 6)),
        (lmc.SemiPermutation.random(4, 6), lmc.Orthogonal.random(4)),
        (lmc.Orthogonal.random(4, 6), lmc.SemiPermutation.random(4)),
    ],
)
def test_composition_outside_every_class_is_refused(first, second):
    with pytest.raises(ValueError, match="is in no symmetry class"):
        first.compose(second)


def test_composition_is_associative_on_permutations():
    generator = torch.Generator().manual_seed(3)
    p, q, r = (lmc.Permutation.random(6, generator) for _ in range(3))
    assert torch.equal(p.compose(q).compose(r).indices, p.compose(q.compose(r)).indices)


def test_symmetry_classes_are_frozen():
    p = lmc.Permutation.random(3)
    with pytest.raises(AttributeError):
        p.indices = torch.arange(3)


def test_class_order_from_specific_to_general():
    assert CLASS_ORDER == ("permutation", "semi_permutation", "orthogonal", "invertible")
