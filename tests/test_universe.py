"""Universe matching and its learned refinement: planted recovery, cycle consistency, exact maps, refusals."""

import copy

import numpy as np
import pytest
import torch

import lmc_lib as lmc
from contract import max_relative_error, outputs, same_state
from lmc_lib.universe import pairwise_alignment
from strategies import build_mlp
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit

CONFIG = lmc.MLPConfig(6, (8, 7), 3)
PLANTED = {"residual": ("orthogonal",), "heads": ("permutation",), "mlp": ("permutation",), "hidden": ("permutation",)}


def mlp_data(n: int = 48, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    return list(zip(x.split(batch), y.split(batch)))


def planted(family: str, generator: torch.Generator, count: int = 3):
    """``count`` random symmetric copies of one model, the classes that align them, data and inputs."""
    if family == "mlp":
        base, classes = build_mlp(CONFIG, 0), ("permutation",)
        data = mlp_data()
    elif family == "vit":
        base, classes = vit(dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)), "paper"
        data = [(images(base, generator, 6), torch.randint(0, 5, (6,), generator=generator)) for _ in range(2)]
    else:
        base, classes = gpt2(dict(n_embd=16, n_layer=2, n_head=2, n_inner=24)), "paper"
        data = [(tokens(generator, 3, 8), tokens(generator, 3, 8)) for _ in range(2)]
    spec = lmc.spec_for(base)
    groups = {space.group for space in spec.spaces.values()}
    wanted = {group: names for group, names in PLANTED.items() if group in groups}
    models = [lmc.transform(base, lmc.random_transform(spec, wanted, generator)) for _ in range(count)]
    return models, classes, data


def max_difference(a, b) -> float:
    state_b = b.state_dict()
    return max(float((v - state_b[k]).abs().max()) for k, v in a.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("family", ["mlp", "vit", "gpt2"])
def test_planted_transforms_are_recovered_up_to_the_frame(family, generator):
    models, classes, data = planted(family, generator)
    alignments = lmc.universe_matching(models, classes=classes)
    aligned = [alignment.apply(model) for alignment, model in zip(alignments, models)]
    assert same_state(aligned[0], models[0])  # the frame's own map is the identity
    for model in aligned[1:]:
        assert max_difference(models[0], model) < 1e-5
    surface = lmc.simplex_barrier(aligned, data, points=4, progress=False)
    assert abs(surface.barrier) < 1e-5
    assert np.ptp(lmc.simplex_barrier(models, data, points=4, progress=False).losses) > 1e-3  # unaligned: not flat


def test_activation_matching_recovers_planted_permutations(generator):
    """tanh units: ReLU units that the data never activates would correlate with nothing, and match anywhere."""
    base = build_mlp(lmc.MLPConfig(6, (8, 7), 3, activation="tanh"), 0)
    models = [lmc.transform(base, lmc.random_transform(lmc.spec_for(base), ("permutation",), generator))
              for _ in range(3)]
    classes, data = ("permutation",), mlp_data()
    alignments = lmc.universe_matching(models, classes=classes, method="activation", data=iter(data), frame=1)
    for alignment, model in zip(alignments, models):
        assert max_difference(models[1], alignment.apply(model)) < 1e-5


@pytest.mark.parametrize("family, classes", [("mlp", "permutations"), ("gpt2", "paper"), ("vit", ("permutation",)),
                                             ("vit", "invertible heads")])
def test_pairwise_maps_are_cycle_consistent_and_exact(family, classes, generator):
    """T_ij T_jk = T_ik, also for maps inside heads (which a permutation of the heads carries along)."""
    if family == "mlp":
        models, x = [build_mlp(CONFIG, seed) for seed in range(3)], torch.randn(5, 6)
    elif family == "gpt2":
        models = [gpt2(dict(n_embd=16, n_layer=1, n_head=2, n_inner=24), seed) for seed in range(3)]
        x = tokens(generator)
    else:
        models = [vit(dict(embed_dim=16, depth=1, num_heads=4, mlp_ratio=1.0), seed) for seed in range(3)]
        x = images(models[0], generator)
    alignments = lmc.universe_matching(models, classes=classes, rounds=3)
    assert all(1 <= len(alignment.history) <= 3 for alignment in alignments)
    for i in range(3):
        for name, t in pairwise_alignment(alignments, i, i).transforms.items():
            torch.testing.assert_close(t.matrix, torch.eye(t.size_in, dtype=torch.float64), atol=1e-12, rtol=0)
        for k in range(3):
            direct = pairwise_alignment(alignments, i, k).apply(models[k])
            assert max_relative_error(outputs(models[k], x), outputs(direct, x)) <= 1e-5
            for j in range(3):
                via_j = pairwise_alignment(alignments, j, k).apply(models[k])
                chained = pairwise_alignment(alignments, i, j).apply(via_j)
                assert max_difference(direct, chained) < 1e-5
    for j in range(3):  # the maps are in model 0's frame: T_0j is model j's own alignment
        own = alignments[j].apply(models[j])
        assert max_difference(own, pairwise_alignment(alignments, 0, j).apply(models[j])) < 1e-6


@pytest.mark.parametrize("family, classes, circuits", [("mlp", "permutations", None), ("gpt2", "paper", None),
                                                       ("vit", ("permutation",), False)])
def test_learned_refinement_keeps_the_frame_and_exact_maps(family, classes, circuits, generator):
    """Circuit-space heads (GPT-2) and, without circuits, maps inside heads that the heads carry (ViT)."""
    if family == "mlp":
        models, data = [build_mlp(CONFIG, seed) for seed in range(3)], mlp_data()
        x = data[0][0]
    elif family == "gpt2":
        models = [gpt2(dict(n_embd=16, n_layer=1, n_head=2, n_inner=24), seed) for seed in range(3)]
        data = [(tokens(generator, 3, 8), tokens(generator, 3, 8)) for _ in range(2)]
        x = tokens(generator)
    else:
        models = [vit(dict(embed_dim=16, depth=1, num_heads=4, mlp_ratio=1.0), seed) for seed in range(3)]
        data = [(images(models[0], generator, 6), torch.randint(0, 5, (6,), generator=generator)) for _ in range(2)]
        x = images(models[0], generator)
    before = [copy.deepcopy(model) for model in models]
    init = lmc.universe_matching(models, classes=classes)
    refined = lmc.learned_universe(models, data, init=init, classes=classes, frame=2, steps=8, eval_every=4,
                                   circuits=circuits)
    assert all(same_state(model, original) for model, original in zip(models, before))  # inputs untouched
    assert len(refined[0].history) == 2
    for name, t in init[2].transforms.items():  # the frame's maps are not learned
        assert torch.equal(refined[2].transforms[name].matrix, t.matrix)
    for alignment, model in zip(refined, models):
        assert max_relative_error(outputs(model, x), outputs(alignment.apply(model), x)) <= 1e-5


def test_learned_refinement_lowers_the_objective_it_trains():
    """On one batch, the refined maps' mixtures lose less than universe matching's, over the simplex grid."""
    models = [build_mlp(lmc.MLPConfig(6, (16,), 3), seed) for seed in range(3)]
    data = mlp_data(n=64, batch=64)
    init = lmc.universe_matching(models, classes="permutations")
    refined = lmc.learned_universe(models, data, init=init, classes="permutations", steps=150, lr=0.02)

    def mean_gap(alignments):
        aligned = [alignment.apply(model) for alignment, model in zip(alignments, models)]
        return lmc.simplex_barrier(aligned, data, points=6, progress=False).loss_gaps.mean()

    assert mean_gap(refined) < mean_gap(init) - 1e-3


def test_bad_inputs_are_refused_by_name(generator):
    models = [build_mlp(CONFIG, seed) for seed in range(3)]
    data = mlp_data()
    with pytest.raises(ValueError, match="universe_matching: needs at least two models, got 1"):
        lmc.universe_matching(models[:1])
    with pytest.raises(ValueError, match="models 0 and 2 differ at module 'fc2': out_features = 7 vs 9"):
        lmc.universe_matching([models[0], models[1], build_mlp(lmc.MLPConfig(6, (8, 9), 3), 0)])
    with pytest.raises(TypeError, match="model 1 must be an nn.Module, got str"):
        lmc.universe_matching([models[0], "model"])
    with pytest.raises(ValueError, match="method must be one of"):
        lmc.universe_matching(models, method="learned")
    with pytest.raises(ValueError, match="method='activation' needs data"):
        lmc.universe_matching(models, method="activation")
    with pytest.raises(ValueError, match="data is only read by method='activation'"):
        lmc.universe_matching(models, data=data)
    with pytest.raises(ValueError, match=r"frame must be a model index in \[0, 3\), got 3"):
        lmc.universe_matching(models, frame=3)
    with pytest.raises(ValueError, match="rounds must be a positive integer, got 0"):
        lmc.universe_matching(models, rounds=0)
    transformers = [vit(dict(embed_dim=16, depth=1, num_heads=2), seed) for seed in range(2)]
    with pytest.raises(ValueError, match=r"maps inside a head \('blocks.0.attn.head0.qk', ...\) leave circuit-space"):
        lmc.learned_universe(transformers, data, classes=("permutation",))
    with pytest.raises(ValueError, match="learned_universe: init must hold one Alignment per model"):
        lmc.learned_universe(models, data, init=lmc.universe_matching(models)[:2])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        lmc.learned_universe(models, data, alpha=0.0)
    with pytest.raises(ValueError, match="learned_universe does not solve 'invertible' maps"):
        lmc.learned_universe([lmc.MLP(lmc.MLPConfig(6, (8,), 3, activation="identity")) for _ in range(2)], data,
                             classes=("invertible",))
