"""Time lmc_lib.barrier against the plain per-lambda loop that other libraries use.

The plain loop, for each of K lambdas: copy the model, load the interpolated state dict, run the
whole evaluation set. ``lmc.barrier`` stacks the K interpolated parameter sets and runs them
together (vmap), one pass over the data per chunk. Both are timed on an MLP 784-512-512-10 with
the MNIST test images held in memory and read through a torchvision DataLoader, and both must give
the same losses. Each repeat times the two methods and one plain forward pass back to back, so a
busy machine slows all three alike; the table shows medians over ``--repeats`` repeats (the
speed-up is the median of the per-repeat ratios).

    OMP_WAIT_POLICY=PASSIVE LMC_DATA_DIR=../shared/data python benchmarks/barrier_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

import lmc_lib as lmc


def plain_barrier(a: nn.Module, b: nn.Module, data: Iterable, lambdas: np.ndarray) -> np.ndarray:
    """Mean cross-entropy at each lambda: one interpolated model and one pass of ``lmc.evaluate`` per lambda."""
    state_a, state_b = a.state_dict(), b.state_dict()
    losses = []
    for lam in lambdas:
        model = copy.deepcopy(a)
        model.load_state_dict({k: torch.lerp(v, state_b[k], float(lam)) for k, v in state_a.items()})
        losses.append(lmc.evaluate(model, data)[0])
    return np.array(losses)


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def trained_pair(epochs: int) -> tuple[nn.Module, nn.Module]:
    """Two MLPs 784-512-512-10 briefly trained on MNIST from seeds 0 and 1 (cached on disk)."""
    config = lmc.MLPConfig(784, (512, 512), 10)
    data = lmc.mnist(train=True)
    train = lmc.TrainConfig(epochs=epochs)
    return tuple(
        lmc.train(lambda: lmc.MLP(config), data, train, seed=s, cache_key=repr(config), progress=False) for s in (0, 1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the two endpoint models")
    parser.add_argument("--lambdas", type=int, nargs="+", default=[11, 25])
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    a, b = trained_pair(args.epochs)
    sources = {
        "in memory": lmc.mnist(train=False).batches(args.batch_size),
        "DataLoader": lmc.data.mnist_loader(train=False, batch_size=args.batch_size),
    }
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{len(sources['in memory'])} batches of {args.batch_size} test images, median of {args.repeats}")
    print("| data | K | plain loop (s) | lmc.barrier (s) | speed-up | lmc / (K x forward) |")
    print("|---|---|---|---|---|---|")
    for name, data in sources.items():
        for k in args.lambdas:
            grid = np.linspace(0, 1, k)
            curve = lmc.barrier(a, b, data, lambdas=k, progress=False)
            error = np.abs(curve.losses - plain_barrier(a, b, data, grid)).max()
            if error > 1e-5:
                raise AssertionError(f"lmc.barrier and the plain loop disagree by {error:.2e}")
            runs = [
                (
                    seconds(lambda: plain_barrier(a, b, data, grid)),
                    seconds(lambda: lmc.barrier(a, b, data, lambdas=k, progress=False)),
                    seconds(lambda: lmc.evaluate(a, data)),
                )
                for _ in range(args.repeats)
            ]
            plain, fast, forward = (statistics.median(column) for column in zip(*runs))
            speedup = statistics.median(p / f for p, f, _ in runs)
            print(f"| {name} | {k} | {plain:.3f} | {fast:.3f} | {speedup:.2f}x | {fast / (k * forward):.2f} |")


if __name__ == "__main__":
    main()
