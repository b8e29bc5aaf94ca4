"""One learned-matching step against one plain training step of the same model on the same batch.

A learned-matching step projects every latent (an assignment per permuted space, a matrix
exponential for the orthogonal residual), moves B's tensors through the differentiable transform
core, interpolates (heads in circuit space: twice as wide), and back-propagates to the latents. A
plain step is a forward and backward pass of one model and an Adam step on its parameters. Both are
timed back to back in each round; the table shows the median ratio over the rounds and its range,
re-projecting the assignments at every step and every 10 steps (``project_every``), and for
Transformers with the heads interpolated as weights (``circuits=False``): circuit space doubles the
width of every head, so the interpolated model itself costs more than either endpoint.

A permutation's forward pass is an index (no matrix product), but its straight-through backward
is the gradient of the dense product L W for every tensor the space touches: n^2 x (that tensor's
other dimensions) multiply-adds per step, whatever the batch. For a 512-unit MLP layer that is
more than the model's own forward and backward on 128 inputs; the ratio falls as batches grow (the
MLP is measured on 128 and 512 inputs).

A second table follows chapter 9's pairs (trained at book scale, or read from the cache) from weight
matching: the test-loss barrier after 25, 50 and 100 steps of learned matching (orthogonal residual
and permutations, the chapter's batches and learning rate) and the wall time of those steps. A run
of n steps is the first n steps of a longer one (same seed), so the rows are one run's checkpoints.

    OMP_WAIT_POLICY=PASSIVE LMC_DATA_DIR=../shared/data python benchmarks/learned_speed.py --threads 2
    LMC_DATA_DIR=../shared/data python benchmarks/learned_speed.py --device cuda
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib.book.recipes import RECIPES
from lmc_lib.evaluation import cross_entropy, logits_of
from lmc_lib.learned import _latents, _Path, train_step
from timing import print_table, ratio, rounds, timed, write


def models(name: str, batch: int, device: torch.device) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, str]:
    """Two canonical models of one architecture (random weights: the cost does not depend on them) and a batch
    of ``batch`` inputs (images or windows), on ``device``."""
    generator = torch.Generator().manual_seed(0)
    if name == "mlp":
        build = lambda: lmc.MLP(lmc.MLPConfig(784, (512, 512), 10))  # noqa: E731
        x, y = torch.randn(batch, 784, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
        classes = "permutations"
    else:
        config = RECIPES[name]["book"].model
        build = config.build
        if name.startswith("vit"):
            x = torch.randn(batch, config.in_channels, config.image_size, config.image_size, generator=generator)
            y = torch.randint(0, config.num_classes, (batch,), generator=generator)
        else:
            x = torch.randint(0, config.vocab_size, (batch, config.block_size), generator=generator)
            y = torch.randint(0, config.vocab_size, (batch, config.block_size), generator=generator)
        classes = "paper"
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pair.append(lmc.canonicalize(build().eval()) if classes == "paper" else build().eval())
    return pair[0].to(device), pair[1].to(device), x.to(device), y.to(device), classes


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = cross_entropy(logits_of(model(x)), y).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(name: str, batch: int, repeats: int, steps: int, device: torch.device) -> dict:
    """One row: learned steps (assignments re-solved every step or every 10; heads as weights) over plain steps."""
    a, b, x, y, classes = models(name, batch, device)
    plain_optimizer = torch.optim.Adam(a.parameters(), lr=1e-4)
    widens = lmc.family.family_of(a).widen_heads is not None
    counter = iter(range(10**9))

    def learner(circuits: bool, every: int):
        path = _Path(a, b, circuits=circuits)
        kinds = lmc.alignment.resolve_classes(path.spec, classes, ("permutation", "orthogonal"), caller="benchmark")
        latents = _latents(path.spec, kinds, device)
        optimizer = torch.optim.Adam([latent.tensor for latent in latents.values()], lr=1e-3)

        def learned() -> None:
            for _ in range(steps):
                train_step(path, {"b": latents}, optimizer, x, y, 0.5, reassign=next(counter) % every == 0,
                           loss_fn=cross_entropy)
        return learned

    def plain() -> None:
        for _ in range(steps):
            plain_step(a, plain_optimizer, x, y)

    runs = {"plain": plain, "every 1": learner(widens, 1), "every 10": learner(widens, 10)}
    if widens:
        runs["weights"] = learner(False, 1)
    times = rounds(runs, repeats)
    return {
        "model": name,
        "batch": batch,
        "learned / plain step": ratio(times["every 1"], times["plain"]),
        "learned / plain, assignments every 10 steps": ratio(times["every 10"], times["plain"]),
        "learned / plain, heads as weights": ratio(times["weights"], times["plain"]) if widens else "-",
        "plain step (ms)": ratio(times["plain"], [steps * 1e-3] * repeats),
    }


#: chapter 9's learning batches: the ViT's statistics batches (500 images), GPT-2's cut into 10 windows
LEARNING_BATCH = {"vit-mnist": None, "gpt2-shakespeare-bpe": 10}


def convergence(name: str, checkpoints: tuple[int, ...], device: torch.device) -> list[dict]:
    """The barrier of a book-scale pair after weight matching and after each number of learned steps."""
    pair = lmc.book.trained_pair(name, "book", device=device)
    a, b = lmc.canonicalize(pair.a).to(device), lmc.canonicalize(pair.b).to(device)
    size = LEARNING_BATCH[name]
    batches = pair.train_batches if size is None else lmc.data.rebatched(pair.train_batches, size)
    weight = lmc.weight_matching(a, b, classes="paper")

    def barrier(alignment: lmc.Alignment) -> float:
        curve = lmc.barrier(*lmc.circuit_pair(a, alignment.apply(b)), pair.test_batches, progress=False)
        return round(curve.barrier, 4)

    rows = [{"pair": name, "learned steps": 0, "learning (s)": 0.0, "test-loss barrier": barrier(weight)}]
    for steps in checkpoints:
        learned, seconds = timed(lambda: lmc.learned_matching(a, b, batches, init=weight, classes="paper",  # noqa: B023
                                                              steps=steps, lr=0.01))
        rows.append({"pair": name, "learned steps": steps, "learning (s)": round(seconds, 1),
                     "test-loss barrier": barrier(learned)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+",
                        default=["mlp:128", "mlp:512", "vit-mnist:128", "gpt2-shakespeare-bpe:32"],
                        help="model:batch (MLP 784-512-512-10 or a book-scale recipe; images or windows)")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[25, 50, 100],
                        help="learned steps after which chapter 9's pairs are measured (none: skip that table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(name, int(batch), args.repeats, args.steps, device)
            for name, batch in (entry.split(":") for entry in args.models)]
    title = f"one step, median (range) over {args.repeats} rounds of {args.steps} steps"
    print_table(title, rows)
    tables = {title: rows}
    if args.checkpoints:
        reached = "chapter 9's pairs (book scale, trained): the barrier after weight matching and learned steps"
        tables[reached] = [row for name in LEARNING_BATCH for row in convergence(name, tuple(args.checkpoints), device)]
        print_table(reached, tables[reached])
    settings = {"threads": args.threads, "device": args.device, "repeats": args.repeats, "steps": args.steps,
                "models": "MLP 784-512-512-10; ViT and GPT-2 of the book scale",
                "weights": "random (step times); trained (barriers)"}
    write(f"learned_speed-{device.type}", tables, settings, device=device)


if __name__ == "__main__":
    main()
