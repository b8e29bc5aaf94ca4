"""Weight and activation matching: planted transforms are recovered exactly; bad inputs are refused."""

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmc_lib as lmc
from contract import same_state
from strategies import build_mlp, mlp_configs

BARRIER_TOLERANCE = 1e-6


def planted_pair(config: lmc.MLPConfig, classes: tuple[str, ...], seed: int) -> tuple[lmc.MLP, lmc.MLP]:
    """A and B = A under a random element of ``classes`` on every space."""
    a = build_mlp(config, seed)
    generator = torch.Generator().manual_seed(seed)
    return a, lmc.transform(a, lmc.random_transform(lmc.spec_for(a), classes, generator))


def probe_data(
    config: lmc.MLPConfig, n: int = 256, batch: int = 64, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_features, generator=generator)
    y = torch.randint(0, config.out_features, (n,), generator=generator)
    return list(zip(x.split(batch), y.split(batch)))


def assert_same_weights(aligned, a, rtol=0.0, atol=0.0):
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(aligned.state_dict()[name], tensor, rtol=rtol, atol=atol, msg=name)


def assert_zero_barrier(a, aligned, config):
    data = probe_data(config, n=64)
    assert abs(lmc.barrier(a, aligned, data, progress=False).barrier) <= BARRIER_TOLERANCE
    assert abs(lmc.barrier(a, a, data, progress=False).barrier) <= BARRIER_TOLERANCE


# -- planted permutations ------------------------------------------------------------------------


# Coordinate descent can stall in a local optimum (40 of 400 random MLPs with widths 1-24 in our runs,
# mostly ones with a layer of width <= 4), so planted recovery uses moderate widths and a fixed sample.
RECOVERY_CONFIGS = [
    lmc.MLPConfig(10, (12,), 3),
    lmc.MLPConfig(10, (16, 12), 4, activation="leaky_relu", bias=False),
    lmc.MLPConfig(8, (12, 14, 12), 3, activation="gelu"),
    lmc.MLPConfig(12, (16, 12, 20, 12), 5, activation="tanh"),
    lmc.MLPConfig(8, (12, 12), 3, activation="sigmoid", bias=False),
    lmc.MLPConfig(12, (14, 16), 4, activation="identity"),
]


@given(config=st.sampled_from(RECOVERY_CONFIGS), seed=st.integers(0, 2**31 - 1))
@settings(derandomize=True)
def test_weight_matching_recovers_a_planted_permutation_exactly(config, seed):
    a, b = planted_pair(config, ("permutation",), seed)
    alignment = lmc.weight_matching(a, b)
    assert all(t.kind == "permutation" for t in alignment.transforms.values())
    assert_same_weights(alignment.apply(b), a)  # permutations move entries: equal to the bit


def test_weight_matching_gives_a_zero_barrier_on_a_planted_permutation():
    config = RECOVERY_CONFIGS[1]
    a, b = planted_pair(config, ("permutation",), seed=1)
    assert_zero_barrier(a, lmc.weight_matching(a, b).apply(b), config)


ACTIVATION_CONFIGS = [
    lmc.MLPConfig(10, (12,), 3),
    lmc.MLPConfig(10, (16, 12), 4, activation="relu"),
    lmc.MLPConfig(10, (9, 9), 4, activation="tanh", bias=False),
    lmc.MLPConfig(10, (8, 6), 3, activation="gelu"),
    lmc.MLPConfig(10, (8, 7), 3, activation="sigmoid"),
    lmc.MLPConfig(10, (8, 6), 3, activation="identity"),
]


@pytest.mark.parametrize("config", ACTIVATION_CONFIGS, ids=lambda c: f"{c.activation}-{c.widths}")
def test_activation_matching_recovers_a_planted_permutation_exactly(config):
    a, b = planted_pair(config, ("permutation",), seed=3)
    aligned = lmc.activation_matching(a, b, probe_data(config)).apply(b)
    assert_same_weights(aligned, a)
    assert_zero_barrier(a, aligned, config)


def test_semi_permutation_at_equal_width_is_matched_as_a_permutation():
    config = lmc.MLPConfig(10, (12, 8), 3)
    a, b = planted_pair(config, ("permutation",), seed=4)
    alignment = lmc.weight_matching(a, b, classes=("semi_permutation",))
    assert {t.kind for t in alignment.transforms.values()} == {"permutation"}
    assert_same_weights(alignment.apply(b), a)


# -- planted orthogonal and invertible maps on a linear MLP --------------------------------------

LINEAR = lmc.MLPConfig(12, (8, 6), 3, activation="identity")


@pytest.mark.parametrize(
    "config",
    [lmc.MLPConfig(12, (8,), 3, activation="identity"), lmc.MLPConfig(6, (6,), 4, activation="identity", bias=False)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_weight_matching_recovers_a_planted_orthogonal_map(config, seed):
    a, b = planted_pair(config, ("orthogonal",), seed)
    alignment = lmc.weight_matching(a, b, classes=("orthogonal",))
    assert {t.kind for t in alignment.transforms.values()} == {"orthogonal"}
    assert_same_weights(alignment.apply(b), a, rtol=1e-5, atol=1e-5)
    assert_zero_barrier(a, alignment.apply(b), config)


def test_weight_matching_converges_to_a_planted_orthogonal_map_on_two_spaces():
    a, b = planted_pair(LINEAR, ("orthogonal",), seed=2)
    assert_same_weights(lmc.weight_matching(a, b, classes=("orthogonal",)).apply(b), a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["orthogonal", "invertible"])
def test_activation_matching_recovers_a_planted_linear_map(kind):
    a, b = planted_pair(LINEAR, (kind,), seed=5)
    alignment = lmc.activation_matching(a, b, probe_data(LINEAR, n=512), classes=(kind,))
    assert {t.kind for t in alignment.transforms.values()} == {kind}
    assert_same_weights(alignment.apply(b), a, rtol=1e-4, atol=1e-4)
    assert_zero_barrier(a, alignment.apply(b), LINEAR)


def test_classes_can_be_chosen_per_group():
    a, b = planted_pair(LINEAR, ("orthogonal",), seed=6)
    with pytest.raises(ValueError, match=r"classes name space groups \['other'\] that the mlp spec does not have"):
        lmc.weight_matching(a, b, classes={"other": ("orthogonal",)})
    by_group = lmc.weight_matching(a, b, classes={"hidden": ("orthogonal",)})
    assert {t.kind for t in by_group.transforms.values()} == {"orthogonal"}


# -- the coordinate descent ----------------------------------------------------------------------


def inner(x, y) -> float:
    """sum over tensors of <x_p, y_p>: the weight-matching objective of y against x."""
    return sum(float((x.state_dict()[k].double() * y.state_dict()[k].double()).sum()) for k in x.state_dict())


@given(config=mlp_configs(), seeds=st.tuples(st.integers(0, 1000), st.integers(0, 1000)), order=st.integers(0, 1000))
def test_weight_matching_objective_never_decreases_and_stops(config, seeds, order):
    a, b = build_mlp(config, seeds[0]), build_mlp(config, seeds[1] + 1001)
    max_iter = 50
    alignment = lmc.weight_matching(a, b, max_iter=max_iter, seed=order)
    history = alignment.history
    assert 1 <= len(history) < max_iter
    assert history[0] >= 0 and all(later >= earlier for earlier, later in zip(history, history[1:]))
    gain = inner(a, alignment.apply(b)) - inner(a, b)
    assert history[-1] == pytest.approx(gain, rel=1e-4, abs=1e-4)
    again = lmc.weight_matching(a, b, max_iter=max_iter, seed=order)
    assert again.history == history
    assert all(torch.equal(again.transforms[n].indices, t.indices) for n, t in alignment.transforms.items())


def test_weight_matching_beats_the_identity():
    config = lmc.MLPConfig(10, (16, 16), 3)
    a, b = build_mlp(config, 0), build_mlp(config, 1)
    assert inner(a, lmc.weight_matching(a, b).apply(b)) > inner(a, b)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_solve_assignment_finds_the_best_permutation(n):
    score = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    best = max(sum(float(score[i, j]) for i, j in enumerate(p)) for p in itertools.permutations(range(n)))
    found = lmc.solvers.solve_assignment(score)
    assert sum(float(score[i, found.indices[i]]) for i in range(n)) == pytest.approx(best, rel=1e-12)


def test_solve_assignment_refuses_non_finite_scores():
    with pytest.raises(ValueError, match="score matrix has NaN or infinite entries"):
        lmc.solvers.solve_assignment(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


# -- refusals and untouched inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "match", [lmc.weight_matching, lambda a, b: lmc.activation_matching(a, b, probe_data(a.config))]
)
def test_matching_refuses_different_architectures(match):
    a, b = build_mlp(lmc.MLPConfig(10, (8, 6), 3), 0), build_mlp(lmc.MLPConfig(10, (8, 7), 3), 0)
    with pytest.raises(ValueError, match=r"models differ at module 'fc2': out_features = 6 vs 7"):
        match(a, b)


def test_matching_refuses_nan_weights():
    config = lmc.MLPConfig(10, (8,), 3)
    a, b = build_mlp(config, 0), build_mlp(config, 1)
    with torch.no_grad():
        b.fc1.bias[2] = float("nan")
    with pytest.raises(ValueError, match="tensor 'fc1.bias' has NaN or infinite entries"):
        lmc.weight_matching(a, b)
    with pytest.raises(ValueError, match="tensor 'fc1.bias' has NaN or infinite entries"):
        lmc.activation_matching(a, b, probe_data(config))


@pytest.mark.parametrize("data", [[], iter([])], ids=["list", "iterator"])
def test_activation_matching_refuses_empty_data(data):
    config = lmc.MLPConfig(10, (8,), 3)
    with pytest.raises(ValueError, match="data yielded no batches"):
        lmc.activation_matching(build_mlp(config, 0), build_mlp(config, 1), data)


def test_matchers_leave_their_inputs_untouched():
    config = lmc.MLPConfig(10, (8, 6), 3, activation="relu")
    a, b = build_mlp(config, 0).train(), build_mlp(config, 1).eval()
    b.act1.train()  # a mixed state: the matchers must restore every module's flag, not just the top one
    flags = {tag: [m.training for m in model.modules()] for tag, model in (("a", a), ("b", b))}
    a_copy, b_copy = copy.deepcopy(a), copy.deepcopy(b)
    for alignment in (lmc.weight_matching(a, b), lmc.activation_matching(a, b, probe_data(config))):
        alignment.apply(b)
    assert same_state(a, a_copy) and same_state(b, b_copy)
    assert {tag: [m.training for m in model.modules()] for tag, model in (("a", a), ("b", b))} == flags
    assert all(not m._forward_hooks for model in (a, b) for m in model.modules()), "hooks left behind"


# -- Transformers: the paper's weight matching, activation matching, explicit invertible maps ----

from test_models_gpt2 import gpt2, tokens  # noqa: E402
from test_models_vit import images, vit  # noqa: E402

PAPER = {"residual": ("orthogonal",), "heads": ("permutation",), "mlp": ("permutation",)}
INSIDE_HEADS = {**PAPER, "qk": ("invertible",), "ov": ("invertible",)}
TRANSFORMERS = [
    (gpt2, dict(n_embd=16, n_layer=2, n_head=2, n_inner=24)),
    (vit, dict(embed_dim=16, depth=2, num_heads=2)),
]


def transformer_data(build, model, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    if build is gpt2:
        return [(x[:, :-1], x[:, 1:]) for x in (tokens(generator, 6, 11) for _ in range(n))]
    return [(images(model, generator, 8), torch.randint(0, 5, (8,), generator=generator)) for _ in range(n)]


def planted_transformer(build, config, classes, seed: int = 0):
    a = build(config, 0)
    generator = torch.Generator().manual_seed(seed)
    return a, lmc.transform(a, lmc.random_transform(lmc.spec_for(a), classes, generator))


@pytest.mark.parametrize("build, config", TRANSFORMERS, ids=["gpt2", "vit"])
@pytest.mark.parametrize("planted", [PAPER, INSIDE_HEADS], ids=["paper", "inside-heads"])
def test_transformer_matching_recovers_a_planted_transform(build, config, planted):
    """B = A under a random orthogonal residual map, permutations of heads and MLP units (and random
    invertible maps inside every head): weight and activation matching with the same classes recover A."""
    a, b = planted_transformer(build, config, planted)
    data = transformer_data(build, a)
    for alignment in (lmc.weight_matching(a, b, classes=planted), lmc.activation_matching(a, b, data, classes=planted)):
        kinds = {lmc.spec_for(a).spaces[n].group: t.kind for n, t in alignment.transforms.items()}
        assert kinds == {g: c[0] for g, c in planted.items()}
        aligned = alignment.apply(b)
        assert_same_weights(aligned, a, rtol=1e-4, atol=1e-4)
        assert abs(lmc.barrier(a, aligned, data, lambdas=5, progress=False).barrier) < 1e-5


@pytest.mark.parametrize("build, config", TRANSFORMERS, ids=["gpt2", "vit"])
def test_permutation_only_residual_recovers_a_planted_permutation(build, config):
    classes = {**PAPER, "residual": ("permutation",)}
    a, b = planted_transformer(build, config, classes, seed=2)
    alignment = lmc.weight_matching(a, b, classes=classes)
    assert alignment.transforms["residual"].kind == "permutation"
    assert_same_weights(alignment.apply(b), a)


def test_transformer_weight_matching_runs_the_family_rounds():
    """Five sweeps by default (the spec's rounds), more when asked; the gain never falls after the
    first sweep, which solves the residual from the embeddings and the head alone."""
    config = TRANSFORMERS[1][1]
    a, b = vit(config, 0), vit(config, 1)
    assert lmc.spec_for(a).rounds == 5
    default = lmc.weight_matching(a, b, classes=PAPER)
    longer = lmc.weight_matching(a, b, classes=PAPER, max_iter=8)
    assert len(default.history) == 5 and len(longer.history) == 8  # these two keep improving
    assert longer.history[:5] == default.history
    assert all(later > earlier for earlier, later in zip(longer.history[1:], longer.history[2:]))


def test_heads_overlap_the_spaces_inside_them():
    spec = lmc.spec_for(gpt2(TRANSFORMERS[0][1], 0))
    inside = [f"transformer.h.0.attn.head{i}.{kind}" for i in range(2) for kind in ("qk", "ov")]
    assert set(spec.overlapping("transformer.h.0.attn.heads")) == set(inside)
    assert spec.overlapping("transformer.h.0.attn.head0.qk") == ("transformer.h.0.attn.heads",)
    assert spec.overlapping("transformer.h.0.mlp") == ()


def test_fit_invertible_is_exact_on_a_planted_map():
    generator = torch.Generator().manual_seed(0)
    planted = lmc.Invertible.random(5, generator, spread=1.0)
    writers, readers = (
        torch.randn(5, 9, generator=generator, dtype=torch.float64),
        torch.randn(5, 7, generator=generator, dtype=torch.float64),
    )
    # A's writers are T B's, A's readers T^-T B's
    writers_a, readers_a = planted.matrix @ writers, planted.read_matrix.T @ readers
    found = lmc.solvers.fit_invertible(
        writers_a @ writers.T + readers_a @ readers.T, writers @ writers.T, readers_a @ readers_a.T
    )
    torch.testing.assert_close(found.matrix, planted.matrix, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("build, config", TRANSFORMERS, ids=["gpt2", "vit"])
def test_sweep_stages_hold_spaces_on_disjoint_tensors(build, config):
    """A stage (solved at once) never holds two spaces sharing a tensor, and the stages keep the sweep's order."""
    from lmc_lib.matching import _stages

    spec = lmc.spec_for(build(config, 0))
    names = list(spec.spaces)
    for seed in range(5):
        order = [names[i] for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))]
        stages = _stages(order, spec)
        assert [n for stage in stages for n in stage] == order
        for stage in stages:
            for x, y in itertools.combinations(stage, 2):
                assert not spec.spaces[x].params & spec.spaces[y].params, (x, y)
        assert any(len(stage) > 1 for stage in stages)  # the MLPs and heads of different blocks group


@pytest.mark.parametrize("build, config", TRANSFORMERS, ids=["gpt2", "vit"])
def test_weight_matching_does_not_depend_on_the_thread_count(build, config):
    """Solvers run in a pool as wide as torch's threads: the result must be the one-at-a-time result."""
    a, b = build(config, 0), build(config, 1)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(lmc.weight_matching(a, b, classes=INSIDE_HEADS))
    finally:
        torch.set_num_threads(threads)
    one, three = results
    assert one.history == pytest.approx(three.history, rel=1e-9)
    for name, t in one.transforms.items():
        other = three.transforms[name]
        if t.kind == "permutation":
            assert torch.equal(t.indices, other.indices), name
        else:
            torch.testing.assert_close(t.matrix, other.matrix, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", ["permutation", "orthogonal"])
def test_activation_scores_weigh_every_probe_alike(kind):
    """A space read at several places (the residual stream after every block) sums one score per
    place: rescaling the activations at one place, as the residual stream grows along the depth,
    changes nothing; pooling the rows would let the largest place decide alone."""
    from lmc_lib.activations import _Moments, _solve_activations

    generator = torch.Generator().manual_seed(0)
    space = lmc.spec.Space("stream", 6, ("permutation", "orthogonal"), (), ())
    planted = [torch.randperm(6, generator=generator) for _ in range(3)]  # each place prefers another order

    def solve(scales):
        moments = {}
        for index, (order, scale) in enumerate(zip(planted, scales)):
            x = torch.randn(200, 6, generator=generator, dtype=torch.float64)
            noisy = x[:, order] + 0.8 * torch.randn(200, 6, generator=generator, dtype=torch.float64)
            moments[("write", index)] = _Moments(6, False)
            moments[("write", index)].update(scale * x, scale * noisy)
        return _solve_activations(space, kind, moments, 1e12)

    state = generator.get_state()
    reference = solve((1.0, 1.0, 1.0))
    generator.set_state(state)
    rescaled = solve((1.0, 1000.0, 0.01))
    if kind == "permutation":
        assert torch.equal(reference.indices, rescaled.indices)
    else:
        torch.testing.assert_close(reference.matrix, rescaled.matrix)


@pytest.mark.parametrize("widths", [(6, 6), (6, 5, 6), (7, 7, 7, 7)])
def test_weight_matching_recovers_a_planted_invertible_map_on_deep_linear_mlps(widths):
    config = lmc.MLPConfig(6, widths, 3, activation="identity")
    a, b = planted_pair(config, ("invertible",), seed=3)
    alignment = lmc.weight_matching(a, b, classes=("invertible",))
    assert {t.kind for t in alignment.transforms.values()} == {"invertible"}
    assert_same_weights(alignment.apply(b), a, rtol=1e-4, atol=1e-4)


def test_weight_matching_says_why_an_invertible_map_is_not_determined():
    """A hidden layer of 9 units fed by 5 inputs and a bias spans 6 directions: no data of the weights fixes T."""
    a, b = planted_pair(lmc.MLPConfig(5, (9, 6), 3, activation="identity"), ("invertible",), seed=3)
    with pytest.warns(UserWarning, match=r"writers of spaces 'fc1' do not determine.*condition number.*rank-deficient"):
        lmc.weight_matching(a, b, classes=("invertible",))


def test_an_alignment_of_canonical_copies_refuses_the_layernorm_original():
    from test_models_gpt2 import gpt2

    a, b = (gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed, canonical=False) for seed in (0, 1))
    alignment = lmc.weight_matching(lmc.canonicalize(a), lmc.canonicalize(b), classes="paper")
    with pytest.raises(ValueError, match="RMSNorm vs LayerNorm.*call lmc.canonicalize"):
        alignment.apply(b)
    alignment.apply(lmc.canonicalize(b))


def test_models_with_other_heads_of_the_same_shapes_are_not_a_pair():
    from test_models_gpt2 import gpt2

    four, two = gpt2(dict(n_embd=16, n_layer=1, n_head=4), 0), gpt2(dict(n_embd=16, n_layer=1, n_head=2), 1)
    for call in (lambda: lmc.weight_matching(four, two), lambda: lmc.barrier(four, two, [], progress=False),
                 lambda: lmc.circuit_pair(four, two)):
        with pytest.raises(ValueError, match="head_dim = 4 vs 8|num_heads = 4 vs 2"):
            call()
    alignment = lmc.weight_matching(four, gpt2(dict(n_embd=16, n_layer=1, n_head=4), 1))
    with pytest.raises(ValueError, match="head_dim = 4 vs 8|num_heads = 4 vs 2"):
        alignment.apply(two)


@pytest.mark.parametrize("classes, message", [
    ("paperr", r"unknown symmetry class 'paperr'.*presets"),
    (("permutaton",), r"unknown symmetry class 'permutaton'"),
    ({"hiden": ("permutation",)}, r"space groups \['hiden'\]"),
    (("orthogonal",), r"no space of the mlp spec admits 'orthogonal'"),
    ((), r"no space of the mlp spec admits the classes"),
])
def test_class_requests_that_cannot_be_honoured_are_refused(classes, message):
    a, b = planted_pair(RECOVERY_CONFIGS[0], ("permutation",), seed=0)
    with pytest.raises(ValueError, match=message):
        lmc.weight_matching(a, b, classes=classes)


def test_class_objects_stand_for_their_names():
    a, b = planted_pair(RECOVERY_CONFIGS[0], ("permutation",), seed=0)
    by_object = lmc.weight_matching(a, b, classes=(lmc.Permutation,))
    by_name = lmc.weight_matching(a, b, classes="permutation")
    assert all(torch.equal(by_object.transforms[n].indices, by_name.transforms[n].indices) for n in by_name.transforms)


def test_orthogonal_residual_of_a_layernorm_model_says_to_canonicalize():
    from test_models_gpt2 import gpt2

    a, b = (gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed, canonical=False) for seed in (0, 1))
    with pytest.raises(ValueError, match="rotation-symmetric in canonical form.*call lmc.canonicalize"):
        lmc.weight_matching(a, b, classes="paper")


def test_activation_matching_refuses_invertible_maps_that_rank_deficient_data_cannot_fix():
    config = lmc.MLPConfig(3, (8, 8), 2, activation="identity")  # 8 units driven by 3 inputs: rank 3 activations
    a, b = planted_pair(config, ("invertible",), seed=0)
    with pytest.raises(ValueError, match=r"activation_matching, space 'fc1': invertible fit: .*condition number"):
        lmc.activation_matching(a, b, probe_data(config, n=256), classes=("invertible",))


def test_row_weights_weigh_the_distance_of_rows_exactly():
    """Zero weight on some embedding rows: the alignment is the one of models without those tokens."""
    from test_models_gpt2 import VOCAB, gpt2

    a, b = (gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed) for seed in (0, 1))
    seen = torch.zeros(VOCAB)
    seen[: VOCAB // 2] = 1.0
    weights = {"transformer.wte.weight": seen, "lm_head.weight": seen}
    weighted = lmc.weight_matching(a, b, classes="paper", row_weights=weights)
    # the same as matching models whose unseen rows are zero in both
    def zeroed(model):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name in weights:
            state[name][VOCAB // 2:] = 0.0
        return lmc.family.load_state(model, state)
    reference = lmc.weight_matching(zeroed(a), zeroed(b), classes="paper")
    torch.testing.assert_close(weighted.transforms["residual"].matrix, reference.transforms["residual"].matrix,
                               rtol=1e-6, atol=1e-6)
    assert weighted.history[-1] == pytest.approx(reference.history[-1], rel=1e-6)
    unweighted = lmc.weight_matching(a, b, classes="paper")
    assert not torch.allclose(unweighted.transforms["residual"].matrix, weighted.transforms["residual"].matrix)


def test_row_weights_are_checked():
    from test_models_gpt2 import VOCAB, gpt2

    a, b = (gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed) for seed in (0, 1))
    with pytest.raises(KeyError, match="row_weights names 'wte'"):
        lmc.weight_matching(a, b, classes="paper", row_weights={"wte": torch.ones(VOCAB)})
    with pytest.raises(ValueError, match=r"row_weights\['lm_head.weight'\] must be 40 finite non-negative"):
        lmc.weight_matching(a, b, classes="paper", row_weights={"lm_head.weight": -torch.ones(VOCAB)})
    with pytest.raises(ValueError, match=r"space 'transformer.h.0.mlp' acts on its rows"):
        lmc.weight_matching(a, b, classes="paper", row_weights={"transformer.h.0.mlp.c_proj.weight": torch.ones(64)})


def test_token_counts_counts_the_inputs():
    batches = [(torch.tensor([[0, 1, 1], [3, 3, 3]]), torch.zeros(2, 3, dtype=torch.long))]
    assert lmc.data.token_counts(batches, 5).tolist() == [1, 2, 0, 3, 0]
    with pytest.raises(ValueError, match=r"token ids in \[0, 3\)"):
        lmc.data.token_counts(batches, 3)
