"""What the barrier benchmarks share: the reference forward pass, timing in rounds, ratios, the results file.

Every number a benchmark reports is a ratio of two times measured in the same round, back to back
(a busy machine slows both alike), summarised over the rounds by its median and its range (the
spread says how noisy the machine was). Absolute times are kept in the results file only as
context.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lmc_lib.book import results
from lmc_lib.evaluation import logits_of

FOLDER = Path(__file__).with_name("results")
T = TypeVar("T")


def timed(run: Callable[[], T]) -> tuple[T, float]:
    """``run()`` and its wall time (GPU work included)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def seconds(run: Callable[[], object]) -> float:
    """Wall time of ``run()`` (GPU work included)."""
    return timed(run)[1]


def forward_pass(model: nn.Module, data: Iterable) -> float:
    """One plain evaluation pass, the unit of every ratio: ``model`` on every batch and the summed
    cross-entropy (what the simplest per-lambda loop does for each lambda)."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for x, y in data:
            logits = logits_of(model(x.to(device)))
            total += F.cross_entropy(logits.flatten(0, -2), y.to(device).flatten(), reduction="sum")
    return float(total)


def rounds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each run's wall time in ``repeats`` rounds; within a round the runs go back to back, in order
    (one untimed round first, to warm caches and allocators)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return times


def ratio(numerator: list[float], denominator: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median and range over rounds of numerator / (scale x denominator), each round's own pair."""
    values = [n / (scale * d) for n, d in zip(numerator, denominator)]
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def cell(summary: dict[str, float]) -> str:
    """A ratio as "median (low-high)"."""
    return f"{summary['median']:.2f} ({summary['low']:.2f}-{summary['high']:.2f})"


def flat(row: dict) -> dict:
    """A row for the results file: each ratio as its median, and its range in a column of its own."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out[key] = round(value["median"], 3)
            out[f"{key} range"] = f"{value['low']:.2f}-{value['high']:.2f}"
        else:
            out[key] = value
    return out


def write(name: str, tables: dict[str, list[dict]], settings: dict, device: torch.device | str | None = None) -> Path:
    """``tables`` (title -> rows) with the machine, versions and date to benchmarks/results/<name>.json."""
    tables = {title: [flat(row) for row in rows] for title, rows in tables.items()}
    path = results.record(name, tables, settings=settings, folder=FOLDER, device=device)
    print(f"\nwrote {path}")
    return path


def print_table(title: str, rows: list[dict]) -> None:
    """``rows`` as a markdown table under ``title``, ratios as "median (low-high)"."""
    rows = [{key: cell(value) if isinstance(value, dict) else value for key, value in row.items()} for row in rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(f"\n{title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "-")) for column in columns) + " |", flush=True)
