"""MLPs: ``nn.Sequential`` stacks of ``nn.Linear`` and elementwise activations.

The hidden space after each Linear (except the last) is written by that Linear's weight rows and
bias and read by the next Linear's weight columns. What it admits depends on what lies between:

- ReLU / LeakyReLU (positively homogeneous): permutation and semi-permutation;
- GELU, tanh, sigmoid, SiLU, ELU, Softplus: permutation;
- nothing (Identity / Dropout only): all four classes, the layers compose linearly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from torch import Tensor, nn

from ..family import Family, load_state, register_family
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
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class MLP(nn.Sequential):
    """The library's MLP: modules ``flatten, fc1, act1, fc2, act2, ..., fc{L+1}`` from an MLPConfig."""

    def __init__(self, config: MLPConfig) -> None:
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


def _layers(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    children = list(model.named_children())
    for index, (name, module) in enumerate(children):
        allowed = _HOMOGENEOUS + _ELEMENTWISE + _TRANSPARENT + (nn.Linear,)
        if isinstance(module, nn.Flatten) and index == 0:
            continue
        if not isinstance(module, allowed):
            raise TypeError(
                f"MLP spec: unsupported module {name!r} ({type(module).__name__}); an MLP may hold "
                "nn.Linear, elementwise activations, Dropout/Identity, and a leading nn.Flatten"
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


def split_mlp_stem(model: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """Stem = everything up to the first Linear (affine in its parameters); rest = the remainder."""
    children = list(model.named_children())
    first = next(i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear))
    return nn.Sequential(OrderedDict(children[: first + 1])), nn.Sequential(OrderedDict(children[first + 1 :]))


register_family(
    Family(
        name="mlp",
        accepts=lambda model: isinstance(model, nn.Sequential),
        spec=mlp_spec,
        rebuild=rebuild_mlp,
        split_stem=split_mlp_stem,
    )
)
