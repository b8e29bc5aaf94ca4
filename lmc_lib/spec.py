"""SymmetrySpec: which parameter axes share a transform (after git-re-basin's permutation spec).

A model family describes itself once as data: named *spaces*, each with its size, the symmetry
classes it admits, the parameter axes that write it and those that read it. Every algorithm
(transform, random_transform, the matchers) reads only this description.

An :class:`Axis` names a slice of one dimension of one ``state_dict`` tensor:
``tensor.narrow(dim, start, length)`` reshaped to ``(size, block)`` along ``dim``. ``block > 1``
lets one coordinate of a space own several consecutive entries (an attention head owns
``head_dim`` rows of the query weight); ``start``/``length`` select one part of a fused tensor
(the query rows of a fused qkv weight).

A :class:`Probe` names where activations carry a space's coordinates (for activation matching).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from .symmetry import CLASS_ORDER

__all__ = ["Axis", "Circuit", "Probe", "Space", "SymmetrySpec", "flatten_axis"]


@dataclass(frozen=True)
class Axis:
    """A slice of dimension ``dim`` of the tensor ``param``: entries [start, start + length)."""

    param: str
    dim: int
    start: int = 0
    length: int | None = None
    block: int = 1

    def __post_init__(self) -> None:
        def count(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.param, str) or not count(self.dim):
            raise TypeError(f"Axis: param must be a tensor name and dim an integer, got {self.param!r}, {self.dim!r}")
        if not count(self.start) or self.start < 0:
            raise ValueError(f"Axis of {self.param}: start must be an integer >= 0, got {self.start!r}")
        if self.length is not None and (not count(self.length) or self.length < 1):
            raise ValueError(f"Axis of {self.param}: length must be None or an integer >= 1, got {self.length!r}")
        if not count(self.block) or self.block < 1:
            raise ValueError(f"Axis of {self.param}: block must be an integer >= 1, got {self.block!r}")

    def extent(self, shape: torch.Size) -> int:
        """Number of entries of the slice along ``dim`` for a tensor of this shape."""
        return shape[self.dim] - self.start if self.length is None else self.length

    def covers_whole_dim(self, shape: torch.Size) -> bool:
        return self.start == 0 and self.extent(shape) == shape[self.dim]


@dataclass(frozen=True)
class Circuit:
    """A product that the space's coordinates leave invariant inside each block.

    Coordinate i owns a block of ``block`` rows in each factor; the circuit of coordinate i is
    sum_r left_i[r]^T right_i[r] (e.g. the QK circuit W_Q^i W_K^i^T of head i, or its OV circuit).
    ``left`` and ``right`` list axes whose per-block rows are concatenated (a weight and its bias).
    """

    left: tuple[Axis, ...]
    right: tuple[Axis, ...]


@dataclass(frozen=True)
class Probe:
    """Activations that carry a space's coordinates: the output of ``module`` (its first input when
    ``inputs``), entries [start, start + length) of the last dimension, one row per example or token.

    Entries come in blocks of width / size per coordinate (a head's ``head_dim`` outputs).
    ``role="write"`` activations transform like the space's writers, x -> T x (queries, a head's
    outputs); ``role="read"`` ones like its readers, x -> T^-T x (keys, the other factor of QK).
    """

    module: str
    inputs: bool = False
    start: int = 0
    length: int | None = None
    role: str = "write"

    def __post_init__(self) -> None:
        if self.role not in ("write", "read"):
            raise ValueError(f"probe of {self.module!r}: role must be 'write' or 'read', got {self.role!r}")


@dataclass(frozen=True)
class Space:
    """A set of ``size`` coordinates written by ``writes`` and read by ``reads``.

    ``probe`` names the module whose output carries this space in its last dimension (used by
    activation matching), or gives :class:`Probe` s (several: their rows are pooled, e.g. the
    residual stream after every block); ``None`` when no module output does. ``circuits``, when
    given, are what weight matching compares for this space instead of the raw writer/reader rows.
    """

    name: str
    size: int
    classes: tuple[str, ...]
    writes: tuple[Axis, ...]
    reads: tuple[Axis, ...]
    probe: str | Probe | tuple[str | Probe, ...] | None = None
    circuits: tuple[Circuit, ...] = ()
    #: the kind of space ("hidden", "residual", "heads", "mlp", "qk", "ov"), so that callers can choose
    #: classes per kind: ``classes={"residual": ("orthogonal",), "heads": ("permutation",)}``
    group: str = ""
    #: False where the architecture fixes the size (the width of one attention head): transforms
    #: of such a space must be square, and ``random_transform(expand=...)`` leaves it at its size
    resizable: bool = True
    #: True when the tensors that no other space touches pin this space down on their own (the
    #: embeddings and the head pin the residual stream): the first sweep of weight matching solves
    #: it from them alone, since the other spaces of its remaining tensors are not aligned yet
    anchored: bool = False
    #: True when norms read the space (a Transformer's residual stream): a rectangular orthogonal map
    #: then needs the family's rescaling of readers and eps, so only lmc.transform may resize it
    normed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            raise ValueError(f"space {self.name!r}: classes must be a tuple of class names, got the string "
                             f"{self.classes!r} (write ({self.classes!r},))")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"space {self.name!r}: size must be an integer >= 1, got {self.size!r}")
        unknown = [c for c in self.classes if c not in CLASS_ORDER]
        if unknown:
            raise ValueError(f"space {self.name!r}: unknown symmetry classes {unknown}; expected {CLASS_ORDER}")

    @property
    def axes(self) -> tuple[Axis, ...]:
        return self.writes + self.reads

    @property
    def params(self) -> frozenset[str]:
        """The tensors the space transforms or compares (its axes' and its circuits')."""
        circuit_axes = (axis for c in self.circuits for axis in c.left + c.right)
        return frozenset(axis.param for axis in (*self.axes, *circuit_axes))

    @property
    def probes(self) -> tuple[Probe, ...]:
        """``probe`` as a tuple of :class:`Probe` (a module name is its whole output)."""
        given = self.probe if isinstance(self.probe, tuple) else () if self.probe is None else (self.probe,)
        return tuple(Probe(p) if isinstance(p, str) else p for p in given)

    def most_general(self, allowed: Iterable[str] | Mapping[str, Iterable[str]]) -> str | None:
        """The most general class that this space admits and ``allowed`` contains, or None.

        ``allowed`` is a collection of class names, or a mapping from space groups to collections
        (spaces whose group it does not name get None).
        """
        allowed = set(allowed.get(self.group, ()) if isinstance(allowed, Mapping) else allowed)
        chosen = [c for c in CLASS_ORDER if c in allowed and c in self.classes]
        return chosen[-1] if chosen else None


@dataclass(frozen=True)
class SymmetrySpec:
    """The spaces of a model family, keyed by name, plus the floating tensors no space touches."""

    family: str
    spaces: Mapping[str, Space]
    invariant: tuple[str, ...] = ()
    #: how many sweeps weight matching makes by default (None: until no space improves, at most 100);
    #: Transformers: 5, where the paper's orthogonal residual converges
    rounds: int | None = None
    _by_param: Mapping[str, tuple[tuple[str, Axis, str], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spaces = dict(self.spaces) if not isinstance(self.spaces, Mapping) else dict(self.spaces.items())
        for key, space in spaces.items():
            if key != space.name:
                raise ValueError(f"spec key {key!r} differs from its space's name {space.name!r}")
        object.__setattr__(self, "spaces", MappingProxyType(spaces))
        by_param: dict[str, list[tuple[str, Axis, str]]] = {}
        for space in spaces.values():
            for role, axes in (("write", space.writes), ("read", space.reads)):
                for axis in axes:
                    by_param.setdefault(axis.param, []).append((space.name, axis, role))
        object.__setattr__(self, "_by_param", MappingProxyType({k: tuple(v) for k, v in by_param.items()}))

    def axes_of(self, param: str) -> tuple[tuple[str, Axis, str], ...]:
        """Reverse index: (space name, axis, 'write' | 'read') for every axis of ``param`` in a space."""
        return self._by_param.get(param, ())

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the tensors that some space touches."""
        return tuple(self._by_param)

    def check(self, state: Mapping[str, Tensor]) -> None:
        """Raise ValueError unless every axis fits ``state`` and every floating tensor is accounted for."""
        for space in self.spaces.values():
            circuit_axes = tuple(axis for circuit in space.circuits for axis in circuit.left + circuit.right)
            for axis in space.axes + circuit_axes:
                if axis.param not in state:
                    raise ValueError(f"space {space.name!r}: parameter {axis.param!r} is not in the model")
                shape = state[axis.param].shape
                if not -len(shape) <= axis.dim < len(shape):
                    raise ValueError(
                        f"space {space.name!r}: {axis.param} has no dimension {axis.dim} (shape {tuple(shape)})"
                    )
                if axis.extent(shape) != space.size * axis.block or axis.start + axis.extent(shape) > shape[axis.dim]:
                    raise ValueError(
                        f"space {space.name!r} of size {space.size} (block {axis.block}) does not fit "
                        f"{axis.param} dim {axis.dim} slice [{axis.start}, +{axis.extent(shape)}) "
                        f"of shape {tuple(shape)}"
                    )
        touched = set(self.params) | set(self.invariant)
        loose = [k for k, v in state.items() if v.is_floating_point() and k not in touched]
        if loose:
            raise ValueError(f"{self.family} spec: floating tensors in no space and not declared invariant: {loose}")

    def overlapping(self, name: str) -> tuple[str, ...]:
        """The other spaces acting on some of the same entries as ``name`` (same tensor and dimension,
        intersecting slices), in spec order: their transforms and this one's do not commute."""
        end = lambda a: float("inf") if a.length is None else a.start + a.length  # noqa: E731
        found = {
            other
            for axis in self.spaces[name].axes
            for other, o, _ in self.axes_of(axis.param)
            if other != name and o.dim == axis.dim and o.start < end(axis) and axis.start < end(o)
        }
        return tuple(n for n in self.spaces if n in found)

    def sizes(self) -> dict[str, int]:
        return {name: space.size for name, space in self.spaces.items()}


def flatten_axis(tensor: Tensor, axis: Axis, *, keep_block: bool = False) -> Tensor:
    """View the axis slice of ``tensor`` as a (size, -1) matrix: one row per coordinate of the space.

    With ``keep_block`` the result is (size, block, -1): one row per entry of each coordinate's block.
    """
    dim = axis.dim % tensor.ndim
    part = tensor.narrow(dim, axis.start, axis.extent(tensor.shape))
    shape = part.shape
    size = shape[dim] // axis.block
    part = part.reshape(*shape[:dim], size, axis.block, *shape[dim + 1 :])
    if keep_block:
        return part.movedim((dim, dim + 1), (0, 1)).reshape(size, axis.block, -1)
    return part.movedim(dim, 0).reshape(size, -1)
