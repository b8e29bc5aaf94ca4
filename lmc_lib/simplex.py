"""Loss over the simplex spanned by K models, and the multi-model barrier (the paper's Eq. 2).

A point of the simplex is a weight vector l (l_m >= 0, sum_m l_m = 1) and the model
theta_l = sum_m l_m theta_m. Its loss gap is

    B_l = L(theta_l) - sum_m l_m L(theta_m),

the loss of the mixture minus the mixture of the losses, and the barrier is max_l B_l over the
evaluated points. For K = 2 and l = (1 - lambda, lambda) this is the barrier along the line
(:func:`lmc_lib.barrier`). The points are evaluated by :func:`lmc_lib.evaluation.evaluate_mixtures`,
in chunks that share a pass over the data.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .evaluation import LossFn, cross_entropy, evaluate_mixtures, mixture_weights

__all__ = ["SimplexSurface", "simplex_barrier", "simplex_grid", "METRIC_LABELS"]

#: the colour-bar label of each metric a surface plots
METRIC_LABELS = {"loss": "test loss", "gap": "loss gap $B_\\lambda$", "accuracy": "test accuracy"}


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative integers summing to ``total``, the last entry varying slowest."""
    if parts == 1:
        yield (total,)
        return
    for last in range(total + 1):
        for head in _compositions(total - last, parts - 1):
            yield (*head, last)


def simplex_grid(count: int, points: int = 11) -> np.ndarray:
    """The regular grid on the simplex of ``count`` models with ``points`` points along each edge:
    every weight vector whose entries are multiples of 1 / (points - 1), as a (P, count) matrix with
    P = C(points + count - 2, count - 1) rows (66 for three models and 11 points per edge). For two
    models the rows are (1 - l, l) for the ``points`` evenly spaced l in [0, 1], in increasing order."""
    for name, value, low in (("count", count, 1), ("points", points, 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"simplex_grid: {name} must be an integer >= {low}, got {value!r}")
    steps = int(points) - 1
    return np.array(list(_compositions(steps, int(count))), dtype=np.float64) / steps


@dataclass(frozen=True, eq=False)
class SimplexSurface:
    """Loss and accuracy at points of the simplex: weights (P, K), losses (P,), accuracies (P,).

    The K vertices (each model on its own) are among the points.
    """

    weights: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray

    def _at_vertices(self, values: np.ndarray) -> np.ndarray:
        """(K,) the values at the vertices e_1, ..., e_K."""
        eye = np.eye(self.weights.shape[1])
        rows = [int(np.flatnonzero((self.weights == vertex).all(axis=1))[0]) for vertex in eye]
        return values[rows]

    @property
    def vertex_losses(self) -> np.ndarray:
        """(K,) the loss of each model, L(theta_m)."""
        return self._at_vertices(self.losses)

    @property
    def loss_gaps(self) -> np.ndarray:
        """(P,) B_l = L(theta_l) - sum_m l_m L(theta_m) at every point."""
        return self.losses - self.weights @ self.vertex_losses

    @property
    def barrier(self) -> float:
        """The multi-model loss barrier max_l B_l over the points (Eq. 2 of the paper)."""
        return float(self.loss_gaps.max())

    @property
    def accuracy_barrier(self) -> float:
        """max_l (sum_m l_m acc(theta_m) - acc(theta_l)): the accuracy lost by mixing."""
        return float((self.weights @ self._at_vertices(self.accuracies) - self.accuracies).max())

    def values(self, metric: str) -> np.ndarray:
        """The surface's ``metric`` at every point: "loss", "gap" (B_l) or "accuracy"."""
        values = {"loss": self.losses, "gap": self.loss_gaps, "accuracy": self.accuracies}
        if metric not in values:
            raise ValueError(f"metric must be one of {tuple(values)}, got {metric!r}")
        return values[metric]

    def plot(self, ax=None, *, metric: str = "loss", labels: Sequence[str] = ("A", "B", "C"), cmap: str = "viridis",
             vmin: float | None = None, vmax: float | None = None, colorbar: bool = True):
        """A ternary heat map of three models' surface on ``ax`` (a new figure if None); returns the axes.

        ``metric``: "loss", "gap" (B_l, with its zero contour where it changes sign) or "accuracy".
        Vertex m of the triangle is model m, labelled ``labels[m]``; the point l sits at
        l_1 (0, 0) + l_2 (1, 0) + l_3 (1/2, sqrt(3)/2). ``vmin`` and ``vmax`` fix the colour scale
        (default: the surface's range), e.g. to share it between panels; ``colorbar`` draws its bar.
        """
        import matplotlib.pyplot as plt
        from matplotlib.tri import Triangulation

        shown = self.values(metric)
        if self.weights.shape[1] != 3:
            raise ValueError(f"plot draws the ternary map of three models; this surface has {self.weights.shape[1]}")
        if len(labels) != 3:
            raise ValueError(f"labels: expected one label per model (3), got {len(labels)}")
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
        x, y = (self.weights @ corners).T
        triangulation = Triangulation(x, y)
        ax = plt.subplots(figsize=(5, 4.3))[1] if ax is None else ax
        shaded = ax.tripcolor(triangulation, shown, shading="gouraud", cmap=cmap, vmin=vmin, vmax=vmax)
        gaps = self.loss_gaps
        if metric == "gap" and gaps.min() < 0 < gaps.max():
            ax.tricontour(triangulation, gaps, levels=[0.0], colors="k", linewidths=0.8)
        ax.plot(*np.vstack([corners, corners[:1]]).T, color="k", linewidth=0.8)
        ax.scatter(x, y, s=3, color="k", alpha=0.4)
        for (cx, cy), label, shift in zip(corners, labels, ((-0.04, -0.05), (0.04, -0.05), (0.0, 0.04))):
            ax.text(cx + shift[0], cy + shift[1], label, ha="center", va="center")
        if colorbar:
            ax.figure.colorbar(shaded, ax=ax, label=METRIC_LABELS[metric], shrink=0.8)
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(-0.1, corners[2, 1] + 0.1)
        ax.set_aspect("equal")
        ax.set_axis_off()
        return ax


def _evaluated_points(points: int | np.ndarray | Sequence[Sequence[float]] | Tensor, count: int) -> np.ndarray:
    """The grid of ``points`` per edge (an integer), or the given (P, count) points, plus every vertex
    missing from them (appended in order)."""
    if isinstance(points, numbers.Integral) and not isinstance(points, bool):
        return simplex_grid(count, int(points))
    try:
        weights = mixture_weights(points, count)
    except ValueError as error:
        raise ValueError(f"simplex_barrier: points must lie on the simplex of the {count} models: {error}") from None
    vertices = np.eye(count)
    missing = [vertex for vertex in vertices if not (weights == vertex).all(axis=1).any()]
    return np.vstack([weights, *missing]) if missing else weights


def simplex_barrier(
    models: Sequence[nn.Module],
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    points: int | np.ndarray | Sequence[Sequence[float]] | Tensor = 11,
    loss_fn: LossFn = cross_entropy,
    memory_budget: int = 2**30,
    device: torch.device | str | None = None,
    strategy: str = "auto",
    progress: bool = True,
    group: object | None = None,
    shard: str = "data",
) -> SimplexSurface:
    """Loss and accuracy of theta_l = sum_m l_m theta_m at points l of the simplex of K >= 2 models, and
    the barrier max_l [L(theta_l) - sum_m l_m L(theta_m)].

    ``points`` is a number of grid points per edge (an integer >= 2: :func:`simplex_grid`; the default
    11 gives 66 points for three models and lmc.barrier's 11 lambdas for two) or the points
    themselves, a (P, K) matrix of weights (each row non-negative, summing to 1); the vertices are
    always evaluated too. ``data``, ``loss_fn``, ``memory_budget``, ``device`` and ``strategy`` are
    those of :func:`lmc_lib.evaluation.evaluate_mixtures` (chunks of points that share a pass over
    the data), and so are ``group`` and ``shard`` for several processes: each rank passes its own
    shard of the data (or, with ``shard="points"``, all of it and evaluates its own block of the
    points) and every rank gets the whole surface. The models must share one architecture (errors
    name them by position: models 0 and 2 differ at ...).
    """
    if not isinstance(models, Sequence) or isinstance(models, nn.Module):
        raise TypeError(f"simplex_barrier: models must be a sequence of models, got {type(models).__name__}")
    if len(models) < 2:
        raise ValueError(f"simplex_barrier: needs at least two models to mix, got {len(models)}")
    if isinstance(points, bool):
        raise TypeError("simplex_barrier: points must be a number of points per edge or a (P, K) matrix, got a bool")
    weights = _evaluated_points(points, len(models))
    result = evaluate_mixtures(models, weights, data, loss_fn=loss_fn, memory_budget=memory_budget, device=device,
                               strategy=strategy, progress=progress, group=group, shard=shard)
    return SimplexSurface(result.weights, result.losses, result.accuracies)
