"""HF GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``): its layout, symmetry spec, canonical form and rebuild.

Layout quirks, stated once: HF ``Conv1D`` stores its weight as (in, out) (so outputs are along
dim 1); ``c_attn`` fuses q | k | v along the output; the LM head may be tied to ``wte`` (the
canonical form unties it). Attention scale options (``scale_attn_weights``,
``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``) and every attention
implementation are kept: transforms never change a head's width, except the residual lift,
which folds the change of 1/sqrt(head_dim) into the queries. transformers is imported only
when a GPT-2 model is handed over.

The heads space admits permutations only: HF ties the attention width to ``n_embd``
(``split_size = embed_dim``), so a GPT-2 cannot hold extra copies of a head.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..canonical import RMSNorm
from ..family import Family, load_state, register_family
from ..spec import Axis, SymmetrySpec
from .transformer import (
    Block,
    Layout,
    Projection,
    canonicalize_layout,
    lift_residual,
    mlp_classes,
    resize_norms,
    residual_width,
    transformer_spec,
    widen_heads,
)

__all__ = ["gpt2_layout"]


def _is_gpt2(model: nn.Module) -> bool:
    cls = type(model)
    return cls.__name__ in ("GPT2LMHeadModel", "GPT2Model") and cls.__module__.startswith("transformers.")


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise ValueError(f"GPT-2: {message}")


def _prefix(model: nn.Module) -> str:
    return "transformer." if hasattr(model, "lm_head") else ""


def _core(model: nn.Module) -> nn.Module:
    """The GPT2Model inside a GPT2LMHeadModel, or the GPT2Model itself."""
    return model.transformer if hasattr(model, "lm_head") else model


def _block(model: nn.Module, index: int) -> Block:
    name = f"{_prefix(model)}h.{index}"
    block = _core(model).h[index]
    _refuse(hasattr(block, "crossattention"), f"{name}.crossattention (add_cross_attention) is not supported")
    for norm in ("ln_1", "ln_2"):
        module = getattr(block, norm)
        _refuse(not isinstance(module, (nn.LayerNorm, RMSNorm)),
                f"{name}.{norm} is {type(module).__name__}; only LayerNorm (or lmc_lib's RMSNorm) is supported")
    attn, mlp = block.attn, block.mlp
    width = model.config.n_embd
    assert attn.c_attn.weight.shape == (width, 3 * attn.num_heads * attn.head_dim), (
        "HF Conv1D stores (in, out); c_attn is q|k|v"
    )
    assert mlp.c_fc.weight.shape[0] == width and mlp.c_proj.weight.shape[1] == width, "HF Conv1D stores (in, out)"
    return Block(
        name=name,
        norm1=f"{name}.ln_1",
        norm2=f"{name}.ln_2",
        qkv=Projection(f"{name}.attn.c_attn", 1),
        out=Projection(f"{name}.attn.c_proj", 1),
        fc1=Projection(f"{name}.mlp.c_fc", 1),
        fc2=Projection(f"{name}.mlp.c_proj", 1),
        heads=attn.num_heads,
        head_dim=attn.head_dim,
        mlp_width=mlp.c_fc.weight.shape[1],
        head_classes=("permutation",),
        mlp_classes=mlp_classes(mlp.act),
        mlp_probe=f"{name}.mlp.act",
    )


def gpt2_layout(model: nn.Module) -> Layout:
    """The layout of a GPT2LMHeadModel or GPT2Model; ValueError naming the module it cannot describe."""
    prefix = _prefix(model)
    head = None
    if hasattr(model, "lm_head"):
        head = Projection("lm_head", 0, model.lm_head.bias is not None)
    return Layout(
        family="hf-gpt2",
        width=model.config.n_embd,
        embeddings=(Axis(f"{prefix}wte.weight", 1), Axis(f"{prefix}wpe.weight", 1)),
        blocks=tuple(_block(model, i) for i in range(len(_core(model).h))),
        final_norm=f"{prefix}ln_f",
        head=head,
        invariant=("lm_head.bias",) if head is not None and head.bias else (),
    )


def gpt2_spec(model: nn.Module) -> SymmetrySpec:
    """Residual (orthogonal once canonical), per block heads, QK / OV per head, MLP units."""
    return transformer_spec(model, gpt2_layout(model))


def canonicalize_gpt2(model: nn.Module) -> nn.Module:
    """The same GPT-2 class, untied, with LayerNorm -> RMSNorm, gains folded and residual writers centred.

    Folding ln_f's shift gives ``lm_head`` a bias. Save and load it with ``state_dict`` into a
    canonicalised model of the same config (``from_pretrained`` would rebuild LayerNorms).
    ``inputs_embeds`` handed to it must be centred like ``wte`` (mean zero over the width).
    """
    new = canonicalize_layout(model, gpt2_layout(model))
    new.config.tie_word_embeddings = False
    return new


def _attention_scaling(attn: nn.Module, head_dim: int) -> float:
    """GPT2Attention's score scale for ``head_dim``, as its constructor computes it."""
    scaling = head_dim**-0.5 if attn.scale_attn_weights else 1.0
    return scaling / (attn.layer_idx + 1) if attn.scale_attn_by_inverse_layer_idx else scaling


def _sync_sizes(model: nn.Module, width: int, head_dim: int, eps_ratio: float) -> None:
    """Module size attributes and config from the tensors they now hold (in place, on a fresh copy).

    ``config.n_inner`` is set when every block has the same MLP width (the config holds only one).
    """
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if isinstance(module, Conv1D):
            module.nx, module.nf = module.weight.shape
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = module.weight.shape[1]
    core = _core(model)
    for block in core.h:
        attn = block.attn
        attn.embed_dim, attn.head_dim, attn.split_size = width, head_dim, attn.num_heads * head_dim
        attn.scaling = _attention_scaling(attn, head_dim)
    core.embed_dim = width
    widths = {block.mlp.c_fc.nf for block in core.h}
    config = model.config
    config.n_embd, config.layer_norm_epsilon = width, config.layer_norm_epsilon * eps_ratio
    if len(widths) == 1:
        config.n_inner = widths.pop()


def rebuild_gpt2(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """``model`` with ``state`` loaded and its sizes updated; a residual lifted from N to M keeps the
    function (readers times sqrt(N/M), eps times N/M) and widens every head to M / n_head."""
    layout = gpt2_layout(model)
    width = residual_width(state, layout)
    head_dim = layout.blocks[0].head_dim if layout.blocks else width // model.config.n_head
    if width != layout.width:
        heads = model.config.n_head
        _refuse(width % heads != 0, f"a residual of width {width} cannot hold n_head={heads} equal heads "
                "(GPT2Attention needs n_embd = n_head * head_dim)")
        head_dim = width // heads
        exponent = 0.5 if model.config.scale_attn_weights else 0.0
        state = lift_residual(state, layout, width, [head_dim] * len(layout.blocks), scale_exponent=exponent)
    new = load_state(model, state)
    _sync_sizes(new, width, head_dim, layout.width / width)
    resize_norms(new, layout.width, width)
    return new


def widen_gpt2_heads(model: nn.Module, factor: int) -> nn.Module:
    """The same function with every head ``factor`` times wider (zero rows; the queries carry the change
    of the attention scale). The config still says n_embd / n_head: rebuild such a model from its
    state dict, not from its config."""
    layout = gpt2_layout(model)
    head_dim = factor * (layout.blocks[0].head_dim if layout.blocks else model.config.n_embd // model.config.n_head)
    exponent = 0.5 if model.config.scale_attn_weights else 0.0
    state = widen_heads(model.state_dict(), layout, [head_dim] * len(layout.blocks), scale_exponent=exponent)
    new = load_state(model, state)
    _sync_sizes(new, layout.width, head_dim, 1.0)
    return new


register_family(
    Family(name="hf-gpt2", accepts=_is_gpt2, spec=gpt2_spec, rebuild=rebuild_gpt2, canonicalize=canonicalize_gpt2,
           widen_heads=widen_gpt2_heads)
)
