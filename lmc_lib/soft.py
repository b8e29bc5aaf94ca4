"""Soft permutations (the paper's App. D): learned matching with doubly stochastic matrices instead of permutations.

Each permuted space of B gets a latent L projected by Sinkhorn onto a doubly stochastic matrix
S = sinkhorn(exp(L / temperature)), and S takes the place of the permutation in the path
(1 - lambda) theta_A + lambda S(theta_B). A doubly stochastic matrix that is not a permutation is
no symmetry: B under S computes another function than B. So the result is a :class:`SoftEndpoint`,
a new model with its own loss, never an :class:`~lmc_lib.alignment.Alignment`; its barrier is
measured against its own endpoint (``lmc.barrier(a, soft.model, data)``), which hides how far the
soft endpoint has moved from B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .alignment import Alignment, Classes
from .evaluation import model_device
from .family import load_state
from .learned import Schedule, _latents, learn, prepared
from .transform import transform_tensors

__all__ = ["SoftEndpoint", "soft_matching"]


@dataclass(frozen=True, eq=False)
class SoftEndpoint:
    """B moved by learned doubly stochastic matrices: ``model`` (not B's function), ``matrices`` per space
    (applied on top of ``init``, the alignment B started from) and the training ``history``."""

    model: nn.Module
    matrices: Mapping[str, Tensor]
    init: Alignment
    history: tuple[float, ...]


def soft_matching(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    init: Alignment | None = None,
    classes: Classes = "permutations",
    temperature: float = 0.1,
    iterations: int = 20,
    **schedule,
) -> SoftEndpoint:
    """Learn doubly stochastic matrices S for B's permuted spaces on the loss along the path (module docstring).

    Sinkhorn runs ``iterations`` normalisations of exp(L / ``temperature``) (columns end exactly
    stochastic, rows nearly; a lower temperature is closer to a permutation); the latents start at
    the identity on B aligned by ``init`` (default: weight matching). Heads are interpolated as
    weights (soft head matrices do not keep circuits apart). Options of the schedule as
    :func:`~lmc_lib.learned.learned_matching`.
    """
    if not temperature > 0 or isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"soft_matching: need temperature > 0 and iterations >= 1, "
                         f"got {temperature!r}, {iterations!r}")
    options = Schedule(**schedule)
    _, kinds, init, path = prepared(a, b, init, classes, False, ("permutation",), "soft_matching")
    device = model_device(a, "soft_matching")
    latents = _latents(path.spec, {name: "soft" for name in kinds}, device)
    for latent in latents.values():
        latent.temperature, latent.iterations = temperature, iterations
    history = learn(path, {"b": latents}, data, options, device)
    with torch.no_grad():
        matrices = {name: latent.project(True)[0].detach() for name, latent in latents.items()}
        moved = transform_tensors(path.state_b, path.spec, {name: (m, m) for name, m in matrices.items()})
    return SoftEndpoint(load_state(init.apply(b), moved), matrices, init, history)
