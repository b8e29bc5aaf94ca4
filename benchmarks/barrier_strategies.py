"""Stacked (vmap) or one point after another (loop): which is faster, and does "auto" pick it?

Random weights and random data of the chapters' shapes (the cost does not depend on the values):
the MLP of chapters 1-2, the ViT of chapter 7 and the GPT-2s of chapter 8 (characters, and GPT-2
BPE tokens) at book scale, and with ``--paper`` at the paper's scale; each with the evaluation
batches of its recipe and with one-example batches (one image, one text window). Each round
times, back to back, one plain forward pass over the data (the model and the summed
cross-entropy), ``lmc.barrier(strategy="vmap")`` and ``strategy="loop"`` (K = 11); reported are
each strategy's time over K forward passes (median over the rounds, and the range), the strategy
``auto`` picks, and whether that is the faster one ("tie": within 5%). Both strategies must give
the same curve to 1e-5.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/barrier_strategies.py --threads 2
    python benchmarks/barrier_strategies.py --device cuda
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib.book.recipes import RECIPES
from timing import forward_pass, print_table, ratio, rounds, write

Case = Callable[[], tuple[Callable[[], nn.Module], list]]


def mlp_case(n: int, batch: int) -> Case:
    def build():
        x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
        return lambda: lmc.MLP(lmc.MLPConfig(784, (512, 512), 10)), list(zip(x.split(batch), y.split(batch)))

    return build


def recipe_case(name: str, scale: str, n: int, batch: int | None = None) -> Case:
    """Model ``RECIPES[name][scale]`` (canonical form) and ``n`` random inputs in its batches (or ``batch``)."""

    def build():
        recipe = RECIPES[name][scale]
        config, size = recipe.model, batch or recipe.eval_batch_size
        if name.startswith("gpt2"):
            x = torch.randint(0, config.vocab_size, (n, config.block_size + 1))
            x, y = x[:, :-1], x[:, 1:]
        else:
            x = torch.randn(n, config.in_channels, config.image_size, config.image_size)
            y = torch.randint(0, config.num_classes, (n,))
        return lambda: lmc.canonicalize(config.build().eval()), list(zip(x.split(size), y.split(size)))

    return build


BOOK = {
    "MLP 784-512-512-10, 2000 inputs in 500s": mlp_case(2000, 500),
    "MLP 784-512-512-10, 200 inputs one by one": mlp_case(200, 1),
    "ViT MNIST book (d 64, 4 blocks), 2000 images in 500s": recipe_case("vit-mnist", "book", 2000),
    "ViT MNIST book, 100 images one by one": recipe_case("vit-mnist", "book", 100, 1),
    "GPT-2 characters book (d 64, 3 blocks, context 64), 400 windows in 100s": recipe_case(
        "gpt2-shakespeare", "book", 400),
    "GPT-2 characters book, 40 windows one by one": recipe_case("gpt2-shakespeare", "book", 40, 1),
    "GPT-2 BPE book (vocabulary 50257, d 64, 2 blocks), 100 windows in 50s": recipe_case(
        "gpt2-shakespeare-bpe", "book", 100),
    "GPT-2 BPE book, 20 windows one by one": recipe_case("gpt2-shakespeare-bpe", "book", 20, 1),
}
PAPER = {
    "ViT CIFAR-10 paper (d 256, 6 blocks), 500 images in 500s": recipe_case("vit-cifar10", "paper", 500),
    "GPT-2 characters paper (d 256, 6 blocks, context 256), 50 windows in 50s": recipe_case(
        "gpt2-shakespeare", "paper", 50),
}


def measure(label: str, case: Case, device: torch.device, k: int, repeats: int) -> dict:
    build, data = case()
    torch.manual_seed(0)
    a = build().to(device)
    torch.manual_seed(1)
    b = build().to(device)
    curves = {s: lmc.barrier(a, b, data, k, strategy=s, progress=False) for s in ("vmap", "loop")}
    error = float(np.abs(curves["vmap"].losses - curves["loop"].losses).max())
    if error > 1e-5:
        raise AssertionError(f"{label}: vmap and loop disagree by {error:.1e}")
    times = rounds({
        "forward": lambda: forward_pass(a, data),
        **{s: lambda s=s: lmc.barrier(a, b, data, k, strategy=s, progress=False) for s in ("vmap", "loop")},
    }, repeats)
    auto = lmc.barrier_strategy(a, device, data[0][0])
    vmap, loop = (ratio(times[s], times["forward"], k) for s in ("vmap", "loop"))
    other = "loop" if auto == "vmap" else "vmap"
    gap = ratio(times[auto], times[other])["median"]
    return {
        "model and data": label,
        "vmap / (K x forward)": vmap,
        "loop / (K x forward)": loop,
        "auto": auto,
        "auto is faster": "yes" if gap < 0.95 else "tie" if gap <= 1.05 else "no",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lambdas", type=int, default=11)
    parser.add_argument("--paper", action="store_true", help="also the paper-scale models (slow on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = {**BOOK, **(PAPER if args.paper else {})}
    rows = []
    for label, case in cases.items():
        rows.append(measure(label, case, device, args.lambdas, args.repeats))
        print_table(label, rows[-1:])
    title = f"K = {args.lambdas}, median (range) over {args.repeats} rounds"
    print_table(title, rows)
    settings = {"threads": args.threads, "device": str(device), "repeats": args.repeats, "lambdas": args.lambdas,
                "weights": "random", "paper scale": args.paper}
    write(f"barrier_strategies-{device.type}", {title: rows}, settings, device)


if __name__ == "__main__":
    main()
