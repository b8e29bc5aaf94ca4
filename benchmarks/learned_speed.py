"""One learned-matching step against one plain training step of the same model on the same batch.

A learned-matching step projects every latent (an assignment per permuted space, a matrix
exponential for the orthogonal residual), moves B's tensors through the differentiable transform
core, interpolates (heads in circuit space: twice as wide), and back-propagates to the latents. A
plain step is a forward and backward pass of one model and an Adam step on its parameters. Both are
timed back to back in each repeat; the table shows the median per-repeat ratio (target <= 1.5) for
re-projecting the assignments at every step and every 10 steps (``project_every``).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/learned_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib.book.recipes import RECIPES
from lmc_lib.evaluation import cross_entropy, logits_of
from lmc_lib.learned import _latents, _Path, train_step


def models(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, str]:
    """Two canonical models of one architecture (random weights: the cost does not depend on them) and a batch."""
    generator = torch.Generator().manual_seed(0)
    if name == "mlp":
        build = lambda: lmc.MLP(lmc.MLPConfig(784, (512, 512), 10))  # noqa: E731
        x, y = torch.randn(128, 784, generator=generator), torch.randint(0, 10, (128,), generator=generator)
        classes = "permutations"
    else:
        config = RECIPES[name]["book"].model
        build = config.build
        if name.startswith("vit"):
            x = torch.randn(128, config.in_channels, config.image_size, config.image_size, generator=generator)
            y = torch.randint(0, config.num_classes, (128,), generator=generator)
        else:
            x = torch.randint(0, config.vocab_size, (32, config.block_size), generator=generator)
            y = torch.randint(0, config.vocab_size, (32, config.block_size), generator=generator)
        classes = "paper"
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pair.append(lmc.canonicalize(build().eval()) if classes == "paper" else build().eval())
    return pair[0], pair[1], x, y, classes


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = cross_entropy(logits_of(model(x)), y).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(step, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def measure(name: str, repeats: int, steps: int) -> dict:
    a, b, x, y, classes = models(name)
    plain_model = a
    plain_optimizer = torch.optim.Adam(plain_model.parameters(), lr=1e-4)
    path = _Path(a, b, circuits=lmc.family.family_of(a).widen_heads is not None)
    kinds = lmc.alignment.resolve_classes(path.spec, classes, ("permutation", "orthogonal"), caller="benchmark")
    latents = _latents(path.spec, kinds, torch.device("cpu"))
    optimizer = torch.optim.Adam([latent.tensor for latent in latents.values()], lr=1e-3)
    counter = iter(range(10**9))

    def learned(every: int) -> None:
        train_step(path, {"b": latents}, optimizer, x, y, 0.5, reassign=next(counter) % every == 0,
                   loss_fn=cross_entropy)

    ratios = {1: [], 10: []}
    plain_times = []
    for _ in range(repeats):
        plain = timed(lambda: plain_step(plain_model, plain_optimizer, x, y), steps)
        plain_times.append(plain)
        for every in ratios:
            ratios[every].append(timed(lambda: learned(every), steps) / plain)
    return {"plain_step_s": statistics.median(plain_times),
            "ratio_project_every_1": statistics.median(ratios[1]),
            "ratio_project_every_10": statistics.median(ratios[10]),
            "spread_project_every_1": [min(ratios[1]), max(ratios[1])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["mlp", "vit-mnist", "gpt2-shakespeare"])
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "learned_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}")
    print(f"{'model':<18} {'plain step':>11} {'learned / plain':>16} {'every 10 steps':>15}")
    for name in args.models:
        row = measure(name, args.repeats, args.steps)
        results[name] = row
        print(f"{name:<18} {row['plain_step_s'] * 1e3:>9.1f} ms {row['ratio_project_every_1']:>15.2f}x "
              f"{row['ratio_project_every_10']:>14.2f}x")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "threads": args.threads},
        "versions": {"torch": torch.__version__, "lmc_lib": lmc.__version__},
        "date": datetime.date.today().isoformat(), "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
