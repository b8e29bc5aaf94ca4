"""Run by tests/test_distributed.py under torchrun (gloo, CPU): each distributed result beside the
single-process one on the whole data.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py OUT

Every rank writes OUT/rank<r>.json: {check: {"distributed": values, "single": values}}, and, for
the refusals, {check: message}. The test compares the two values of every check, and the ranks.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel

import lmc_lib as lmc
from lmc_lib.evaluation import evaluate_mixtures
from lmc_lib.ot import input_moments

VOCAB = 13


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = lmc.MLP(lmc.MLPConfig(10, (12, 9), 5, activation="gelu"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    return model.eval()


def gpt2(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return lmc.canonicalize(model.eval())


def classification(n: int = 96, batch: int = 8, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    y = mlp(0)(x).argmax(-1).detach()
    flip = torch.rand(n, generator=generator) < 0.3  # some wrong labels, so that accuracy is not 1
    y[flip] = torch.randint(0, 5, (int(flip.sum()),), generator=generator)
    return list(zip(x.split(batch), y.split(batch)))


def token_batches(n: int = 24, batch: int = 4) -> list:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, 8), generator=generator)
    targets = ids[:, 1:].clone()
    targets[::5, :3] = -100  # ignored positions
    return list(zip(ids[:, :-1].split(batch), targets.split(batch)))


def values(result) -> list:
    return np.concatenate([np.asarray(result.losses), np.asarray(result.accuracies)]).tolist()


def matrices(alignment) -> dict:
    return {name: t.matrix.double().tolist() for name, t in sorted(alignment.transforms.items())}


def moments(found: dict) -> dict:
    return {name: [m.mean.tolist(), m.second.tolist(), m.count] for name, m in sorted(found.items())}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group, rank, world = dist.group.WORLD, dist.get_rank(), dist.get_world_size()
    checks: dict = {}

    def check(name: str, distributed, single) -> None:
        checks[name] = {"distributed": distributed, "single": single}

    a, b, c = mlp(0), mlp(1), mlp(2)
    data = classification()
    mine = lmc.distributed.shard(data, group)
    assert 0 < len(mine) < len(data)
    for strategy in ("loop", "vmap"):
        single = lmc.barrier(a, b, data, 7, strategy=strategy, progress=False)
        for budget in (2**30, 1):
            spread = lmc.barrier(a, b, mine, 7, strategy=strategy, memory_budget=budget, group=group, progress=False)
            check(f"mlp barrier {strategy} budget {budget}", values(spread), values(single))
        points = lmc.barrier(a, b, data, 7, strategy=strategy, memory_budget=1, group=group, shard="points",
                             progress=False)
        check(f"mlp barrier {strategy} points", values(points), values(single))
    weights = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.7, 0.2]])
    single = evaluate_mixtures([a, b, c], weights, data, progress=False)
    check("mixtures", values(evaluate_mixtures([a, b, c], weights, mine, group=group, progress=False)), values(single))
    points = evaluate_mixtures([a, b, c], weights, data, group=group, shard="points", progress=False)
    check("mixtures points", values(points), values(single))
    single = lmc.simplex_barrier([a, b, c], data, points=4, progress=False)
    for shard in ("data", "points"):
        spread = lmc.simplex_barrier([a, b, c], mine if shard == "data" else data, points=4, group=group, shard=shard,
                                     progress=False)
        check(f"simplex {shard}", values(spread), values(single))

    lm_a, lm_b, tokens = gpt2(0), gpt2(1), token_batches()
    lm_mine = lmc.distributed.shard(tokens, group)
    for strategy in ("loop", "vmap"):
        single = lmc.barrier(lm_a, lm_b, tokens, 5, strategy=strategy, progress=False)
        spread = lmc.barrier(lm_a, lm_b, lm_mine, 5, strategy=strategy, group=group, progress=False)
        check(f"gpt2 barrier {strategy}", values(spread), values(single))

    check("mlp activation matching",
          matrices(lmc.activation_matching(a, b, mine, classes="permutations", group=group)),
          matrices(lmc.activation_matching(a, b, data, classes="permutations")))
    check("gpt2 activation matching",
          matrices(lmc.activation_matching(lm_a, lm_b, lm_mine, classes="paper", group=group)),
          matrices(lmc.activation_matching(lm_a, lm_b, tokens, classes="paper")))
    check("input moments", moments(input_moments(a, mine, group=group)), moments(input_moments(a, data)))

    # learned matching: each step's batch is the union of the ranks' halves of it; lr high enough to move
    half = [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in data]
    init = lmc.weight_matching(a, b, classes="permutations")
    options = dict(classes="permutations", init=init, steps=6, lr=0.5, eval_every=3)
    learned = {
        "distributed": lmc.learned_matching(a, b, half, validation=mine, group=group, **options),
        "single": lmc.learned_matching(a, b, data, validation=data, **options),
    }
    checks["learned matching"] = {key: {"transforms": matrices(found), "history": list(found.history)}
                                  for key, found in learned.items()}
    checks["learned matching moved"] = matrices(learned["single"]) != matrices(init)

    refusals = {}
    try:
        lmc.barrier(a, b, mine, 3, group="WORLD", progress=False)
    except TypeError as error:
        refusals["not a group"] = str(error)
    try:
        lmc.barrier(a, b, [] if rank == world - 1 else mine, 3, group=group, progress=False)
    except ValueError as error:
        refusals["empty shard"] = str(error)
    empty = [] if rank == world - 1 else mine
    for name, call in {
        "activation matching": lambda: lmc.activation_matching(a, b, empty, group=group),
        "input moments": lambda: input_moments(a, empty, group=group),
        "learned matching": lambda: lmc.learned_matching(a, b, empty, init=init, steps=2, group=group),
    }.items():
        try:
            call()
        except ValueError as error:
            refusals[f"empty shard, {name}"] = str(error)
    (out / f"rank{rank}.json").write_text(json.dumps({"checks": checks, "refusals": refusals}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
