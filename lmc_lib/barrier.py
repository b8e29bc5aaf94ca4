"""Loss and accuracy along the linear path theta_l = (1 - l) theta_A + l theta_B, and the barrier.

B_l = L(theta_l) - ((1 - l) L(theta_A) + l L(theta_B)); the loss barrier is max_l B_l.

The curve is the two-endpoint case of :func:`lmc_lib.evaluation.evaluate_mixtures`, with weights
(1 - l, l): its strategies ("loop": the interpolated models of a chunk take turns on each batch,
one pass over the data per chunk; "vmap": they run stacked; "auto": :func:`barrier_strategy`), its
checks and its ``group=`` for several processes are those.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .alignment import check_finite, check_pair
from .evaluation import LossFn, barrier_strategy, cross_entropy, evaluate_mixtures, evaluating
from .family import load_state

__all__ = [
    "BarrierCurve", "barrier", "interpolate", "cross_entropy", "evaluating", "barrier_strategy",
]


def _unit_interval(value: float, what: str) -> None:
    """ValueError naming ``what`` unless 0 <= value <= 1."""
    if math.isnan(value):
        raise ValueError(f"{what} is NaN; it must lie in [0, 1]")
    if not 0 <= value <= 1:
        raise ValueError(f"{what} = {value} lies outside [0, 1]; extrapolation is not supported")


def interpolate(a: nn.Module, b: nn.Module, lam: float) -> nn.Module:
    """A new model with floating tensors (1 - lam) theta_A + lam theta_B (others taken from A), lam in [0, 1].

    A lam outside [0, 1] (extrapolation) is refused, as are models of different architectures and
    tensors with NaN or inf (named by model, "A" or "B", and tensor).
    """
    if isinstance(lam, Tensor) and lam.ndim == 0 and lam.dtype != torch.bool:
        lam = lam.item()
    if isinstance(lam, (bool, np.bool_)) or not isinstance(lam, numbers.Real):
        raise TypeError(f"interpolate: lam must be a real number in [0, 1], got {type(lam).__name__}")
    _unit_interval(float(lam), "interpolate: lam")
    for label, model in (("a", a), ("b", b)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"interpolate: model {label} must be an nn.Module, got {type(model).__name__}")
    check_pair(a, b, what="models A and B")
    check_finite(a, "A")
    check_finite(b, "B")
    state_b = b.state_dict()
    state = {
        k: torch.lerp(v.double(), state_b[k].double(), float(lam)) if v.is_floating_point() else v
        for k, v in a.state_dict().items()
    }
    return load_state(a, state)


@dataclass(frozen=True, eq=False)
class BarrierCurve:
    """Loss and accuracy at each lambda (sorted, with 0 and 1 included)."""

    lambdas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray

    @property
    def loss_gaps(self) -> np.ndarray:
        """B_l = L(theta_l) - ((1 - l) L_A + l L_B) for every lambda."""
        return self.losses - ((1 - self.lambdas) * self.losses[0] + self.lambdas * self.losses[-1])

    @property
    def barrier(self) -> float:
        """The loss barrier max_l B_l."""
        return float(self.loss_gaps.max())

    @property
    def accuracy_barrier(self) -> float:
        """max_l ((1 - l) acc_A + l acc_B - acc(theta_l)): the accuracy lost along the path."""
        linear = (1 - self.lambdas) * self.accuracies[0] + self.lambdas * self.accuracies[-1]
        return float((linear - self.accuracies).max())

    def plot(self, ax=None, *, metric: str = "loss", label: str | None = None, **kwargs):
        """Plot loss (or accuracy) against lambda on ``ax`` (a new figure if None); returns the axes."""
        import matplotlib.pyplot as plt

        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
        ax = plt.subplots(figsize=(5, 3.5))[1] if ax is None else ax
        values = self.losses if metric == "loss" else self.accuracies
        ax.plot(self.lambdas, values, marker="o", markersize=3, label=label, **kwargs)
        ax.set_xlabel(r"$\lambda$")
        ax.set_ylabel("test loss" if metric == "loss" else "test accuracy")
        if label is not None:
            ax.legend()
        return ax


def _lambda_grid(lambdas: int | Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    """A count (an integer >= 2: that many evenly spaced points) or the points themselves (reals in [0, 1]),
    as the sorted grid with 0 and 1 included."""
    values = lambdas.detach().cpu().numpy() if isinstance(lambdas, Tensor) else np.asarray(lambdas)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"lambdas: expected a count (an int >= 2) or points in [0, 1], got {type(lambdas).__name__}"
                        f" of dtype {values.dtype}")
    if values.ndim == 0 and values.dtype.kind in "iu":
        if values < 2:
            raise ValueError(f"lambdas: need at least 2 points, got {int(values)}")
        return np.linspace(0.0, 1.0, int(values))
    grid = values.astype(np.float64).ravel()
    if grid.size == 0:
        raise ValueError("lambdas: no points given")
    for value in grid:
        _unit_interval(value, "lambdas: point")
    return np.unique(np.concatenate([grid, [0.0, 1.0]]))


def barrier(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    lambdas: int | Sequence[float] | np.ndarray | Tensor = 11,
    *,
    loss_fn: LossFn = cross_entropy,
    memory_budget: int = 2**30,
    device: torch.device | str | None = None,
    strategy: str = "auto",
    progress: bool = True,
    group: object | None = None,
    shard: str = "data",
) -> BarrierCurve:
    """Loss and accuracy of theta_l = (1 - l) theta_A + l theta_B for every lambda, and the barrier.

    ``lambdas`` is a count of evenly spaced points (an integer, also a numpy or 0-d tensor one) or
    the points in [0, 1]; 0 and 1 are always added. ``data`` yields (inputs, targets) batches;
    ``loss_fn(logits, targets)`` returns one loss per target (default: cross-entropy over all
    examples or tokens). The lambdas are evaluated in chunks that fit ``memory_budget`` bytes, one
    pass over ``data`` per chunk: with ``strategy="loop"`` the chunk's interpolated models take
    turns on each batch; with ``"vmap"`` they run stacked; ``"auto"`` takes :func:`barrier_strategy`
    (the faster of the two for the device and the batch size, and "loop" for a model that the
    stacked path may not run). All give the same curve up to float rounding. Errors name the
    models "A" and "B".

    With ``group`` (a ``torch.distributed`` process group) each rank passes its own shard of the
    data and gets the curve of the whole data (sums all-reduced in float64); ``shard="points"``
    instead splits the lambdas across ranks, each passing all the data. See
    :func:`lmc_lib.evaluation.evaluate_mixtures`.
    """
    grid = _lambda_grid(lambdas)
    result = evaluate_mixtures(
        [a, b], np.stack([1 - grid, grid], axis=1), data, loss_fn=loss_fn, memory_budget=memory_budget,
        device=device, strategy=strategy, progress=progress, labels=("A", "B"), group=group, shard=shard,
    )
    return BarrierCurve(grid, result.losses, result.accuracies)
