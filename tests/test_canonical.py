"""The tensor identities behind the canonical form (lmc_lib/canonical.py), on random float64 data."""

from functools import partial

import torch
import torch.nn.functional as F

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
    gain, shift = torch.rand(WIDTH, generator=generator, dtype=torch.float64) + 0.5, torch.randn(WIDTH, generator=generator, dtype=torch.float64)
    expected = F.layer_norm(x, (WIDTH,), gain, shift, eps=1e-5)
    torch.testing.assert_close(gain * RMSNorm(WIDTH, eps=1e-5)(center(x, -1)) + shift, expected)
    assert center(x, -1).mean(-1).abs().max() < 1e-12


def test_fold_norm_moves_gain_and_shift_into_the_reader():
    # W'(RMSNorm x) + b' = W (g RMSNorm x + s) + b, for a weight stored (out, in) and one stored (in, out)
    generator, x = _sample(2)
    gain, shift = torch.rand(WIDTH, generator=generator, dtype=torch.float64) + 0.5, torch.randn(WIDTH, generator=generator, dtype=torch.float64)
    weight, bias = torch.randn(5, WIDTH, generator=generator, dtype=torch.float64), torch.randn(5, generator=generator, dtype=torch.float64)
    normed = RMSNorm(WIDTH, eps=1e-5)(x)
    expected = (gain * normed + shift) @ weight.T + bias
    folded, moved = fold_norm(weight, bias, gain, shift, in_dim=1)
    torch.testing.assert_close(normed @ folded.T + moved, expected)
    folded_t, moved_t = fold_norm(weight.T, None, gain, shift, in_dim=0)
    torch.testing.assert_close(normed @ folded_t + moved_t, expected - bias)
