"""Reproduce a column of the paper's Table 2 over several pairs of models (for a GPU machine).

    python -m lmc_lib.book.reproduce gpt2-shakespeare-bpe --scale paper --pairs 3
    python -m lmc_lib.book.reproduce vit-mnist --scale paper --pairs 3

For pair k the models are trained from seeds 2k and 2k + 1 (cached on disk), rewritten in canonical
form, and the test-loss barrier of the five rows of Table 2 is measured on an 11-point grid:
vanilla averaging; activation matching with permutations (the paper's baseline); weight matching
with an orthogonal residual and permutations; learned matching with permutations only; learned
matching with the orthogonal residual and permutations (both started from weight matching). Every
path with aligned heads interpolates them in circuit space, as the paper does. The barriers of every
pair and their mean and standard error go to ``<out>/table2-<recipe>-<scale>.json``, with the
machine, versions and date (:func:`lmc_lib.book.results.record`), which the reproduction appendix reads.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from ..activations import activation_matching
from ..barrier import barrier
from ..circuits import circuit_pair
from ..family import canonicalize
from ..learned import learned_matching
from ..matching import weight_matching
from . import results
from .recipes import TrainedPair, recipe, trained_pair

__all__ = ["ROWS", "five_rows", "reproduce", "main"]

#: the rows of Table 2, in the paper's order (our names)
ROWS = ("vanilla averaging", "activation matching", "weight matching", "learned, permutations only",
        "learned (O + perms)")


def five_rows(pair: TrainedPair, *, steps: int, lr: float) -> dict[str, float]:
    """The test-loss barrier of each row of Table 2 for one pair of trained models."""
    a, b = canonicalize(pair.a), canonicalize(pair.b)
    weight = weight_matching(a, b, classes="paper")
    permuted = weight_matching(a, b, classes="permutations")

    def learned(init, classes):
        return learned_matching(a, b, pair.train_batches, init=init, classes=classes, steps=steps, lr=lr).apply(b)

    ends = {
        "vanilla averaging": (a, b),
        "activation matching": (a, activation_matching(a, b, pair.train_batches, classes="permutations").apply(b)),
        "weight matching": circuit_pair(a, weight.apply(b)),
        "learned, permutations only": circuit_pair(a, learned(permuted, "permutations")),
        "learned (O + perms)": circuit_pair(a, learned(weight, "paper")),
    }
    return {row: barrier(start, end, pair.test_batches, progress=False).barrier for row, (start, end) in ends.items()}


def _mean_and_error(values: Sequence[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "standard_error": error}


def reproduce(name: str, scale: str, *, pairs: int = 3, steps: int = 500, lr: float = 0.01,
              device: str | torch.device | None = None, root: str | os.PathLike | None = None,
              cache: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Measure the five rows of Table 2 on ``pairs`` pairs of models of one recipe; the path of the JSON written."""
    if pairs < 1 or steps < 1:
        raise ValueError(f"reproduce: need pairs >= 1 and steps >= 1, got {pairs} and {steps}")
    chosen = recipe(name, scale) if isinstance(name, str) else name
    per_pair = []
    for k in range(pairs):
        pair = trained_pair(chosen, seeds=(2 * k, 2 * k + 1), root=root, cache=cache, device=device)
        per_pair.append(five_rows(pair, steps=steps, lr=lr))
    summary = {row: _mean_and_error([barriers[row] for barriers in per_pair]) for row in ROWS}
    label = name if isinstance(name, str) else "recipe"
    return results.record(f"table2-{label}-{scale}", {"pairs": per_pair, "summary": summary},
                          settings={"recipe": chosen, "scale": scale, "pairs": pairs, "steps": steps, "lr": lr},
                          folder=out, device=device)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reproduce a column of the paper's Table 2 over several pairs.")
    parser.add_argument("recipe", help="a key of lmc_lib.book.RECIPES, e.g. gpt2-shakespeare-bpe or vit-mnist")
    parser.add_argument("--scale", default="paper")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500, help="learned matching: Adam steps")
    parser.add_argument("--lr", type=float, default=0.01, help="learned matching: Adam learning rate")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results", help="folder of the JSON file")
    args = parser.parse_args(argv)
    path = reproduce(args.recipe, args.scale, pairs=args.pairs, steps=args.steps, lr=args.lr, device=args.device,
                     out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
