"""What a batch adds to an evaluation: each point's loss sum, correct predictions and counted targets.

Sums, not means: they add up over batches, chunks and the ranks of a process group
(:mod:`lmc_lib.distributed`), and are divided once at the end. Everything is computed on the
logits' device without a host synchronisation (targets of -100 are masked, not removed), and
summed in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossFn", "cross_entropy", "first_argmax", "check_targets", "point_totals", "batch_totals", "ARGMAX_BLOCK"]

#: ``loss_fn(logits (..., C), targets (...)) -> losses (...)``: one loss per target
LossFn = Callable[[Tensor, Tensor], Tensor]
#: :func:`first_argmax` looks for the maximum of wide logits in blocks of this many classes
ARGMAX_BLOCK = 256


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-target cross-entropy: logits (..., C), targets (...) -> losses (...); -100 marks ignored targets."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)


def check_targets(logits: Tensor, targets: Tensor, *, batch: int) -> None:
    """ValueError unless ``targets`` have the shape of ``logits`` ``(P, *targets.shape, C)`` without the point
    and class axes and, when integers, are class indices in [0, C) or -100 (ignored)."""
    if targets.shape != logits.shape[1:-1]:
        raise ValueError(f"data: batch {batch}: targets have shape {tuple(targets.shape)}, but the model's logits "
                         f"{tuple(logits.shape[1:])} need targets of shape {tuple(logits.shape[1:-1])}")
    classes = logits.shape[-1]
    if not targets.is_floating_point():
        outside = (targets != -100) & ((targets < 0) | (targets >= classes))
        if outside.any():
            raise ValueError(f"data: batch {batch}: target {int(targets[outside][0])} is not a class index in "
                             f"[0, {classes}) (the model has {classes} outputs) nor -100 (ignored)")


def first_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(-1)``: the first index of the maximum (of the first NaN, if any), faster for wide logits.

    torch's argmax over a contiguous last axis is not vectorised, and over a vocabulary of 50,257
    it costs about a tenth of a language model's whole evaluation. Here the maxima of blocks of
    :data:`ARGMAX_BLOCK` entries (a vectorised amax, which propagates NaN) say which block holds
    the first maximum, and argmax runs only inside that block.
    """
    classes = logits.shape[-1]
    if classes <= 16 * ARGMAX_BLOCK or logits.numel() == 0:
        return logits.argmax(-1)
    rows = logits.reshape(-1, classes)
    whole = classes // ARGMAX_BLOCK * ARGMAX_BLOCK
    maxima = [rows[:, :whole].unflatten(1, (-1, ARGMAX_BLOCK)).amax(-1)]
    if whole < classes:
        maxima.append(rows[:, whole:].amax(-1, keepdim=True))
    start = torch.cat(maxima, dim=1).argmax(-1) * ARGMAX_BLOCK  # the first block holding the maximum
    # the block's entries (the last block's indices clamped: repeats of its last entry come after it)
    index = (start[:, None] + torch.arange(ARGMAX_BLOCK, device=logits.device)).clamp_max(classes - 1)
    inside = torch.gather(rows, 1, index).argmax(-1)
    return (start + inside).view(logits.shape[:-1])


def _losses(logits: Tensor, targets: Tensor, loss_fn: LossFn) -> Tensor:
    """(P, *targets.shape): ``loss_fn`` of each point; the default cross-entropy in one call for all points."""
    if loss_fn is cross_entropy:
        return cross_entropy(logits, targets.expand(logits.shape[0], *targets.shape))
    losses = torch.stack([loss_fn(point, targets) for point in logits])
    if losses.shape[1:] != targets.shape:
        raise ValueError(f"loss_fn must return one loss per target, shape {tuple(targets.shape)}; "
                         f"got {tuple(losses.shape[1:])}")
    return losses


def batch_totals(logits: Tensor, targets: Tensor, loss_fn: LossFn) -> Tensor:
    """(P, 3) float64 loss sums, correct predictions and counted targets, without a host synchronisation."""
    valid = targets != -100
    losses = torch.where(valid, _losses(logits, targets, loss_fn), 0)
    correct = (first_argmax(logits) == targets) & valid
    # float64 sums, on the CPU for a device without float64 (MPS)
    where = logits.device if logits.device.type != "mps" else torch.device("cpu")
    loss_sums = losses.flatten(1).to(where, torch.float64).sum(1)
    correct_sums = correct.flatten(1).to(where).sum(1, dtype=torch.float64)
    count = valid.to(where).sum(dtype=torch.float64).expand(logits.shape[0])
    return torch.stack([loss_sums, correct_sums, count], dim=1)


def point_totals(logits: Tensor, targets: Tensor, loss_fn: LossFn, *, batch: int) -> Tensor:
    """(P, 3) float64: each point's loss sum, correct predictions and counted targets on one batch.

    ``logits`` are ``(P, *targets.shape, C)``; targets of -100 are ignored. ValueError when the targets
    do not have the logits' shape without the class axis, integer targets are not class indices in
    [0, C), or ``loss_fn`` does not return one loss per target.
    """
    check_targets(logits, targets, batch=batch)
    return batch_totals(logits, targets, loss_fn)
