"""Pre-norm Transformers described once as data, for the ViT and GPT-2 families.

A :class:`Layout` names, with the checkpoint's own state_dict keys, everything that touches the
residual stream: the embeddings that write it; per block two norms and four projections
(attention in = fused q|k|v, attention out, MLP in, MLP out); the final norm and the head that
reads it. From a layout follow the symmetry spec, the canonical form (``lmc_lib.canonical``) and
the exact lift of the residual to a larger width. A family file only fills in the layout, checks
what it cannot describe, and keeps its modules' size attributes in step with their tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..canonical import RMSNorm, center, fold_norm, pad_heads, replace_module, scale_heads
from ..family import load_state
from ..spec import Axis, Circuit, Probe, Space, SymmetrySpec

__all__ = [
    "Projection", "Block", "Layout", "mlp_classes", "is_canonical", "transformer_spec", "canonicalize_layout",
    "block_heads", "widen_heads", "lift_residual", "residual_width", "resize_norms",
]

#: inside a head only the products q k^T and v o matter: any invertible map of its coordinates
INSIDE_HEAD = ("permutation", "orthogonal", "invertible")
#: weight-matching sweeps: the paper's orthogonal residual converges in about five
ROUNDS = 5


@dataclass(frozen=True)
class Projection:
    """A linear map ``module``; its weight stores outputs along ``out_dim`` (0: nn.Linear, 1: HF Conv1D)."""

    module: str
    out_dim: int = 0
    bias: bool = True

    @property
    def in_dim(self) -> int:
        return 1 - self.out_dim

    @property
    def weight_name(self) -> str:
        return f"{self.module}.weight"

    @property
    def bias_name(self) -> str:
        return f"{self.module}.bias"

    def outputs(self, start: int = 0, length: int | None = None, block: int = 1) -> tuple[Axis, ...]:
        """The output coordinates [start, start + length): weight along ``out_dim`` and the bias."""
        weight = Axis(self.weight_name, self.out_dim, start, length, block)
        return (weight, Axis(self.bias_name, 0, start, length, block)) if self.bias else (weight,)

    def inputs(self, start: int = 0, length: int | None = None, block: int = 1) -> tuple[Axis, ...]:
        return (Axis(self.weight_name, self.in_dim, start, length, block),)


@dataclass(frozen=True)
class Block:
    """x + out(attention(qkv(norm1(x)))), then x + fc2(act(fc1(norm2(x)))); ``name`` is the block's module."""

    name: str
    norm1: str
    norm2: str
    qkv: Projection
    out: Projection
    fc1: Projection
    fc2: Projection
    heads: int
    head_dim: int
    mlp_width: int
    head_classes: tuple[str, ...]
    mlp_classes: tuple[str, ...]
    mlp_probe: str

    @property
    def attention(self) -> str:
        return self.qkv.module.rpartition(".")[0]

    @property
    def mlp(self) -> str:
        return self.fc1.module.rpartition(".")[0]


@dataclass(frozen=True)
class Layout:
    """What touches the residual stream of width ``width``; ``head`` is None when the model's output
    is the (normalised) residual stream itself, whose coordinates are then part of the function."""

    family: str
    width: int
    embeddings: tuple[Axis, ...]
    blocks: tuple[Block, ...]
    final_norm: str | None
    head: Projection | None
    invariant: tuple[str, ...] = ()

    @property
    def norms(self) -> tuple[str, ...]:
        """The norms that read the residual stream, in order."""
        final = (self.final_norm,) if self.final_norm else ()
        return tuple(n for b in self.blocks for n in (b.norm1, b.norm2)) + final

    def readers(self) -> tuple[tuple[str, Projection], ...]:
        """(norm, the projection that reads it) for every norm followed by a linear map."""
        pairs = tuple((n, p) for b in self.blocks for n, p in ((b.norm1, b.qkv), (b.norm2, b.fc1)))
        return pairs + (((self.final_norm, self.head),) if self.head is not None else ())

    def writers(self) -> tuple[Axis, ...]:
        """Every residual write outside the norms: embeddings, attention and MLP outputs."""
        return self.embeddings + tuple(a for b in self.blocks for a in b.out.outputs() + b.fc2.outputs())


def mlp_classes(activation: nn.Module) -> tuple[str, ...]:
    """Permutation for any elementwise activation; semi-permutation too when it is positively homogeneous."""
    return ("permutation", "semi_permutation") if isinstance(activation, (nn.ReLU, nn.LeakyReLU)) else ("permutation",)


def is_canonical(model: nn.Module, layout: Layout) -> bool:
    """True when every norm on the residual stream is an RMSNorm (then rotations of it are symmetries)."""
    return all(isinstance(model.get_submodule(n), RMSNorm) for n in layout.norms)


def _attention_spaces(block: Block) -> list[Space]:
    """Heads (H coordinates of head_dim rows of q, k, v and columns of out), then QK and OV inside each head.

    Probes: a head's outputs are the out-projection's input (blocks of head_dim); inside head i,
    its queries write QK and its keys read it, its outputs write OV.
    """
    h, d = block.heads, block.head_dim
    q, k, v = (block.qkv.outputs(part * h * d, h * d, d) for part in range(3))
    o = block.out.inputs(block=d)
    spaces = [
        Space(
            f"{block.attention}.heads",
            h,
            block.head_classes,
            q + k + v,
            o,
            probe=Probe(block.out.module, inputs=True),
            circuits=(Circuit(q, k), Circuit(o, v)),
            group="heads",
        )
    ]
    for i in range(h):
        queries = Probe(block.qkv.module, start=i * d, length=d)
        keys = Probe(block.qkv.module, start=(h + i) * d, length=d, role="read")
        spaces.append(Space(f"{block.attention}.head{i}.qk", d, INSIDE_HEAD, block.qkv.outputs(i * d, d),
                            block.qkv.outputs((h + i) * d, d), probe=(queries, keys), group="qk", resizable=False))
        spaces.append(
            Space(
                f"{block.attention}.head{i}.ov",
                d,
                INSIDE_HEAD,
                block.qkv.outputs((2 * h + i) * d, d),
                block.out.inputs(i * d, d),
                probe=Probe(block.out.module, inputs=True, start=i * d, length=d),
                group="ov",
                resizable=False,
            )
        )
    return spaces


def _residual_space(model: nn.Module, layout: Layout) -> Space:
    """Written by the embeddings, every attention and MLP output (and LayerNorm gains and shifts, which
    permute with it); read by every projection after a norm. Orthogonal only in canonical form.
    Probed after every block; anchored by the embeddings and the head."""
    norm_params = tuple(Axis(f"{n}.{p}", 0) for n in layout.norms for p, _ in model.get_submodule(n).named_parameters())
    reads = tuple(a for _, p in layout.readers() for a in p.inputs())
    classes = ("permutation", "orthogonal") if is_canonical(model, layout) else ("permutation",)
    probes = tuple(block.name for block in layout.blocks) or None
    return Space("residual", layout.width, classes, layout.writers() + norm_params, reads, probe=probes,
                 group="residual", anchored=True, normed=True)


def transformer_spec(model: nn.Module, layout: Layout) -> SymmetrySpec:
    """Residual, per block the heads (with QK and OV inside each head) and the MLP hidden units."""
    spaces: list[Space] = []
    for block in layout.blocks:
        spaces += _attention_spaces(block)
        spaces.append(Space(block.mlp, block.mlp_width, block.mlp_classes, block.fc1.outputs(), block.fc2.inputs(),
                            probe=block.mlp_probe, group="mlp"))
    residual = _residual_space(model, layout)
    invariant = layout.invariant
    if layout.head is None:  # the output is the residual stream: its tensors are fixed
        inner = {a.param for s in spaces for a in s.axes}
        invariant += tuple(dict.fromkeys(a.param for a in residual.axes if a.param not in inner))
    else:
        spaces.insert(0, residual)
    return SymmetrySpec(layout.family, {s.name: s for s in spaces}, invariant, rounds=ROUNDS)


def _canonical_state(model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    """float64 state with each norm's gain and shift folded into its reader and every writer centred.

    Readers are centred too (W -> W M): they only ever see mean-zero vectors, so the function is
    the same, and then no tensor uses the direction 1 of the residual, which no data can reveal.
    """
    state = {k: v.detach().double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for norm, reader in layout.readers():
        gain, shift = state.pop(f"{norm}.weight", None), state.pop(f"{norm}.bias", None)
        weight, bias = fold_norm(state[reader.weight_name], state.get(reader.bias_name), gain, shift, reader.in_dim)
        state[reader.weight_name] = center(weight, reader.in_dim)
        if bias is not None:
            state[reader.bias_name] = bias
    for axis in layout.writers():
        state[axis.param] = center(state[axis.param], axis.dim)
    return state


def _check_centred(model: nn.Module, layout: Layout) -> None:
    """ValueError unless every residual writer is mean-zero over the width (RMSNorm then acts as in
    the canonical form; a model with RMSNorm and uncentred writers is no canonical form of a LayerNorm one)."""
    state = model.state_dict()
    for axis in layout.writers():
        tensor = state[axis.param].double()
        drift = float(tensor.mean(axis.dim).abs().max()) if tensor.numel() else 0.0
        if drift > 1e-5 * (float(tensor.abs().max()) + 1e-30):
            raise ValueError(f"{layout.family}: the norms are RMSNorms but {axis.param} does not write mean-zero "
                             f"vectors (mean up to {drift:.3g}); this is not a canonical form lmc_lib can keep")


def canonicalize_layout(model: nn.Module, layout: Layout) -> nn.Module:
    """A copy of ``model`` with LayerNorm -> RMSNorm, gains and shifts folded into the readers, writers centred.

    A reader without a bias gets one when its norm had a shift. A norm with no linear reader (the
    final norm of a model that outputs the residual stream) stays as it is: it sees a mean-zero
    stream, on which LayerNorm and RMSNorm followed by its affine agree.
    """
    if layout.head is not None and layout.final_norm is None:
        raise ValueError(f"{layout.family}: the head reads the residual stream without a final norm; "
                         "its mean, which the canonical form removes, would change the output")
    replaced = [norm for norm, _ in layout.readers()]  # a norm without a linear reader stays as it is
    rms = [n for n in replaced if isinstance(model.get_submodule(n), RMSNorm)]
    if rms and len(rms) < len(replaced):
        raise ValueError(f"{layout.family}: {rms[0]} is already an RMSNorm but other norms are LayerNorms; "
                         "canonicalize only models whose norms are all LayerNorm (or all canonical)")
    if rms:
        _check_centred(model, layout)
        return copy.deepcopy(model)  # already canonical: the copy is exact
    state = _canonical_state(model, layout)
    new = copy.deepcopy(model)
    for norm, reader in layout.readers():
        old = new.get_submodule(norm)
        replace_module(new, norm, RMSNorm(layout.width, old.eps).train(old.training))
        module = new.get_submodule(reader.module)
        if reader.bias_name in state and getattr(module, "bias", None) is None:
            weight = module.weight
            module.bias = nn.Parameter(
                weight.new_zeros(weight.shape[reader.out_dim]), requires_grad=weight.requires_grad
            )
    return load_state(new, state)


def block_heads(state: dict[str, Tensor], block: Block) -> int:
    """Number of heads of ``block`` in ``state`` (a head split changes it; head_dim stays)."""
    return state[block.qkv.weight_name].shape[block.qkv.out_dim] // (3 * block.head_dim)


def widen_heads(
    state: dict[str, Tensor], layout: Layout, head_dims: Sequence[int], *, scale_exponent: float
) -> dict[str, Tensor]:
    """``state`` (float64) with the heads of each block widened with zero rows to ``head_dims`` (one
    per block) and the queries multiplied by (new / old head_dim) ** scale_exponent, so that an
    attention scale of head_dim ** -scale_exponent is kept: the same function, wider heads."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    for block, new_dim in zip(layout.blocks, head_dims):
        if new_dim == block.head_dim:
            continue
        factor = (new_dim / block.head_dim) ** scale_exponent
        queries = block_heads(state, block) * new_dim
        for axis in block.qkv.outputs():
            widened = pad_heads(state[axis.param], axis.dim, block.head_dim, new_dim)
            state[axis.param] = scale_heads(widened, axis.dim, queries, factor)
        for axis in block.out.inputs():
            state[axis.param] = pad_heads(state[axis.param], axis.dim, block.head_dim, new_dim)
    return state


def lift_residual(
    state: dict[str, Tensor], layout: Layout, width: int, head_dims: Sequence[int], *, scale_exponent: float
) -> dict[str, Tensor]:
    """Finish lifting the residual from ``layout.width`` = N to ``width`` = M after O (M x N) was applied.

    RMSNorm_M(O x) = O RMSNorm_N(x) / c with c = sqrt(N / M) once eps is scaled by N / M (the
    caller scales eps), so every reader W O^T is multiplied by c (paper, App. E). Heads are then
    widened to ``head_dims`` (:func:`widen_heads`).
    """
    c = math.sqrt(layout.width / width)
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    for _, reader in layout.readers():
        state[reader.weight_name] = state[reader.weight_name] * c
    return widen_heads(state, layout, head_dims, scale_exponent=scale_exponent)


def residual_width(state: dict[str, Tensor], layout: Layout) -> int:
    axis = layout.embeddings[0]
    return state[axis.param].shape[axis.dim]


def resize_norms(model: nn.Module, old: int, new: int) -> None:
    """RMSNorms of a model lifted from width ``old`` to ``new``: new width, eps times old / new (in place)."""
    for module in model.modules():
        if isinstance(module, RMSNorm) and module.normalized_shape == (old,):
            module.normalized_shape = (new,)
            module.eps = module.eps * old / new
