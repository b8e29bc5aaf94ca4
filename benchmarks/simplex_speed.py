"""Time lmc.simplex_barrier over three models against one mixed model per point.

The plain loop, for each of the P points l of the simplex grid: copy the model, load the mixed
state dict sum_m l_m theta_m, run the whole evaluation set. ``lmc.simplex_barrier`` stacks the
mixed parameter sets of a chunk and runs them together (one pass over the data per chunk; for an
MLP the first layer once per model, blended). Both run on three MLPs 784-512-512-10 briefly
trained on MNIST, over the MNIST test images held in memory and read through a torchvision
DataLoader, and must give the same losses. Each repeat times the two back to back, so a busy
machine slows both alike; the table shows medians over ``--repeats`` repeats and the spread
(min, max) of the per-repeat speed-ups. Results go to benchmarks/results/simplex_speed.json.

With the data in memory both ways do the hidden layers' matrix products of every point; sharing
the first layer saves only its products, so the speed-up cannot exceed the ratio of the
multiply-adds, P (stem + rest) / (K stem + P rest), printed as "bound" (about 2.3 for this MLP and
66 points). Reading the data once per chunk instead of once per point is what a DataLoader adds.

    OMP_WAIT_POLICY=PASSIVE LMC_DATA_DIR=../shared/data python benchmarks/simplex_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib.book import results

RESULTS = Path(__file__).parent / "results"


def plain_surface(models: Sequence[nn.Module], data: Iterable, weights: np.ndarray) -> np.ndarray:
    """Mean cross-entropy at each point: one mixed model and one pass of ``lmc.evaluate`` per row of ``weights``."""
    states = [model.state_dict() for model in models]
    losses = []
    for row in weights:
        model = copy.deepcopy(models[0])
        model.load_state_dict({k: sum(float(w) * state[k] for w, state in zip(row, states)) for k in states[0]})
        losses.append(lmc.evaluate(model, data)[0])
    return np.array(losses)


def arithmetic_bound(model: nn.Module, models: int, points: int) -> float:
    """P (stem + rest) / (K stem + P rest): the plain loop's multiply-adds per example over those of a
    shared first layer (the stem, once per model) and every point's other layers."""
    sizes = [module.weight.numel() for module in model.modules() if isinstance(module, nn.Linear)]
    stem, rest = sizes[0], sum(sizes[1:])
    return points * (stem + rest) / (models * stem + points * rest)


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def trained_models(epochs: int, count: int) -> list[nn.Module]:
    """``count`` MLPs 784-512-512-10 trained on MNIST from seeds 0, 1, ... (cached on disk)."""
    config = lmc.MLPConfig(784, (512, 512), 10)
    data = lmc.mnist(train=True)
    train = lmc.TrainConfig(epochs=epochs)
    return [lmc.train(lambda: lmc.MLP(config), data, train, seed=s, cache_key=repr(config), progress=False)
            for s in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the three models")
    parser.add_argument("--points", type=int, default=11, help="grid points per edge (11: 66 points)")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = trained_models(args.epochs, 3)
    weights = lmc.simplex.simplex_grid(3, args.points)
    sources = {
        "in memory": lmc.mnist(train=False).batches(args.batch_size),
        "DataLoader": lmc.data.mnist_loader(train=False, batch_size=args.batch_size),
    }
    bound = arithmetic_bound(models[0], len(models), len(weights))
    print(f"torch {torch.__version__}, {args.threads} threads, {len(weights)} points, "
          f"{len(sources['in memory'])} batches of {args.batch_size} test images, {args.repeats} repeats, "
          f"bound {bound:.2f}x")
    print("| data | plain loop (s) | simplex_barrier (s) | speed-up (median) | speed-up (min - max) |")
    print("|---|---|---|---|---|")
    records = []
    for name, data in sources.items():
        surface = lmc.simplex_barrier(models, data, points=args.points, progress=False)
        error = float(np.abs(surface.losses - plain_surface(models, data, weights)).max())
        if error > 1e-5:
            raise AssertionError(f"simplex_barrier and the plain loop disagree by {error:.2e}")
        runs = [(seconds(lambda: plain_surface(models, data, weights)),
                 seconds(lambda: lmc.simplex_barrier(models, data, points=args.points, progress=False)))
                for _ in range(args.repeats)]
        ratios = [plain / fast for plain, fast in runs]
        plain, fast = (statistics.median(column) for column in zip(*runs))
        speedup = statistics.median(ratios)
        print(f"| {name} | {plain:.3f} | {fast:.3f} | {speedup:.2f}x | {min(ratios):.2f}x - {max(ratios):.2f}x |")
        records.append({"data": name, "points": len(weights), "plain loop (s)": round(plain, 4),
                        "simplex_barrier (s)": round(fast, 4), "speed-up": round(speedup, 3),
                        "speed-up min": round(min(ratios), 3), "speed-up max": round(max(ratios), 3),
                        "bound": round(bound, 3), "max loss difference": error,
                        "barrier": round(surface.barrier, 6)})
    settings = {"models": "3 x MLP 784-512-512-10, MNIST", "epochs": args.epochs, "threads": args.threads,
                "repeats": args.repeats, "batch size": args.batch_size, "points per edge": args.points}
    path = results.record("simplex_speed", records, settings=settings, folder=RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
