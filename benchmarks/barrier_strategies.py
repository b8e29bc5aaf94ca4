"""When does stacking the lambdas (vmap) beat one interpolated model per lambda (loop)?

Times ``lmc.barrier(strategy="vmap")`` and ``strategy="loop"`` (K = 11) on the models of the book,
random weights and random data of the chapters' shapes (the cost does not depend on the values):
the MLP 784-512-512-10 of chapters 1-2 (2,000 MNIST-shaped inputs), the ViTs of chapter 7 and the
GPT-2s of chapter 8 at book and paper scale. Each row times the two strategies back to back
(``--repeats`` times, median) and checks that they agree to 1e-5; ``auto`` names the strategy that
``lmc.barrier`` picks by default. The output is the evidence behind that default.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/barrier_strategies.py --threads 2
    python benchmarks/barrier_strategies.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib import barrier_strategy
from lmc_lib.book.recipes import RECIPES


def mlp_case(n: int) -> tuple[Callable[[], nn.Module], list]:
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    return lambda: lmc.MLP(lmc.MLPConfig(784, (512, 512), 10)), [
        (x[i : i + 500], y[i : i + 500]) for i in range(0, n, 500)
    ]


def recipe_case(name: str, scale: str, n: int) -> tuple[Callable[[], nn.Module], list]:
    recipe = RECIPES[name][scale]
    config, batch = recipe.model, recipe.eval_batch_size
    if name.startswith("gpt2"):
        x = torch.randint(0, config.vocab_size, (n, config.block_size + 1))
        x, y = x[:, :-1], x[:, 1:]
    else:
        x, y = torch.randn(n, config.in_channels, config.image_size, config.image_size), torch.randint(0, 10, (n,))
    return lambda: lmc.canonicalize(config.build().eval()), [
        (x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)
    ]


CASES = {
    "MLP 784-512-512-10, 2000 inputs": lambda: mlp_case(2000),
    "ViT MNIST book (d 64, 4 blocks), 2000 images": lambda: recipe_case("vit-mnist", "book", 2000),
    "ViT CIFAR-10 paper (d 256, 6 blocks), 500 images": lambda: recipe_case("vit-cifar10", "paper", 500),
    "GPT-2 book (d 64, 3 blocks, context 64), 400 windows": lambda: recipe_case("gpt2-shakespeare", "book", 400),
    "GPT-2 paper (d 256, 6 blocks, context 256), 50 windows": lambda: recipe_case("gpt2-shakespeare", "paper", 50),
}


def timed(run: Callable[[], lmc.BarrierCurve]) -> tuple[lmc.BarrierCurve, float]:
    """``run()`` and its wall time in seconds (GPU work included)."""
    start = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lambdas", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {name}; K = {args.lambdas}; median of {args.repeats} repeats\n")
    print("| model | vmap (s) | loop (s) | loop / vmap | auto |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, case in CASES.items():
        build, data = case()
        torch.manual_seed(0)
        a = build().to(device)
        torch.manual_seed(1)
        b = build().to(device)
        curves, times = {}, {"vmap": [], "loop": []}
        for repeat in range(args.repeats + 1):  # the first round warms up (allocator, kernels)
            for strategy in times:
                curves[strategy], elapsed = timed(
                    lambda: lmc.barrier(a, b, data, lambdas=args.lambdas, strategy=strategy, progress=False)  # noqa: B023
                )
                if repeat:
                    times[strategy].append(elapsed)
        error = float(np.abs(curves["vmap"].losses - curves["loop"].losses).max())
        if error > 1e-5:
            raise AssertionError(f"{label}: vmap and loop disagree by {error:.1e}")
        vmap, loop = (statistics.median(times[s]) for s in ("vmap", "loop"))
        print(f"| {label} | {vmap:.3f} | {loop:.3f} | {loop / vmap:.2f} | {barrier_strategy(a, device)} |", flush=True)


if __name__ == "__main__":
    main()
