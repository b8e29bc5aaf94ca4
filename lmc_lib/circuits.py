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

from collections.abc import Sequence

from torch import Tensor, nn

from .alignment import check_finite, check_pair
from .family import family_of, load_state, spec_for
from .spec import Axis

__all__ = ["circuit_models", "circuit_pair"]


def _parts(tensor: Tensor, axis: Axis, k: int) -> tuple[Tensor, int]:
    """View of the axis slice of ``tensor`` as (..., size, k, block / k, ...), each block's k parts,
    and the index of the parts dimension."""
    dim = axis.dim % tensor.ndim
    part = tensor.narrow(dim, axis.start, axis.extent(tensor.shape))
    return part.unflatten(dim, (-1, k, axis.block // k)), dim + 1


def circuit_models(models: Sequence[nn.Module]) -> tuple[nn.Module, ...]:
    """k new models, model m computing exactly ``models[m]``'s function, such that the convex
    combination sum_m w_m theta_m of their parameters has, in every head, the circuits
    QK = sum_m w_m QK_m and OV = sum_m w_m OV_m; every other tensor is combined linearly.

    Heads become k d_head wide: model m keeps its own queries and out-projection columns in part m
    of each head (zeros elsewhere) and every model holds the keys and values of all k.
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
        raise ValueError(f"circuit_models: {family.name} models have no attention heads (the family cannot widen heads)")
    wide = [family.widen_heads(model, k) for model in models]  # own factors in part 0 of each head
    spec = spec_for(wide[0])
    circuits = [circuit for space in spec.spaces.values() for circuit in space.circuits]
    if not circuits:
        raise ValueError(f"circuit_models: the {spec.family} spec declares no circuits")
    sources = [model.state_dict() for model in wide]
    states = [{name: tensor.detach().clone() for name, tensor in source.items()} for source in sources]
    for circuit in circuits:
        for axis in circuit.left:  # queries, out-projection columns: model m's own, moved to part m
            for m, state in enumerate(states):
                own, dim = _parts(sources[m][axis.param], axis, k)
                _parts(state[axis.param], axis, k)[0].copy_(own.roll(m, dims=dim))
        for axis in circuit.right:  # keys, values: part m from model m, in every model
            for state in states:
                target, dim = _parts(state[axis.param], axis, k)
                for m, source in enumerate(sources):
                    target.select(dim, m).copy_(_parts(source[axis.param], axis, k)[0].select(dim, 0))
    return tuple(load_state(model, state) for model, state in zip(wide, states))


def circuit_pair(a: nn.Module, b: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(a2, b2): a2 computes a's function, b2 b's, and (1 - l) theta_a2 + l theta_b2 is the circuit-space
    interpolation (QK_l = (1 - l) QK_a + l QK_b, OV_l likewise, per head; the rest linear), with heads
    twice as wide. ``lmc.barrier(*circuit_pair(a, b), data)`` is the barrier of circuit interpolation."""
    a2, b2 = circuit_models([a, b])
    return a2, b2
