"""Named training recipes for the Transformer chapters: one trained pair of models per name and scale.

A :class:`Recipe` is data: the architecture (:class:`ViTConfig` or :class:`GPTConfig`), the
optimiser (:class:`~lmc_lib.training.TrainConfig`) and how much data to use. ``RECIPES[name][scale]``
holds the named ones: names "vit-mnist", "vit-cifar10", "gpt2-shakespeare"; scales "ci" (about a
minute on two CPU cores), "book" (a few minutes) and "paper" (the paper's settings, for a GPU).
:func:`trained_pair` trains two models that differ only in their seed (cached on disk by
``lmc.train``) and returns them in eval mode with the batches the chapters evaluate on;
:func:`trained_models` does the same for any number of seeds. :func:`narrowed` makes a GPT-2
recipe narrower, for aligning models of different widths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from ..activations import activation_matching
from ..barrier import BarrierCurve
from ..circuits import circuit_pair
from ..data import TensorData, cifar10, mnist, tiny_shakespeare
from ..matching import weight_matching
from .report import Table
from ..training import TrainConfig, train

__all__ = [
    "ViTConfig", "GPTConfig", "Recipe", "TrainedPair", "TrainedModels", "RECIPES", "recipe", "trained_pair",
    "trained_models", "narrowed", "ALIGNMENT_CLASSES", "alignment_paths", "PAPER_BARRIERS", "compare_with_paper",
]

Batches = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ViTConfig:
    """A timm VisionTransformer: (C, S, S) images cut into (S / patch_size)^2 patches, ``depth``
    pre-norm blocks of width ``embed_dim`` with ``num_heads`` heads and ``mlp_dim`` GELU units.

    ``pool`` is "avg" (the mean over patch tokens, no class token; the paper's ViT code is not
    released, reproductions pool by the mean) or "token" (a class token). ``dropout`` applies to
    the embeddings, attention weights and every projection while training.
    """

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    patch_size: int = 7
    embed_dim: int = 32
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 64
    dropout: float = 0.0
    pool: str = "avg"

    def build(self) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=self.image_size, patch_size=self.patch_size, in_chans=self.in_channels,
            num_classes=self.num_classes, embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
            mlp_ratio=self.mlp_dim / self.embed_dim, pos_drop_rate=self.dropout,
            attn_drop_rate=self.dropout, proj_drop_rate=self.dropout,
            global_pool=self.pool, class_token=self.pool == "token",
        )


@dataclass(frozen=True)
class GPTConfig:
    """An HF GPT2LMHeadModel over ``vocab_size`` tokens (65 characters, or GPT-2's 50,257 BPE tokens):
    context ``block_size``, ``n_layer`` pre-norm blocks of width ``n_embd`` with ``n_head`` heads and
    ``n_inner`` gelu_new units; embedding and LM head untied.

    ``dropout`` applies to the embeddings, attention weights and residual writes while training;
    ``layer_norm_epsilon`` is every LayerNorm's eps (:func:`narrowed` changes it).
    """

    vocab_size: int = 65
    block_size: int = 64
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_inner: int = 128
    dropout: float = 0.1
    layer_norm_epsilon: float = 1e-5

    def __repr__(self) -> str:
        # The repr is the cache key of trained models (lmc.train): the eps, added later, shows only when it is
        # not the default, so that models cached before it existed keep their keys.
        shown = [f for f in fields(self) if f.name != "layer_norm_epsilon" or self.layer_norm_epsilon != 1e-5]
        return f"GPTConfig({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    def build(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=self.vocab_size, n_positions=self.block_size, n_embd=self.n_embd, n_layer=self.n_layer,
            n_head=self.n_head, n_inner=self.n_inner, activation_function="gelu_new",
            resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,  # characters: no end-of-text token
        )
        return GPT2LMHeadModel(config)


@dataclass(frozen=True)
class Recipe:
    """A model, its training and its data: ``dataset`` in {"mnist", "cifar10", "tiny_shakespeare" (characters),
    "tiny_shakespeare_bpe" (GPT-2 BPE tokens)}.

    ``n_train`` / ``n_test`` cut the splits to their first examples (None: all of it); activation
    statistics use the first ``n_statistics`` training examples; evaluation batches hold ``eval_batch_size``.
    """

    model: ViTConfig | GPTConfig
    training: TrainConfig
    dataset: str
    n_train: int | None = None
    n_test: int | None = None
    n_statistics: int = 1000
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.dataset not in _LOADERS:
            raise ValueError(f"Recipe: unknown dataset {self.dataset!r}; expected one of {sorted(_LOADERS)}")
        if self.training.patience is not None and not self.dataset.startswith("tiny_shakespeare"):
            raise ValueError(f"Recipe: early stopping (patience) needs a validation split, which {self.dataset!r} "
                             "does not have here")

    def data(self, split: str, *, root: str | os.PathLike | None = None) -> TensorData:
        """The "train", "val" (Tiny Shakespeare only) or "test" split, cut to its size (``n_train``, or
        ``n_test`` for the others), read from ``root`` (default: ``lmc.data_root()``)."""
        data = _LOADERS[self.dataset](split, self.model, root)
        size = self.n_train if split == "train" else self.n_test
        return data if size is None else data.subset(size)


def _tiny_shakespeare(
    split: str, model: GPTConfig, root: str | os.PathLike | None, tokens: str = "chars"
) -> TensorData:
    data, vocabulary = tiny_shakespeare(split, block_size=model.block_size, root=root, tokens=tokens)
    if len(vocabulary) != model.vocab_size:
        raise ValueError(
            f"GPTConfig.vocab_size is {model.vocab_size} but Tiny Shakespeare has {len(vocabulary)} tokens ({tokens})"
        )
    return data


_LOADERS = {
    "mnist": lambda split, _, root: mnist(train=split == "train", root=root),
    "cifar10": lambda split, _, root: cifar10(train=split == "train", root=root),
    "tiny_shakespeare": _tiny_shakespeare,
    "tiny_shakespeare_bpe": lambda split, model, root: _tiny_shakespeare(split, model, root, tokens="bpe"),
}


@dataclass(frozen=True, eq=False)
class TrainedPair:
    """Models A and B (eval mode) trained by one recipe from two seeds, with the data to compare them.

    Unpacks as ``a, b, test_batches, train_batches``; ``train_batches`` (the first
    ``recipe.n_statistics`` training examples) are for activation statistics.
    """

    a: nn.Module
    b: nn.Module
    test_batches: Batches
    train_batches: Batches
    recipe: Recipe

    def __iter__(self) -> Iterator:
        return iter((self.a, self.b, self.test_batches, self.train_batches))


@dataclass(frozen=True, eq=False)
class TrainedModels:
    """Models (eval mode) trained by one recipe, one per seed, with the data to compare them.

    ``train_batches`` (the first ``recipe.n_statistics`` training examples) are for activation
    statistics and learned alignments.
    """

    models: tuple[nn.Module, ...]
    seeds: tuple[int, ...]
    test_batches: Batches
    train_batches: Batches
    recipe: Recipe


_ADAMW = TrainConfig(optimizer="adamw", lr=3e-4, weight_decay=1e-3, schedule="cosine")
_VIT_CI = replace(_ADAMW, epochs=3, batch_size=64, lr=3e-3, warmup_steps=10)
_VIT_BOOK = replace(_ADAMW, epochs=12, batch_size=128, lr=3e-3, warmup_steps=50)
#: the paper's ViT (App. B): 6 blocks, width 256, 8 heads, 512 MLP units, 4 x 4 patches, 150 epochs
_PAPER_VIT = ViTConfig(image_size=32, in_channels=3, patch_size=4, embed_dim=256, depth=6, num_heads=8, mlp_dim=512)
_PAPER_VIT_TRAINING = replace(_ADAMW, epochs=150, batch_size=128)

RECIPES: dict[str, dict[str, Recipe]] = {
    "vit-mnist": {
        "ci": Recipe(ViTConfig(embed_dim=32, depth=2, num_heads=4, mlp_dim=64), _VIT_CI, "mnist", n_train=8000),
        "book": Recipe(ViTConfig(embed_dim=64, depth=4, num_heads=4, mlp_dim=128), _VIT_BOOK, "mnist", n_train=8000),
        "paper": Recipe(replace(_PAPER_VIT, image_size=28, in_channels=1), _PAPER_VIT_TRAINING, "mnist"),
    },
    "vit-cifar10": {
        "ci": Recipe(
            ViTConfig(image_size=32, in_channels=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64),
            _VIT_CI,
            "cifar10",
            n_train=8000,
            n_test=2000,
        ),
        "book": Recipe(
            ViTConfig(image_size=32, in_channels=3, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_dim=128),
            _VIT_BOOK,
            "cifar10",
            n_test=2000,
        ),
        "paper": Recipe(_PAPER_VIT, _PAPER_VIT_TRAINING, "cifar10"),
    },
    "gpt2-shakespeare": {
        "ci": Recipe(
            GPTConfig(block_size=64, n_embd=32, n_layer=2, n_head=4, n_inner=128, dropout=0.0),
            TrainConfig(epochs=1, batch_size=32, lr=1e-2, optimizer="adamw", weight_decay=0.01, warmup_steps=20),
            "tiny_shakespeare",
            n_train=9600,
            n_test=200,
            n_statistics=200,
            eval_batch_size=100,
        ),
        "book": Recipe(
            GPTConfig(block_size=64, n_embd=64, n_layer=3, n_head=4, n_inner=256, dropout=0.0),
            TrainConfig(epochs=1, batch_size=32, lr=3e-3, optimizer="adamw", weight_decay=0.01, warmup_steps=20),
            "tiny_shakespeare",
            n_train=19200,
            n_test=400,
            n_statistics=200,
            eval_batch_size=100,
        ),
        #: the paper's GPT-2 (App. B) at character level: 6 blocks, width 256, 4 heads, 1024 MLP units, context 256
        "paper": Recipe(
            GPTConfig(block_size=256, n_embd=256, n_layer=6, n_head=4, n_inner=1024, dropout=0.1),
            TrainConfig(
                epochs=10, batch_size=32, lr=3e-4, optimizer="adamw", weight_decay=0.01, warmup_steps=60, patience=3
            ),  # 5% of 10 epochs of 123 steps; early stopping on the validation split
            "tiny_shakespeare",
            n_statistics=500,
            eval_batch_size=50,
        ),
    },
    #: GPT-2 on Tiny Shakespeare's GPT-2 BPE tokens (the paper's tokens; the vocabulary is GPT-2's 50,257)
    "gpt2-shakespeare-bpe": {
        "ci": Recipe(
            GPTConfig(vocab_size=50257, block_size=64, n_embd=32, n_layer=2, n_head=4, n_inner=128, dropout=0.0),
            TrainConfig(epochs=1, batch_size=32, lr=1e-2, optimizer="adamw", weight_decay=0.01, warmup_steps=20),
            "tiny_shakespeare_bpe",
            n_train=1600,
            n_test=100,
            n_statistics=100,
            eval_batch_size=50,
        ),
        "book": Recipe(
            GPTConfig(vocab_size=50257, block_size=64, n_embd=64, n_layer=2, n_head=4, n_inner=256, dropout=0.0),
            TrainConfig(epochs=1, batch_size=32, lr=3e-3, optimizer="adamw", weight_decay=0.01, warmup_steps=20),
            "tiny_shakespeare_bpe",
            n_train=4000,
            n_test=200,
            n_statistics=200,
            eval_batch_size=50,
        ),
        #: the paper's setting (App. B): at most 20 epochs, early stopping on the validation split
        "paper": Recipe(
            GPTConfig(vocab_size=50257, block_size=256, n_embd=256, n_layer=6, n_head=4, n_inner=1024, dropout=0.1),
            TrainConfig(epochs=20, batch_size=32, lr=3e-4, optimizer="adamw", weight_decay=0.01, warmup_steps=37,
                        patience=3),
            "tiny_shakespeare_bpe",
            n_statistics=200,
            eval_batch_size=16,
        ),
    },
}


def recipe(name: str, scale: str) -> Recipe:
    """``RECIPES[name][scale]``, with an error that lists the known names and scales."""
    if name not in RECIPES or scale not in RECIPES[name]:
        known = {n: sorted(scales) for n, scales in RECIPES.items()}
        raise KeyError(f"no recipe {name!r} at scale {scale!r}; known: {known}")
    return RECIPES[name][scale]


def trained_models(
    name: str | Recipe,
    scale: str = "ci",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    root: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> TrainedModels:
    """Train (or load from the cache) one model of a recipe per seed in ``seeds``; see :class:`TrainedModels`.

    ``name`` is a key of :data:`RECIPES` (then ``scale`` picks the setting) or a :class:`Recipe`.
    Data come from ``root`` (default $LMC_DATA_DIR), trained weights are cached under ``cache``
    (default $LMC_CACHE_DIR), keyed by the architecture, data, training and seed, so a seed trained
    for one call is loaded by the next. Training runs on ``device`` (default: CUDA when available),
    and the models and batches come back there, the models in eval mode.
    """
    chosen = name if isinstance(name, Recipe) else recipe(name, scale)
    seeds = tuple(seeds)
    if not seeds or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise ValueError(f"trained_models: seeds must be a non-empty sequence of integers, got {seeds!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_data = chosen.data("train", root=root)
    # early stopping (TrainConfig.patience) reads the validation split, which only Tiny Shakespeare has
    validation = chosen.data("val", root=root) if chosen.training.patience is not None else None
    models = tuple(
        train(chosen.model.build, train_data, chosen.training, seed=seed, cache_key=repr(chosen.model),
              cache=cache, progress=progress, device=device, validation=validation).to(device).eval()
        for seed in seeds
    )
    on_device = lambda batches: [(x.to(device), y.to(device)) for x, y in batches]  # noqa: E731
    test_batches = on_device(chosen.data("test", root=root).batches(chosen.eval_batch_size))
    train_batches = on_device(train_data.subset(chosen.n_statistics).batches(chosen.eval_batch_size))
    return TrainedModels(models, seeds, test_batches, train_batches, chosen)


def trained_pair(
    name: str | Recipe,
    scale: str = "ci",
    *,
    seeds: tuple[int, int] = (0, 1),
    root: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> TrainedPair:
    """Train (or load from the cache) two models of one recipe from ``seeds``; see :class:`TrainedPair`
    and :func:`trained_models`, whose arguments these are."""
    if len(seeds) != 2:
        raise ValueError(f"trained_pair: seeds must be two seeds, got {seeds!r}; trained_models takes any number")
    trained = trained_models(name, scale, seeds=seeds, root=root, cache=cache, device=device, progress=progress)
    return TrainedPair(*trained.models, trained.test_batches, trained.train_batches, trained.recipe)


def narrowed(chosen: Recipe, divisor: int) -> Recipe:
    """A GPT-2 recipe at 1 / ``divisor`` of its width, for aligning a narrow model to a wide one.

    ``n_embd`` and ``n_inner`` are divided by ``divisor`` and ``n_head`` stays: :func:`lmc_lib.lift`
    widens heads but never adds them, so the lifted model has as many heads as the wide one (and
    ``n_head`` must still divide the narrow width). The eps of every norm is multiplied by
    ``divisor``, because an exact lift to the wide width divides it by the same factor (the paper's
    App. E): the lifted model then has the wide model's eps, and the two are one architecture with
    nothing approximated. A power of two keeps the eps exact in floating point. Training and data
    are the recipe's own.
    """
    model = chosen.model
    if not isinstance(model, GPTConfig):
        raise TypeError(f"narrowed: needs a GPT-2 recipe (GPTConfig), got {type(model).__name__}")
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"narrowed: divisor must be a positive integer, got {divisor!r}")
    width, inner = model.n_embd // divisor, model.n_inner // divisor
    if width * divisor != model.n_embd or inner * divisor != model.n_inner or width % model.n_head:
        raise ValueError(f"narrowed: 1/{divisor} of n_embd={model.n_embd} and n_inner={model.n_inner} is not a "
                         f"whole width that n_head={model.n_head} heads divide")
    small = replace(model, n_embd=width, n_inner=inner, layer_norm_epsilon=model.layer_norm_epsilon * divisor)
    return replace(chosen, model=small)


_PERMUTED = {"residual": ("permutation",), "heads": ("permutation",), "mlp": ("permutation",)}
_ROTATED = {**_PERMUTED, "residual": ("orthogonal",)}

#: Classes per space group of the alignments the Transformer chapters compare (canonical models).
ALIGNMENT_CLASSES: dict[str, dict[str, tuple[str, ...]]] = {
    "permutations": _PERMUTED,
    "orthogonal residual": _ROTATED,
    "orthogonal + invertible heads": {**_ROTATED, "qk": ("invertible",), "ov": ("invertible",)},
}


def alignment_paths(a: nn.Module, b: nn.Module, data: Batches) -> dict[str, tuple[nn.Module, nn.Module]]:
    """The linear paths of the paper's Table 2 and their ablations, as (start, end) pairs of canonical models.

    Vanilla averaging; activation matching on ``data`` and weight matching with the classes of
    :data:`ALIGNMENT_CLASSES`; and weight matching with the orthogonal residual followed by
    circuit-space interpolation of the heads (:func:`~lmc_lib.circuits.circuit_pair`). Every start
    computes A's function and every end B's.
    """
    activation = {kind: activation_matching(a, b, data, classes=ALIGNMENT_CLASSES[kind]).apply(b)
                  for kind in ("permutations", "orthogonal residual")}
    weight = {kind: weight_matching(a, b, classes=classes).apply(b) for kind, classes in ALIGNMENT_CLASSES.items()}
    return {
        "vanilla averaging": (a, b),
        **{f"activation matching, {kind}": (a, end) for kind, end in activation.items()},
        **{f"weight matching, {kind}": (a, end) for kind, end in weight.items()},
        "weight matching, orthogonal + circuit interpolation": circuit_pair(a, weight["orthogonal residual"]),
    }


#: The paper's Table 2 (test-loss barrier, mean over its pairs of models) by setting and path. Its
#: weight matching interpolates attention heads in circuit space; its activation matching baseline
#: (Verma and Elbayad, 2024) permutes the residual stream, heads and MLP units.
PAPER_BARRIERS: dict[str, dict[str, float]] = {
    "ViT CIFAR-10": {
        "vanilla averaging": 1.69,
        "activation matching, permutations": 1.27,
        "weight matching, orthogonal + circuit interpolation": 0.36,
        "learned matching, permutations": 0.45,
        "learned matching, orthogonal": 0.00,
    },
    "GPT-2 Tiny Shakespeare": {
        "vanilla averaging": 2.02,
        "activation matching, permutations": 1.43,
        "weight matching, orthogonal + circuit interpolation": 0.34,
        "learned matching, permutations": 0.63,
        "learned matching, orthogonal": 0.02,
    },
}


def compare_with_paper(curves: Mapping[str, BarrierCurve], setting: str, *, digits: int = 3) -> Table:
    """One row per path: our loss and accuracy barriers beside the paper's loss barrier for ``setting``
    (a key of :data:`PAPER_BARRIERS`; "-" where the paper has no such path)."""
    paper = {name: f"{value:.2f}" for name, value in PAPER_BARRIERS[setting].items()}  # as printed in the paper
    rows = tuple((name, c.barrier, c.accuracy_barrier, paper.get(name, "-")) for name, c in curves.items())
    return Table(("path", "loss barrier", "accuracy barrier", f"paper: {setting}"), rows, digits)
