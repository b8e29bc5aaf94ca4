"""The closed-form solvers every matcher uses: assignment, orthogonal Procrustes, invertible least squares.

Each takes a score or cross matrix in float64 (on the CPU: the problems are size x size, small
next to the models) and returns an element of its symmetry class.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .symmetry import Invertible, Orthogonal, Permutation

__all__ = ["solve_assignment", "nearest_orthogonal", "fit_invertible"]


def _matrix(value: object, name: str, caller: str, *, square: bool = False) -> Tensor:
    """``value`` as a finite float64 CPU matrix; TypeError or ValueError naming ``name`` otherwise."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 2 or (square and value.shape[0] != value.shape[1]):
        kind = "a square matrix" if square else "a matrix"
        raise ValueError(f"{caller}: {name} must be {kind}, got shape {tuple(value.shape)}")
    value = value.detach().double().cpu()
    if not torch.isfinite(value).all():
        raise ValueError(f"{caller}: {name} has NaN or infinite entries")
    return value


def solve_assignment(score: Tensor) -> Permutation:
    """The permutation P maximising <P, score> = sum_i score[i, indices[i]] (Hungarian, scipy)."""
    score = _matrix(score, "the score matrix", "assignment", square=True).numpy()
    best = score.argmax(1)
    if np.unique(best).size == best.size:  # every row gets its maximum: nothing can beat that
        return Permutation(torch.as_tensor(best))
    rows, cols = linear_sum_assignment(score, maximize=True)
    return Permutation(torch.as_tensor(cols[np.argsort(rows)]))


def nearest_orthogonal(cross: Tensor) -> Orthogonal:
    """The orthogonal O maximising <O, C> (Procrustes: U V^T from the SVD C = U S V^T; on C's null
    space the completion closest to the identity). See :meth:`Orthogonal.nearest`."""
    return Orthogonal.nearest(_matrix(cross, "cross", "nearest_orthogonal"))


def fit_invertible(cross: Tensor, gram_write_b: Tensor, gram_read_a: Tensor, *, ridge: float = 1e-9,
                   max_condition: float | None = None) -> Invertible:
    """The T minimising ||T X_B - X_A||^2 + ||T^T Y_A - Y_B||^2 (least squares on both sides, each
    where it is linear in T: writers X map to T X, readers Y to T^-T Y).

    Setting the gradient to zero gives the Sylvester equation G_rA T + T G_wB = C, with
    C = X_A X_B^T + Y_A Y_B^T (``cross``), G_wB = X_B X_B^T and G_rA = Y_A Y_A^T: in the eigenbases
    G_rA = U diag(a) U^T, G_wB = V diag(b) V^T it is elementwise, T = U [(U^T C V) / (a_i + b_j)] V^T.
    Exact when B is A under an invertible map; ``ridge`` (relative to the mean eigenvalue) keeps
    flat directions solvable. ValueError when the fit is singular or its condition number exceeds
    ``max_condition`` (default :attr:`Invertible.max_condition`): the statistics do not pin T down.
    """
    named = {"cross": cross, "gram_write_b": gram_write_b, "gram_read_a": gram_read_a}
    cross, gram_write_b, gram_read_a = (_matrix(x, n, "invertible fit", square=True) for n, x in named.items())
    if not cross.shape == gram_write_b.shape == gram_read_a.shape:
        shapes = ", ".join(f"{n} {tuple(x.shape)}" for n, x in named.items())
        raise ValueError(f"invertible fit: cross and the Grams must have one shape, got {shapes}")
    shift = ridge * float(gram_write_b.trace() + gram_read_a.trace()) / cross.shape[0] + 1e-300
    a, u = torch.linalg.eigh(gram_read_a)
    b, v = torch.linalg.eigh(gram_write_b)
    inner = (u.T @ cross @ v) / (a.clamp_min(0)[:, None] + b.clamp_min(0)[None, :] + shift)
    matrix = u @ inner @ v.T
    limit = Invertible.max_condition if max_condition is None else max_condition
    condition = float(torch.linalg.cond(matrix)) if matrix.numel() else 1.0
    if not condition < limit:
        raise ValueError(f"invertible fit: the least-squares map has condition number {condition:.3g} "
                         f"(limit {limit:.3g}, what the model's dtype carries): the statistics do not determine a "
                         "well-conditioned map (rank-deficient or unrelated weights)")
    return Invertible(matrix, max_condition=limit)
