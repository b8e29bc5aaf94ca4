"""The four symmetry classes: permutations, semi-permutations, orthogonal and invertible maps.

A transform T of a space with N coordinates acts on the parameters that *write* the space
(rows of the layer before it, and its bias) as W -> T W, and on the parameters that *read* it
(columns of the layer after it) as V -> V R, where R is the read-side inverse (R T = I_N).
The function is unchanged when the nonlinearity between writer and reader commutes with T.

Every transform is stored in float64; the write matrix T has shape (M, N) with M >= N
(M > N only for semi-permutations and rectangular orthogonal maps, which widen a space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "Transform",
    "Permutation",
    "SemiPermutation",
    "Orthogonal",
    "Invertible",
    "SYMMETRY_CLASSES",
    "CLASS_ORDER",
    "identity",
    "max_condition",
]

#: From the most specific to the most general class (the order ``random_transform`` and the
#: matchers use to pick "the most general class a space admits").
CLASS_ORDER: tuple[str, ...] = ("permutation", "semi_permutation", "orthogonal", "invertible")


def max_condition(dtype: torch.dtype) -> float:
    """The largest condition number of an invertible map that a model stored in ``dtype`` carries.

    Transforms are applied in float64 and cast back: rounding each tensor to ``dtype`` perturbs it
    by a relative eps(dtype), which T and T^-1 amplify by up to cond(T) in the function. We allow
    cond(T) * eps(dtype) <= 1e-3: about 8e3 for float32, 4.5e12 for float64, 8 for bfloat16.
    """
    return 1e-3 / torch.finfo(dtype).eps


def _as_float64(matrix: Tensor | list, name: str) -> Tensor:
    matrix = torch.as_tensor(matrix).detach().to(torch.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name}: matrix has NaN or infinite entries")
    return matrix


class Transform:
    """Base class: a write matrix T (M x N) and its read-side inverse R (N x M), R T = I_N."""

    kind: ClassVar[str]

    @property
    def matrix(self) -> Tensor:
        """Write-side matrix T, shape (M, N): writers W become T W."""
        raise NotImplementedError

    @property
    def read_matrix(self) -> Tensor:
        """Read-side matrix R, shape (N, M), with R T = I_N: readers V become V R."""
        raise NotImplementedError

    @property
    def size_in(self) -> int:
        return self.matrix.shape[1]

    @property
    def size_out(self) -> int:
        return self.matrix.shape[0]

    def compose(self, other: Transform) -> Transform:
        """Return self after other: write matrix T_self T_other, read matrix R_other R_self."""
        if other.size_out != self.size_in:
            raise ValueError(
                f"cannot compose {self.kind} of input size {self.size_in} "
                f"after {other.kind} of output size {other.size_out}"
            )
        kinds = {self.kind, other.kind}
        if kinds == {"permutation"}:
            return Permutation(other.indices[self.indices])
        if kinds <= {"permutation", "orthogonal"}:
            return Orthogonal(self.matrix @ other.matrix)
        if kinds <= {"permutation", "semi_permutation"}:
            return SemiPermutation((other.read_matrix @ self.read_matrix).T)
        if self.size_in == self.size_out == other.size_in == other.size_out:
            return Invertible(self.matrix @ other.matrix)
        raise ValueError(f"the composition of {self.kind} and {other.kind} is in no symmetry class")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "matrix": self.matrix}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size_out}x{self.size_in})"


@dataclass(frozen=True, repr=False)
class Permutation(Transform):
    """Permutation P with P[i, indices[i]] = 1: new coordinate i is old coordinate indices[i]."""

    indices: Tensor
    kind: ClassVar[str] = "permutation"

    def __post_init__(self) -> None:
        indices = torch.as_tensor(self.indices).detach()
        if indices.ndim != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(
                f"Permutation: expected a 1-D integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        indices = indices.to(torch.long).cpu()
        n = indices.numel()
        counts = torch.bincount(indices.clamp(0, max(n - 1, 0)), minlength=n) if n else indices
        if n and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(
                f"Permutation: indices must lie in [0, {n}), got range [{int(indices.min())}, {int(indices.max())}]"
            )
        if n and (counts != 1).any():
            repeated = int(torch.nonzero(counts > 1)[0])
            raise ValueError(
                f"Permutation: index {repeated} repeats ({int(counts[repeated])} times); not a permutation"
            )
        object.__setattr__(self, "indices", indices)

    @property
    def matrix(self) -> Tensor:
        n = self.indices.numel()
        matrix = torch.zeros(n, n, dtype=torch.float64)
        matrix[torch.arange(n), self.indices] = 1.0
        return matrix

    @property
    def read_matrix(self) -> Tensor:
        return self.matrix.T

    def inverse(self) -> Permutation:
        return Permutation(torch.argsort(self.indices))

    @classmethod
    def identity(cls, n: int) -> Permutation:
        return cls(torch.arange(n))

    @classmethod
    def random(cls, n: int, generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of n coordinates."""
        return cls(torch.randperm(n, generator=generator))


@dataclass(frozen=True, repr=False)
class SemiPermutation(Transform):
    """Semi-permutation P (M x N, M >= N): columns are stochastic, each row has one positive entry.

    Copy i of the widened space comes from source unit j with P[i, j] > 0. Writers are copied,
    W' = S W with S = [P > 0], and readers are weighted, V' = V P^T; since P^T S = I the copies
    sum back to the original unit through any elementwise nonlinearity.
    """

    weights: Tensor
    kind: ClassVar[str] = "semi_permutation"
    atol: float = field(default=1e-6, compare=False)

    def __post_init__(self) -> None:
        weights = _as_float64(self.weights, "SemiPermutation")
        m, n = weights.shape
        if m < n:
            raise ValueError(f"SemiPermutation: needs M >= N rows, got a {m}x{n} matrix")
        if (weights < -self.atol).any():
            raise ValueError("SemiPermutation: entries must be non-negative")
        column_sums = weights.sum(0)
        bad = torch.nonzero((column_sums - 1).abs() > self.atol).flatten()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(
                f"SemiPermutation: column {j} sums to {float(column_sums[j]):.6g}, not 1 (columns must be stochastic)"
            )
        positive = (weights > self.atol).sum(1)
        bad = torch.nonzero(positive != 1).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"SemiPermutation: row {i} has {int(positive[i])} positive entries; each row needs exactly one"
            )
        object.__setattr__(self, "weights", weights.clamp_min(0) * (weights > self.atol))

    @property
    def source(self) -> Tensor:
        """(M,) long: the source unit of each copy."""
        return self.weights.argmax(1)

    @property
    def matrix(self) -> Tensor:
        return (self.weights > 0).to(torch.float64)

    @property
    def read_matrix(self) -> Tensor:
        return self.weights.T

    @classmethod
    def from_source(cls, source: Tensor, weights: Tensor, n: int) -> SemiPermutation:
        """Build from each copy's source unit (M,) and weight (M,); weights of a unit's copies sum to 1."""
        source = torch.as_tensor(source, dtype=torch.long)
        matrix = torch.zeros(source.numel(), n, dtype=torch.float64)
        matrix[torch.arange(source.numel()), source] = torch.as_tensor(weights, dtype=torch.float64)
        return cls(matrix)

    @classmethod
    def random(cls, n: int, m: int | None = None, generator: torch.Generator | None = None) -> SemiPermutation:
        """Split n units into m >= n copies: every unit gets a copy, the extra m - n go to random units,
        in a random order, with random positive weights that sum to 1 per unit."""
        m = n if m is None else m
        if m < n:
            raise ValueError(f"SemiPermutation.random: m={m} must be >= n={n}")
        extra = torch.randint(0, n, (m - n,), generator=generator) if m > n else torch.empty(0, dtype=torch.long)
        source = torch.cat([torch.arange(n), extra])[torch.randperm(m, generator=generator)]
        raw = torch.rand(m, generator=generator, dtype=torch.float64) + 0.5
        totals = torch.zeros(n, dtype=torch.float64).index_add_(0, source, raw)
        return cls.from_source(source, raw / totals[source], n)


@dataclass(frozen=True, repr=False)
class Orthogonal(Transform):
    """Orthogonal O (M x N, M >= N) with O^T O = I_N; rectangular O lifts a space to width M exactly."""

    orthogonal: Tensor
    kind: ClassVar[str] = "orthogonal"
    atol: float = field(default=1e-6, compare=False)

    def __post_init__(self) -> None:
        matrix = _as_float64(self.orthogonal, "Orthogonal")
        m, n = matrix.shape
        if m < n:
            raise ValueError(f"Orthogonal: needs M >= N rows (orthonormal columns), got a {m}x{n} matrix")
        error = float((matrix.T @ matrix - torch.eye(n, dtype=torch.float64)).abs().max()) if n else 0.0
        if error > self.atol:
            raise ValueError(f"Orthogonal: matrix is not orthogonal, max |O^T O - I| = {error:.3g} > {self.atol:g}")
        if error > 1e-13:  # within tolerance (a float32 matrix): its polar factor, so that O^T inverts O exactly
            u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
            matrix = u @ vh
        object.__setattr__(self, "orthogonal", matrix)

    @property
    def matrix(self) -> Tensor:
        return self.orthogonal

    @property
    def read_matrix(self) -> Tensor:
        return self.orthogonal.T

    @classmethod
    def identity(cls, n: int) -> Orthogonal:
        return cls(torch.eye(n, dtype=torch.float64))

    @classmethod
    def random(cls, n: int, m: int | None = None, generator: torch.Generator | None = None) -> Orthogonal:
        """A Haar-random M x N matrix with orthonormal columns (QR of a Gaussian, signs fixed)."""
        m = n if m is None else m
        if m < n:
            raise ValueError(f"Orthogonal.random: m={m} must be >= n={n}")
        gaussian = torch.randn(m, n, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        return cls(q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(())))

    @classmethod
    def nearest(cls, matrix: Tensor, *, rtol: float = 1e-9) -> Orthogonal:
        """The orthogonal O maximising <O, C>: U V^T from the SVD C = U S V^T (Procrustes).

        Where C is singular (singular values <= rtol * the largest), every completion on its null
        space maximises <O, C>; the one closest to the identity is taken, so the answer does not
        depend on the SVD's choice of null vectors (a centred residual stream has one: the mean).
        """
        c = torch.as_tensor(matrix, dtype=torch.float64)
        u, s, vh = torch.linalg.svd(c, full_matrices=False)
        rank = int((s > rtol * s.max()).sum()) if s.numel() else 0
        if rank == s.numel():
            return cls(u @ vh)
        u_r, v_r, v_0 = u[:, :rank], vh[:rank].T, vh[rank:].T
        eye = torch.eye(*c.shape, dtype=torch.float64, device=c.device)
        free = eye @ v_0 - u_r @ (u_r.T @ (eye @ v_0))  # the identity's image of the null space, off U_r's range
        a, _, bh = torch.linalg.svd(free, full_matrices=False)
        return cls(u_r @ v_r.T + a @ bh @ v_0.T)


@dataclass(frozen=True, repr=False)
class Invertible(Transform):
    """Any full-rank square matrix A: writers become A W, readers V A^-1."""

    invertible: Tensor
    kind: ClassVar[str] = "invertible"
    max_condition: float = field(default=1e12, compare=False)

    def __post_init__(self) -> None:
        matrix = _as_float64(self.invertible, "Invertible")
        m, n = matrix.shape
        if m != n:
            raise ValueError(f"Invertible: needs a square matrix, got {m}x{n}")
        condition = float(torch.linalg.cond(matrix)) if n else 1.0
        if not condition < self.max_condition:
            raise ValueError(f"Invertible: matrix is singular or nearly so (condition number {condition:.3g})")
        object.__setattr__(self, "invertible", matrix)

    @property
    def matrix(self) -> Tensor:
        return self.invertible

    @property
    def read_matrix(self) -> Tensor:
        return torch.linalg.inv(self.invertible)

    @classmethod
    def random(cls, n: int, generator: torch.Generator | None = None, spread: float = 1.0) -> Invertible:
        """Q1 diag(exp(u)) Q2 with Haar Q1, Q2 and u ~ U(-spread, spread): condition number <= e^(2 spread)."""
        q1 = Orthogonal.random(n, generator=generator).matrix
        q2 = Orthogonal.random(n, generator=generator).matrix
        scales = torch.exp((2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * spread)
        return cls(q1 @ torch.diag(scales) @ q2)


SYMMETRY_CLASSES: dict[str, type[Transform]] = {
    "permutation": Permutation,
    "semi_permutation": SemiPermutation,
    "orthogonal": Orthogonal,
    "invertible": Invertible,
}


def identity(kind: str, n: int) -> Transform:
    """The identity element of class ``kind`` on n coordinates."""
    if kind in ("permutation", "semi_permutation"):
        return Permutation.identity(n) if kind == "permutation" else SemiPermutation(torch.eye(n))
    if kind == "orthogonal":
        return Orthogonal.identity(n)
    if kind == "invertible":
        return Invertible(torch.eye(n, dtype=torch.float64))
    raise ValueError(f"unknown symmetry class {kind!r}; expected one of {CLASS_ORDER}")
