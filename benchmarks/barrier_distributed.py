"""lmc.barrier in one process or spread over two (torch.distributed, gloo, CPU), in the same run.

The script starts itself under ``torchrun --nproc_per_node=2``. In each round, rank 0 first
evaluates the curve alone on the whole data with ``--threads`` threads while rank 1 waits; then
both ranks evaluate it together, each on its half of the batches with ``--threads / 2`` threads
and ``group=``, the loss sums all-reduced. Reported: the two-process time over the one-process
time (median over the rounds, and the range), for the MLP of chapters 1-2 (K = 25) and chapter
8's GPT-2 (K = 11), random weights and data of their shapes; the curves must agree to 1e-6. On a
machine with more cores than threads per process, two processes can approach half the time; on
two cores they share the same arithmetic units, and the ratio shows the cost of the collectives.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/barrier_distributed.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

import lmc_lib as lmc
from lmc_lib.book.recipes import RECIPES
from timing import print_table, ratio, seconds, write


def mlp_case() -> tuple:
    config = lmc.MLPConfig(784, (512, 512), 10)
    generator = torch.Generator().manual_seed(0)  # the same data on every rank
    x, y = torch.randn(2000, 784, generator=generator), torch.randint(0, 10, (2000,), generator=generator)
    torch.manual_seed(0)
    a = lmc.MLP(config).eval()
    torch.manual_seed(1)
    return a, lmc.MLP(config).eval(), list(zip(x.split(500), y.split(500))), 25


def gpt2_case() -> tuple:
    recipe = RECIPES["gpt2-shakespeare"]["book"]
    ids = torch.randint(0, recipe.model.vocab_size, (400, recipe.model.block_size + 1),
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = lmc.canonicalize(recipe.model.build().eval())
    torch.manual_seed(1)
    b = lmc.canonicalize(recipe.model.build().eval())
    return a, b, list(zip(ids[:, :-1].split(100), ids[:, 1:].split(100))), 11


CASES = {
    "MLP 784-512-512-10, 2000 inputs in 500s, K = 25": mlp_case,
    "GPT-2 characters book, 400 windows in 100s, K = 11": gpt2_case,
}


def worker(args: argparse.Namespace) -> None:
    """One rank: per round, rank 0 alone on the whole data, then both ranks on their halves."""
    dist.init_process_group("gloo")
    group, rank = dist.group.WORLD, dist.get_rank()
    rows = []
    for label, case in CASES.items():
        a, b, data, k = case()
        mine = lmc.distributed.shard(data, group)
        alone, together = [], []
        for round_ in range(args.repeats + 1):  # round 0 warms up
            dist.barrier()
            if rank == 0:
                torch.set_num_threads(args.threads)
                elapsed = seconds(lambda: lmc.barrier(a, b, data, k, progress=False))
                single = lmc.barrier(a, b, data, k, progress=False)
                alone.append(elapsed)
            dist.barrier()
            torch.set_num_threads(max(1, args.threads // 2))
            elapsed = seconds(lambda: lmc.barrier(a, b, mine, k, group=group, progress=False))
            dist.barrier()
            together.append(elapsed)
        curve = lmc.barrier(a, b, mine, k, group=group, progress=False)
        if rank == 0:
            error = float(np.abs(curve.losses - single.losses).max())
            if error > 1e-6:
                raise AssertionError(f"{label}: two processes and one differ by {error:.1e}")
            rows.append({"model and data": label, "2 processes / 1 process": ratio(together[1:], alone[1:]),
                         "1 process (s)": ratio(alone[1:], [1.0] * args.repeats)})
    if rank == 0:
        torch.set_num_threads(args.threads)  # the results file records the threads of the one-process run
        title = f"{args.threads} threads in 1 process vs {max(1, args.threads // 2)} in each of 2, " \
                f"median (range) over {args.repeats} rounds"
        print_table(title, rows)
        write("barrier_distributed-cpu", {title: rows},
              {"threads": args.threads, "repeats": args.repeats, "backend": "gloo", "weights": "random"})
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--worker", "--threads", str(args.threads), "--repeats", str(args.repeats)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // 2))}
    sys.exit(subprocess.run(command, env=environment).returncode)


if __name__ == "__main__":
    main()
