"""lmc.lift: exact for every family and activation, the shapes of a model built wide, alignable to one; refusals."""

from functools import partial

import numpy as np
import pytest
import torch
from timm.layers import LayerNorm
from torch import nn

import lmc_lib as lmc
from contract import max_relative_error, outputs, same_state
from lmc_lib.alignment import check_pair
from lmc_lib.canonical import RMSNorm
from lmc_lib.learned import uniform
from strategies import build_mlp
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit

MLP_ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "silu", "identity")


@pytest.mark.parametrize("activation", MLP_ACTIVATIONS)
def test_an_mlp_lifts_exactly_to_the_shapes_of_a_wide_one(activation, generator):
    narrow = build_mlp(lmc.MLPConfig(6, (8, 7), 3, activation=activation), 0)
    original = build_mlp(lmc.MLPConfig(6, (8, 7), 3, activation=activation), 0)
    wide = lmc.lift(narrow, {"fc1": 13, "fc2": 10}, generator=generator)
    x = torch.randn(16, 6, generator=generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5
    assert wide.config.widths == (13, 10) and same_state(narrow, original)
    check_pair(wide, build_mlp(lmc.MLPConfig(6, (13, 10), 3, activation=activation), 1))
    assert lmc.lift(narrow, {"hidden": 9}).config.widths == (9, 9)  # a group names every hidden layer


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_padding_and_splits_are_what_the_activation_allows(activation, generator):
    narrow = build_mlp(lmc.MLPConfig(6, (8,), 3, activation=activation), 0)
    wide = lmc.lift(narrow, {"fc1": 12}, generator=generator)
    added = wide.fc2.weight[:, 8:]
    if activation == "gelu":  # GELU(a z) != a GELU(z): new units are zero, appended
        assert torch.equal(added, torch.zeros_like(added)) and torch.equal(wide.fc1.weight[:8], narrow.fc1.weight)
    else:  # ReLU units are split: every new unit copies one of the old ones
        assert not torch.equal(added, torch.zeros_like(added))


@pytest.mark.parametrize("act_layer", [nn.GELU, nn.ReLU])
def test_a_vit_lifts_exactly_to_the_shapes_of_a_wide_one(act_layer, generator):
    narrow = vit(dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, act_layer=act_layer))
    wide = lmc.lift(narrow, {"residual": 32, "mlp": 64}, generator=generator)
    x = images(narrow, generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5
    eps = narrow.norm.eps * 16 / 32  # the lift scales eps by N / M (the paper's App. E)
    built = vit(dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, act_layer=act_layer,
                     norm_layer=partial(LayerNorm, eps=eps)), 1)
    check_pair(wide, built)


def test_vit_heads_split_exactly(generator):
    narrow = vit(dict(embed_dim=16, depth=1, num_heads=2))
    wide = lmc.lift(narrow, {"heads": 5}, generator=generator)
    x = images(narrow, generator)
    assert wide.blocks[0].attn.num_heads == 5
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_a_gpt2_lifts_exactly_to_the_shapes_of_a_wide_one(activation, generator):
    narrow = gpt2(dict(n_embd=16, n_layer=2, n_head=4, n_inner=24, activation_function=activation))
    wide = lmc.lift(narrow, {"residual": 32, "mlp": 40}, generator=generator)
    x = tokens(generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5
    eps = narrow.config.layer_norm_epsilon * 16 / 32
    built = gpt2(dict(n_embd=32, n_layer=2, n_head=4, n_inner=40, activation_function=activation,
                      layer_norm_epsilon=eps), 1)
    check_pair(wide, built)


def test_a_lift_aligns_to_another_lift_of_the_same_model_with_zero_barrier(generator):
    """Two lifts of one narrow GPT-2 differ by a symmetry of the wide one: weight matching finds it."""
    narrow = gpt2(dict(n_embd=16, n_layer=1, n_head=2, n_inner=24))
    first = lmc.lift(narrow, {"residual": 24, "mlp": 32}, generator=generator)
    planted = lmc.random_transform(lmc.spec_for(first), {"residual": ("orthogonal",), "heads": ("permutation",),
                                                         "mlp": ("permutation",)}, generator)
    wide = lmc.transform(first, planted)
    second = lmc.lift(narrow, {"residual": 24, "mlp": 32}, generator=generator)
    aligned = lmc.weight_matching(wide, second, classes="paper").apply(second)
    data = [(tokens(generator, 3, 8), tokens(generator, 3, 8)) for _ in range(2)]
    assert np.ptp(lmc.barrier(wide, second, data, lambdas=3, progress=False).losses) > 0.01
    curve = lmc.barrier(wide, aligned, data, lambdas=5, progress=False)
    assert np.ptp(curve.losses) < 1e-5 and abs(curve.barrier) < 1e-5


def test_learned_matching_aligns_a_lifted_model_to_a_wide_one(generator):
    """The paper's width-heterogeneous recipe: lift, weight matching, learned matching with the wide model
    weighted by U(0.2, 0.5) (so lambda, which weights the lifted B, by U(0.5, 0.8)); the maps stay exact."""
    narrow = gpt2(dict(n_embd=16, n_layer=1, n_head=2, n_inner=24))
    lifted = lmc.lift(narrow, {"residual": 32, "mlp": 64}, generator=generator)
    eps = narrow.config.layer_norm_epsilon / 2
    wide = gpt2(dict(n_embd=32, n_layer=1, n_head=2, n_inner=64, layer_norm_epsilon=eps), 1)
    data = [(tokens(generator, 3, 8), tokens(generator, 3, 8)) for _ in range(3)]
    initial = lmc.weight_matching(wide, lifted, classes="paper")
    learned = lmc.learned_matching(wide, lifted, data, init=initial, steps=6, eval_every=3,
                                   sampler=uniform(0.5, 0.8))
    x = tokens(generator)
    assert max_relative_error(outputs(narrow, x), outputs(learned.apply(lifted), x)) <= 1e-5


def test_sizes_a_family_cannot_reach_are_refused(generator):
    model = gpt2(dict(n_embd=16, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match="a residual of width 18 cannot hold n_head=4 equal heads"):
        lmc.lift(model, {"residual": 18}, generator=generator)
    with pytest.raises(ValueError, match="the hf-gpt2 family cannot add heads"):
        lmc.lift(model, {"transformer.h.0.attn.heads": 6})
    with pytest.raises(ValueError, match=r"space 'transformer.h.0.attn.head0.qk' has a fixed size 4"):
        lmc.lift(model, {"transformer.h.0.attn.head0.qk": 6})
    with pytest.raises(ValueError, match="read through LayerNorms.*call lmc.canonicalize"):
        lmc.lift(gpt2(dict(n_embd=16, n_layer=1, n_head=4), canonical=False), {"residual": 32})
    with pytest.raises(ValueError, match="space 'residual' has size 16; a lift only widens"):
        lmc.lift(model, {"residual": 8})
    with pytest.raises(ValueError, match="'blocks' is neither a space nor a space group of the hf-gpt2 spec"):
        lmc.lift(model, {"blocks": 32})
    with pytest.raises(TypeError, match="the size of 'residual' must be an integer, got float"):
        lmc.lift(model, {"residual": 32.0})
    with pytest.raises(TypeError, match="sizes must be a mapping"):
        lmc.lift(model, [("residual", 32)])


def test_split_false_pads_relu_units_exactly(generator):
    narrow = build_mlp(lmc.MLPConfig(6, (8, 7), 3, activation="relu"), 0)
    padded = lmc.lift(narrow, {"hidden": 12}, generator=generator, split=False)
    x = torch.randn(16, 6, generator=generator)
    assert max_relative_error(outputs(narrow, x), outputs(padded, x)) <= 1e-5
    assert torch.equal(padded.fc1.weight[:8], narrow.fc1.weight) and torch.equal(padded.fc2.weight[:7, :8],
                                                                                 narrow.fc2.weight)
    for new in (padded.fc1.weight[8:], padded.fc1.bias[8:], padded.fc2.weight[:, 8:], padded.fc3.weight[:, 7:]):
        assert torch.equal(new, torch.zeros_like(new))
    split = lmc.lift(narrow, {"hidden": 12}, generator=generator)
    assert not torch.equal(split.fc3.weight[:, 7:], torch.zeros_like(split.fc3.weight[:, 7:]))


def test_heads_cannot_be_padded(generator):
    narrow = vit(dict(embed_dim=16, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="the heads of space 'blocks.0.attn.heads' can be split, not padded"):
        lmc.lift(narrow, {"heads": 4}, generator=generator, split=False)
    wide = lmc.lift(narrow, {"residual": 32}, generator=generator, split=False)  # orthogonal lifts are unaffected
    x = images(narrow, generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5


def test_norm_eps_makes_a_lift_pair_with_a_wide_model_of_another_eps_and_is_not_exact():
    """norm_eps: the tensors are the exact lift's, only the norms' eps changes (in the modules and the config),
    so the lift pairs with a wide model built with that eps; the function moves unless norm_eps is the exact
    eps * N / M. The narrow eps is large here, so the move is large enough to see."""
    narrow = gpt2(dict(n_embd=16, n_layer=1, n_head=2, n_inner=24, layer_norm_epsilon=1e-2))

    def lifted(**options):
        return lmc.lift(narrow, {"residual": 64, "mlp": 32}, generator=torch.Generator().manual_seed(0), **options)

    exact, forced = lifted(), lifted(norm_eps=1e-2)
    assert same_state(exact, forced)
    norms = [m for m in forced.modules() if isinstance(m, RMSNorm)]
    assert norms and all(m.eps == 1e-2 for m in norms) and forced.config.layer_norm_epsilon == 1e-2
    assert narrow.config.layer_norm_epsilon == 1e-2 and narrow.transformer.ln_f.eps == 1e-2  # the input untouched
    wide = gpt2(dict(n_embd=64, n_layer=1, n_head=2, n_inner=32, layer_norm_epsilon=1e-2), 1)
    check_pair(forced, wide)
    with pytest.raises(ValueError, match="eps"):
        check_pair(exact, wide)
    x = tokens(torch.Generator().manual_seed(1))
    assert max_relative_error(outputs(narrow, x), outputs(exact, x)) <= 1e-5
    assert max_relative_error(outputs(narrow, x), outputs(lifted(norm_eps=1e-2 * 16 / 64), x)) <= 1e-5
    assert max_relative_error(outputs(narrow, x), outputs(forced, x)) > 1e-3


def test_norm_eps_reaches_a_vits_norms_and_is_refused_where_no_norm_is_resized(generator):
    narrow = vit(dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0))
    eps = narrow.norm.eps
    lifted = lmc.lift(narrow, {"residual": 32}, generator=generator, norm_eps=eps)
    check_pair(lifted, vit(dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=1.0), 1))
    with pytest.raises(ValueError, match="this lift resizes none; leave norm_eps out"):
        lmc.lift(narrow, {"mlp": 48}, generator=generator, norm_eps=eps)
    for wrong in (0.0, -1e-5, float("nan"), True, "1e-5"):
        with pytest.raises(ValueError, match="norm_eps must be a positive number"):
            lmc.lift(narrow, {"residual": 32}, norm_eps=wrong)
