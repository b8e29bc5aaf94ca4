"""Time weight matching of two GPT-2-small-shaped models, and the barrier of a chapter-8-like pair.

1. ``lmc.weight_matching`` with the paper's classes (orthogonal residual, permutations of heads
   and MLP units), 5 rounds, on two canonical GPT-2s of GPT-2 small's shape (12 layers, width 768,
   12 heads, MLP 3072, vocabulary 50257, untied; random weights: the cost does not depend on them).
   Reference: the paper's public code takes 464 s and peaks at 12 GB on this shape. Round 1 is
   timed in a run of its own (it also computes the embeddings' constant part once); the later
   rounds are the difference to the 5-round run. Peak memory is the process's resident high-water
   mark (VmHWM) during the matching, models included, reset before it (after handing the memory
   freed while building the models back to the system). The machine's load, one 3072 x 3072
   assignment and a float32 matrix product are timed too, to compare machines. "Cores kept busy"
   is the process's CPU time over the matching's wall time: at the number of threads, every core
   worked throughout, and only less work (or more cores) would make it faster.
2. ``lmc.barrier`` of chapter 8's pair (its GPT-2 at book scale: 3 layers, width 64, context 64;
   and at paper scale: 6 layers, width 256, 4 heads, MLP 1024, context 256; random weights) over
   K = 11 lambdas on the test split of Tiny Shakespeare, stacked (vmap) against one interpolated
   model per lambda (strategy="loop"); both must agree to 1e-5. ``auto`` names the default's pick.

    OMP_WAIT_POLICY=PASSIVE LMC_DATA_DIR=../shared/data python benchmarks/alignment_speed.py --threads 2
    LMC_DATA_DIR=../shared/data python benchmarks/alignment_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from transformers import GPT2Config, GPT2LMHeadModel

import lmc_lib as lmc
from lmc_lib.book import results
from lmc_lib.book.recipes import RECIPES
from timing import FOLDER, timed

PAPER_CLASSES = {"residual": ("orthogonal",), "heads": ("permutation",), "mlp": ("permutation",)}
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024)


def gpt2(config: dict, seed: int) -> torch.nn.Module:
    """A canonical, untied GPT-2 of ``config`` with random weights from ``seed``."""
    torch.manual_seed(seed)
    made = GPT2Config(**config, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return lmc.canonicalize(GPT2LMHeadModel(made).eval())


def resident_gib(field: str = "VmHWM") -> float:
    """This process's resident memory now (VmRSS) or its high-water mark (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    """Return freed memory to the system (glibc), then start a new VmHWM from the current resident size."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the high-water mark


def machine() -> dict:
    """Load average, one 3072 x 3072 assignment and the float32 matrix-product rate of this machine, now."""
    score = np.random.default_rng(0).standard_normal((3072, 3072))
    _, assignment = timed(lambda: linear_sum_assignment(score, maximize=True))
    x = torch.randn(3072, 1536)
    _, product = timed(lambda: x @ x.T)
    found = {"load average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
             "one 3072 x 3072 assignment (s)": round(assignment, 3),
             "float32 matrix products (GFLOP/s)": round(2 * 3072**2 * 1536 / product / 1e9)}
    print("; ".join(f"{key} {value}" for key, value in found.items()))
    return found


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time this process has used so far, on all its threads (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def weight_matching_speed(rounds: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The row of weight matching."""
    a, b = gpt2(GPT2_SMALL, 0), gpt2(GPT2_SMALL, 1)
    params = sum(p.numel() for p in a.parameters())
    print(f"GPT-2 small shape: {params / 1e6:.1f}M parameters per model, scores in {dtype} on {device}")
    a, b = a.to(device), b.to(device)
    reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resident = resident_gib("VmRSS")

    def match(n: int) -> lmc.Alignment:
        alignment = lmc.weight_matching(a, b, classes=PAPER_CLASSES, max_iter=n, score_dtype=dtype)
        synchronize(device)
        return alignment

    first, first_seconds = timed(lambda: match(1))
    cpu = cpu_seconds()
    alignment, total = timed(lambda: match(rounds))
    cpu = cpu_seconds() - cpu
    peak = resident_gib()
    later = (total - first_seconds) / max(len(alignment.history) - 1, 1)
    gpu = f", GPU peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(
        f"weight matching, {len(alignment.history)} rounds: {total:.1f} s (round 1 {first_seconds:.1f} s, "
        f"later rounds {later:.1f} s each); peak resident {peak:.2f} GiB, {resident:.2f} GiB before (the models){gpu}"
    )
    print("objective after each round:", ", ".join(f"{h:.4g}" for h in alignment.history))
    assert first.history[0] == alignment.history[0], "round 1 differs between the two runs"
    return {"rounds": len(alignment.history), "seconds": round(total, 1), "round 1 (s)": round(first_seconds, 1),
            "later rounds (s each)": round(later, 1), "cores kept busy (CPU time / wall)": round(cpu / total, 2),
            "peak resident (GiB)": round(peak, 2), "models alone (GiB)": round(resident, 2)}


def barrier_speed(scale: str, lambdas: int, batch_size: int, windows: int | None, device: torch.device) -> dict:
    config = RECIPES["gpt2-shakespeare"][scale].model
    test, vocabulary = lmc.tiny_shakespeare("test", block_size=config.block_size)
    test = test if windows is None else test.subset(windows)

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return lmc.canonicalize(config.build().eval()).to(device)

    def curve(strategy: str) -> lmc.BarrierCurve:
        result = lmc.barrier(a, b, data, lambdas=lambdas, strategy=strategy, progress=False)
        synchronize(device)
        return result

    a, b = build(0), build(1)
    data = test.batches(batch_size)
    curves, seconds = {}, {}
    for strategy in ("vmap", "loop") * (2 if device.type == "cuda" else 1):  # on a GPU, a first round warms up
        curves[strategy], seconds[strategy] = timed(lambda: curve(strategy))  # noqa: B023
    fast, slow = seconds["vmap"], seconds["loop"]
    auto = lmc.barrier_strategy(a, device, data[0][0])  # what strategy="auto" takes for these batches
    error = float(np.abs(curves["vmap"].losses - curves["loop"].losses).max())
    if error > 1e-5:
        raise AssertionError(f"vmap and loop barriers disagree by {error:.2e}")
    print(f"barrier of chapter 8's pair at {scale} scale ({config.n_layer} layers, width {config.n_embd}, context "
          f"{config.block_size}), K = {lambdas}, {len(test)} test windows ({test.targets.numel()} tokens), batches of "
          f"{batch_size}: vmap {fast:.2f} s, loop {slow:.2f} s, loop / vmap {slow / fast:.2f}; auto picks "
          f"{auto}; max |loss difference| {error:.1e}")
    return {"scale": scale, "model": f"{config.n_layer} layers, width {config.n_embd}, context {config.block_size}",
            "test windows": len(test), "K": lambdas, "loop / vmap": round(slow / fast, 2),
            "auto": auto, "vmap (s)": round(fast, 2), "loop (s)": round(slow, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="weight-matching score dtype"
    )
    parser.add_argument("--lambdas", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--scales", nargs="+", choices=["ci", "book", "paper"], default=["book", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", type=int, default=None, help="use only the first test windows (default: all)")
    parser.add_argument("--skip", choices=["matching", "barrier"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    device = torch.device(args.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu}, {os.cpu_count()} CPUs{gpu}")
    calibration = machine()
    tables = {"this machine when the benchmark ran": [calibration]}
    # the barriers first: after the matching has freed large blocks, the C library reuses them, and a
    # stacked path's large activations cost less than in a fresh session (measured: up to 1.7x)
    barriers = [] if args.skip == "barrier" else [
        barrier_speed(scale, args.lambdas, args.batch_size, args.windows, device) for scale in args.scales]
    if args.skip != "matching":
        row = weight_matching_speed(args.rounds, getattr(torch, args.dtype), device)
        tables["weight matching, two GPT-2-small-shaped models, paper classes"] = [row]
    if barriers:
        tables["barrier of chapter 8's GPT-2 (characters), stacked and looped"] = barriers
    settings = {"threads": args.threads, "rounds": args.rounds, "score dtype": args.dtype, "device": args.device,
                "weights": "random", "batch size": args.batch_size}
    path = results.record(f"alignment_speed-{device.type}", tables, settings=settings, folder=FOLDER, device=device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
