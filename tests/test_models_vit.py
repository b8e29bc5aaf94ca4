"""The timm ViT family: adapter contract over tiny configs, canonical form, exact width lift, refusals."""

from functools import partial

import pytest
import torch
from timm.layers import LayerNorm
from timm.models.eva import Eva
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock, VisionTransformer
from torch import nn

import lmc_lib as lmc
from contract import AdapterContract, max_relative_error, outputs
from lmc_lib.canonical import RMSNorm


def vit(config: dict, seed: int = 0, *, canonical: bool | None = None) -> VisionTransformer:
    """A tiny timm ViT from ``config`` (VisionTransformer keywords plus 'canonical'), every tensor
    perturbed so that norm gains and shifts, biases and the class token are not at their init values."""
    config = dict(config)
    default = config.pop("canonical", True)
    canonical = default if canonical is None else canonical
    torch.manual_seed(seed)
    model = VisionTransformer(**{"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 5, **config})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    model.eval()
    return lmc.canonicalize(model) if canonical else model


def images(model: VisionTransformer, generator: torch.Generator, n: int = 4) -> torch.Tensor:
    proj = model.patch_embed
    return torch.randn(n, proj.proj.in_channels, *proj.img_size, generator=generator)


class TestViT(AdapterContract):
    CONFIGS = [
        dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0),
        dict(embed_dim=24, depth=2, num_heads=3, mlp_ratio=1.5, qkv_bias=False, drop_rate=0.1, attn_drop_rate=0.1,
             proj_drop_rate=0.1, drop_path_rate=0.1),
        dict(embed_dim=32, depth=2, num_heads=4, global_pool="avg", class_token=False, img_size=16, in_chans=3),
        dict(embed_dim=48, depth=3, num_heads=4, mlp_ratio=1.0, act_layer=nn.ReLU, global_pool="avg"),
        dict(embed_dim=16, depth=2, num_heads=1, no_embed_class=True, proj_bias=False),
        dict(embed_dim=16, depth=1, num_heads=2, global_pool="", num_classes=3),
        dict(embed_dim=16, depth=1, num_heads=2, num_classes=0),
        dict(embed_dim=16, depth=2, num_heads=2, canonical=False),
        dict(embed_dim=24, depth=1, num_heads=4, global_pool="avg", qkv_bias=False, canonical=False),
    ]

    def build(self, config, seed):
        return vit(config, seed)

    def inputs(self, model, generator):
        return images(model, generator)

    def test_canonical_form_preserves_function(self, config, generator):
        model = vit(config, canonical=False)
        canon = lmc.canonicalize(model)
        x = images(model, generator)
        assert type(canon) is VisionTransformer
        assert max_relative_error(outputs(model, x), outputs(canon, x)) <= 1e-5
        fresh = lmc.canonicalize(vit(config, seed=1, canonical=False))
        fresh.load_state_dict(canon.state_dict())
        assert max_relative_error(outputs(canon, x), outputs(fresh, x)) <= 1e-6

    def test_residual_is_orthogonal_exactly_when_canonical(self, config, generator):
        canon, plain = vit(config, canonical=True), vit(config, canonical=False)
        if canon.num_classes == 0:  # the output is the residual stream: no residual space at all
            assert "residual" not in lmc.spec_for(canon).spaces
            return
        assert lmc.spec_for(canon).spaces["residual"].classes == ("permutation", "orthogonal")
        assert lmc.spec_for(plain).spaces["residual"].classes == ("permutation",)
        assert "residual" not in lmc.random_transform(lmc.spec_for(plain), ("orthogonal",), generator)


def test_canonical_norms_are_rms_without_parameters():
    canon = vit(TestViT.CONFIGS[0])
    norms = [m for m in canon.modules() if isinstance(m, (nn.LayerNorm, RMSNorm))]
    assert norms and all(isinstance(m, RMSNorm) and not list(m.parameters()) for m in norms)
    assert canon.blocks[0].attn.qkv.bias is not None and canon.head.bias is not None


def test_rectangular_orthogonal_lift_gives_an_equivalent_wider_vit(generator):
    narrow = vit(dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0))
    lift = lmc.Orthogonal.random(16, 32, generator)
    wide = lmc.transform(narrow, {"residual": lift})
    x = images(narrow, generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5
    assert wide.embed_dim == 32 and wide.blocks[0].attn.head_dim == 16 and wide.norm.eps == pytest.approx(0.5e-6)
    # the same architecture as a ViT built at width 32 (eps halved), so the two can be interpolated
    built = vit(dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=1.0, norm_layer=partial(LayerNorm, eps=0.5e-6)))
    built.load_state_dict(wide.state_dict())
    assert max_relative_error(outputs(wide, x), outputs(built, x)) <= 1e-6


def test_lift_keeps_head_width_when_heads_do_not_divide_the_new_width(generator):
    narrow = vit(dict(embed_dim=20, depth=1, num_heads=4))
    wide = lmc.transform(narrow, {"residual": lmc.Orthogonal.random(20, 30, generator)})
    x = images(narrow, generator)
    assert wide.blocks[0].attn.head_dim == 5 and wide.blocks[0].attn.qkv.weight.shape == (60, 30)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5


def test_head_split_gives_more_heads_of_the_same_width(generator):
    model = vit(dict(embed_dim=16, depth=1, num_heads=2))
    split = lmc.SemiPermutation.random(2, 5, generator)
    wide = lmc.transform(model, {"blocks.0.attn.heads": split})
    x = images(model, generator)
    assert wide.blocks[0].attn.num_heads == 5 and wide.blocks[0].attn.head_dim == 8
    assert max_relative_error(outputs(model, x), outputs(wide, x)) <= 1e-5


def test_head_width_is_fixed():
    spec = lmc.spec_for(vit(TestViT.CONFIGS[0]))
    with pytest.raises(ValueError, match="has a fixed size 8"):
        lmc.transform_state(
            vit(TestViT.CONFIGS[0]).state_dict(), spec, {"blocks.0.attn.head0.qk": lmc.Orthogonal.random(8, 12)}
        )


def test_barrier_vmap_equals_loop(generator):
    a, b = vit(TestViT.CONFIGS[1], 0), vit(TestViT.CONFIGS[1], 1)
    x = images(a, generator, 12)
    data = [
        (x[:6], torch.randint(0, 5, (6,), generator=generator)),
        (x[6:], torch.randint(0, 5, (6,), generator=generator)),
    ]
    fast = lmc.barrier(a, b, data, lambdas=5, strategy="vmap", progress=False)
    slow = lmc.barrier(a, b, data, lambdas=5, strategy="loop", progress=False)
    assert abs(lmc.barrier(a, a, data, lambdas=3, progress=False).barrier) < 1e-6
    assert abs(fast.losses - slow.losses).max() < 1e-5


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(qk_norm=True), r"blocks\.0\.attn\.q_norm: qk-norm"),
        (dict(init_values=0.1), r"blocks\.0\.ls1 is LayerScale"),
        (dict(reg_tokens=2), r"reg_token: register tokens"),
        (dict(pre_norm=True), r"norm_pre"),
        (dict(block_fn=ResPostBlock), r"blocks\.0 is ResPostBlock"),
        (dict(block_fn=ParallelScalingBlock), r"blocks\.0 is ParallelScalingBlock"),
        (dict(attn_layer="diff"), r"blocks\.0\.attn is DiffAttention"),
        (dict(global_pool="max"), r"global_pool 'max'"),
        (dict(global_pool="map"), r"attn_pool"),
        (dict(scale_mlp_norm=True), r"blocks\.0\.mlp\.norm"),
    ],
)
def test_unsupported_variant_is_refused(config, match):
    with pytest.raises(ValueError, match=match):
        lmc.spec_for(vit(dict(embed_dim=16, depth=1, num_heads=2, **config), canonical=False))


def test_token_pool_without_class_token_is_refused():
    model = vit(dict(embed_dim=16, depth=1, num_heads=2, class_token=False, global_pool="avg"), canonical=False)
    model.global_pool = "token"
    with pytest.raises(ValueError, match="global_pool 'token' without a class token"):
        lmc.spec_for(model)


def test_head_without_final_norm_cannot_be_canonicalized():
    with pytest.raises(ValueError, match="without a final norm"):
        vit(dict(embed_dim=16, depth=1, num_heads=2, final_norm=False))


def test_rope_vit_is_refused():
    eva = Eva(
        img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=1, num_heads=2, use_rot_pos_emb=True
    )
    with pytest.raises(TypeError, match="no symmetry spec for Eva"):
        lmc.spec_for(eva)
