"""Beyond one machine: sums over the ranks of a ``torch.distributed`` process group.

Everything ``lmc_lib`` computes from data is a sum over examples divided at the end: a barrier's
loss sums, correct predictions and target counts; activation matching's first and second
moments; learned matching's gradients. With ``group=`` each rank passes its own shard of the
data, computes its partial sums, and one all-reduce in float64 adds them up, so every rank gets
the same result, that of one process on the whole data (up to float rounding of the per-example
values). A rank whose shard is empty is named on every rank, never left waiting in a collective.

    torchrun --nproc_per_node=4 my_barriers.py     # in the script:
    dist.init_process_group("nccl")                # or "gloo" on CPUs
    curve = lmc.barrier(a, b, lmc.distributed.shard(test_batches), group=dist.group.WORLD)

With ``group=None`` (the default everywhere) nothing here is called and no collective runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_group", "rank", "world_size", "is_main", "shard", "split_points", "all_reduce_sum", "agree_min",
    "check_every_rank_has_data", "average_gradients", "SHARDS",
]

#: what ``shard=`` of the evaluators accepts: "data" (each rank passes its own shard of the data,
#: every rank evaluates every point) or "points" (each rank passes all of it, the points are split)
SHARDS = ("data", "points")


def check_group(group: object, caller: str) -> object:
    """``group`` itself when it is None or a process group of an initialised ``torch.distributed``;
    TypeError or RuntimeError saying what is missing otherwise."""
    if group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(f"{caller}: group= needs torch.distributed, which this build of torch lacks")
    if not dist.is_initialized():
        raise RuntimeError(f"{caller}: group= needs an initialised process group; call "
                           "torch.distributed.init_process_group first (torchrun sets up its environment)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{caller}: group must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD) or "
                        f"None, got {type(group).__name__}")
    return group


def rank(group: object | None) -> int:
    """This process's rank in ``group`` (0 without one)."""
    if group is None:
        return 0
    import torch.distributed as dist

    return dist.get_rank(group)


def world_size(group: object | None) -> int:
    """The number of ranks in ``group`` (1 without one)."""
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def is_main(group: object | None) -> bool:
    """True on rank 0 (and without a group): the rank that shows progress bars and writes files."""
    return rank(group) == 0


def shard(batches: Sequence, group: object | None = None) -> list:
    """This rank's share of ``batches`` (a sequence): batches r, r + w, r + 2w, ... for rank r of w.

    ``group`` defaults to the default (WORLD) group once ``torch.distributed`` is initialised;
    without one, all batches.
    """
    import torch.distributed as dist

    if group is None and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    return list(batches[rank(group) :: world_size(group)])


def split_points(count: int, group: object | None) -> range:
    """The contiguous block of ``count`` points that this rank evaluates when the points are sharded
    (the first ``count % w`` ranks take one more)."""
    size, extra = divmod(count, world_size(group))
    here = rank(group)
    start = here * size + min(here, extra)
    return range(start, start + size + (here < extra))


def _device(group: object) -> torch.device:
    """Where ``group``'s backend reduces tensors: the current GPU for NCCL, the CPU otherwise."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Sequence[Tensor], group: object | None) -> list[Tensor]:
    """The elementwise sums over ``group``'s ranks of ``tensors`` (float64, on each tensor's own device),
    in one all-reduce of one flat buffer; ``tensors`` themselves without a group."""
    if group is None:
        return list(tensors)
    import torch.distributed as dist

    flat = torch.cat([t.detach().reshape(-1).to(_device(group), torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    sums, start = [], 0
    for tensor in tensors:
        sums.append(flat[start : start + tensor.numel()].view(tensor.shape).to(tensor.device))
        start += tensor.numel()
    return sums


def agree_min(value: int, group: object | None) -> int:
    """The smallest ``value`` over ``group``'s ranks (``value`` itself without a group)."""
    if group is None:
        return value
    import torch.distributed as dist

    found = torch.tensor([value], dtype=torch.float64, device=_device(group))
    dist.all_reduce(found, op=dist.ReduceOp.MIN, group=group)
    return int(found.item())


def check_every_rank_has_data(batches: int, group: object | None, caller: str) -> None:
    """ValueError on every rank when some rank saw no batch (one collective, so no rank waits forever)."""
    if group is None:
        return
    import torch.distributed as dist

    seen = torch.zeros(world_size(group), dtype=torch.float64, device=_device(group))
    seen[rank(group)] = batches
    dist.all_reduce(seen, op=dist.ReduceOp.SUM, group=group)
    empty = [r for r, count in enumerate(seen.tolist()) if count == 0]
    if empty:
        raise ValueError(f"{caller}: the data of rank(s) {empty} yielded no batches; with group= every rank "
                         "passes its own non-empty shard")


def average_gradients(parameters: Sequence[Tensor], loss: Tensor, count: Tensor | int, group: object | None) -> Tensor:
    """Make each parameter's ``.grad`` the gradient of the mean loss over all ranks' targets, and return
    that mean loss.

    ``loss`` is this rank's mean over its ``count`` targets and ``.grad`` its gradient; the global
    mean is sum_r count_r loss_r / sum_r count_r, so gradients and losses are weighted by the
    counts and summed in float64 (one all-reduce). Parameters without a gradient (the same on
    every rank: the ranks run the same computation) keep none. Without a group, ``loss`` unchanged.
    """
    if group is None:
        return loss
    count = torch.as_tensor(count, dtype=torch.float64).cpu()
    present = [p for p in parameters if p.grad is not None]
    weighted = [p.grad.double() * count.to(p.grad.device) for p in present]
    *sums, totals = all_reduce_sum([*weighted, torch.stack([loss.detach().double().cpu() * count, count])], group)
    for parameter, total in zip(present, sums):
        parameter.grad = (total / totals[1].to(total.device)).to(parameter.grad.dtype)
    return (totals[0] / totals[1]).to(loss.device, loss.dtype)
