"""group=: under torchrun (2 processes, gloo, CPU), each rank passing its own shard of the data gets the
single-process result on the whole data (barrier, evaluate_mixtures, simplex_barrier, activation matching, input
moments, learned matching), every rank the same one; plus the checks that need no second process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lmc_lib as lmc
from lmc_lib import distributed
from strategies import build_mlp
from test_barrier import classification_data

WORKER = Path(__file__).with_name("distributed_worker.py")
TOLERANCE = 1e-6
#: the checks tests/distributed_worker.py writes: {"distributed": ..., "single": ...} each
CHECKS = [
    *(f"mlp barrier {strategy} {how}" for strategy in ("loop", "vmap")
      for how in ("budget 1073741824", "budget 1", "points")),
    "mixtures", "mixtures points", "simplex data", "simplex points", "gpt2 barrier loop", "gpt2 barrier vmap",
    "mlp activation matching", "gpt2 activation matching", "input moments", "learned matching",
]


def flat(value) -> np.ndarray:
    """Every number in a nest of dicts (in key order) and lists, as one float64 vector."""
    if isinstance(value, dict):
        return np.concatenate([flat(value[key]) for key in sorted(value)])
    if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
        return np.concatenate([flat(item) for item in value])
    return np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the two ranks wrote (the worker runs once for the whole module, about 10 s)."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this build of torch has no torch.distributed with the gloo backend")
    out = tmp_path_factory.mktemp("ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=environment)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun --nproc_per_node=2 did not finish in 180 s (a rank waiting in a collective?)")
    log = done.stdout + done.stderr
    if done.returncode != 0 and "[rank" not in log:  # the launcher itself failed: no worker ran
        pytest.skip(f"torchrun could not start two processes here: {log.strip().splitlines()[-1:]}")
    assert done.returncode == 0, f"a rank failed:\n{log[-4000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("name", CHECKS)
def test_every_rank_gets_the_single_process_result(ranks, name):
    for rank in ranks:
        found = rank["checks"][name]
        np.testing.assert_allclose(flat(found["distributed"]), flat(found["single"]), rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("name", CHECKS)
def test_the_ranks_agree_exactly(ranks, name):
    np.testing.assert_array_equal(flat(ranks[0]["checks"][name]["distributed"]),
                                  flat(ranks[1]["checks"][name]["distributed"]))


def test_learned_matching_moved_away_from_its_start(ranks):
    """Else the learned check would pass whatever the gradients were."""
    assert ranks[0]["checks"]["learned matching moved"]


def test_a_group_must_be_a_process_group(ranks):
    for rank in ranks:
        assert rank["refusals"]["not a group"] == ("evaluate_mixtures: group must be a torch.distributed ProcessGroup "
                                                   "(e.g. dist.group.WORLD) or None, got str")


@pytest.mark.parametrize("check, caller", [("empty shard", "evaluate_mixtures"),
                                           ("empty shard, activation matching", "activation_matching"),
                                           ("empty shard, input moments", "input_moments"),
                                           ("empty shard, learned matching", "learned_matching")])
def test_an_empty_shard_is_named_on_every_rank(ranks, check, caller):
    for rank in ranks:
        assert rank["refusals"][check] == (f"{caller}: the data of rank(s) [1] yielded no batches; with group= "
                                           "every rank passes its own non-empty shard")


# -- without a second process --------------------------------------------------------------------


def test_a_group_needs_an_initialised_process_group():
    a = build_mlp(lmc.MLPConfig(6, (8,), 3), 0)
    data = classification_data(6, 3)
    with pytest.raises(RuntimeError, match="evaluate_mixtures: group= needs an initialised process group"):
        lmc.barrier(a, a, data, group=object(), progress=False)
    with pytest.raises(RuntimeError, match="activation_matching: group= needs an initialised process group"):
        lmc.activation_matching(a, a, data, group=object())
    with pytest.raises(RuntimeError, match="input_moments: group= needs"):
        lmc.ot.input_moments(a, data, group=object())


def test_shard_must_be_data_or_points():
    a = build_mlp(lmc.MLPConfig(6, (8,), 3), 0)
    with pytest.raises(ValueError, match=r"shard must be one of \('data', 'points'\), got 'lambdas'"):
        lmc.barrier(a, a, classification_data(6, 3), shard="lambdas", progress=False)


def test_without_a_group_nothing_is_reduced():
    tensors = [torch.ones(2), torch.zeros(3, dtype=torch.float64)]
    assert distributed.all_reduce_sum(tensors, None) == tensors
    assert distributed.agree_min(7, None) == 7 and distributed.rank(None) == 0 and distributed.is_main(None)
    assert distributed.shard([1, 2, 3], None) == [1, 2, 3]


@pytest.mark.parametrize("count", [0, 1, 5, 11])
def test_split_points_covers_every_point_once(monkeypatch, count):
    world = 4
    blocks = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda group, rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda group: world)
        blocks.append(distributed.split_points(count, "group"))
    assert [i for block in blocks for i in block] == list(range(count))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
