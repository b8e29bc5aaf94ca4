"""The tensor identities behind the canonical form (lmc_lib/canonical.py), on random float64 data."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import lmc_lib as lmc
from lmc_lib.canonical import RMSNorm, center, fold_norm
from lmc_lib.symmetry import Orthogonal, Permutation

WIDTH = 12


def _sample(seed: int) -> tuple[torch.Generator, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return generator, torch.randn(7, WIDTH, generator=generator, dtype=torch.float64)


def test_rmsnorm_commutes_with_rotations_and_layernorm_only_with_permutations():
    generator, x = _sample(0)
    rotation = Orthogonal.random(WIDTH, generator=generator).matrix
    permutation = Permutation.random(WIDTH, generator=generator).matrix.double()
    rms = RMSNorm(WIDTH, eps=0.0)
    layer_norm = partial(F.layer_norm, normalized_shape=(WIDTH,))
    torch.testing.assert_close(rms(x @ rotation.T), rms(x) @ rotation.T)
    torch.testing.assert_close(layer_norm(x @ permutation.T), layer_norm(x) @ permutation.T)
    assert (layer_norm(x @ rotation.T) - layer_norm(x) @ rotation.T).abs().max() > 1e-2


def test_layernorm_is_gain_times_rmsnorm_of_centred_input_plus_shift():
    generator, x = _sample(1)
    gain, shift = (
        torch.rand(WIDTH, generator=generator, dtype=torch.float64) + 0.5,
        torch.randn(WIDTH, generator=generator, dtype=torch.float64),
    )
    expected = F.layer_norm(x, (WIDTH,), gain, shift, eps=1e-5)
    torch.testing.assert_close(gain * RMSNorm(WIDTH, eps=1e-5)(center(x, -1)) + shift, expected)
    assert center(x, -1).mean(-1).abs().max() < 1e-12


def test_fold_norm_moves_gain_and_shift_into_the_reader():
    # W'(RMSNorm x) + b' = W (g RMSNorm x + s) + b, for a weight stored (out, in) and one stored (in, out)
    generator, x = _sample(2)
    gain, shift = (
        torch.rand(WIDTH, generator=generator, dtype=torch.float64) + 0.5,
        torch.randn(WIDTH, generator=generator, dtype=torch.float64),
    )
    weight, bias = (
        torch.randn(5, WIDTH, generator=generator, dtype=torch.float64),
        torch.randn(5, generator=generator, dtype=torch.float64),
    )
    normed = RMSNorm(WIDTH, eps=1e-5)(x)
    expected = (gain * normed + shift) @ weight.T + bias
    folded, moved = fold_norm(weight, bias, gain, shift, in_dim=1)
    torch.testing.assert_close(normed @ folded.T + moved, expected)
    folded_t, moved_t = fold_norm(weight.T, None, gain, shift, in_dim=0)
    torch.testing.assert_close(normed @ folded_t + moved_t, expected - bias)


@pytest.mark.parametrize("build", ["gpt2", "vit"])
def test_canonicalizing_a_canonical_model_is_exact(build):
    from test_models_gpt2 import gpt2
    from test_models_vit import vit

    model = (
        gpt2(dict(n_embd=16, n_layer=2, n_head=2), 0)
        if build == "gpt2"
        else vit(dict(embed_dim=16, depth=1, num_heads=2))
    )
    again = lmc.canonicalize(model)
    assert again is not model
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_rmsnorm_models_that_are_not_canonical_are_refused():
    from test_models_gpt2 import gpt2

    model = gpt2(dict(n_embd=16, n_layer=1, n_head=2), 0)
    with torch.no_grad():
        model.transformer.wpe.weight.add_(1.0)  # writes vectors of mean 1: not a canonical form
    with pytest.raises(ValueError, match="transformer.wpe.weight does not write mean-zero vectors"):
        lmc.canonicalize(model)
    mixed = gpt2(dict(n_embd=16, n_layer=2, n_head=2), 0, canonical=False)
    mixed.transformer.h[0].ln_1 = lmc.canonical.RMSNorm(16, 1e-5)
    with pytest.raises(ValueError, match="transformer.h.0.ln_1 is already an RMSNorm but other norms are LayerNorms"):
        lmc.canonicalize(mixed)
