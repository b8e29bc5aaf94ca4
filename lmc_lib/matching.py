"""Find the transforms that align model B to model A, written once against the SymmetrySpec.

- :func:`weight_matching` (data-free, Git Re-Basin): coordinate descent over spaces; for each
  space, C = sum over the tensors touching it of W_A (W_B with the other spaces' transforms
  applied)^T, then the permutation maximising <P, C> (linear assignment) or the orthogonal map
  maximising <O, C> (Procrustes, U V^T).
- :func:`activation_matching`: streaming first and second moments of each space's activations in
  both models on data, then assignment on correlations (permutation), Procrustes on the
  cross-covariance (orthogonal) or least squares (invertible).

Both return an :class:`Alignment`; ``alignment.apply(b)`` is the aligned copy of B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from tqdm.auto import tqdm

from .barrier import check_same_architecture, evaluating
from .family import spec_for
from .spec import Space, SymmetrySpec, flatten_axis
from .symmetry import Invertible, Orthogonal, Permutation, Transform, identity
from .transform import apply_along, transform

__all__ = ["Alignment", "weight_matching", "activation_matching", "solve_assignment"]


@dataclass(frozen=True)
class Alignment:
    """Transforms (space name -> element) that map B into A's coordinates; ``history`` logs the objective."""

    transforms: Mapping[str, Transform]
    spec: SymmetrySpec = field(repr=False)
    history: tuple[float, ...] = ()

    def apply(self, model: nn.Module) -> nn.Module:
        """The aligned copy of ``model`` (a new model; the input is untouched)."""
        return transform(model, self.transforms, spec=self.spec)


def solve_assignment(score: Tensor) -> Permutation:
    """The permutation P maximising <P, score> = sum_i score[i, indices[i]] (Hungarian, scipy)."""
    score = score.detach().double().cpu().numpy()
    if not np.isfinite(score).all():
        raise ValueError("assignment: the score matrix has NaN or infinite entries")
    rows, cols = linear_sum_assignment(score, maximize=True)
    return Permutation(torch.as_tensor(cols[np.argsort(rows)]))


def _solve(kind: str, score: Tensor) -> Transform:
    """The element of ``kind`` maximising <T, score>."""
    return solve_assignment(score) if kind == "permutation" else Orthogonal.nearest(score)


Classes = Iterable[str] | Mapping[str, Iterable[str]]


def _matched_kind(space: Space, classes: Classes, supported: tuple[str, ...]) -> str | None:
    allowed = tuple(classes.get(space.group, ()) if isinstance(classes, Mapping) else classes)
    kind = space.most_general(c for c in allowed if c in supported)
    if kind is None and "semi_permutation" in allowed and "permutation" in space.classes:
        kind = "permutation"  # at equal widths a semi-permutation alignment is a permutation
    return kind


def _check_pair(a: nn.Module, b: nn.Module) -> SymmetrySpec:
    check_same_architecture(a, b)
    spec = spec_for(a)
    for name, tensor in {**a.state_dict(), **b.state_dict()}.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"matching: tensor {name!r} has NaN or infinite entries")
    return spec


def _others_applied(state: Mapping[str, Tensor], param: str, spec: SymmetrySpec, transforms: Mapping[str, Transform], skip: str) -> Tensor:
    """``state[param]`` with every space's current transform applied except ``skip``'s."""
    tensor = state[param]
    for name, axis, role in spec.axes_of(param):
        t = transforms.get(name)
        if name == skip or t is None:
            continue
        matrix = t if isinstance(t, Permutation) else (t.matrix if role == "write" else t.read_matrix.T)
        tensor = apply_along(tensor, axis, matrix)
    return tensor


def _circuit_factor(state, axes, spec, transforms, skip: str | None) -> Tensor:
    """(size, block, features): each coordinate's block rows, concatenated over ``axes``."""
    tensors = (state[a.param] if skip is None else _others_applied(state, a.param, spec, transforms, skip) for a in axes)
    return torch.cat([flatten_axis(t, a, keep_block=True) for t, a in zip(tensors, axes)], dim=-1)


def _is_static(param: str, space: str, spec: SymmetrySpec, transforms: Mapping[str, Transform]) -> bool:
    """True when no matched space but ``space`` touches ``param``: its score contribution never changes."""
    return all(other == space or other not in transforms for other, _, _ in spec.axes_of(param))


def _weight_score(space: Space, state_a, state_b, spec, transforms, cache: dict[str, Tensor]) -> Tensor:
    """C[i, j] = <A's coordinate i, B's coordinate j> (size x size), B's other spaces already aligned.

    Without circuits the rows of every writer and reader are compared. With circuits, coordinates
    are compared by their circuits, <L_A^i R_A^i^T, L_B^j R_B^j^T> = <L_A^i L_B^j^T, R_A^i R_B^j^T>,
    from block x block Gram products (the circuits themselves are never formed). Maximising
    sum_i C[i, pi(i)] minimises the summed squared circuit distances, whose norms are constant.
    Contributions of tensors that no other matched space touches are computed once (``cache``).
    """
    if space.circuits:
        score = 0.0
        for circuit in space.circuits:
            grams = [
                torch.einsum(
                    "irf,jsf->ijrs",
                    _circuit_factor(state_a, axes, spec, transforms, None),
                    _circuit_factor(state_b, axes, spec, transforms, space.name),
                )
                for axes in (circuit.left, circuit.right)
            ]
            score = score + (grams[0] * grams[1]).sum((2, 3))
        return score.double().cpu()
    static = [a for a in space.axes if _is_static(a.param, space.name, spec, transforms)]
    if space.name not in cache:
        cache[space.name] = sum(
            (flatten_axis(state_a[a.param], a) @ flatten_axis(state_b[a.param], a).T for a in static),
            torch.zeros(space.size, space.size, dtype=next(iter(state_a.values())).dtype, device=next(iter(state_a.values())).device),
        )
    score = cache[space.name].clone()
    for axis in space.axes:
        if axis not in static:
            b = _others_applied(state_b, axis.param, spec, transforms, skip=space.name)
            score += flatten_axis(state_a[axis.param], axis) @ flatten_axis(b, axis).T
    return score.double().cpu()


def _inner(t: Transform, score: Tensor) -> float:
    """<T, score> without forming a dense permutation matrix."""
    if isinstance(t, Permutation):
        return float(score[torch.arange(score.shape[0]), t.indices].sum())
    return float((t.matrix * score).sum())


def weight_matching(
    a: nn.Module,
    b: nn.Module,
    *,
    classes: Classes = ("permutation",),
    max_iter: int = 100,
    seed: int = 0,
    score_dtype: torch.dtype = torch.float64,
    tolerance: float = 1e-12,
    progress: bool = False,
) -> Alignment:
    """Align B to A from the weights alone: maximise sum_spaces <T, C_space> by coordinate descent.

    The first sweep visits the spaces in spec order (a family lists its best-anchored space first,
    e.g. the residual stream that the embeddings pin down; starting elsewhere can lock in wrong
    permutations), later sweeps in a seeded random order; each step re-solves one space given the others
    (assignment for permutations, Procrustes for orthogonal maps); it stops after a sweep in which
    no space improved. ``history`` holds the objective's gain over the identity alignment after
    each sweep (accepted steps only add to it, so it never decreases). ``classes`` is a collection
    of class names, or a mapping from space groups to them (e.g. an orthogonal residual only).
    A step counts as an improvement when it gains more than ``tolerance`` (relative). Scores are
    computed in ``score_dtype`` on the models' device (float32 halves the time of large models at the
    cost of stopping earlier on orthogonal spaces); the transforms are float64.
    """
    spec = _check_pair(a, b)
    classes = classes if isinstance(classes, Mapping) else tuple(classes)
    state_a = {k: v.detach().to(score_dtype) for k, v in a.state_dict().items() if v.is_floating_point()}
    state_b = {k: v.detach().to(score_dtype) for k, v in b.state_dict().items() if v.is_floating_point()}
    kinds = {n: k for n, s in spec.spaces.items() if (k := _matched_kind(s, classes, ("permutation", "orthogonal")))}
    transforms: dict[str, Transform] = {n: identity(k, spec.spaces[n].size) for n, k in kinds.items()}
    rng = np.random.default_rng(seed)
    names = list(kinds)
    history: list[float] = []
    cache: dict[str, Tensor] = {}
    gain = 0.0
    for sweep in tqdm(range(max_iter), disable=not progress, desc="weight matching"):
        improved = False
        for i in range(len(names)) if sweep == 0 else rng.permutation(len(names)):
            name = names[i]
            score = _weight_score(spec.spaces[name], state_a, state_b, spec, transforms, cache)
            old = _inner(transforms[name], score)
            candidate = _solve(kinds[name], score)
            new = _inner(candidate, score)
            if new > old + tolerance * max(1.0, abs(old)):
                transforms[name], improved = candidate, True
                gain += new - old  # <T, C_space> is the objective up to terms this space does not touch
        history.append(gain)
        if not improved:
            break
    return Alignment(transforms, spec, tuple(history))


class _Moments:
    """Streaming sums for one space: counts, means, variances and the A-B cross moment."""

    def __init__(self, n: int, need_bb: bool) -> None:
        self.count = 0
        self.sum_a = torch.zeros(n, dtype=torch.float64)
        self.sum_b = torch.zeros(n, dtype=torch.float64)
        self.sq_a = torch.zeros(n, dtype=torch.float64)
        self.sq_b = torch.zeros(n, dtype=torch.float64)
        self.ab = torch.zeros(n, n, dtype=torch.float64)
        self.bb = torch.zeros(n, n, dtype=torch.float64) if need_bb else None

    def update(self, x_a: Tensor, x_b: Tensor) -> None:
        x_a = x_a.detach().reshape(-1, x_a.shape[-1]).double().cpu()
        x_b = x_b.detach().reshape(-1, x_b.shape[-1]).double().cpu()
        self.count += x_a.shape[0]
        self.sum_a += x_a.sum(0)
        self.sum_b += x_b.sum(0)
        self.sq_a += (x_a * x_a).sum(0)
        self.sq_b += (x_b * x_b).sum(0)
        self.ab += x_a.T @ x_b
        if self.bb is not None:
            self.bb += x_b.T @ x_b

    def cross_covariance(self) -> Tensor:
        mean_a, mean_b = self.sum_a / self.count, self.sum_b / self.count
        return self.ab / self.count - torch.outer(mean_a, mean_b)

    def correlation(self) -> Tensor:
        var_a = (self.sq_a / self.count - (self.sum_a / self.count) ** 2).clamp_min(0)
        var_b = (self.sq_b / self.count - (self.sum_b / self.count) ** 2).clamp_min(0)
        return self.cross_covariance() / (torch.outer(var_a.sqrt(), var_b.sqrt()) + 1e-12)

    def regression(self, ridge: float = 1e-6) -> Tensor:
        """T minimising E||x_a - T x_b||^2 over centred activations: Cov_ab Cov_bb^-1."""
        mean_b = self.sum_b / self.count
        cov_bb = self.bb / self.count - torch.outer(mean_b, mean_b)
        cov_bb += ridge * cov_bb.diagonal().mean().clamp_min(1e-12) * torch.eye(cov_bb.shape[0], dtype=torch.float64)
        return torch.linalg.solve(cov_bb, self.cross_covariance().T).T


def activation_matching(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    classes: Classes = ("permutation",),
    max_batches: int | None = None,
    progress: bool = False,
) -> Alignment:
    """Align B to A by matching each space's activations on ``data`` (one pass, streaming moments).

    Permutation: assignment maximising the summed correlation of matched units; orthogonal:
    Procrustes on the cross-covariance; invertible: least squares x_a ~ T x_b.
    """
    spec = _check_pair(a, b)
    classes = classes if isinstance(classes, Mapping) else tuple(classes)
    kinds = {
        n: k
        for n, s in spec.spaces.items()
        if s.probe is not None and (k := _matched_kind(s, classes, ("permutation", "orthogonal", "invertible")))
    }
    moments = {n: _Moments(spec.spaces[n].size, kinds[n] == "invertible") for n in kinds}
    captured: dict[tuple[str, str], Tensor] = {}
    handles = []
    for tag, model in (("a", a), ("b", b)):
        for name in kinds:
            module = model.get_submodule(spec.spaces[name].probe)
            hook = lambda _m, _i, out, key=(tag, name): captured.__setitem__(key, out)  # noqa: E731
            handles.append(module.register_forward_hook(hook))
    device = next(a.parameters()).device
    try:
        with evaluating(a, b), torch.no_grad():
            for index, (x, _) in enumerate(tqdm(data, disable=not progress, desc="activation statistics")):
                if max_batches is not None and index >= max_batches:
                    break
                a(x.to(device)), b(x.to(device))
                for name, stats in moments.items():
                    stats.update(captured[("a", name)], captured[("b", name)])
    finally:
        for handle in handles:
            handle.remove()
    if any(stats.count == 0 for stats in moments.values()):
        raise ValueError("activation_matching: data yielded no batches")
    transforms: dict[str, Transform] = {}
    for name, kind in kinds.items():
        stats = moments[name]
        if kind == "permutation":
            transforms[name] = solve_assignment(stats.correlation())
        elif kind == "orthogonal":
            transforms[name] = Orthogonal.nearest(stats.cross_covariance())
        else:
            transforms[name] = Invertible(stats.regression())
    return Alignment(transforms, spec)
