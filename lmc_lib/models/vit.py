"""timm VisionTransformer: its layout, symmetry spec, canonical form and rebuild.

Supported: timm's pre-norm ``Block`` (LayerNorm or lmc_lib's RMSNorm, ``Attention`` with a fused
``qkv`` Linear of shape (3 H d, D) holding q | k | v, ``Mlp`` with any elementwise activation),
learned position embeddings, with or without class token, global pool '' / 'token' / 'avg'
(the mean over tokens commutes with every linear map), qkv bias or not. timm is imported only
when a timm model is handed over. Anything else is refused with an error naming the module.
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
    block_heads,
    canonicalize_layout,
    lift_residual,
    mlp_classes,
    resize_norms,
    residual_width,
    transformer_spec,
    widen_heads,
)

__all__ = ["vit_layout"]

_POOLS = ("", "token", "avg")


def _is_vit(model: nn.Module) -> bool:
    cls = type(model)
    return cls.__name__ == "VisionTransformer" and cls.__module__.startswith("timm.")


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise ValueError(f"timm ViT: {message}")


def _norm(model: nn.Module, name: str) -> str:
    module = model.get_submodule(name)
    _refuse(not isinstance(module, (nn.LayerNorm, RMSNorm)),
            f"{name} is {type(module).__name__}; only LayerNorm (or lmc_lib's RMSNorm) is supported")
    return name


def _block(model: nn.Module, index: int) -> Block:
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block as TimmBlock

    name = f"blocks.{index}"
    block = model.blocks[index]
    _refuse(type(block) is not TimmBlock,
            f"{name} is {type(block).__name__}; only the pre-norm Block is supported (no post-norm or parallel blocks)")
    for scale in ("ls1", "ls2"):
        _refuse(
            not isinstance(getattr(block, scale), nn.Identity),
            f"{name}.{scale} is LayerScale (init_values); not supported",
        )
    attn, mlp = block.attn, block.mlp
    _refuse(type(attn) is not Attention, f"{name}.attn is {type(attn).__name__}; only timm's Attention is supported")
    for norm in ("q_norm", "k_norm"):
        _refuse(not isinstance(getattr(attn, norm), nn.Identity), f"{name}.attn.{norm}: qk-norm is not supported")
    _refuse(
        not isinstance(attn.norm, nn.Identity),
        f"{name}.attn.norm: attention output norm (scale_attn_norm) is not supported",
    )
    _refuse(getattr(attn, "gate", None) is not None, f"{name}.attn.gate: gated attention is not supported")
    _refuse(type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear),
            f"{name}.mlp is {type(mlp).__name__}; only timm's Mlp with Linear layers is supported")
    _refuse(not isinstance(mlp.norm, nn.Identity), f"{name}.mlp.norm: MLP norm (scale_mlp_norm) is not supported")
    width = model.embed_dim
    assert attn.qkv.weight.shape == (3 * attn.num_heads * attn.head_dim, width), "timm fused qkv stores (3 H d, D)"
    return Block(
        name=name,
        norm1=_norm(model, f"{name}.norm1"),
        norm2=_norm(model, f"{name}.norm2"),
        qkv=Projection(f"{name}.attn.qkv", 0, attn.qkv.bias is not None),
        out=Projection(f"{name}.attn.proj", 0, attn.proj.bias is not None),
        fc1=Projection(f"{name}.mlp.fc1", 0, mlp.fc1.bias is not None),
        fc2=Projection(f"{name}.mlp.fc2", 0, mlp.fc2.bias is not None),
        heads=attn.num_heads,
        head_dim=attn.head_dim,
        mlp_width=mlp.fc1.out_features,
        head_classes=("permutation", "semi_permutation"),
        mlp_classes=mlp_classes(mlp.act),
        mlp_probe=f"{name}.mlp.act",
    )


def vit_layout(model: nn.Module) -> Layout:
    """The layout of a timm VisionTransformer; ValueError naming the module it cannot describe."""
    from timm.layers import PatchEmbed

    _refuse(model.reg_token is not None, "reg_token: register tokens are not supported")
    _refuse(not isinstance(model.norm_pre, nn.Identity),
            "norm_pre (pre_norm=True) normalises the residual stream itself; not supported")
    _refuse(type(model.patch_embed) is not PatchEmbed or not isinstance(model.patch_embed.norm, nn.Identity),
            "patch_embed must be timm's PatchEmbed without a norm")
    _refuse(model.attn_pool is not None, f"attn_pool (global_pool {model.global_pool!r}) is not supported")
    _refuse(model.global_pool not in _POOLS,
            f"global_pool {model.global_pool!r} does not commute with the residual transforms; use one of {_POOLS}")
    _refuse(model.global_pool == "token" and model.cls_token is None,
            "global_pool 'token' without a class token (cls_token is None)")
    proj = model.patch_embed.proj
    embeddings = tuple(Axis(f"patch_embed.proj.{p}", 0) for p in ("weight", "bias") if getattr(proj, p) is not None)
    embeddings += tuple(Axis(name, 2) for name in ("cls_token", "pos_embed") if getattr(model, name) is not None)
    final = next((n for n in ("norm", "fc_norm") if not isinstance(getattr(model, n), nn.Identity)), None)
    head = Projection("head", 0, model.head.bias is not None) if isinstance(model.head, nn.Linear) else None
    return Layout(
        family="timm-vit",
        width=model.embed_dim,
        embeddings=embeddings,
        blocks=tuple(_block(model, i) for i in range(len(model.blocks))),
        final_norm=_norm(model, final) if final else None,
        head=head,
        invariant=("head.bias",) if head is not None and head.bias else (),
    )


def vit_spec(model: nn.Module) -> SymmetrySpec:
    """Residual (orthogonal once canonical), per block heads (semi-permutation), QK / OV per head, MLP units."""
    return transformer_spec(model, vit_layout(model))


def canonicalize_vit(model: nn.Module) -> nn.Module:
    """The same timm VisionTransformer with LayerNorm -> RMSNorm, gains folded, residual writers centred."""
    return canonicalize_layout(model, vit_layout(model))


def _sync_sizes(model: nn.Module, width: int, head_dims: list[int]) -> None:
    """Module size attributes from the tensors they now hold (in place, on a fresh copy)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
    for block, head_dim in zip(model.blocks, head_dims):
        attn = block.attn
        attn.head_dim, attn.num_heads = head_dim, attn.qkv.out_features // (3 * head_dim)
        attn.attn_dim, attn.scale = attn.num_heads * head_dim, head_dim**-0.5
    model.embed_dim = model.num_features = model.head_hidden_size = width
    for info in model.feature_info:
        info["num_chs"] = width


def rebuild_vit(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """``model`` with ``state`` loaded and its sizes updated: a lifted residual keeps the function
    (readers times sqrt(N/M), eps times N/M) and widens heads to M / H when H divides M."""
    layout = vit_layout(model)
    width = residual_width(state, layout)
    head_dims = [b.head_dim for b in layout.blocks]
    if width != layout.width:
        heads = [block_heads(state, b) for b in layout.blocks]
        head_dims = [width // h if width % h == 0 else d for h, d in zip(heads, head_dims)]
        state = lift_residual(state, layout, width, head_dims, scale_exponent=0.5)
    new = load_state(model, state)
    _sync_sizes(new, width, head_dims)
    resize_norms(new, layout.width, width)
    return new


def widen_vit_heads(model: nn.Module, factor: int) -> nn.Module:
    """The same function with every head ``factor`` times wider (zero rows, queries times sqrt(factor)
    so that the attention scale stays 1 / sqrt(old head_dim))."""
    layout = vit_layout(model)
    head_dims = [factor * b.head_dim for b in layout.blocks]
    new = load_state(model, widen_heads(model.state_dict(), layout, head_dims, scale_exponent=0.5))
    _sync_sizes(new, layout.width, head_dims)
    return new


register_family(
    Family(
        name="timm-vit",
        accepts=_is_vit,
        spec=vit_spec,
        rebuild=rebuild_vit,
        canonicalize=canonicalize_vit,
        widen_heads=widen_vit_heads,
    )
)
