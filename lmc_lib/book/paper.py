"""The two papers' published numbers and settings, and the tables that set ours beside them.

:data:`TABLE2` is Table 2 of Theus et al. (2025): the test-loss barrier between two independently
trained Transformers, mean and standard error over the paper's pairs, per method and setting.
:data:`OT_FIG2` holds approximate readings of Fig. 2 of Ferbach et al. (2024), the test loss at the
midpoint of the path after three matchings across learning rates (read off the published figure,
so good to about 10%). The reproduction page builds its tables from these and from the results
files the chapters write (:mod:`lmc_lib.book.results`).
"""

from __future__ import annotations

from collections.abc import Mapping

from .report import Table

__all__ = [
    "TABLE2_METHODS", "TABLE2_SETTINGS", "TABLE2", "PAPER_SETTINGS", "OUR_PATHS", "OT_FIG2", "OT_FIG2_SETTING",
    "OT_FIG2_DIMENSIONS", "DATASET_NAMES", "mean_se", "table2", "compare_cell", "describe_training", "describe_recipe",
]

#: Rows of Table 2, in the paper's order.
TABLE2_METHODS = (
    "vanilla averaging",
    "activation matching",
    "weight matching (orthogonal + permutations)",
    "learned matching, permutations only",
    "learned matching (orthogonal + permutations)",
)
#: Columns of Table 2, in the paper's order.
TABLE2_SETTINGS = ("ViT CIFAR-10", "ViT CIFAR-100", "ViT Tiny ImageNet", "GPT-2 Tiny Shakespeare", "GPT-2 BookCorpus")

_VALUES = {  # (mean, standard error) per method, in the order of TABLE2_SETTINGS
    "vanilla averaging":
        ((1.69, 0.07), (2.46, 0.04), (2.84, 0.02), (2.02, 0.12), (4.34, 0.09)),
    "activation matching":
        ((1.27, 0.13), (2.11, 0.17), (1.86, 0.10), (1.43, 0.16), (4.05, 0.13)),
    "weight matching (orthogonal + permutations)":
        ((0.36, 0.01), (0.69, 0.21), (0.47, 0.04), (0.34, 0.01), (1.56, 0.02)),
    "learned matching, permutations only":
        ((0.45, 0.02), (0.53, 0.07), (0.29, 0.02), (0.63, 0.17), (1.60, 0.04)),
    "learned matching (orthogonal + permutations)":
        ((0.00, 0.00), (0.00, 0.00), (0.00, 0.00), (0.02, 0.00), (0.42, 0.01)),
}
#: TABLE2[setting][method] = (mean, standard error) of the test-loss barrier.
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    setting: {method: values[column] for method, values in _VALUES.items()}
    for column, setting in enumerate(TABLE2_SETTINGS)
}

#: How the paper trained the models of each column (its App. B); the number of pairs is not stated.
PAPER_SETTINGS = {
    "ViT CIFAR-10": "6 blocks, width 256, 8 heads, MLP 512, patch 4, 150 epochs of AdamW (3e-4, weight decay 1e-3, "
                    "cosine), crop + flip + colour jitter; 83.8% test accuracy",
    "ViT CIFAR-100": "the CIFAR-10 ViT and training on CIFAR-100",
    "ViT Tiny ImageNet": "the CIFAR-10 ViT and training on Tiny ImageNet",
    "GPT-2 Tiny Shakespeare": "6 blocks, width 256, 4 heads, MLP 1024, context 256, GPT-2 BPE tokens, AdamW "
                              "(3e-4, weight decay 0.01, cosine with warm-up), dropout 0.1, early stopping; "
                              "losses per token",
    "GPT-2 BookCorpus": "the Tiny Shakespeare GPT-2 and training on BookCorpus",
}

#: Our path that computes each method of Table 2 (chapters 7 and 8; learned matching: chapter 9, on
#: the same pairs). The paper's weight matching interpolates the heads in circuit space; its
#: activation matching baseline (Verma and Elbayad, 2024) permutes the residual stream, heads and MLP units.
OUR_PATHS = {
    "vanilla averaging": "vanilla averaging",
    "activation matching": "activation matching, permutations",
    "weight matching (orthogonal + permutations)": "weight matching, orthogonal + circuit interpolation",
    "learned matching, permutations only": "learned, permutations only",
    "learned matching (orthogonal + permutations)": "learned (O + perms)",
}

#: The setting of the OT paper's Fig. 2 (its released notebook).
OT_FIG2_SETTING = ("MLP 784-512-512-512-10 (ReLU) on the 60,000 MNIST training images, SGD with momentum 0.9, "
                   "batch 500, 50 epochs, warm-up and cosine decay, 4 repetitions of a pair of models")
#: OT_FIG2[learning rate] = test loss of the endpoints and at the midpoint after naive, covariance-weighted
#: and activation matching, read off the paper's Fig. 2 (approximate).
OT_FIG2: dict[float, dict[str, float]] = {
    lr: dict(zip(("endpoints", "naive", "covariance", "activation"), values))
    for lr, values in {
        1e-4: (1.02, 2.0, 1.35, 1.25),
        3.98e-4: (0.33, 1.45, 0.58, 0.50),
        1.58e-3: (0.19, 1.3, 0.43, 0.32),
        6.31e-3: (0.083, 0.88, 0.25, 0.17),
        2.51e-2: (0.066, 0.40, 0.14, 0.12),
        1e-1: (0.075, 0.083, 0.098, 0.10),
    }.items()
}
#: The range of effective dimensions in the paper's Fig. 2 (all layers and learning rates), per matching.
OT_FIG2_DIMENSIONS = {"naive": (190.0, 300.0), "covariance": (1.5, 9.0), "activation": (1.5, 9.0)}


#: How the pages name the datasets of the recipes.
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "tiny_shakespeare": "Tiny Shakespeare",
                 "tiny_shakespeare_bpe": "Tiny Shakespeare (GPT-2 BPE tokens)"}


def mean_se(value: tuple[float, float]) -> str:
    """A (mean, standard error) pair as the paper prints it, e.g. "0.36 ± 0.01"."""
    mean, error = value
    return f"{mean:.2f} ± {error:.2f}"


def table2() -> Table:
    """The paper's Table 2 as published: one row per method, one column per setting, mean ± s.e."""
    rows = tuple((method, *(mean_se(TABLE2[s][method]) for s in TABLE2_SETTINGS)) for method in TABLE2_METHODS)
    return Table(("method", *TABLE2_SETTINGS), rows)


def compare_cell(setting: str, ours: Mapping[str, Mapping[str, float]] | None, *, digits: int = 2) -> Table:
    """Table 2's column ``setting`` beside our barriers: one row per method, "not reproduced" where we have none.

    ``ours`` maps our path names to summaries with a "loss_barrier" (as written by
    :func:`lmc_lib.book.results.curve_summary`), or is None when no run of ours stands for this setting.
    """
    rows = []
    for method in TABLE2_METHODS:
        path = OUR_PATHS[method]
        if ours is None or path is None or path not in ours:
            measured = "not reproduced"
        else:
            measured = f"{ours[path]['loss_barrier']:.{digits}f}"
        rows.append((method, mean_se(TABLE2[setting][method]), measured))
    return Table(("method", "paper: mean ± s.e.", "ours: one pair"), tuple(rows))


def describe_training(training: Mapping, *, learning_rate: bool = True) -> str:
    """A :class:`~lmc_lib.training.TrainConfig` (as a results file stores it) in words; without its
    learning rate when ``learning_rate`` is False (a sweep over learning rates says them elsewhere)."""
    names = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD with momentum"}
    optimizer = names.get(training["optimizer"], training["optimizer"])
    epochs = training["epochs"]
    parts = ([f"lr {training['lr']:g}"] if learning_rate else []) + [f"batch {training['batch_size']}"]
    if training.get("weight_decay"):
        parts.append(f"weight decay {training['weight_decay']:g}")
    parts.append(f"{training['schedule']} schedule")
    return f"{epochs} epoch{'s' if epochs != 1 else ''} of {optimizer} ({', '.join(parts)})"


def describe_recipe(recipe: Mapping) -> str:
    """A :class:`~lmc_lib.book.recipes.Recipe` (as a results file stores it): model, training and data in words."""
    model, training = recipe["model"], recipe["training"]
    if "embed_dim" in model:
        architecture = (f"ViT, {model['depth']} blocks of width {model['embed_dim']}, {model['num_heads']} heads, "
                        f"MLP {model['mlp_dim']}, patches {model['patch_size']} x {model['patch_size']}")
        examples = "images"
    else:
        architecture = (f"GPT-2 over characters, {model['n_layer']} blocks of width {model['n_embd']}, "
                        f"{model['n_head']} heads, MLP {model['n_inner']}, context {model['block_size']}, "
                        f"dropout {model['dropout']:g}")
        examples = "windows"
    n_train = recipe.get("n_train")
    data = f"the first {n_train:,} training {examples}" if n_train else f"all training {examples}"
    dataset = DATASET_NAMES.get(recipe["dataset"], recipe["dataset"])
    return f"{architecture}; {describe_training(training)} on {data} of {dataset}"
