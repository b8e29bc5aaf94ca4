"""What every matcher shares: the :class:`Alignment` it returns, the choice of classes, the pair checks.

A matcher takes two models that must compute the same *kind* of function (same family, same
modules with the same settings, same tensor shapes) and a request for symmetry classes. Both are
checked here once, so that every matcher refuses what it cannot honour in the same words:

- :func:`check_pair` compares the models' architectures (:func:`architecture`): every module's
  type and its scalar settings (activation, head count, norm eps, attention scale, ...), and every
  tensor's name, shape and dtype; it names the first difference;
- :func:`resolve_classes` turns ``classes`` (a preset name, class names or objects, or a mapping
  from space groups to them) into one class per space, and refuses unknown names, unknown groups
  and classes that no space admits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .family import spec_for
from .spec import SymmetrySpec
from .symmetry import CLASS_ORDER, SYMMETRY_CLASSES, Transform

__all__ = [
    "Alignment",
    "CLASS_PRESETS",
    "Classes",
    "architecture",
    "check_pair",
    "compare_architectures",
    "check_model",
    "check_finite",
    "matched_pair",
    "resolve_classes",
]

_PERMUTED = {
    "hidden": ("permutation",),
    "residual": ("permutation",),
    "heads": ("permutation",),
    "mlp": ("permutation",),
}

#: Named class sets, by space group. "paper": the paper's weight matching (an orthogonal residual,
#: permutations of heads and MLP units; MLPs: permutations); "permutations": permutations only,
#: the Git Re-Basin baseline (the residual permuted, nothing inside the heads);
#: "invertible heads": "paper" plus an invertible map inside every head (its QK and OV factors).
CLASS_PRESETS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "paper": {**_PERMUTED, "residual": ("orthogonal",)},
    "permutations": _PERMUTED,
    "invertible heads": {**_PERMUTED, "residual": ("orthogonal",), "qk": ("invertible",), "ov": ("invertible",)},
}

#: what ``classes=`` accepts: a preset name, a class name or class, a collection of them, or a
#: mapping from space groups to such collections
Classes = str | type | Iterable[str | type] | Mapping[str, Iterable[str | type]]

#: module attributes that do not change the function (how it is computed, or bookkeeping)
_IGNORED_SETTINGS = frozenset({"training", "fused_attn", "inplace", "is_causal", "layer_idx", "dynamic_img_size",
                               "dynamic_img_pad", "grad_checkpointing", "gradient_checkpointing", "name_or_path"})


def _settings(module: nn.Module) -> dict[str, object]:
    """A module's public scalar attributes (eps, num_heads, scaling, negative_slope, approximate, ...)."""
    found = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in _IGNORED_SETTINGS:
            continue
        if isinstance(value, (bool, int, float, str)) or (isinstance(value, tuple) and
                                                          all(isinstance(v, (bool, int, float, str)) for v in value)):
            found[key] = value
    return found


def architecture(model: nn.Module) -> dict[str, tuple[str, dict[str, object]]]:
    """module name -> (class name, scalar settings): what, besides its tensors, decides the function."""
    described = {name: (type(module).__qualname__, _settings(module)) for name, module in model.named_modules()}
    config = getattr(model, "config", None)
    if config is not None and hasattr(
        config, "to_dict"
    ):  # HF: attention implementation aside, the config is the function
        keep = ("n_head", "num_attention_heads", "activation_function", "layer_norm_epsilon", "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings", "n_positions")
        settings = {k: v for k, v in config.to_dict().items() if k in keep}
        described["<config>"] = (type(config).__qualname__, settings)
    return described


def _same(x: object, y: object) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    return x == y


def check_pair(a: nn.Module, b: nn.Module, *, what: str = "models") -> None:
    """ValueError naming the first difference between ``a`` and ``b`` that could change the function.

    Compared: every module's type and scalar settings (the activation and its slope, the number of
    heads, norm eps, the attention scale, ...) and every tensor's name, shape and dtype. Two models
    that pass compute the same kind of function, so that interpolating them means something.
    """
    if type(a) is not type(b):
        raise ValueError(f"{what} are of different classes: {type(a).__qualname__} vs {type(b).__qualname__}")
    compare_architectures(architecture(a), architecture(b), what=what)
    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))
        raise ValueError(f"{what} have different tensors: {only[:5]} are in only one of them")
    for name in state_a:
        x, y = state_a[name], state_b[name]
        if x.shape != y.shape:
            raise ValueError(f"{what} differ at tensor {name!r}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.dtype != y.dtype:
            raise ValueError(f"{what} differ at tensor {name!r}: dtype {x.dtype} vs {y.dtype}; cast one of them first")


def compare_architectures(arch_a: Mapping[str, tuple[str, dict]], arch_b: Mapping[str, tuple[str, dict]], *,
                          what: str = "models") -> None:
    """ValueError naming the first module whose type or scalar settings differ (see :func:`architecture`)."""
    if arch_a.keys() != arch_b.keys():
        only = sorted(set(arch_a) ^ set(arch_b))
        raise ValueError(f"{what} differ: modules {only[:5]} are in only one of them")
    for name in arch_a:
        (type_a, set_a), (type_b, set_b) = arch_a[name], arch_b[name]
        where = name or "<the model itself>"
        if type_a != type_b:
            hint = ""
            if {type_a, type_b} == {"RMSNorm", "LayerNorm"}:
                hint = " (one is in canonical form and the other is not: call lmc.canonicalize on the other first)"
            raise ValueError(f"{what} differ at module {where!r}: {type_a} vs {type_b}{hint}")
        for key in sorted(set(set_a) | set(set_b)):
            if not _same(set_a.get(key), set_b.get(key)):
                raise ValueError(f"{what} differ at module {where!r}: {key} = {set_a.get(key)!r} vs {set_b.get(key)!r}")


def check_finite(model: nn.Module, label: str) -> None:
    """ValueError naming the first floating tensor of ``model`` (called ``label``) with a NaN or inf."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.numel() and not torch.isfinite(tensor.detach()).all():
            raise ValueError(f"model {label}: tensor {name!r} has NaN or infinite entries")


def matched_pair(a: nn.Module, b: nn.Module, *, caller: str) -> SymmetrySpec:
    """The spec of two models that ``caller`` may align: same architecture, both described by one
    spec (the family refuses what it cannot describe, e.g. a model with hooks), finite tensors."""
    for label, model in (("A", a), ("B", b)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{caller}: model {label} must be an nn.Module, got {type(model).__name__}")
    check_pair(a, b)
    spec = spec_for(a)
    check_model(b, spec)
    check_finite(a, "A")
    check_finite(b, "B")
    return spec


def _spec_difference(own: SymmetrySpec, spec: SymmetrySpec) -> str:
    """Where ``own`` (the model's spec) and ``spec`` differ, in words."""
    if own.family != spec.family:
        return f"it is a {own.family} model, the spec is of a {spec.family} model"
    for name, space in spec.spaces.items():
        mine = own.spaces.get(name)
        if mine is None:
            return f"it has no space {name!r}"
        if mine.size != space.size:
            return f"its space {name!r} has size {mine.size}, the spec's {space.size}"
        if mine.classes != space.classes:
            hint = ""
            if space.normed and "orthogonal" in space.classes + mine.classes:
                hint = ": one is in canonical form and the other is not; call lmc.canonicalize on the model first"
            return f"its space {name!r} admits {mine.classes}, the spec's {space.classes}{hint}"
        if mine != space:
            return f"its space {name!r} touches other tensors than the spec's"
    extra = [name for name in own.spaces if name not in spec.spaces]
    return f"it has spaces {extra[:3]} that the spec does not" if extra else "their invariant tensors differ"


def check_model(model: nn.Module, spec: SymmetrySpec, reference: Mapping[str, tuple[str, dict]] | None = None) -> None:
    """ValueError unless ``model`` is one that ``spec`` (and the architecture ``reference``) describes.

    A spec found on canonical copies does not describe the LayerNorm original: applying its
    transforms there would silently change the function.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model (nn.Module), got {type(model).__name__}")
    own = spec_for(model)
    if own.family != spec.family:
        raise ValueError(f"the model is not the one the spec describes: {_spec_difference(own, spec)}")
    if reference is not None:
        compare_architectures(reference, architecture(model), what="the alignment's model and this one")
    if own != spec:
        raise ValueError(f"the model is not the one the spec describes: {_spec_difference(own, spec)}")


def _class_name(item: object, where: str) -> str:
    if isinstance(item, type) and issubclass(item, Transform) and getattr(item, "kind", None) in SYMMETRY_CLASSES:
        return item.kind
    if isinstance(item, str) and item in SYMMETRY_CLASSES:
        return item
    hint = f"; presets: {tuple(CLASS_PRESETS)}" if isinstance(item, str) else ""
    raise ValueError(f"classes{where}: unknown symmetry class {item!r}; expected one of {CLASS_ORDER}{hint}")


def _class_tuple(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, (str, type)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"classes{where}: expected class names, got {type(value).__name__}")
    return tuple(dict.fromkeys(_class_name(item, where) for item in value))


def normalise_classes(classes: Classes) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """``classes`` as a tuple of class names, or a dict from group to such tuples (presets expanded)."""
    if isinstance(classes, str) and classes in CLASS_PRESETS:
        return {group: tuple(names) for group, names in CLASS_PRESETS[classes].items()}
    if isinstance(classes, Mapping):
        return {str(group): _class_tuple(names, f"[{group!r}]") for group, names in classes.items()}
    return _class_tuple(classes, "")


def _kind(admitted: tuple[str, ...], allowed: tuple[str, ...], supported: tuple[str, ...]) -> str | None:
    """The most general class in ``allowed`` that the space admits and the caller solves."""
    chosen = [c for c in CLASS_ORDER if c in allowed and c in admitted and c in supported]
    if not chosen and "semi_permutation" in allowed and "permutation" in admitted and "permutation" in supported:
        return "permutation"  # at equal widths a semi-permutation alignment is a permutation
    return chosen[-1] if chosen else None


def resolve_classes(spec: SymmetrySpec, classes: Classes, supported: tuple[str, ...] = CLASS_ORDER, *,
                    caller: str, spaces: Iterable[str] | None = None) -> dict[str, str]:
    """space name -> the class ``caller`` uses for it: the most general one that ``classes`` allows,
    the space admits and the caller solves. Every requested class must be used by some space, and a
    mapping may only name groups the spec has (a preset names groups of every family, so only its
    groups that the spec has count). ``spaces`` restricts the candidates (spaces with probes)."""
    preset = isinstance(classes, str) and classes in CLASS_PRESETS
    wanted = normalise_classes(classes)
    candidates = [spec.spaces[n] for n in (spec.spaces if spaces is None else spaces)]
    groups = {s.group for s in spec.spaces.values()}
    if isinstance(wanted, dict):
        unknown = [g for g in wanted if g not in groups]
        if unknown and not preset:
            raise ValueError(
                f"{caller}: classes name space groups {unknown} that the {spec.family} spec does not have; "
                f"its groups are {sorted(groups)}"
            )
        requests = {g: names for g, names in wanted.items() if g in groups}
    else:
        requests = {None: wanted}
    kinds: dict[str, str] = {}
    for space in candidates:
        allowed = requests.get(space.group, ()) if None not in requests else requests[None]
        kind = _kind(space.classes, allowed, supported)
        if kind is not None:
            kinds[space.name] = kind
    for group, names in requests.items():
        members = [s for s in candidates if group is None or s.group == group]
        for name in names:
            if not any(_kind(s.classes, (name,), supported) for s in members):
                raise ValueError(_unhonoured(spec, caller, group, name, members, supported))
    if not kinds:
        raise ValueError(f"{caller}: no space of the {spec.family} spec admits the classes {classes!r}")
    return kinds


def _unhonoured(spec: SymmetrySpec, caller: str, group: str | None, name: str, members, supported) -> str:
    where = f"no {group!r} space" if group is not None else "no space"
    if name not in supported:
        return f"{caller} does not solve {name!r} maps; it solves {supported}"
    if name == "orthogonal" and any(s.group == "residual" for s in members):
        return (f"{caller}: {where} of the {spec.family} spec admits 'orthogonal': the residual stream is only "
                "rotation-symmetric in canonical form (RMSNorm); call lmc.canonicalize on both models first")
    admitted = sorted({c for s in members for c in s.classes})
    return f"{caller}: {where} of the {spec.family} spec admits {name!r} (they admit {admitted})"


@dataclass(frozen=True)
class Alignment:
    """Transforms (space name -> element) that map B into A's coordinates; ``history`` logs the objective.

    ``architecture`` describes the model the transforms were found on: :meth:`apply` refuses a model
    that is not that one (a LayerNorm original of canonical copies, a model with other heads).
    """

    transforms: Mapping[str, Transform]
    spec: SymmetrySpec = field(repr=False)
    history: tuple[float, ...] = ()
    architecture: Mapping[str, tuple[str, dict]] | None = field(default=None, repr=False, compare=False)

    def apply(self, model: nn.Module) -> nn.Module:
        """The aligned copy of ``model`` (a new model; the input is untouched)."""
        from .transform import transform

        check_model(model, self.spec, self.architecture)
        return transform(model, self.transforms, spec=self.spec)

