"""The book's helpers: the chapters' training recipes, the paper's tables and result tables.

    from lmc_lib import book
    pair = book.trained_pair("vit-mnist", "ci")

Chapters import these explicitly; they are not part of the library's top level.
"""

from .recipes import (
    ALIGNMENT_CLASSES, PAPER_BARRIERS, RECIPES, GPTConfig, Recipe, TrainedPair, ViTConfig, alignment_paths,
    compare_with_paper, recipe, trained_pair,
)
from .report import Table, barrier_table

__all__ = [
    "ViTConfig", "GPTConfig", "Recipe", "RECIPES", "recipe", "TrainedPair", "trained_pair",
    "ALIGNMENT_CLASSES", "alignment_paths", "PAPER_BARRIERS", "compare_with_paper", "Table", "barrier_table",
]
