"""Recipes: every named setting builds a model of its family that fits its data; trained_pair trains,
caches and hands back eval-mode models; the paper comparison table reads the curves."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import lmc_lib as lmc
import lmc_lib.training as training
from contract import same_state

SHARED = Path(os.environ.get("LMC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
NAMED = [(name, scale) for name, scales in lmc.book.RECIPES.items() for scale in scales]
FAMILY = {lmc.book.ViTConfig: "timm-vit", lmc.book.GPTConfig: "hf-gpt2"}


@pytest.fixture
def shared_root() -> Path:
    if not (SHARED / "MNIST" / "raw").is_dir() or not (SHARED / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"offline data folder {SHARED} lacks MNIST/raw or tinyshakespeare (set LMC_DATA_DIR)")
    return SHARED


def example_input(config) -> torch.Tensor:
    """Two inputs of the shape the recipe's data has."""
    if isinstance(config, lmc.book.ViTConfig):
        return torch.randn(2, config.in_channels, config.image_size, config.image_size)
    return torch.randint(0, config.vocab_size, (2, config.block_size))


@pytest.mark.parametrize("name, scale", NAMED, ids=[f"{n}-{s}" for n, s in NAMED])
def test_every_named_recipe_builds_a_model_of_its_family_that_reads_its_data(name, scale):
    recipe = lmc.book.RECIPES[name][scale]
    torch.manual_seed(0)
    model = recipe.model.build().eval()
    assert lmc.family.family_of(model).name == FAMILY[type(recipe.model)]
    lmc.spec_for(lmc.canonicalize(model))  # the canonical form has a valid spec
    with torch.no_grad():
        output = model(example_input(recipe.model))
    if isinstance(recipe.model, lmc.book.GPTConfig):
        assert output.logits.shape == (2, recipe.model.block_size, recipe.model.vocab_size)
        assert model.lm_head.weight is not model.transformer.wte.weight  # untied, as in the paper
    else:
        assert output.shape == (2, recipe.model.num_classes)


def test_scales_grow_and_the_paper_scale_is_the_papers_model():
    for scales in lmc.book.RECIPES.values():
        sizes = [sum(p.numel() for p in scales[s].model.build().parameters()) for s in ("ci", "book", "paper")]
        assert sizes == sorted(sizes) and len(set(sizes)) == 3
    vit, gpt = lmc.book.RECIPES["vit-cifar10"]["paper"], lmc.book.RECIPES["gpt2-shakespeare"]["paper"]
    assert (vit.model.depth, vit.model.num_heads, vit.model.embed_dim, vit.model.mlp_dim, vit.model.patch_size) == (
        6,
        8,
        256,
        512,
        4,
    )
    assert (vit.training.epochs, vit.training.lr, vit.training.weight_decay) == (150, 3e-4, 1e-3)
    assert (gpt.model.n_layer, gpt.model.n_head, gpt.model.n_embd, gpt.model.n_inner, gpt.model.block_size) == (
        6,
        4,
        256,
        1024,
        256,
    )
    assert (gpt.model.dropout, gpt.training.lr, gpt.training.weight_decay, gpt.training.batch_size) == (
        0.1,
        3e-4,
        0.01,
        32,
    )


def test_unknown_names_and_datasets_are_refused():
    with pytest.raises(KeyError, match="no recipe 'vit-mnist' at scale 'huge'"):
        lmc.book.trained_pair("vit-mnist", "huge")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        lmc.book.Recipe(lmc.book.ViTConfig(), lmc.TrainConfig(), "imagenet")


def tiny(name: str) -> lmc.book.Recipe:
    """The ci recipe cut to a few seconds: a few dozen examples, one epoch."""
    recipe = lmc.book.RECIPES[name]["ci"]
    return replace(recipe, training=replace(recipe.training, epochs=1, warmup_steps=0),
                   n_train=48, n_test=20, n_statistics=10, eval_batch_size=8)


@pytest.mark.parametrize("name", ["vit-mnist", "gpt2-shakespeare"])
def test_trained_pair_trains_two_seeds_then_loads_them_from_the_cache(name, shared_root, tmp_path, monkeypatch):
    recipe = tiny(name)
    a, b, test_batches, train_batches = lmc.book.trained_pair(recipe, root=shared_root, cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not a.training and not b.training
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    assert sum(len(x) for x, _ in test_batches) == 20 and sum(len(x) for x, _ in train_batches) == 10
    assert test_batches[0][0].shape[1:] == example_input(recipe.model).shape[1:]

    def refuse(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(training, "_fit", refuse)
    again = lmc.book.trained_pair(recipe, root=shared_root, cache=tmp_path)
    assert same_state(a, again.a) and same_state(b, again.b)
    assert again.recipe is recipe


def test_a_recipe_with_patience_stops_early_on_the_validation_split(shared_root, tmp_path, monkeypatch):
    """The paper's GPT-2 recipes stop early; trained_models hands train() Tiny Shakespeare's "val" split."""
    assert lmc.book.recipe("gpt2-shakespeare-bpe", "paper").training.patience is not None
    recipe = tiny("gpt2-shakespeare")
    recipe = replace(recipe, training=replace(recipe.training, epochs=3, patience=1))
    seen = []
    fit = training._fit
    monkeypatch.setattr(training, "_fit", lambda *args: seen.append(args[-1]) or fit(*args))
    lmc.book.trained_models(recipe, seeds=(0,), root=shared_root, cache=tmp_path)
    validation = seen[0]
    expected, _ = lmc.tiny_shakespeare("val", block_size=recipe.model.block_size, root=shared_root)
    assert len(validation) == recipe.n_test and torch.equal(validation.inputs, expected.inputs[: recipe.n_test])
    with pytest.raises(ValueError, match="early stopping \\(patience\\) needs a validation split, which 'mnist'"):
        lmc.book.Recipe(lmc.book.ViTConfig(), lmc.TrainConfig(patience=2), "mnist")


def test_a_vocabulary_that_does_not_fit_is_refused(shared_root):
    recipe = replace(tiny("gpt2-shakespeare"), model=replace(lmc.book.GPTConfig(), vocab_size=50))
    with pytest.raises(ValueError, match=r"vocab_size is 50 but Tiny Shakespeare has 65 tokens \(chars\)"):
        recipe.data("test", root=shared_root)


def test_paper_table_puts_the_papers_barrier_beside_ours():
    lambdas = np.linspace(0, 1, 3)
    curve = lmc.BarrierCurve(lambdas, np.array([0.5, 1.5, 0.5]), np.array([0.9, 0.6, 0.9]))
    table = lmc.book.compare_with_paper({"vanilla averaging": curve, "something new": curve}, "ViT CIFAR-10")
    assert table.columns == ("path", "loss barrier", "accuracy barrier", "paper: ViT CIFAR-10")
    assert table.rows == (
        ("vanilla averaging", 1.0, pytest.approx(0.3), "1.69"),
        ("something new", 1.0, pytest.approx(0.3), "-"),
    )


def logits(model, x) -> torch.Tensor:
    output = model(x)
    return output.logits if hasattr(output, "logits") else output


@pytest.mark.parametrize("config", [
    lmc.book.ViTConfig(image_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_dim=16, pool="avg"),
    lmc.book.GPTConfig(block_size=8, n_embd=16, n_layer=2, n_head=2, n_inner=16),
], ids=["vit", "gpt2"])
def test_alignment_paths_start_at_a_and_end_at_b(config):
    torch.manual_seed(0)
    a, b = (lmc.canonicalize(config.build().eval()) for _ in range(2))
    x = example_input(config)
    data = [(example_input(config), None) for _ in range(3)]
    paths = lmc.book.alignment_paths(a, b, data)
    with torch.no_grad():
        assert not torch.allclose(logits(a, x), logits(b, x), atol=1e-3)  # so that swapped ends would show
    assert len(paths) == 7 and "weight matching, orthogonal + circuit interpolation" in paths
    with torch.no_grad():
        for start, end in paths.values():
            assert torch.allclose(logits(start, x), logits(a, x), atol=1e-4)
            assert torch.allclose(logits(end, x), logits(b, x), atol=1e-4)


def test_the_gpt2_config_repr_is_a_cache_key_that_shows_the_eps_only_when_it_is_not_the_default():
    assert repr(lmc.book.GPTConfig()) == (
        "GPTConfig(vocab_size=65, block_size=64, n_embd=32, n_layer=2, n_head=4, n_inner=128, dropout=0.1)"
    )  # the key of every model cached before the eps was a field
    changed = replace(lmc.book.GPTConfig(), layer_norm_epsilon=2e-5)
    assert repr(changed).endswith("dropout=0.1, layer_norm_epsilon=2e-05)")
    assert changed.build().transformer.ln_f.eps == 2e-5 and changed.build().config.layer_norm_epsilon == 2e-5


@pytest.mark.parametrize("divisor", [2, 4])
def test_a_narrowed_gpt2_lifts_exactly_onto_the_architecture_of_the_recipe(divisor):
    recipe = lmc.book.RECIPES["gpt2-shakespeare"]["ci"]
    narrow_recipe = lmc.book.narrowed(recipe, divisor)
    small, big = narrow_recipe.model, recipe.model
    assert (small.n_embd, small.n_inner, small.n_head) == (big.n_embd // divisor, big.n_inner // divisor, big.n_head)
    assert small.layer_norm_epsilon == big.layer_norm_epsilon * divisor
    assert narrow_recipe.training == recipe.training and narrow_recipe.dataset == recipe.dataset
    torch.manual_seed(0)
    narrow, wide = (lmc.canonicalize(config.build().eval()) for config in (small, big))
    lifted = lmc.lift(narrow, {"residual": big.n_embd, "mlp": big.n_inner}, generator=torch.Generator().manual_seed(0))
    lmc.alignment.check_pair(wide, lifted)  # one architecture: the eps too
    x = example_input(small)
    assert torch.allclose(logits(lifted, x), logits(narrow, x), atol=1e-5)
    assert lmc.book.narrowed(recipe, 1) == recipe


def test_narrowed_refuses_what_it_cannot_make():
    recipe = lmc.book.RECIPES["gpt2-shakespeare"]["ci"]  # n_embd 32, n_inner 128, 4 heads
    with pytest.raises(TypeError, match="needs a GPT-2 recipe"):
        lmc.book.narrowed(lmc.book.RECIPES["vit-mnist"]["ci"], 2)
    with pytest.raises(ValueError, match="1/3 of n_embd=32 and n_inner=128 is not a whole width"):
        lmc.book.narrowed(recipe, 3)
    with pytest.raises(ValueError, match="that n_head=4 heads divide"):
        lmc.book.narrowed(recipe, 16)
    for wrong in (0, True, 2.0):
        with pytest.raises(ValueError, match="divisor must be a positive integer"):
            lmc.book.narrowed(recipe, wrong)


def test_trained_models_trains_one_model_per_seed_and_shares_the_cache_with_trained_pair(shared_root, tmp_path):
    recipe = tiny("gpt2-shakespeare")
    run = lmc.book.trained_models(recipe, seeds=(0, 1, 2), root=shared_root, cache=tmp_path)
    assert len(run.models) == 3 and run.seeds == (0, 1, 2) and run.recipe is recipe
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert not any(model.training for model in run.models)
    pair = lmc.book.trained_pair(recipe, seeds=(0, 2), root=shared_root, cache=tmp_path)
    assert same_state(pair.a, run.models[0]) and same_state(pair.b, run.models[2])
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # loaded, not trained again
    with pytest.raises(ValueError, match="seeds must be two seeds"):
        lmc.book.trained_pair(recipe, seeds=(0, 1, 2), root=shared_root, cache=tmp_path)
    with pytest.raises(ValueError, match="seeds must be a non-empty sequence of integers"):
        lmc.book.trained_models(recipe, seeds=(), root=shared_root, cache=tmp_path)
