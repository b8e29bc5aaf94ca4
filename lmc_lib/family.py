"""The model-family registry: how a family of models describes itself to the algorithms.

A :class:`Family` says which models it accepts, builds their :class:`~lmc_lib.spec.SymmetrySpec`,
rebuilds a model from a (possibly resized) state dict, and optionally rewrites a model into its
canonical form and splits off an affine *stem* for fast barrier evaluation. Adding a family touches
only its own file in ``lmc_lib/models/`` and its test class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .spec import SymmetrySpec

__all__ = ["Family", "register_family", "family_of", "spec_for", "canonicalize", "load_state", "FAMILIES"]


def load_state(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose tensors are replaced by ``state`` (shapes may change).

    Each tensor keeps its dtype, device and ``requires_grad``; tied tensors become untied.
    """
    new = copy.deepcopy(model)
    for name, value in state.items():
        module_name, _, attr = name.rpartition(".")
        module = new.get_submodule(module_name)
        old = getattr(module, attr)
        value = value.detach().to(dtype=old.dtype, device=old.device).clone()
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
        elif attr in module._buffers:
            module._buffers[attr] = value
        else:
            raise ValueError(f"load_state: {name!r} is neither a parameter nor a buffer of the model")
    return new


@dataclass(frozen=True)
class Family:
    """How one family of models describes itself; see the module docstring."""

    name: str
    accepts: Callable[[nn.Module], bool]
    spec: Callable[[nn.Module], SymmetrySpec]
    rebuild: Callable[[nn.Module, Mapping[str, Tensor]], nn.Module] = load_state
    canonicalize: Callable[[nn.Module], nn.Module] = copy.deepcopy
    #: model -> (stem, rest) with model(x) == rest(stem(x)) and stem(x) affine in the stem's
    #: parameters; the names of both parts' parameters are the model's own.
    split_stem: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None
    #: (model, k) -> the same function with every attention head k times wider (zero rows, the
    #: attention scale kept); what circuit-space interpolation (``lmc_lib.circuits``) builds on.
    widen_heads: Callable[[nn.Module, int], nn.Module] | None = None


FAMILIES: list[Family] = []


def register_family(family: Family) -> Family:
    """Add a family to the registry (later registrations are tried first)."""
    FAMILIES.insert(0, family)
    return family


def family_of(model: nn.Module) -> Family:
    """The registered family that accepts ``model``; TypeError naming the class otherwise."""
    for family in FAMILIES:
        if family.accepts(model):
            return family
    names = ", ".join(f.name for f in reversed(FAMILIES))
    raise TypeError(f"lmc_lib has no symmetry spec for {type(model).__name__}; supported families: {names}")


def spec_for(model: nn.Module) -> SymmetrySpec:
    """The SymmetrySpec of ``model``: its named spaces, their classes and the axes they touch."""
    spec = family_of(model).spec(model)
    spec.check(model.state_dict())
    return spec


def canonicalize(model: nn.Module) -> nn.Module:
    """A function-equivalent copy of ``model`` in its family's canonical form (input untouched)."""
    return family_of(model).canonicalize(model)
