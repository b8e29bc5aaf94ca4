"""The book's helpers: the chapters' training recipes, the papers' numbers, result tables and files, figures.

    from lmc_lib import book
    pair = book.trained_pair("vit-mnist", "ci")
    book.results.record("07_vision_transformers", book.results.curve_summary(curves))

    from lmc_lib.book import style, diagrams    # the house style of figures and the schematic diagrams
    style.use()

Chapters import these explicitly; they are not part of the library's top level. ``style`` and
``diagrams`` import matplotlib's pyplot, so they are imported on demand.
"""

from . import paper, results
from .recipes import (
    ALIGNMENT_CLASSES, PAPER_BARRIERS, RECIPES, GPTConfig, Recipe, TrainedModels, TrainedPair, ViTConfig,
    alignment_paths, compare_with_paper, narrowed, recipe, trained_models, trained_pair,
)
from .report import Table, barrier_table

__all__ = [
    "ViTConfig", "GPTConfig", "Recipe", "RECIPES", "recipe", "TrainedPair", "trained_pair", "TrainedModels",
    "trained_models", "narrowed",
    "ALIGNMENT_CLASSES", "alignment_paths", "PAPER_BARRIERS", "compare_with_paper", "Table", "barrier_table",
    "paper", "results",
]
