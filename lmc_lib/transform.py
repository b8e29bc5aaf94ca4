"""Apply symmetry transforms to a model's parameters, and draw random ones.

Everything here is a pure function over state dicts: arithmetic in float64, results cast back to
each tensor's dtype, the caller's tensors and models never modified.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .alignment import Classes, check_model, resolve_classes
from .family import family_of, spec_for
from .spec import Axis, Space, SymmetrySpec
from .symmetry import (
    Invertible,
    Orthogonal,
    Permutation,
    SemiPermutation,
    Transform,
    max_condition,
)

__all__ = ["apply_along", "StraightThrough", "transform_tensors", "transform_state", "transform", "random_transform"]


class _StraightThroughRows(torch.autograd.Function):
    """out = P x along ``dim`` for the permutation P[i, indices[i]] = 1, by indexing; the backward treats
    P as the latent L: dL = g x^T (summed over the other axes), dx = P^T g."""

    @staticmethod
    def forward(ctx, part: Tensor, latent: Tensor, indices: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(part, indices)
        ctx.dim = dim
        return part.index_select(dim, indices)

    @staticmethod
    def backward(ctx, grad: Tensor):
        part, indices = ctx.saved_tensors
        dim, n = ctx.dim, indices.numel()
        grad_part = torch.zeros_like(part).index_copy(dim, indices, grad) if ctx.needs_input_grad[0] else None
        grad_latent = None
        if ctx.needs_input_grad[1]:
            grad_latent = grad.movedim(dim, 0).reshape(n, -1) @ part.movedim(dim, 0).reshape(n, -1).T
        return grad_part, grad_latent, None, None


class StraightThrough:
    """A permutation in the forward pass that is the latent matrix L in the backward pass (the
    straight-through estimator of learned matching): applied by indexing, so the forward costs no
    matrix product; the gradient reaching L is that of the product L x."""

    def __init__(self, latent: Tensor, indices: Tensor) -> None:
        self.latent, self.indices = latent, indices

    def along(self, part: Tensor, dim: int) -> Tensor:
        """P x along ``dim`` of ``part`` (the coordinate axis of size n)."""
        return _StraightThroughRows.apply(part, self.latent, self.indices, dim)


def apply_along(tensor: Tensor, axis: Axis, matrix: Tensor | Permutation | StraightThrough) -> Tensor:
    """Return ``tensor`` with its axis slice x (size n, blocks of ``axis.block``) replaced by M x.

    ``matrix`` is (m, n) and acts on the coordinate index; a Permutation or a StraightThrough is
    applied by indexing.
    """
    dim = axis.dim % tensor.ndim
    length = axis.extent(tensor.shape)
    before = tensor.narrow(dim, 0, axis.start)
    part = tensor.narrow(dim, axis.start, length)
    after = tensor.narrow(dim, axis.start + length, tensor.shape[dim] - axis.start - length)
    shape = part.shape
    part = part.reshape(*shape[:dim], length // axis.block, axis.block, *shape[dim + 1 :])
    if isinstance(matrix, Permutation):
        part = part.index_select(dim, matrix.indices.to(part.device))
    elif isinstance(matrix, StraightThrough):
        part = matrix.along(part, dim)
    else:
        part = torch.tensordot(matrix.to(part), part, dims=([1], [dim])).movedim(0, dim)
    part = part.reshape(*shape[:dim], -1, *shape[dim + 1 :])
    return torch.cat([before, part, after], dim=dim) if before.numel() or after.numel() else part


def _check_resizing(spec: SymmetrySpec, transforms: Mapping[str, Transform]) -> None:
    """A space that changes size shifts the slices of others on the same dimension: refuse that."""
    for name, t in transforms.items():
        if t.size_in == t.size_out:
            continue
        for axis in spec.spaces[name].axes:
            for other, other_axis, _ in spec.axes_of(axis.param):
                if other != name and other in transforms and other_axis.dim == axis.dim:
                    raise ValueError(
                        f"space {name!r} changes size and shares {axis.param} dim {axis.dim} with space "
                        f"{other!r}; apply the two in separate calls to transform()"
                    )


def _check_condition(name: str, t: Transform, space: Space, state: Mapping[str, Tensor]) -> None:
    """ValueError when the tensors' dtype cannot carry the invertible map T (see :func:`max_condition`)."""
    dtypes = {state[axis.param].dtype for axis in space.axes if axis.param in state}
    limit = min((max_condition(d) for d in dtypes if d.is_floating_point), default=float("inf"))
    condition = float(torch.linalg.cond(t.matrix))
    if not condition <= limit:
        raise ValueError(f"space {name!r}: the invertible map's condition number {condition:.3g} exceeds {limit:.3g}, "
                         f"the most that {sorted(str(d) for d in dtypes)} tensors carry (cond * eps <= 1e-3)")


def _check_transforms(state: Mapping[str, Tensor], spec: SymmetrySpec, transforms: Mapping[str, Transform], *,
                      family_lifts: bool) -> None:
    """ValueError (KeyError for unknown spaces) unless every transform fits its space and ``state``."""
    if not isinstance(transforms, Mapping):
        raise TypeError(f"transforms must be a mapping from space names to symmetry elements, "
                        f"got {type(transforms).__name__}")
    spec.check(state)
    unknown = [name for name in transforms if name not in spec.spaces]
    if unknown:
        raise KeyError(f"transforms name spaces that the {spec.family} spec does not have: {unknown}")
    for name, t in transforms.items():
        space = spec.spaces[name]
        if not isinstance(t, Transform):
            raise TypeError(
                f"space {name!r}: expected a symmetry element (lmc.Permutation, ...), got {type(t).__name__}"
            )
        if t.size_in != space.size:
            raise ValueError(f"space {name!r} has size {space.size} but its {t.kind} acts on {t.size_in} coordinates")
        if t.kind not in space.classes:
            hint = ""
            if t.kind == "orthogonal" and space.normed:
                hint = " (rotations of a residual stream need RMSNorms: call lmc.canonicalize on the model first)"
            raise ValueError(f"space {name!r} admits {space.classes}, not {t.kind}{hint}")
        if t.size_out != space.size and not space.resizable:
            raise ValueError(
                f"space {name!r} has a fixed size {space.size}; its {t.kind} would resize it to {t.size_out}"
            )
        if t.size_out != space.size and space.normed and not family_lifts:
            raise ValueError(f"space {name!r} is read through norms: resizing it rescales its readers and the norms' "
                             "eps, which the model's family does; use lmc.transform(model, ...) instead")
        if t.kind == "invertible":
            _check_condition(name, t, space, state)
    _check_resizing(spec, transforms)


Maps = Mapping[str, "Transform | tuple[Tensor, Tensor]"]


def transform_tensors(tensors: Mapping[str, Tensor], spec: SymmetrySpec, maps: Maps) -> dict[str, Tensor]:
    """The differentiable core: writers W -> T W, readers V -> V R for every space in ``maps``, in spec order.

    ``maps`` gives, per space, a symmetry element or a pair (T, S) of (M, N) tensors (or of
    :class:`StraightThrough` permutations): writers W -> T W and readers V -> V S^T, with S = T^-T
    (S = T for an orthogonal T). No check, no cast,
    no detach: gradients flow to ``tensors`` and to the tensor maps, which must share the tensors'
    dtype and device. Tensors that no mapped space touches are returned as they are.
    """
    work = dict(tensors)
    for name, space in spec.spaces.items():
        given = maps.get(name)
        if given is None:
            continue
        if isinstance(given, Permutation):
            write = read = given
        elif isinstance(given, Transform):
            write, read = given.matrix, given.read_matrix.T
        else:
            write, read = given
        for role_matrix, axes in ((write, space.writes), (read, space.reads)):
            for axis in sorted(axes, key=lambda a: -a.start):
                work[axis.param] = apply_along(work[axis.param], axis, role_matrix)
    return work


def float64_device(device: torch.device) -> torch.device:
    """Where float64 arithmetic on tensors of ``device`` runs: the device itself, or the CPU for devices
    without float64 (Apple's MPS)."""
    return torch.device("cpu") if device.type == "mps" else device


def _float64_applied(state: Mapping[str, Tensor], spec: SymmetrySpec, transforms: Mapping[str, Transform]):
    """transform_tensors in float64 (on the CPU where the device has no float64), cast back to each tensor's
    dtype and device."""
    work = {k: v.detach().to(float64_device(v.device), torch.float64) if v.is_floating_point() else v
            for k, v in state.items()}
    work = transform_tensors(work, spec, transforms)
    return {k: work[k].to(state[k].device, state[k].dtype) if state[k].is_floating_point() else state[k].clone()
            for k in state}


def transform_state(
    state: Mapping[str, Tensor], spec: SymmetrySpec, transforms: Mapping[str, Transform]
) -> dict[str, Tensor]:
    """New state dict with every space's transform applied: writers W -> T W, readers V -> V R.

    Checked (sizes, classes, what the dtype carries), then :func:`transform_tensors` in float64,
    cast back. It preserves the function for every transform it accepts; resizing a space that
    norms read (a lift of the residual stream) needs the family: use :func:`transform`.
    """
    _check_transforms(state, spec, transforms, family_lifts=False)
    return _float64_applied(state, spec, transforms)


def transform(model: nn.Module, transforms: Mapping[str, Transform], *, spec: SymmetrySpec | None = None) -> nn.Module:
    """A new model computing the same function as ``model``, with ``transforms`` (space -> element) applied.

    A ``spec`` given must be ``model`` 's own (ValueError otherwise: a spec of a canonical copy does
    not describe the LayerNorm original). A rectangular orthogonal map of a residual stream lifts
    the model to the wider width exactly (the family rescales readers, norm eps and heads).
    """
    if spec is None:
        spec = spec_for(model)
    else:
        check_model(model, spec)
    state = model.state_dict()
    _check_transforms(state, spec, transforms, family_lifts=True)
    return family_of(model).rebuild(model, _float64_applied(state, spec, transforms))


def random_transform(
    spec: SymmetrySpec,
    classes: Classes = ("permutation",),
    generator: torch.Generator | None = None,
    *,
    expand: float = 1.0,
) -> dict[str, Transform]:
    """A random element for every space that admits one of ``classes`` (its most general one).

    ``classes`` is a preset name, a collection of class names or a mapping from space groups to such
    collections (see :func:`~lmc_lib.alignment.resolve_classes`); a class no space admits is an error.

    ``expand`` > 1 widens semi-permutation and orthogonal spaces to round(expand * size) coordinates.
    """
    if not isinstance(spec, SymmetrySpec):
        hint = " (call lmc.spec_for(model) first)" if isinstance(spec, nn.Module) else ""
        raise TypeError(f"random_transform: spec must be a SymmetrySpec, got {type(spec).__name__}{hint}")
    if not expand >= 1:
        raise ValueError(f"random_transform: expand must be >= 1, got {expand}")
    kinds = resolve_classes(spec, classes, caller="random_transform")
    result: dict[str, Transform] = {}
    for name, kind in kinds.items():
        space = spec.spaces[name]
        n = space.size
        m = max(n, round(expand * n)) if space.resizable else n
        if kind == "permutation":
            result[name] = Permutation.random(n, generator)
        elif kind == "semi_permutation":
            result[name] = SemiPermutation.random(n, m, generator)
        elif kind == "orthogonal":
            result[name] = Orthogonal.random(n, m, generator)
        elif kind == "invertible":
            result[name] = Invertible.random(n, generator)
    return result
