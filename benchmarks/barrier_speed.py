"""lmc.barrier against K plain forward passes and against the plain per-lambda loop (an MLP on MNIST).

The model is an MLP 784-512-512-10 (random weights, seeded: the cost does not depend on them); the
data, the 2,000 MNIST test images in batches of 500, held in memory or read by a torchvision
DataLoader that decodes every image on every pass. Each round times, back to back: one plain
forward pass (the model and the summed cross-entropy on every batch: the unit of the ratios),
lmc.barrier with either strategy (K lambdas; the default, "auto", takes the one named), and the
plain per-lambda loop of most LMC code (copy the model, load the interpolated state dict,
evaluate: K passes over the data). Reported are medians over the rounds and their range, which
says how noisy the machine was. The floor of lmc.barrier / (K x forward) at K = 25 is about 0.45:
the first layer (60% of the arithmetic) is computed once per endpoint, the rest once per lambda.
Every method must give the plain loop's losses to 1e-5. A last table says where lmc.barrier's time
goes at the largest K (torch.profiler, self CPU time of its operators in groups, as shares).

    OMP_WAIT_POLICY=PASSIVE LMC_DATA_DIR=../shared/data python benchmarks/barrier_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

import lmc_lib as lmc
from timing import forward_pass, print_table, ratio, rounds, write


def plain_loop(a: nn.Module, b: nn.Module, data: Iterable, lambdas: np.ndarray) -> np.ndarray:
    """Mean cross-entropy at each lambda: one interpolated model and one pass of ``lmc.evaluate`` per lambda."""
    state_a, state_b = a.state_dict(), b.state_dict()
    losses = []
    for lam in lambdas:
        model = copy.deepcopy(a)
        model.load_state_dict({k: torch.lerp(v, state_b[k], float(lam)) for k, v in state_a.items()})
        losses.append(lmc.evaluate(model, data)[0])
    return np.array(losses)


def pair() -> tuple[nn.Module, nn.Module]:
    config = lmc.MLPConfig(784, (512, 512), 10)
    torch.manual_seed(0)
    a = lmc.MLP(config).eval()
    torch.manual_seed(1)
    return a, lmc.MLP(config).eval()


def measure(a: nn.Module, b: nn.Module, data: Iterable, k: int, repeats: int) -> dict:
    """One row: the ratios of lmc.barrier (both strategies) and of the plain loop at K lambdas."""
    grid = np.linspace(0, 1, k)
    reference = plain_loop(a, b, data, grid)
    for strategy in ("loop", "vmap"):
        error = np.abs(lmc.barrier(a, b, data, k, strategy=strategy, progress=False).losses - reference).max()
        if error > 1e-5:
            raise AssertionError(f"lmc.barrier (strategy={strategy!r}) and the plain loop differ by {error:.1e}")
    times = rounds({
        "forward": lambda: forward_pass(a, data),
        "loop": lambda: lmc.barrier(a, b, data, k, strategy="loop", progress=False),
        "vmap": lambda: lmc.barrier(a, b, data, k, strategy="vmap", progress=False),
        "plain loop": lambda: plain_loop(a, b, data, grid),
    }, repeats)
    auto = lmc.barrier_strategy(a, "cpu", next(iter(data))[0])
    return {
        "K": k,
        "auto": auto,
        "lmc.barrier / (K x forward)": ratio(times[auto], times["forward"], k),
        "loop / (K x forward)": ratio(times["loop"], times["forward"], k),
        "vmap / (K x forward)": ratio(times["vmap"], times["forward"], k),
        "plain loop / lmc.barrier": ratio(times["plain loop"], times[auto]),
        "forward (ms)": ratio(times["forward"], [1e-3] * repeats),
    }


#: operator name fragments -> the group of work they do in lmc.barrier (first match wins)
GROUPS = {
    "matrix products": ("addmm", "aten::mm", "matmul", "linear", "bmm"),
    "mixing the tensors of each lambda": ("lerp",),
    "activations (ReLU)": ("clamp_min", "relu", "gelu"),
    "loss and accuracy": ("cross_entropy", "log_softmax", "nll_loss", "argmax", "amax", "eq", "ne", "where", "sum"),
    "copies and casts": ("copy_", "_to_copy"),
    "input checks (finite weights)": ("abs", "isfinite", "aten::all"),
}


def where_the_time_goes(a: nn.Module, b: nn.Module, data: Iterable, k: int, strategy: str) -> dict:
    """Shares of lmc.barrier's operator time (self CPU time) in the :data:`GROUPS`, the rest as "other"."""
    lmc.barrier(a, b, data, k, strategy=strategy, progress=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        lmc.barrier(a, b, data, k, strategy=strategy, progress=False)
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    for event in profile.key_averages():
        group = next((g for g, names in GROUPS.items() if any(n in event.key for n in names)), "other")
        shares[group] += event.self_cpu_time_total
    total = sum(shares.values())
    return {"K": k, "strategy": strategy, **{group: round(value / total, 3) for group, value in shares.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lambdas", type=int, nargs="+", default=[11, 25])
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a, b = pair()
    sources = {
        "in memory": lmc.mnist(train=False).batches(args.batch_size),
        "DataLoader": lmc.data.mnist_loader(train=False, batch_size=args.batch_size),
    }
    tables = {}
    for name, data in sources.items():
        rows = [measure(a, b, data, k, args.repeats) for k in args.lambdas]
        tables[f"MLP 784-512-512-10, 2000 MNIST test images {name}"] = rows
        print_table(f"MNIST {name}: median (range) over {args.repeats} rounds", rows)
    profile = [where_the_time_goes(a, b, sources["in memory"], max(args.lambdas), strategy)
               for strategy in ("loop", "vmap")]
    tables["where lmc.barrier's time goes (in memory, share of operator time)"] = profile
    print_table("where lmc.barrier's time goes", profile)
    settings = {"threads": args.threads, "repeats": args.repeats, "batch_size": args.batch_size,
                "model": "MLP 784-512-512-10, random weights", "data": "MNIST test, 2000 images"}
    write("barrier_speed", tables, settings)


if __name__ == "__main__":
    main()
