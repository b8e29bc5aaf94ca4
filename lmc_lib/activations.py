"""Activation matching: align model B to model A from their activations on data.

Streaming first and second moments of every probed space in both models (``Space.probes``), then
assignment on correlations (permutations; canonical correlations for blocks such as a head's
outputs), Procrustes on the cross-covariance (orthogonal) or least squares (invertible). The
paper's baseline for Transformers probes the residual stream after every block, each head's
outputs and the MLP's hidden units; the residual's score sums one score per block, so that the
late blocks, whose activations are larger, do not outweigh the early ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from .alignment import Alignment, Classes, architecture, matched_pair, resolve_classes
from .data import check_max_batches, checked_batches, reusable
from .evaluation import evaluating
from .solvers import fit_invertible, nearest_orthogonal, solve_assignment
from .spec import Space, SymmetrySpec
from .symmetry import Transform, max_condition
from .transform import transform

__all__ = ["activation_matching"]


class _Moments:
    """Streaming sums of one space's activations in A and B: means, variances, cross moment, Grams."""

    def __init__(self, n: int, grams: bool) -> None:
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.count = 0
        self.sum_a, self.sum_b, self.sq_a, self.sq_b, self.ab = zeros(n), zeros(n), zeros(n), zeros(n), zeros(n, n)
        self.aa, self.bb = (zeros(n, n), zeros(n, n)) if grams else (None, None)

    def update(self, x_a: Tensor, x_b: Tensor) -> None:
        x_a = x_a.detach().reshape(-1, x_a.shape[-1]).double().cpu()
        x_b = x_b.detach().reshape(-1, x_b.shape[-1]).double().cpu()
        self.count += x_a.shape[0]
        self.sum_a += x_a.sum(0)
        self.sum_b += x_b.sum(0)
        self.sq_a += (x_a * x_a).sum(0)
        self.sq_b += (x_b * x_b).sum(0)
        self.ab += x_a.T @ x_b
        if self.aa is not None:
            self.aa += x_a.T @ x_a
            self.bb += x_b.T @ x_b

    def _centred(self, moment: Tensor, first: Tensor, second: Tensor) -> Tensor:
        return moment / self.count - torch.outer(first, second) / self.count**2

    def cross_covariance(self) -> Tensor:
        return self._centred(self.ab, self.sum_a, self.sum_b)

    def normalised_cross_covariance(self) -> Tensor:
        """Cov_ab / sqrt(tr Cov_aa tr Cov_bb): the cross-covariance of activations scaled to unit total variance."""
        total_a = (self.sq_a / self.count - (self.sum_a / self.count) ** 2).sum().clamp_min(0)
        total_b = (self.sq_b / self.count - (self.sum_b / self.count) ** 2).sum().clamp_min(0)
        return self.cross_covariance() / ((total_a * total_b).sqrt() + 1e-300)

    def covariances(self) -> tuple[Tensor, Tensor]:
        return self._centred(self.aa, self.sum_a, self.sum_a), self._centred(self.bb, self.sum_b, self.sum_b)

    def correlation(self) -> Tensor:
        var_a = (self.sq_a / self.count - (self.sum_a / self.count) ** 2).clamp_min(0)
        var_b = (self.sq_b / self.count - (self.sum_b / self.count) ** 2).clamp_min(0)
        return self.cross_covariance() / (torch.outer(var_a.sqrt(), var_b.sqrt()) + 1e-12)

    def canonical_correlations(self, size: int) -> Tensor:
        """score[i, j] = the summed canonical correlations of A's block i and B's block j (blocks of
        n / size activations): the nuclear norm of Cov_aa,i^-1/2 Cov_ab,ij Cov_bb,j^-1/2, unchanged by
        invertible maps inside a block (a head's outputs are only defined up to one)."""
        block = self.ab.shape[0] // size
        whiten = [_inverse_sqrt(torch.stack([c[i:i + block, i:i + block] for i in range(0, size * block, block)]))
                  for c in self.covariances()]
        cross = self.cross_covariance().view(size, block, size, block).transpose(1, 2)
        return torch.linalg.svdvals(whiten[0][:, None] @ cross @ whiten[1][None]).sum(-1)


def _inverse_sqrt(covariances: Tensor, ridge: float = 1e-9) -> Tensor:
    """C^-1/2 of each (block x block) covariance, with a relative ridge for flat directions."""
    values, vectors = torch.linalg.eigh(covariances)
    values = values.clamp_min(0) + ridge * values.mean(-1, keepdim=True).clamp_min(1e-300)
    return vectors @ torch.diag_embed(values.rsqrt()) @ vectors.transpose(-1, -2)


def _solve_activations(space: Space, kind: str, moments: Mapping[tuple[str, int], _Moments], limit: float) -> Transform:
    """One space's transform from its moments, keyed by (probe role, probe index).

    With several probes (the residual stream after every block) each one scores on its own and the
    scores are summed, so that every probe counts alike, whatever the scale of its activations (the
    residual stream grows along the depth): correlations or canonical correlations for permutations,
    cross-covariances scaled to unit total variance for orthogonal maps.
    """
    if kind == "invertible":
        write, read = moments[("write", 0)], moments.get(("read", 0))
        cross = write.cross_covariance() + (read.cross_covariance() if read else 0)
        gram_read_a = read.covariances()[0] if read else torch.zeros_like(cross)
        try:
            return fit_invertible(cross, write.covariances()[1], gram_read_a, ridge=1e-8, max_condition=limit)
        except ValueError as error:  # rank-deficient activations (fewer examples or directions than units)
            raise ValueError(f"activation_matching, space {space.name!r}: {error}; use more data or "
                             "permutation / orthogonal classes for this space") from None
    parts = list(moments.values())
    if kind == "orthogonal":
        return nearest_orthogonal(sum(m.normalised_cross_covariance() for m in parts))
    if parts[0].ab.shape[0] > space.size:  # blocks of units (a head's outputs)
        return solve_assignment(sum(m.canonical_correlations(space.size) for m in parts))
    return solve_assignment(sum(m.correlation() for m in parts))


@contextmanager
def _capturing(models: Mapping[str, nn.Module], modules: Iterable[tuple[str, bool]]) -> Iterator[dict[tuple, Tensor]]:
    """Forward hooks keeping, for each (model tag, module name, inputs), the module's last output
    (its first input when ``inputs``; the first element of a tuple)."""
    captured: dict[tuple, Tensor] = {}

    def hook(key, _module, args, out):
        out = args[0] if key[2] else out
        captured[key] = out[0] if isinstance(out, tuple) else out

    handles = [model.get_submodule(module).register_forward_hook(partial(hook, (tag, module, inputs)))
               for tag, model in models.items() for module, inputs in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _record(
    moments: dict[tuple[str, int], _Moments], space: Space, kind: str, captured: Mapping[tuple, Tensor]
) -> None:
    """Add one batch of the space's probed activations to its moments: one set per probe, except for
    invertible maps, which pool each role's probes (only they act differently on the two roles)."""
    for index, probe in enumerate(space.probes):
        x_a, x_b = (captured[(tag, probe.module, probe.inputs)] for tag in "ab")
        end = x_a.shape[-1] if probe.length is None else probe.start + probe.length
        key = (probe.role, 0) if kind == "invertible" else ("write", index)
        grams = kind == "invertible" or (kind == "permutation" and end - probe.start > space.size)
        moments.setdefault(key, _Moments(end - probe.start, grams)).update(
            x_a[..., probe.start : end], x_b[..., probe.start : end]
        )


def _sum_over_ranks(moments: dict[str, dict[tuple[str, int], _Moments]], group) -> None:
    """Replace every rank's moments by their sums over ``group`` (one float64 all-reduce). Every rank saw
    a batch, so the moments were created alike, in the same order, on every rank."""
    parts = [part for per_space in moments.values() for part in per_space.values()]
    fields = [(part, name) for part in parts for name in ("sum_a", "sum_b", "sq_a", "sq_b", "ab", "aa", "bb")
              if getattr(part, name) is not None]
    counts = torch.tensor([float(part.count) for part in parts], dtype=torch.float64)
    *sums, counts = distributed.all_reduce_sum([getattr(part, name) for part, name in fields] + [counts], group)
    for (part, name), total in zip(fields, sums):
        setattr(part, name, total)
    for part, count in zip(parts, counts.tolist()):
        part.count = int(count)


def _match_activations(a: nn.Module, b: nn.Module, data, spec: SymmetrySpec, kinds: Mapping[str, str],
                       max_batches: int | None, progress: bool, group=None) -> dict[str, Transform]:
    """One pass over ``data``: the moments of every probe of the spaces in ``kinds`` (summed over the
    ranks of ``group``), then one solve each."""
    modules = {(p.module, p.inputs) for n in kinds for p in spec.spaces[n].probes}
    moments: dict[str, dict[tuple[str, int], _Moments]] = {n: {} for n in kinds}
    device = next(a.parameters()).device
    with _capturing({"a": a, "b": b}, modules) as captured, evaluating(a, b), torch.no_grad():
        batches = tqdm(checked_batches(data, targets=False), disable=not progress or not distributed.is_main(group),
                       desc="activation statistics")
        for index, (x, _) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            a(x.to(device)), b(x.to(device))
            for name, kind in kinds.items():
                _record(moments[name], spec.spaces[name], kind, captured)
    if group is not None:
        _sum_over_ranks(moments, group)
    if any(not per_space for per_space in moments.values()):
        raise ValueError("activation_matching: data yielded no batches")
    limit = min(max_condition(t.dtype) for t in b.state_dict().values() if t.is_floating_point())
    return {name: _solve_activations(spec.spaces[name], kind, moments[name], limit) for name, kind in kinds.items()}


def _stages(spec: SymmetrySpec, kinds: Mapping[str, str]) -> list[dict[str, str]]:
    """Spaces grouped so that none acts on entries of a space in its own or a later group (a head's
    inside comes after the heads): each group is matched on B aligned by the groups before it."""
    order = list(spec.spaces)
    depth: dict[str, int] = {}
    for name in kinds:
        earlier = [o for o in spec.overlapping(name) if o in kinds and order.index(o) < order.index(name)]
        depth[name] = 1 + max((depth[o] for o in earlier), default=-1)
    levels = range(max(depth.values(), default=-1) + 1)
    return [{n: k for n, k in kinds.items() if depth[n] == level} for level in levels]


def activation_matching(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    classes: Classes = ("permutation",),
    max_batches: int | None = None,
    progress: bool = False,
    group=None,
) -> Alignment:
    """Align B to A by matching each space's activations on ``data`` (streaming moments).

    Every space with probes is observed on every batch; activations (batch, ..., width) count one
    row per example or token. Permutation: assignment maximising the summed correlation of matched
    units, or, for blocks (a head's outputs), the summed canonical correlations; orthogonal:
    Procrustes on the cross-covariance; a space with several probes (the residual stream after
    every block) sums these scores over its probes, each scaled alike; invertible:
    :func:`~lmc_lib.solvers.fit_invertible` on centred activations (x_a ~ T x_b for
    writer probes, T^T y_a ~ y_b for reader probes: queries and keys). Spaces inside another (a
    head's QK and OV inside the heads) take a second pass, on B aligned by the first.

    ``group`` (a ``torch.distributed`` process group): each rank passes its own shard of ``data``
    (``max_batches`` counts per rank); the moments are summed over the ranks in float64, and every
    rank gets the alignment of the whole data (:mod:`lmc_lib.distributed`).
    """
    check_max_batches(max_batches, "activation_matching")
    group = distributed.check_group(group, "activation_matching")
    if group is not None:  # a rank without a batch would leave the others waiting in the all-reduce
        data = reusable(data)
        distributed.check_every_rank_has_data(next(iter(data), None) is not None, group, "activation_matching")
    spec = matched_pair(a, b, caller="activation_matching")
    probed = [name for name, space in spec.spaces.items() if space.probes]
    kinds = resolve_classes(spec, classes, ("permutation", "orthogonal", "invertible"), caller="activation_matching",
                            spaces=probed)
    stages = _stages(spec, kinds)
    if len(stages) > 1:
        data = reusable(data)  # a one-shot iterator cannot be read once per stage
    transforms: dict[str, Transform] = {}
    for stage in stages or [{}]:
        aligned = transform(b, transforms, spec=spec) if transforms else b
        transforms |= _match_activations(a, aligned, data, spec, stage, max_batches, progress, group)
    return Alignment(transforms, spec, (), architecture(b))
