"""MLPs: ``nn.Sequential`` stacks of ``nn.Linear`` and elementwise activations.

The hidden space after each Linear (except the last) is written by that Linear's weight rows and
bias and read by the next Linear's weight columns. What it admits depends on what lies between:

- ReLU / LeakyReLU (positively homogeneous): permutation and semi-permutation;
- GELU, tanh, sigmoid, SiLU, ELU, Softplus: permutation;
- nothing (Identity / Dropout only): all four classes, the layers compose linearly.

The spec describes a stack only when the stack is all there is to its function: a plain
``nn.Sequential`` (or :class:`MLP`) whose forward is Sequential's, each position its own module of
exactly one of the supported types, and no forward hooks or parametrizations anywhere. Anything
else is refused, naming the module, rather than described approximately.
"""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..family import Family, load_state, register_family, spec_for
from ..spec import Axis, Space, SymmetrySpec

__all__ = ["MLPConfig", "MLP"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU)
_ELEMENTWISE = (nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Softplus)
_TRANSPARENT = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class MLPConfig:
    """Linear(in -> widths[0]) -> act -> ... -> Linear(widths[-1] -> out); inputs are flattened first."""

    in_features: int = 784
    widths: tuple[int, ...] = (512, 512)
    out_features: int = 10
    activation: str = "relu"
    bias: bool = True

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPConfig: unknown activation {self.activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if not isinstance(self.widths, Iterable) or isinstance(self.widths, str):
            raise TypeError(f"MLPConfig: widths must be a sequence of layer widths, e.g. (512, 512); "
                            f"got {self.widths!r}")
        widths = tuple(self.widths)
        sizes = {"in_features": self.in_features, "out_features": self.out_features}
        sizes |= {f"widths[{i}]": width for i, width in enumerate(widths)}
        for name, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
                raise ValueError(f"MLPConfig: {name} must be a positive int, got {size!r}")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))


class MLP(nn.Sequential):
    """The library's MLP: modules ``flatten, fc1, act1, fc2, act2, ..., fc{L+1}`` from an MLPConfig."""

    def __init__(self, config: MLPConfig) -> None:
        if not isinstance(config, MLPConfig):
            raise TypeError(f"MLP: config must be an MLPConfig, got {type(config).__name__}")
        sizes = (config.in_features, *config.widths, config.out_features)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, fan_out, bias=config.bias)
            if i < len(sizes) - 1:
                layers[f"act{i}"] = ACTIVATIONS[config.activation]()
        super().__init__(layers)
        self.config = config


def _classes_between(modules: list[tuple[str, nn.Module]]) -> tuple[str, ...]:
    kinds = {"permutation", "semi_permutation", "orthogonal", "invertible"}
    for _, module in modules:
        if isinstance(module, _TRANSPARENT):
            continue
        kinds &= {"permutation", "semi_permutation"} if isinstance(module, _HOMOGENEOUS) else {"permutation"}
    return tuple(k for k in ("permutation", "semi_permutation", "orthogonal", "invertible") if k in kinds)


def _check_plain(name: str, module: nn.Module) -> None:
    """ValueError if hooks or parametrizations make ``module`` compute more than its type says."""
    where = f"MLP spec: module {name or '<the model itself>'!r} ({type(module).__name__})"
    if module._forward_hooks or module._forward_pre_hooks:
        raise ValueError(f"{where} has forward hooks, which may change its output; remove them first")
    if parametrize.is_parametrized(module):
        raise ValueError(f"{where} has parametrizations of {sorted(module.parametrizations)}; remove them first "
                         "(torch.nn.utils.parametrize.remove_parametrizations)")


def _layers(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The stack's (name, module) pairs in order; TypeError or ValueError naming what the spec cannot describe."""
    if type(model).forward is not nn.Sequential.forward:
        raise TypeError(f"MLP spec: {type(model).__name__} overrides nn.Sequential.forward, so its function is not "
                        "the stack of its modules; lmc_lib describes plain nn.Sequential stacks")
    _check_plain("", model)
    children = list(model._modules.items())  # named_children() would skip a module that appears twice
    allowed = _HOMOGENEOUS + _ELEMENTWISE + _TRANSPARENT + (nn.Linear,)
    seen: dict[int, str] = {}
    for index, (name, module) in enumerate(children):
        if id(module) in seen:
            raise ValueError(f"MLP spec: modules {seen[id(module)]!r} and {name!r} are the same "
                             f"{type(module).__name__} object; give each position its own module")
        seen[id(module)] = name
        _check_plain(name, module)
        if type(module) is nn.Flatten and index == 0:
            continue
        if type(module) not in allowed:  # a subclass may compute something else
            raise TypeError(
                f"MLP spec: unsupported module {name!r} ({type(module).__name__}); an MLP may hold "
                "nn.Linear, elementwise activations, Dropout/Identity, and a leading nn.Flatten (not subclasses)"
            )
    if not any(isinstance(m, nn.Linear) for _, m in children):
        raise TypeError("MLP spec: the Sequential holds no nn.Linear")
    return children


def mlp_spec(model: nn.Sequential) -> SymmetrySpec:
    """One space per hidden layer: writes (fc_i.weight, 0), (fc_i.bias, 0); reads (fc_{i+1}.weight, 1)."""
    children = _layers(model)
    linear_at = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
    spaces = []
    for here, nxt in zip(linear_at[:-1], linear_at[1:]):
        name, linear = children[here]
        between = children[here + 1 : nxt]
        writes = [Axis(f"{name}.weight", 0)] + ([Axis(f"{name}.bias", 0)] if linear.bias is not None else [])
        probe = next((n for n, m in reversed(between) if not isinstance(m, _TRANSPARENT)), name)
        spaces.append(
            Space(
                name=name,
                size=linear.out_features,
                classes=_classes_between(between),
                writes=tuple(writes),
                reads=(Axis(f"{children[nxt][0]}.weight", 1),),
                probe=probe,
                group="hidden",
            )
        )
    last_name, last = children[linear_at[-1]]
    invariant = (f"{last_name}.bias",) if last.bias is not None else ()
    return SymmetrySpec("mlp", {s.name: s for s in spaces}, invariant)


def rebuild_mlp(model: nn.Sequential, state: Mapping[str, Tensor]) -> nn.Sequential:
    """Load ``state`` into a copy of ``model``, updating Linear sizes (and an MLP's config)."""
    new = load_state(model, state)
    for module in new.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
    if isinstance(new, MLP):
        widths = tuple(m.out_features for _, m in list(new.named_children()) if isinstance(m, nn.Linear))[:-1]
        new.config = replace(new.config, widths=widths)
    return new


def canonicalize_mlp(model: nn.Sequential) -> nn.Sequential:
    """An MLP is its own canonical form: a copy, once its spec describes it (else the spec's error)."""
    spec_for(model)
    return copy.deepcopy(model)


def split_mlp_stem(model: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """Stem = everything up to the first Linear; rest = the remainder. The modules before that Linear
    hold no parameters (:func:`_layers` refuses any other stack), so the stem is affine in its parameters."""
    children = _layers(model)
    first = next(i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear))
    return nn.Sequential(OrderedDict(children[: first + 1])), nn.Sequential(OrderedDict(children[first + 1 :]))


register_family(
    Family(
        name="mlp",
        accepts=lambda model: isinstance(model, nn.Sequential),
        spec=mlp_spec,
        rebuild=rebuild_mlp,
        canonicalize=canonicalize_mlp,
        split_stem=split_mlp_stem,
    )
)
