"""Circuit-space interpolation: interpolate each attention head's QK and OV products, not its factors.

Head i depends on its factors only through QK_i = Q_i^T K_i and OV_i = O_i V_i (biases included,
through the augmented input [x; 1]). The invertible maps inside a head change the factors but not
these circuits, so interpolating circuits is the invertible class's interpolation (the paper's
choice). It is exactly the linear interpolation of models whose heads are k = 2 times wider
(GUIDE, section 3): per head, with rows of Q, K, V and columns of O,

    Q_A2 = [c Q_A; 0],  Q_B2 = [0; c Q_B],  K_A2 = K_B2 = [K_A; K_B]
    O_A2 = [O_A, 0],    O_B2 = [0, O_B],    V_A2 = V_B2 = [V_A; V_B]

so (1 - l) Q_A2 + l Q_B2 against K gives c ((1 - l) QK_A + l QK_B), and likewise for OV. The
family widens the heads and folds c (sqrt(k) for a 1 / sqrt(head_dim) attention scale) into the
queries. With k models the heads are k times wider and any convex combination of the k models is
the same combination of their circuits. The rest of each model is its own; which rows belong to
which side of a circuit is read from the spec (``Space.circuits``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .alignment import check_finite, check_pair
from .family import family_of, load_state, spec_for
from .spec import Axis, SymmetrySpec

__all__ = ["circuit_states", "mix_circuits", "circuit_models", "circuit_pair"]


def _parts(tensor: Tensor, axis: Axis, k: int) -> tuple[Tensor, int]:
    """View of the axis slice of ``tensor`` as (..., size, k, block / k, ...), each block's k parts,
    and the index of the parts dimension."""
    dim = axis.dim % tensor.ndim
    part = tensor.narrow(dim, axis.start, axis.extent(tensor.shape))
    return part.unflatten(dim, (-1, k, axis.block // k)), dim + 1


def _replaced(tensor: Tensor, axis: Axis, parts: Tensor) -> Tensor:
    """``tensor`` with its axis slice replaced by ``parts`` (laid out as :func:`_parts` views it), out of place."""
    dim = axis.dim % tensor.ndim
    length = axis.extent(tensor.shape)
    before = tensor.narrow(dim, 0, axis.start)
    after = tensor.narrow(dim, axis.start + length, tensor.shape[dim] - axis.start - length)
    return torch.cat([before, parts.flatten(dim, dim + 2), after], dim=dim)


def circuit_states(wide: Sequence[Mapping[str, Tensor]], spec: SymmetrySpec) -> list[dict[str, Tensor]]:
    """The k states of :func:`circuit_models` from k states whose heads are already k times wider, each
    model's own factors in part 0 of every head (what ``Family.widen_heads`` builds); ``spec`` is the
    wide models' spec. Out of place: gradients flow from the results to ``wide``.

    State m holds its own left factors (queries, out-projection columns) in part m of each head and
    zeros elsewhere, and the right factors (keys, values) of all k models, part j from model j; so
    sum_m w_m state_m has QK = sum_m w_m QK_m and OV = sum_m w_m OV_m in every head.
    """
    k = len(wide)
    circuits = [circuit for space in spec.spaces.values() for circuit in space.circuits]
    if not circuits:
        raise ValueError(f"circuit_states: the {spec.family} spec declares no circuits")
    states = [dict(state) for state in wide]
    for circuit in circuits:
        for axis in circuit.left:
            for m, state in enumerate(states):
                own, dim = _parts(wide[m][axis.param], axis, k)
                own = own.narrow(dim, 0, 1)
                parts = [own if j == m else torch.zeros_like(own) for j in range(k)]
                state[axis.param] = _replaced(state[axis.param], axis, torch.cat(parts, dim))
        for axis in circuit.right:
            dim = _parts(wide[0][axis.param], axis, k)[1]
            parts = torch.cat([_parts(source[axis.param], axis, k)[0].narrow(dim, 0, 1) for source in wide], dim)
            for state in states:
                state[axis.param] = _replaced(state[axis.param], axis, parts)
    return states


def mix_circuits(wide: Sequence[Mapping[str, Tensor]], weights: Tensor, spec: SymmetrySpec) -> dict[str, Tensor]:
    """sum_m w_m theta_m of the :func:`circuit_states` of ``wide``: every head's circuits are the same convex
    combination of the k models' circuits, every other tensor is combined linearly. Differentiable in
    ``wide`` and ``weights`` (k,)."""
    states = circuit_states(wide, spec)
    weights = torch.as_tensor(weights)
    if weights.shape != (len(states),):
        raise ValueError(f"mix_circuits: weights must have shape ({len(states)},), got {tuple(weights.shape)}")
    mixed = {}
    for name, tensor in states[0].items():
        if not tensor.is_floating_point():
            mixed[name] = tensor
            continue
        total = weights[0].to(tensor) * tensor
        for weight, state in zip(weights[1:], states[1:]):
            total = total + weight.to(tensor) * state[name]
        mixed[name] = total
    return mixed


def circuit_models(models: Sequence[nn.Module]) -> tuple[nn.Module, ...]:
    """k new models, model m computing exactly ``models[m]``'s function, such that the convex
    combination sum_m w_m theta_m of their parameters has, in every head, the circuits
    QK = sum_m w_m QK_m and OV = sum_m w_m OV_m; every other tensor is combined linearly.

    Heads become k d_head wide: model m keeps its own queries and out-projection columns in part m
    of each head (zeros elsewhere) and every model holds the keys and values of all k
    (:func:`circuit_states`).
    """
    k = len(models)
    if k < 2:
        raise ValueError(f"circuit_models: needs at least two models, got {k}")
    for index, model in enumerate(models):
        if index:
            check_pair(models[0], model)
        check_finite(model, f"{index} of circuit_models" if k > 2 else "AB"[index])
    family = family_of(models[0])
    if family.widen_heads is None:
        raise ValueError(
            f"circuit_models: {family.name} models have no attention heads (the family cannot widen heads)"
        )
    wide = [family.widen_heads(model, k) for model in models]  # own factors in part 0 of each head
    with torch.no_grad():
        states = circuit_states([model.state_dict() for model in wide], spec_for(wide[0]))
    return tuple(load_state(model, state) for model, state in zip(wide, states))


def circuit_pair(a: nn.Module, b: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(a2, b2): a2 computes a's function, b2 b's, and (1 - l) theta_a2 + l theta_b2 is the circuit-space
    interpolation (QK_l = (1 - l) QK_a + l QK_b, OV_l likewise, per head; the rest linear), with heads
    twice as wide. ``lmc.barrier(*circuit_pair(a, b), data)`` is the barrier of circuit interpolation."""
    a2, b2 = circuit_models([a, b])
    return a2, b2
