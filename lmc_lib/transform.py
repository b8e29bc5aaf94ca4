"""Apply symmetry transforms to a model's parameters, and draw random ones.

Everything here is a pure function over state dicts: arithmetic in float64, results cast back to
each tensor's dtype, the caller's tensors and models never modified.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .alignment import Classes, resolve_classes
from .family import family_of, spec_for
from .spec import Axis, SymmetrySpec
from .symmetry import (
    Invertible,
    Orthogonal,
    Permutation,
    SemiPermutation,
    Transform,
)

__all__ = ["apply_along", "transform_state", "transform", "random_transform"]


def apply_along(tensor: Tensor, axis: Axis, matrix: Tensor | Permutation) -> Tensor:
    """Return ``tensor`` with its axis slice x (size n, blocks of ``axis.block``) replaced by M x.

    ``matrix`` is (m, n) and acts on the coordinate index; a Permutation is applied by indexing.
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


def transform_state(
    state: Mapping[str, Tensor], spec: SymmetrySpec, transforms: Mapping[str, Transform]
) -> dict[str, Tensor]:
    """New state dict with every space's transform applied: writers W -> T W, readers V -> V R.

    Spaces are applied one after another in spec order; arithmetic is float64.
    """
    unknown = [name for name in transforms if name not in spec.spaces]
    if unknown:
        raise KeyError(f"transforms name spaces that the {spec.family} spec does not have: {unknown}")
    for name, t in transforms.items():
        space = spec.spaces[name]
        if t.size_in != space.size:
            raise ValueError(f"space {name!r} has size {space.size} but its {t.kind} acts on {t.size_in} coordinates")
        if t.kind not in space.classes:
            raise ValueError(f"space {name!r} admits {space.classes}, not {t.kind}")
        if t.size_out != space.size and not space.resizable:
            raise ValueError(f"space {name!r} has a fixed size {space.size}; its {t.kind} would resize it to {t.size_out}")
    _check_resizing(spec, transforms)
    work = {k: v.detach().to(torch.float64) if v.is_floating_point() else v for k, v in state.items()}
    for name, space in spec.spaces.items():
        t = transforms.get(name)
        if t is None:
            continue
        write = t if isinstance(t, Permutation) else t.matrix
        read = t if isinstance(t, Permutation) else t.read_matrix.T
        for role_matrix, axes in ((write, space.writes), (read, space.reads)):
            for axis in sorted(axes, key=lambda a: -a.start):
                work[axis.param] = apply_along(work[axis.param], axis, role_matrix)
    return {k: work[k].to(state[k].dtype) if state[k].is_floating_point() else state[k].clone() for k in state}


def transform(model: nn.Module, transforms: Mapping[str, Transform], *, spec: SymmetrySpec | None = None) -> nn.Module:
    """A new model computing the same function as ``model``, with ``transforms`` (space -> element) applied."""
    spec = spec_for(model) if spec is None else spec
    state = transform_state(model.state_dict(), spec, transforms)
    return family_of(model).rebuild(model, state)


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
