"""Find the transforms that align model B to model A from their weights, written once against the SymmetrySpec.

:func:`weight_matching` (data-free; Git Re-Basin, and the paper's weight matching for Transformers)
runs coordinate ascent over spaces: for each space, C = sum over the tensors touching it of
W_A (W_B with the other spaces' transforms applied)^T, then the permutation maximising <P, C>
(linear assignment), the orthogonal map maximising <O, C> (Procrustes, U V^T) or the invertible
map fitting both sides by least squares; spaces that declare circuits (attention heads) compare
their QK and OV products instead. A step is kept only when it raises one objective for the whole
alignment, so the ascent converges. It returns an :class:`~lmc_lib.alignment.Alignment`;
``alignment.apply(b)`` is the aligned copy of B.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import NamedTuple

import warnings

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .alignment import Alignment, Classes, architecture, matched_pair, resolve_classes
from .solvers import fit_invertible, nearest_orthogonal, solve_assignment
from .spec import Axis, Space, SymmetrySpec, flatten_axis
from .symmetry import Permutation, Transform, identity, max_condition
from .transform import apply_along, float64_device

__all__ = ["weight_matching"]

#: the sweep limit when neither the caller nor the spec sets one
MAX_SWEEPS = 100


# -- weight matching ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Statistics:
    """One space's sums over its tensors, size x size, in the frame of B' (B with every current
    transform applied, where the current alignment of the space is the identity): ``cross`` is
    sum X_A X_B'^T over writers and readers; invertible solves keep the readers' apart in
    ``cross_read`` and add the Grams X_B' X_B'^T of the writers, X_A X_A^T and X_B' X_B'^T of the readers,
    and ||X_A||^2 of the writers (to tell when the writers alone determine T)."""

    cross: Tensor
    cross_read: Tensor | None = None
    gram_write_b: Tensor | None = None
    gram_read_a: Tensor | None = None
    gram_read_b: Tensor | None = None
    write_norm_a: Tensor | None = None

    def __add__(self, other: _Statistics) -> _Statistics:
        summed = (None if x is None else x + getattr(other, f.name) for f, x in zip(fields(self), vars(self).values()))
        return _Statistics(*summed)

    def double(self) -> _Statistics:
        return _Statistics(*(None if x is None else x.double().cpu() for x in vars(self).values()))

    def moved(self, t: Transform) -> _Statistics:
        """The sums after B moves by T: writers X -> T X, readers Y -> T^-T Y."""
        if t.kind != "invertible":  # T^-T = T
            cross = self.cross[:, t.indices] if isinstance(t, Permutation) else self.cross @ t.matrix.T
            return _Statistics(cross)
        matrix, read = t.matrix, t.read_matrix  # T, T^-1
        return _Statistics(self.cross @ matrix.T, self.cross_read @ read, matrix @ self.gram_write_b @ matrix.T,
                           self.gram_read_a, read.T @ self.gram_read_b @ read, self.write_norm_a)


def _total(*parts: _Statistics | None) -> _Statistics | None:
    """The sum of the parts that exist (None when none does)."""
    present = [p for p in parts if p is not None]
    return sum(present[1:], present[0]) if present else None


def _objective(t: Transform, stats: _Statistics) -> float:
    """sum over the space's tensors of <X_A, M X_B'> - |M X_B'|^2 / 2 (M = T on writers, T^-T on readers):
    minus half the squared distance to A, up to terms T does not change. The norm term is constant
    for orthogonal T, so there it is the inner product <T, C> (computed without a dense permutation)."""
    if isinstance(t, Permutation):
        return float(stats.cross[torch.arange(stats.cross.shape[0]), t.indices].sum())
    if t.kind != "invertible":
        return float((t.matrix * stats.cross).sum())
    matrix, read = t.matrix, t.read_matrix.T
    return float(
        (matrix * stats.cross).sum() - 0.5 * (matrix @ stats.gram_write_b * matrix).sum()
        + (read * stats.cross_read).sum() - 0.5 * (read @ stats.gram_read_b * read).sum()
    )


def _writers_explained(t: Transform, stats: _Statistics) -> bool:
    """True when T X_B' = X_A on the writers, to 1e-6 relative: ||X_A||^2 - 2 <T, C_w> + <T G_wB, T>."""
    total = float(stats.write_norm_a)
    fitted = float((t.matrix @ stats.gram_write_b * t.matrix).sum())
    residual = total - 2 * float((t.matrix * stats.cross).sum()) + fitted
    return total > 0 and residual <= 1e-6 * total


class _Solution(NamedTuple):
    """A space's best step (or why there is none), whether the writers prove it, and why they do not
    determine an invertible map (None when they do, or for other classes)."""

    step: Transform | ValueError
    proven: bool = False
    undetermined: ValueError | None = None


def _solve(kind: str, stats: _Statistics, limit: float) -> _Solution:
    """The element of ``kind`` maximising the space's objective (exactly, except for invertible maps,
    whose condition number must stay below ``limit``, what the model's dtype carries), and whether it
    is proven (B's writers are A's under it).

    An invertible map has no closed form under both sides' terms (readers move by T^-T). When the
    writers alone determine T exactly (B is A under T there, whatever the readers, which the next
    space may not have aligned yet) that fit is proven and taken; else of the least-squares fits of
    both sides and of the writers the one with the larger objective. When no fit is within
    ``limit`` the error saying so is returned (no step).
    """
    if kind == "permutation":
        return _Solution(solve_assignment(stats.cross))
    if kind == "orthogonal":
        return _Solution(nearest_orthogonal(stats.cross))
    no_readers = torch.zeros_like(stats.gram_read_a)
    try:
        writers = fit_invertible(stats.cross, stats.gram_write_b, no_readers, max_condition=limit)
    except ValueError as error:
        writers, undetermined = None, error
    else:
        undetermined = None
        if _writers_explained(writers, stats):
            return _Solution(writers, proven=True)
    try:
        both = fit_invertible(stats.cross + stats.cross_read, stats.gram_write_b, stats.gram_read_a,
                              max_condition=limit)
    except ValueError as error:
        both = error if writers is None else None
    fits = [t for t in (writers, both) if isinstance(t, Transform)]
    if not fits:
        return _Solution(both, undetermined=undetermined)
    return _Solution(max(fits, key=lambda t: _objective(t, stats)), undetermined=undetermined)


def _applied(tensor: Tensor, param: str, spec: SymmetrySpec, transforms: Mapping[str, Transform]) -> Tensor:
    """``tensor`` (the model's ``param``) with every space's transform in ``transforms`` applied, in spec order."""
    for name, axis, role in spec.axes_of(param):
        t = transforms.get(name)
        if t is not None:
            matrix = t if isinstance(t, Permutation) else t.matrix if role == "write" else t.read_matrix.T
            tensor = apply_along(tensor, axis, matrix)
    return tensor


def _product_sum(pairs: list[tuple[Tensor, Tensor]], left: int, right: int, *, size: int = 0) -> Tensor:
    """sum over ``pairs`` of pair[left] @ pair[right]^T, accumulated in place (one pass over the
    output per product); a size x size zero when there are no pairs."""
    if not pairs:
        return torch.zeros(size, size, dtype=torch.float64)
    total = pairs[0][left] @ pairs[0][right].T
    for pair in pairs[1:]:
        total.addmm_(pair[left], pair[right].T)
    return total


def _is_identity(t: Transform) -> bool:
    if isinstance(t, Permutation):
        return bool(torch.equal(t.indices, torch.arange(len(t.indices), device=t.indices.device)))
    return bool(torch.equal(t.matrix, torch.eye(t.size_in, dtype=t.matrix.dtype)))


class _WeightState:
    """A's tensors and B' = transform_state(B, transforms) for every tensor a matched space reads.

    The invariant: every statistic is read in B' 's frame. A tensor that one matched space alone
    reads, and that has at least as many features per coordinate as the space has coordinates
    (the embeddings, the head), is the one exception in storage, not in frame: its sums are
    computed once from raw B and moved with the space's transform (C -> C T^T, ...), which equals
    recomputing them from B' and costs a size x size product instead of a pass over the tensor.
    Accepting a step Delta of a space sets T to Delta T and applies Delta to the space's tensors
    in B' (or re-applies every transform to them from raw B, where a later space of the spec acts
    on the same entries: a head's inside after the heads).
    """

    def __init__(self, spec: SymmetrySpec, kinds: Mapping[str, str], state_a: Mapping[str, Tensor],
                 state_b: Mapping[str, Tensor], dtype: torch.dtype):
        self.spec, self.kinds, self.dtype = spec, kinds, dtype
        self.raw_b = state_b
        self.transforms: dict[str, Transform] = {n: identity(k, spec.spaces[n].size) for n, k in kinds.items()}
        readers: dict[str, set[str]] = {}
        for name in kinds:
            for param in spec.spaces[name].params:
                readers.setdefault(param, set()).add(name)
        self.only = {p: next(iter(names)) for p, names in readers.items() if len(names) == 1}
        cached = {p for p, name in self.only.items() if self._wide(name, p, state_a[p])}
        self.a = {p: self._scored(state_a[p]) for p in readers if p not in cached}
        self.b = {p: self._scored(state_b[p]) for p in readers if p not in cached}
        # B' applies the transforms in spec order; where a later space acts on the same entries (a
        # head's inside, after the heads), a step of the earlier one is not a step on top of B'
        order = list(spec.spaces)
        self.later = {
            n: [o for o in spec.overlapping(n) if o in kinds and order.index(o) > order.index(n)] for n in kinds
        }
        for name, later in self.later.items():
            if later and not (spec.spaces[name].circuits and kinds[name] == "permutation"):
                raise ValueError(
                    f"weight matching: space {name!r} shares entries with the later space {later[0]!r}; "
                    "only permutations of blocks compared by circuits (which the later ones leave invariant) may"
                )
        circuit_spaces = [n for n in kinds if spec.spaces[n].circuits]
        self.circuits_reading = {
            n: [c for c in circuit_spaces if c != n and not spec.spaces[c].params.isdisjoint(
                a.param for a in spec.spaces[n].axes) and n not in spec.overlapping(c)]
            for n in kinds
        }
        #: the size of J's terms, for a relative tolerance: sum_p ||A_p||^2 + ||B_p||^2
        self.scale = sum(float(state_a[p].detach().norm()) ** 2 + float(state_b[p].detach().norm()) ** 2
                         for p in readers)  # a scale for the tolerance: no float64 copies of large tensors
        raw = {p: (self._scored(state_a[p]), self._scored(state_b[p])) for p in cached}
        self.cached = {n: self._sums(spec.spaces[n], lambda axis: axis.param in raw, raw.__getitem__) for n in kinds}
        #: how many kept steps have changed each tensor of B', and those counts over a space's tensors
        #: when it was last solved: a space none of whose tensors changed since needs no new solve
        self.versions: dict[str, int] = {}
        self.solved_at: dict[str, tuple[int, ...]] = {}

    def _scored(self, tensor: Tensor) -> Tensor:
        """``tensor`` in the score dtype, on its device (on the CPU where that has no float64: MPS)."""
        device = float64_device(tensor.device) if self.dtype == torch.float64 else tensor.device
        return tensor.detach().to(device, self.dtype)

    def _wide(self, name: str, param: str, tensor: Tensor) -> bool:
        """True when every axis of ``param`` in the space has at least as many features per
        coordinate as the space has coordinates (so its sums are no larger than the tensor)."""
        space = self.spec.spaces[name]
        axes = [axis for axis in space.axes if axis.param == param]
        return not space.circuits and bool(axes) and all(
            flatten_axis(tensor, axis).shape[1] >= space.size for axis in axes)

    def _pair(self, param: str) -> tuple[Tensor, Tensor]:
        return self.a[param], self.b[param]

    def _sums(self, space: Space, keep, pair=None) -> _Statistics | None:
        """Sums over the axes for which ``keep(axis)`` holds (float64), None when there are none;
        ``pair(param)`` gives the (A, B) tensors, by default A and B'."""
        pair = self._pair if pair is None else pair

        def flat(axis: Axis) -> tuple[Tensor, Tensor]:
            return tuple(flatten_axis(tensor, axis) for tensor in pair(axis.param))

        writes = [flat(x) for x in space.writes if keep(x)]
        reads = [flat(x) for x in space.reads if keep(x)]
        if not writes and not reads:
            return None
        if self.kinds[space.name] != "invertible":
            return _Statistics(_product_sum(writes + reads, 0, 1)).double()
        return _Statistics(*(_product_sum(pairs, i, j, size=space.size).double().cpu() for pairs, i, j in
                             ((writes, 0, 1), (reads, 0, 1), (writes, 1, 1), (reads, 0, 0), (reads, 1, 1))),
                           sum(a.double().square().sum() for a, _ in writes).cpu())

    def _moved_cache(self, name: str) -> _Statistics | None:
        cached = self.cached[name]
        return None if cached is None else cached.moved(self.transforms[name])

    def anchors(self, name: str) -> _Statistics | None:
        """The sums of the tensors that no other matched space reads, in B' 's frame."""
        stored = self._sums(self.spec.spaces[name], lambda axis: axis.param in self.b and axis.param in self.only)
        return _total(self._moved_cache(name), stored)

    def anchored(self, name: str) -> bool:
        """True when the space is anchored and has tensors that only it reads to be solved from."""
        return self.spec.spaces[name].anchored and any(axis.param in self.only for axis in self.spec.spaces[name].axes)

    def _versions(self, name: str) -> tuple[int, ...]:
        return tuple(self.versions.get(p, 0) for p in sorted(self.spec.spaces[name].params))

    def mark_solved(self, name: str) -> None:
        """Record B' 's tensors of the space as they are after its step (kept or refused)."""
        self.solved_at[name] = self._versions(name)

    def unchanged(self, name: str) -> bool:
        """True for a permutation or orthogonal space none of whose tensors a kept step has changed since
        it was last solved: solving it again returns the identity (after a kept step its scores are
        the old ones moved by that step, whose optimum is then the identity; Procrustes of C O^T with
        O = polar(C) is the identity), so the sweep skips its scores and solver. An invertible fit
        is not such a fixed point (its ridge is relative to B's Grams), so it is always solved."""
        return self.kinds[name] != "invertible" and self.solved_at.get(name) == self._versions(name)

    def _circuit_score(self, space: Space) -> Tensor:
        """C[i, j] = sum over circuits of <L_A^i R_A^i^T, L_B'^j R_B'^j^T> from block x block Grams."""
        def factor(side: int, axes: tuple[Axis, ...]) -> Tensor:  # (size, block, features)
            return torch.cat([flatten_axis(self._pair(a.param)[side], a, keep_block=True) for a in axes], dim=-1)

        score = 0.0
        for circuit in space.circuits:
            left, right = (torch.einsum("irf,jsf->ijrs", factor(0, axes), factor(1, axes))
                           for axes in (circuit.left, circuit.right))
            score = score + (left * right).sum((2, 3))
        return score

    def statistics(self, name: str) -> _Statistics:
        """The space's sums in B' 's frame (where its own current transform is the identity).

        Circuits compare coordinates by <L_A^i R_A^i^T, L_B^j R_B^j^T> = <L_A^i L_B^j^T, R_A^i R_B^j^T>;
        maximising sum_i C[i, pi(i)] minimises the summed squared circuit distances.
        """
        space = self.spec.spaces[name]
        if space.circuits:
            return _Statistics(self._circuit_score(space).double().cpu())
        return _total(self._sums(space, lambda axis: axis.param in self.b), self._moved_cache(name))

    def circuit_value(self, name: str) -> float:
        """sum_i <C_A^i, C_B'^i> over the circuits of a heads space at its current arrangement."""
        space = self.spec.spaces[name]

        def factor(tensors: Mapping[str, Tensor], axes: tuple[Axis, ...]) -> Tensor:  # (size, block, features)
            return torch.cat([flatten_axis(tensors[a.param], a, keep_block=True) for a in axes], dim=-1)

        total = 0.0
        for circuit in space.circuits:
            left, right = (torch.einsum("irf,isf->irs", factor(self.a, axes), factor(self.b, axes))
                           for axes in (circuit.left, circuit.right))
            total += float((left * right).sum())
        return total

    def _terms(self, name: str) -> float:
        """The parts of J that a step of the space changes beyond its own objective: the circuit values
        of other heads spaces that read its tensors (through the residual), and for a heads space,
        whose own objective is its circuit value, sum_p <A_p, B'_p> over its tensors (its
        permutations keep norms, so these carry the change of its distance terms)."""
        total = sum(self.circuit_value(other) for other in self.circuits_reading.get(name, ()))
        if self.spec.spaces[name].circuits:
            params = {a.param for a in self.spec.spaces[name].axes}
            total += sum(float((self.a[p] * self.b[p]).sum()) for p in params)
        return total

    def _apply_step(self, name: str, delta: Transform) -> None:
        space = self.spec.spaces[name]
        self.transforms[name] = delta.compose(self.transforms[name])
        params = {a.param for a in space.axes} & self.b.keys()
        if self.later[name]:
            self._reapply(params)
            return
        self._move(name, delta, params)

    def _move(self, name: str, delta: Transform, params: set[str]) -> None:
        """Apply ``delta`` to the space's axes of ``params`` in B'."""
        space = self.spec.spaces[name]
        write = delta if isinstance(delta, Permutation) else delta.matrix
        read = delta if isinstance(delta, Permutation) else delta.read_matrix.T
        for matrix, axes in ((write, space.writes), (read, space.reads)):
            for axis in axes:
                if axis.param in params:
                    self.b[axis.param] = apply_along(self.b[axis.param], axis, matrix)

    def _reapply(self, params) -> None:
        """B' of ``params`` recomputed from raw B under the current transforms (one tensor at a time)."""
        for param in params:
            self.b[param] = _applied(self._scored(self.raw_b[param]), param, self.spec, self.transforms)

    def try_step(self, name: str, delta: Transform, own: float, threshold: float, *, force: bool) -> float | None:
        """Take the step T -> Delta T if it raises J by more than ``threshold`` (or ``force``): its gain, else
        None, with the state as it was.

        J = -1/2 sum_p ||A_p - B'_p||^2 + sum over matched heads spaces of their circuit values; ``own``
        is the change of the space's own part of J, the rest is measured around the step. B' is moved
        in place, one tensor at a time; a refused permutation is moved back, any other refused step
        is undone from raw B.
        """
        if not force and _is_identity(delta):  # J unchanged: refused, without moving and restoring B'
            return None
        before = self._terms(name)
        previous = self.transforms[name]
        params = {a.param for a in self.spec.spaces[name].axes} & self.b.keys()
        self._apply_step(name, delta)
        gain = own + self._terms(name) - before
        if force or gain > threshold:
            for param in params:
                self.versions[param] = self.versions.get(param, 0) + 1
            return gain
        self.transforms[name] = previous
        if isinstance(delta, Permutation) and not self.later[name]:
            self._move(name, delta.inverse(), params)  # exact: entries moved back, not recomputed
        else:
            self._reapply(params)
        return None

    def step(self, name: str, delta: Transform) -> None:
        """T becomes Delta T; B' follows."""
        self._apply_step(name, delta)


def weight_matching(
    a: nn.Module,
    b: nn.Module,
    *,
    classes: Classes = ("permutation",),
    max_iter: int | None = None,
    seed: int = 0,
    score_dtype: torch.dtype = torch.float64,
    tolerance: float = 1e-12,
    row_weights: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> Alignment:
    """Align B to A from the weights alone: maximise one objective J by coordinate ascent over spaces.

    J = -1/2 sum_p ||A_p - B'_p||^2 + sum_heads sum_i <QK_A^i, QK_B'^i> + <OV_A^i, OV_B'^i>, with B' = B
    under the current transforms: the distance of the tensors, plus, for matched attention heads,
    the inner products of their circuits (which the maps inside a head leave unchanged). Each step
    re-solves one space given the others from its own part of J: assignment for permutations,
    Procrustes for orthogonal maps, :func:`~lmc_lib.solvers.fit_invertible` for invertible ones
    (e.g. ``{"qk": ("invertible",), "ov": ("invertible",)}``: each head's factors), assignment on
    circuit inner products for heads. A step is kept when it raises J by more than ``tolerance``
    times sum_p ||A_p||^2 + ||B_p||^2, so J never decreases and the descent stops. The first sweep
    visits the spaces in spec order (a family lists its best-anchored space first); an ``anchored``
    space (the residual stream) is solved there from the tensors only it touches (embeddings,
    head), as in the paper; these first steps are kept whatever they do to J, and so is an
    invertible map that B's writers prove (they are A's under it, whatever the readers, which the
    next space may not have aligned yet: this recovers a planted map of a chain of linear layers).
    Later sweeps go in a seeded random order and skip a permutation or orthogonal space none of
    whose tensors changed since it was last solved (its solution would be the identity). It stops
    after ``max_iter`` sweeps (default: the spec's ``rounds``, 5 for Transformers, as in the paper;
    else 100) or a sweep in which no step was kept. ``history`` holds J(aligned B) - J(B) after each sweep.
    ``classes`` is a preset of :data:`~lmc_lib.alignment.CLASS_PRESETS` ("paper": an orthogonal
    residual and permutations of heads and MLP units, for models in canonical form;
    "permutations"), class names, or a mapping from space groups to them, e.g.
    ``{"residual": ("orthogonal",), "heads": ("permutation",)}``. Scores are computed in
    ``score_dtype`` on the models' device (float32 halves time and memory on large models); the
    transforms are float64. ``row_weights`` weighs the rows of named tensors in J's distances,
    -1/2 sum_r w_r ||A_r - B'_r||^2 (dimension 0, which no matched space may act on): the paper
    code's data-aware refinement restricts the embedding and unembedding rows to the tokens seen
    in training (weights from :func:`~lmc_lib.data.token_counts`).
    """
    spec = matched_pair(a, b, caller="weight_matching")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"weight_matching: max_iter must be a positive integer (sweeps), got {max_iter!r}")
    if not isinstance(score_dtype, torch.dtype) or not score_dtype.is_floating_point:
        raise ValueError(f"weight_matching: score_dtype must be a floating dtype, got {score_dtype!r}")
    if not tolerance >= 0:
        raise ValueError(f"weight_matching: tolerance must be >= 0, got {tolerance!r}")
    kinds = resolve_classes(spec, classes, ("permutation", "orthogonal", "invertible"), caller="weight_matching")
    state_a, state_b = a.state_dict(), b.state_dict()
    if row_weights is not None:
        state_a = _weighted_rows(state_a, spec, kinds, row_weights)
        state_b = _weighted_rows(state_b, spec, kinds, row_weights)
    state = _WeightState(spec, kinds, state_a, state_b, score_dtype)
    limit = min(max_condition(t.dtype) for t in a.state_dict().values() if t.is_floating_point())
    max_iter = max_iter if max_iter is not None else spec.rounds or MAX_SWEEPS
    threshold = tolerance * max(1.0, state.scale)
    rng = np.random.default_rng(seed)
    names = list(kinds)
    history: list[float] = []
    unfit: dict[str, str] = {}
    gain = 0.0
    workers = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(workers) as pool:
        for sweep in tqdm(range(max_iter), disable=not progress, desc="weight matching"):
            improved = False
            order = names if sweep == 0 else [names[i] for i in rng.permutation(len(names))]
            for stage in _stages(order, spec):
                stage = [name for name in stage if not state.unchanged(name)]
                solved = _solved(stage, state, pool, workers, limit, first=sweep == 0)
                for name, stats, first_anchor, solution in solved:
                    delta = solution.step
                    if sweep == 0 and solution.undetermined is not None:
                        unfit[name] = str(solution.undetermined)
                    if isinstance(delta, ValueError):  # no invertible fit the dtype carries: no step
                        continue
                    own = _objective(delta, stats) - _objective(identity(kinds[name], spec.spaces[name].size), stats)
                    step_gain = state.try_step(name, delta, own, threshold, force=first_anchor or solution.proven)
                    state.mark_solved(name)
                    if step_gain is not None:
                        improved, gain = True, gain + step_gain
            history.append(gain)
            if not improved:
                break
    if unfit:
        names = ", ".join(repr(n) for n in unfit)
        warnings.warn(f"weight_matching: the writers of spaces {names} do not determine their invertible maps "
                      f"({next(iter(unfit.values()))}); the descent may stop short of a planted map there",
                      stacklevel=2)
    return Alignment(state.transforms, spec, tuple(history), architecture(b))


def _weighted_rows(state: Mapping[str, Tensor], spec: SymmetrySpec, kinds: Mapping[str, str],
                   row_weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the rows of each named tensor scaled by sqrt(w): its distance terms become
    sum_r w_r ||A_r - B_r||^2. Exact for the matched spaces, which act on other dimensions only."""
    if not isinstance(row_weights, Mapping):
        raise TypeError(f"weight_matching: row_weights must map tensor names to weights, "
                        f"got {type(row_weights).__name__}")
    scaled = dict(state)
    for name, weights in row_weights.items():
        if name not in state:
            raise KeyError(f"weight_matching: row_weights names {name!r}, which the model does not have")
        tensor = state[name]
        weights = torch.as_tensor(weights).detach().double()
        if weights.shape != tensor.shape[:1] or not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"weight_matching: row_weights[{name!r}] must be {tensor.shape[0]} finite non-negative "
                             f"weights (one per row), got shape {tuple(weights.shape)}")
        acting = [space for space, axis, _ in spec.axes_of(name) if space in kinds and axis.dim % tensor.ndim == 0]
        if acting:
            raise ValueError(f"weight_matching: row_weights[{name!r}]: space {acting[0]!r} acts on its rows")
        shape = (-1,) + (1,) * (tensor.ndim - 1)
        scaled[name] = (tensor.double() * weights.sqrt().to(tensor.device).view(shape)).to(tensor.dtype)
    return scaled


def _stages(order: Sequence[str], spec: SymmetrySpec) -> list[list[str]]:
    """``order`` cut into runs of spaces that touch disjoint tensors. Given the spaces outside a run,
    each space of it is solved from tensors no other one changes (the MLPs and heads of different
    blocks), so solving a run at once gives what solving it one space at a time would."""
    stages: list[list[str]] = []
    touched: set[str] = set()
    for name in order:
        params = spec.spaces[name].params
        if not stages or params & touched:
            stages.append([])
            touched = set()
        stages[-1].append(name)
        touched |= params
    return stages


def _solved(stage: list[str], state: _WeightState, pool: ThreadPoolExecutor, workers: int, limit: float,
            *, first: bool) -> Iterator[tuple[str, _Statistics, bool, _Solution]]:
    """(name, statistics, solved from its anchors, best step) for each space of a stage, in order.

    The solvers (scipy's assignment releases the GIL) run in ``pool`` while the next spaces' score
    products are computed; at most ``workers`` are pending, so a few size x size scores are held."""
    pending: deque[tuple[str, _Statistics, bool, Future]] = deque()

    def done() -> tuple[str, _Statistics, bool, _Solution]:
        name, stats, first_anchor, solving = pending.popleft()
        return name, stats, first_anchor, solving.result()

    for name in stage:
        stats = state.statistics(name)
        first_anchor = first and state.anchored(name)
        target = state.anchors(name) if first_anchor else stats
        pending.append((name, stats, first_anchor, pool.submit(_solve, state.kinds[name], target, limit)))
        if len(pending) > workers:
            yield done()
    while pending:
        yield done()
