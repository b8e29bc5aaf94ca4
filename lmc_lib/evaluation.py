"""Mean loss and accuracy of mixtures of K endpoint models, many mixtures per pass over the data.

A weight matrix W (P points x K models) with convex rows (non-negative, summing to 1) names P
points of the simplex spanned by the endpoints: point p is the model whose floating tensors are
theta_p = sum_k W[p, k] theta_k (other tensors are the first model's). The barrier along a line is
the case K = 2, W[p] = (1 - l_p, l_p).

Evaluating P points one model at a time costs P passes over the data. Here the points are taken
in chunks sized to a memory budget, and every batch is read once per chunk: the chunk's points
run on it one after another (``strategy="loop"``) or stacked along a new leading axis under
``vmap`` (``strategy="vmap"``); see :mod:`lmc_lib.points`. When the family exposes an affine
*stem* (the first Linear of an MLP), its output is linear in the weights, so it is computed once
per endpoint and blended: stem_p(x) = sum_k W[p, k] stem_k(x). Loss sums, correct predictions and
target counts are accumulated on the device in float64, with no host synchronisation per point or
per batch.

``strategy="auto"`` picks by :func:`barrier_strategy`, as measured in ``benchmarks/barrier_strategies.py``:
stacking pays the per-call overhead once per chunk, which is what a GPU and small batches cost,
but runs every elementwise pass over P times larger activations, which is what a CPU on large
batches pays for. Only a model that a family fully describes (its spec accounts for every module
and tensor) and that carries no hooks or parametrizations is stacked or has its stem shared: vmap
runs its forward on batched tensors, which an arbitrary forward, a hook or a parametrization may
not handle as one model at a time would. Any other model runs point by point, as it is.

With ``group=`` (a ``torch.distributed`` process group) each rank passes its own shard of the
data and the float64 sums are all-reduced, so that every rank gets the result of one process on
the whole data; with ``shard="points"`` every rank passes all the data and evaluates its own block
of the points instead (for models too large to hold many points per rank). See
:mod:`lmc_lib.distributed`.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import inf

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from . import distributed
from .alignment import check_finite, check_pair
from .data import check_batch, checked_batches, reusable
from .family import load_state, spec_for
from .points import Endpoints, Footprint, LoopRunner, VmapRunner, footprint, logits_of
from .scoring import LossFn, batch_totals, check_targets, cross_entropy, point_totals

__all__ = [
    "MixtureEvaluation", "evaluate_mixtures", "mix", "mixture_weights", "barrier_strategy", "cross_entropy",
    "logits_of", "evaluating", "model_device", "point_totals", "STRATEGIES",
]

STRATEGIES = ("auto", "vmap", "loop")
#: how far a row of mixture weights may sum from 1 (float32 weights such as 1/3 are accepted)
WEIGHT_TOLERANCE = 1e-6
#: on a CPU, "auto" stacks the points when one forward pass does fewer multiply-adds per module
#: call than this (small batches: the per-call overhead dominates); benchmarks/barrier_strategies.py
STACKED_WORK_PER_CALL = 3_000_000
#: on a CPU the loop cuts batches into slices whose largest activation stays under this many bytes
SLICE_BYTES = 2**25
#: the logits of successive points are scored together up to this many bytes
SCORED_TOGETHER = 2**24


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block, then restore every module's own training flag."""
    flags = {module: module.training for model in models for module in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def model_device(model: nn.Module, caller: str) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); ValueError for a model that holds neither."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is not None:
        return tensor.device
    raise ValueError(f"{caller}: the {type(model).__name__} has no parameters or buffers, so it has no device "
                     "and nothing to evaluate or interpolate")


def mixture_weights(weights: object, count: int) -> np.ndarray:
    """``weights`` as a float64 (P, count) matrix whose rows are convex: entries >= 0, each row summing to 1
    (to ``WEIGHT_TOLERANCE``); TypeError or ValueError naming the offending entry otherwise."""
    values = weights.detach().cpu().numpy() if isinstance(weights, Tensor) else np.asarray(weights)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"weights: expected real numbers, got an array of dtype {values.dtype}")
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != count:
        raise ValueError(f"weights: expected a (points, {count}) matrix, one row of {count} weights per point; "
                         f"got shape {values.shape}")
    values = values.astype(np.float64)
    bad = np.argwhere(~np.isfinite(values) | (values < 0))
    if bad.size:
        row, column = bad[0]
        raise ValueError(f"weights[{row}, {column}] = {values[row, column]}: mixture weights must be finite and >= 0")
    sums = values.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > WEIGHT_TOLERANCE)
    if off.size:
        raise ValueError(f"weights: row {off[0]} sums to {sums[off[0]]:.9g}; "
                         "every row of mixture weights must sum to 1")
    return values


def _check_models(models: Sequence[nn.Module], labels: Sequence[str] | None) -> list[str]:
    """The models' labels; TypeError or ValueError unless they are modules of one architecture with finite tensors."""
    if not isinstance(models, Sequence) or not models:
        raise ValueError(f"models: expected a non-empty sequence of nn.Module, got a {type(models).__name__}")
    labels = [str(k) for k in range(len(models))] if labels is None else [str(label) for label in labels]
    if len(labels) != len(models):
        raise ValueError(f"labels: {len(labels)} labels for {len(models)} models")
    for label, model in zip(labels, models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {label} must be an nn.Module, got {type(model).__name__}")
    for label, model in zip(labels[1:], models[1:]):
        check_pair(models[0], model, what=f"models {labels[0]} and {label}")
    for label, model in zip(labels, models):
        check_finite(model, label)
    if not any(t.is_floating_point() for t in models[0].state_dict().values()):
        raise ValueError(f"model {labels[0]} ({type(models[0]).__name__}) has no floating parameters or buffers: "
                         "there is nothing to mix")
    return labels


def _mix(models: Sequence[nn.Module], row: np.ndarray) -> nn.Module:
    """A copy of ``models[0]`` with floating tensors sum_k row[k] theta_k (float64 sums, stored in each dtype)."""
    states = [model.state_dict() for model in models]
    mixed = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            tensor = sum(float(w) * state[name].to(tensor.device, torch.float64) for w, state in zip(row, states))
        mixed[name] = tensor
    return load_state(models[0], mixed)


def mix(models: Sequence[nn.Module], weights: Sequence[float] | np.ndarray | Tensor) -> nn.Module:
    """A new model with floating tensors sum_k w_k theta_k, computed in float64 (others from ``models[0]``).

    ``weights`` holds one convex weight per model; the inputs are not modified.
    """
    _check_models(models, None)
    row = np.asarray(weights.detach().cpu() if isinstance(weights, Tensor) else weights)
    return _mix(models, mixture_weights(row[None], len(models))[0])


def _stacking_refusal(models: Sequence[nn.Module], labels: Sequence[str]) -> str | None:
    """Why the stacked path may not run ``models`` (None when it may): hooks, parametrizations, no family."""
    for label, model in zip(labels, models):
        for name, module in model.named_modules():
            where = f"module {name or '<the model itself>'!r} ({type(module).__name__}) of model {label}"
            if module._forward_hooks or module._forward_pre_hooks:
                return f"{where} has forward hooks, which would see the stacked tensors of all points at once"
            if parametrize.is_parametrized(module):
                return f"{where} has parametrizations of {sorted(module.parametrizations)}"
    try:
        spec_for(models[0])
    except Exception as refusal:  # any model no family describes, whatever its family says about why
        return f"no model family fully describes it ({type(refusal).__name__}: {refusal})"
    return None


def _auto(device: torch.device, cost: Footprint | None) -> str:
    """The rule of :func:`barrier_strategy` for a model the stacked path may run; ``cost``: one point's
    forward pass on a batch (None: batches large enough that their arithmetic dominates)."""
    if device.type != "cpu":
        return "vmap"
    if cost is None:
        return "loop"
    return "vmap" if cost.multiply_adds < STACKED_WORK_PER_CALL * max(cost.calls, 1) else "loop"


def _probe(model: nn.Module, inputs: Tensor) -> Footprint:
    """One point's :class:`Footprint` on one example of ``inputs`` (the families' models treat examples
    independently, so a batch costs as many times that)."""
    with evaluating(model), torch.no_grad():
        return footprint(model, inputs[:1])


def _slice_rows(strategy: str, device: torch.device, cost: Footprint | None, points: int) -> int | None:
    """Examples per slice of a batch on a CPU: as many as keep the largest activation (of all ``points``
    stacked, for "vmap") under :data:`SLICE_BYTES` (None: whole batches). Examples are independent
    in a family's models, so a batch may be cut; the slices' activations stay in the caches and
    their memory is reused instead of being mapped afresh (the logits of a 50,257-token vocabulary
    are 13 MB per 64-token window; larger blocks are mapped from the system at every allocation)."""
    if device.type != "cpu" or cost is None:
        return None
    stacked = points if strategy == "vmap" else 1
    return max(1, SLICE_BYTES // max(stacked * cost.largest_output_bytes, 1))


def barrier_strategy(model: nn.Module, device: torch.device | str, inputs: Tensor | None = None) -> str:
    """The strategy "auto" takes for ``model`` on ``device`` with batches like ``inputs``.

    "loop" for a model that the stacked path may not run (see the module docstring). Otherwise
    "vmap" on a GPU, whose cost is mostly kernel launches, which stacking divides by the number of
    points. On the CPU "vmap" when one forward pass on ``inputs`` does fewer than
    :data:`STACKED_WORK_PER_CALL` multiply-adds per module call (small batches, e.g. one text
    window: the per-call overhead dominates), else "loop": there a point's activations stay in the
    caches while its layers run, and stacked elementwise passes over P times larger activations
    cost more than the overhead they save. Without ``inputs``, batches are taken to be large.
    """
    device = torch.device(device)
    if _stacking_refusal([model], ["0"]) is not None:
        return "loop"
    if inputs is None:
        return _auto(device, None)
    return _auto(device, _probe(model, inputs.to(model_device(model, "barrier_strategy"))).times(inputs.shape[0]))


def _first_inputs(data: Iterable) -> Tensor | None:
    """The inputs of the first batch of ``data`` (checked), or None when it holds no batch."""
    if not isinstance(data, Iterable):
        next(checked_batches(data))  # the TypeError naming what data is
    batch = next(iter(data), None)
    return None if batch is None else check_batch(batch, 0)[0]


def _stacked(logits: list[Tensor]) -> Tensor:
    """The points' logits in one (P, ...) tensor, without copying a single one."""
    return logits[0] if len(logits) == 1 else torch.cat(logits)


def _pass(run: Callable[[Tensor], Iterator[Tensor]], data: Iterable, device: torch.device, loss_fn: LossFn,
          bar: tqdm, rows: int | None, *, check: bool) -> Tensor:
    """One pass over ``data``: the (P, 3) totals of the points that ``run`` evaluates, each batch in
    slices of ``rows`` examples (None: whole). Targets are checked when ``check`` (once per
    evaluation is enough). Small logits of successive points are scored together, up to
    :data:`SCORED_TOGETHER` bytes, so that the loss costs a few calls per batch."""
    totals = 0.0
    for index, (x, y) in enumerate(checked_batches(data)):
        cut = rows or max(len(x), 1)
        for inputs, labels in zip(x.split(cut), y.split(cut)):
            targets = labels.to(device)
            scored, pending, size = [], [], 0
            for logits in run(inputs.to(device)):
                if check and not scored and not pending:
                    check_targets(logits, labels, batch=index)
                pending.append(logits)
                size += logits.numel() * logits.element_size()
                if size >= SCORED_TOGETHER:
                    scored.append(batch_totals(_stacked(pending), targets, loss_fn))
                    pending, size = [], 0
            if pending:
                scored.append(batch_totals(_stacked(pending), targets, loss_fn))
            totals = totals + torch.cat(scored)
        bar.update()
    return totals


def _chunk_size(endpoints: Endpoints, stacked: bool, cost: Footprint | None, rows: int, budget: float) -> int:
    """Points per chunk: their mixed tensors (and, stacked, their activations on ``rows`` examples) fit
    ``budget`` bytes."""
    per_point = endpoints.parameter_bytes() + (cost.activation_bytes * rows if stacked else 0)
    return int(max(1, budget // max(per_point, 1)))


@dataclass(frozen=True, eq=False)
class MixtureEvaluation:
    """Mean loss and accuracy at each point: weights (P, K), losses (P,), accuracies (P,)."""

    weights: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray


def _check_options(memory_budget: object, strategy: object, shard: object) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real) or not 0 < memory_budget < inf:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if shard not in distributed.SHARDS:
        raise ValueError(f"shard must be one of {distributed.SHARDS}, got {shard!r}")


def _resolve(strategy: str, refusal: str | None, device: torch.device, inputs: Tensor, model: nn.Module,
             group: object | None) -> tuple[str, Footprint | None]:
    """The strategy to run and, where the stacked path may run, one point's footprint on one example;
    the same strategy on every rank of ``group`` ("vmap" only where every rank would stack)."""
    if strategy == "vmap" and refusal is not None:
        raise ValueError(f"strategy='vmap' cannot evaluate these models: {refusal}; use strategy='loop' or 'auto'")
    if refusal is not None:
        return "loop", None
    cost = _probe(model, inputs)
    if strategy == "auto":
        strategy = _auto(device, cost.times(inputs.shape[0]))
    stacked = distributed.agree_min(int(strategy == "vmap"), group)
    return ("vmap" if stacked else "loop"), cost


def evaluate_mixtures(
    models: Sequence[nn.Module],
    weights: Sequence[Sequence[float]] | np.ndarray | Tensor,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: LossFn = cross_entropy,
    memory_budget: int = 2**30,
    device: torch.device | str | None = None,
    strategy: str = "auto",
    progress: bool = True,
    labels: Sequence[str] | None = None,
    group: object | None = None,
    shard: str = "data",
) -> MixtureEvaluation:
    """Mean loss and accuracy of theta_p = sum_k W[p, k] theta_k at every row p of ``weights`` (P x K).

    ``data`` yields (inputs, targets) batches; ``loss_fn(logits, targets)`` returns one loss per target
    (default: cross-entropy over all examples or tokens; targets of -100 are ignored). The points
    are evaluated in chunks, one pass over ``data`` per chunk: with ``strategy="loop"`` the chunk's
    points run one after another on each batch and their mixed tensors fit ``memory_budget`` bytes;
    with ``"vmap"`` they run stacked, and their stacked tensors and activations fit it; ``"auto"``
    takes :func:`barrier_strategy`. All give the same numbers up to float rounding. ``labels`` name
    the models in error messages (default "0", "1", ...).

    ``group`` (a ``torch.distributed`` process group): each rank passes its own shard of ``data``,
    the loss sums, correct counts and target counts are all-reduced in float64, and every rank gets
    the result on the union of the shards; chunk sizes and the strategy are agreed across ranks and
    only rank 0 shows progress. With ``shard="points"`` each rank passes all the data and evaluates
    its own block of the points. The models and the data are not modified; a one-shot iterator is
    read into a list first.
    """
    labels = _check_models(models, labels)
    weights = mixture_weights(weights, len(models))
    _check_options(memory_budget, strategy, shard)
    group = distributed.check_group(group, "evaluate_mixtures")
    device = torch.device(device) if device is not None else model_device(models[0], "evaluate_mixtures")
    data = reusable(data)
    inputs = _first_inputs(data)
    distributed.check_every_rank_has_data(inputs is not None, group, "evaluate_mixtures")
    if inputs is None:
        raise ValueError("data yielded no batches")
    refusal = _stacking_refusal(models, labels)
    with torch.no_grad():
        endpoints = Endpoints(models, device, stem=refusal is None)
        strategy, cost = _resolve(strategy, refusal, device, inputs.to(device), endpoints.model, group)
        size = _chunk_size(endpoints, strategy == "vmap", cost, inputs.shape[0], memory_budget)
        mine = distributed.split_points(len(weights), group) if shard == "points" else range(len(weights))
        if shard == "data":
            size = distributed.agree_min(size, group)
        chunks = [range(i, min(i + size, mine.stop)) for i in range(mine.start, mine.stop, size)]
        rows = _slice_rows(strategy, device, cost, max(map(len, chunks), default=1))
        runner = VmapRunner if strategy == "vmap" else LoopRunner
        where = device if device.type != "mps" else torch.device("cpu")
        totals = torch.zeros(len(weights), 3, dtype=torch.float64, device=where)
        total = len(chunks) * len(data) if hasattr(data, "__len__") else None
        desc = f"{len(weights)} points in {len(chunks)} passes"
        with tqdm(total=total, disable=not progress or not distributed.is_main(group), desc=desc, leave=False) as bar:
            for index, chunk in enumerate(chunks):
                run = runner(endpoints, torch.as_tensor(weights[chunk.start : chunk.stop]))
                totals[chunk.start : chunk.stop] = _pass(run, data, device, loss_fn, bar, rows, check=index == 0)
        sums, correct, counts = distributed.all_reduce_sum([totals], group)[0].cpu().numpy().T
    if (counts == 0).any():
        raise ValueError("data yielded no targets")
    losses = sums / counts
    if not np.isfinite(losses).all():
        raise ValueError(f"non-finite loss at the points with weights {weights[~np.isfinite(losses)].tolist()}")
    return MixtureEvaluation(weights, losses, correct / counts)
