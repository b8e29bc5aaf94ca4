"""Universe matching: K models aligned to one shared frame (the paper's section 4.3, after C2M3).

The universe starts as one of the models, U(0) = theta_s. Round t aligns every model to it,
pi_m = ALIGN(U(t-1), theta_m) (weight or activation matching), and replaces it by the average of
the aligned models, U(t) = (1/K) sum_m pi_m(theta_m). Since every model is mapped into one frame, the
pairwise maps T_ij = T_i^-1 T_j (model j into model i's coordinates) are cycle-consistent by
construction: T_ij T_jk = T_ik. The universe's own frame is arbitrary (a symmetry applied to every
model changes no mixture's loss), so the maps are returned in the frame of ``models[frame]``, whose
own map is the identity. Maps compose space by space, except a map inside one coordinate of a
permuted space (a head's QK or OV inside the heads): the permutation carries it along, so it
composes with the map of the coordinate that the permutation brings to its place.

:func:`learned_universe` refines the maps on the loss of mixtures over the whole simplex, by Adam
on latents projected onto the classes (the pieces of :mod:`lmc_lib.learned`), with mixture weights
drawn from Dirichlet(alpha 1_K) (the paper: alpha = 0.1), ``models[frame]`` held fixed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .activations import activation_matching
from .alignment import Alignment, Classes, architecture, check_finite, check_model, check_pair, resolve_classes
from .circuits import mix_circuits
from .data import reusable
from .evaluation import LossFn, cross_entropy, logits_of, mix, model_device
from .family import family_of, spec_for
from .learned import _cycled, _latents
from .matching import weight_matching
from .spec import SymmetrySpec
from .symmetry import Invertible, Orthogonal, Permutation, Transform, identity
from .transform import transform_tensors

__all__ = ["universe_matching", "learned_universe", "pairwise_alignment"]

METHODS = ("weight", "activation")
#: space name -> symmetry element: the maps of one alignment
Maps = Mapping[str, Transform]


def _checked_models(models: Sequence[nn.Module], caller: str) -> SymmetrySpec:
    """The spec of K >= 2 models of one architecture, each one its family describes, with finite tensors."""
    if not isinstance(models, Sequence) or isinstance(models, nn.Module):
        raise TypeError(f"{caller}: models must be a sequence of models, got {type(models).__name__}")
    if len(models) < 2:
        raise ValueError(f"{caller}: needs at least two models, got {len(models)}")
    for index, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{caller}: model {index} must be an nn.Module, got {type(model).__name__}")
    for index, model in enumerate(models[1:], start=1):
        check_pair(models[0], model, what=f"models 0 and {index}")
    spec = spec_for(models[0])
    for index, model in enumerate(models):
        check_model(model, spec)
        check_finite(model, str(index))
    return spec


def _check_index(value: object, count: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -count <= value < count:
        raise ValueError(f"{what} must be a model index in [0, {count}), got {value!r}")
    return value % count


def _inverse(t: Transform) -> Transform:
    """T^-1 of a square element (writers T^-1 W, readers V T)."""
    if isinstance(t, Permutation):
        return t.inverse()
    if isinstance(t, Orthogonal) and t.size_in == t.size_out:
        return Orthogonal(t.matrix.T)
    if isinstance(t, Invertible):
        return Invertible(t.read_matrix, max_condition=t.max_condition)
    raise ValueError(f"a {t.kind} of {t.size_in} -> {t.size_out} coordinates has no inverse in its class")


def _hosts(spec: SymmetrySpec) -> dict[str, tuple[str, int]]:
    """space -> (the earlier space it lies inside, the coordinate of that space it lies in), for spaces
    inside one coordinate of another (a head's QK and OV inside the heads)."""
    order = list(spec.spaces)
    hosts = {}
    for name, space in spec.spaces.items():
        for host in (h for h in spec.overlapping(name) if order.index(h) < order.index(name)):
            outer, axis = spec.spaces[host], space.axes[0]
            around = next(a for a in outer.axes if a.param == axis.param and a.dim == axis.dim
                          and a.start <= axis.start < a.start + outer.size * a.block)
            hosts[name] = (host, (axis.start - around.start) // around.block)
    return hosts


def _source(spec: SymmetrySpec, hosts: dict[str, tuple[str, int]], name: str, maps: Maps, *, invert: bool) -> str:
    """The space whose place a permutation in ``maps`` (inverted if asked) of ``name``'s host moves to
    ``name``'s place: ``name`` itself unless it lies inside a coordinate of a permuted space."""
    host = hosts.get(name)
    if host is None or not isinstance(maps.get(host[0]), Permutation):
        return name
    permutation = maps[host[0]].inverse() if invert else maps[host[0]]
    index = int(permutation.indices[host[1]])
    group = spec.spaces[name].group
    return next(other for other, place in hosts.items()
                if place == (host[0], index) and spec.spaces[other].group == group)


def _inverted(spec: SymmetrySpec, maps: Maps) -> dict[str, Transform]:
    """The maps of the inverse alignment: B_i = A_s^-1 for a space inside coordinate i of a space
    permuted by P, where s is the space at coordinate P^-1(i)."""
    hosts = _hosts(spec)
    return {name: _inverse(maps[_source(spec, hosts, name, maps, invert=True)]) for name in maps}


def _composed(spec: SymmetrySpec, outer: Maps, inner: Maps) -> dict[str, Transform]:
    """The maps of ``outer`` after those of ``inner`` (writers W -> T_outer T_inner W). A space inside
    a coordinate of a permuted space composes with the inner map of the coordinate that the outer
    permutation brings to its place: B_i A_s with s at coordinate P_outer(i)."""
    hosts = _hosts(spec)
    return {name: outer[name].compose(inner[_source(spec, hosts, name, outer, invert=False)]) for name in inner}


def pairwise_alignment(alignments: Sequence[Alignment], i: int, j: int) -> Alignment:
    """The alignment of model j into model i's coordinates, T_ij = T_i^-1 T_j, from the maps T_m of a
    universe (:func:`universe_matching`): ``pairwise_alignment(als, i, j).apply(models[j])`` is
    model j aligned to model i, and T_ij T_jk = T_ik for every i, j, k (cycle consistency)."""
    if not isinstance(alignments, Sequence) or not all(isinstance(a, Alignment) for a in alignments):
        raise TypeError("pairwise_alignment: alignments must be a sequence of Alignments (one per model)")
    count = len(alignments)
    i, j = _check_index(i, count, "pairwise_alignment: i"), _check_index(j, count, "pairwise_alignment: j")
    first, second = alignments[i], alignments[j]
    if first.transforms.keys() != second.transforms.keys() or first.spec != second.spec:
        raise ValueError(f"pairwise_alignment: alignments {i} and {j} map different spaces; "
                         "they are not maps into one universe")
    transforms = _composed(second.spec, _inverted(first.spec, first.transforms), second.transforms)
    return Alignment(transforms, second.spec, (), second.architecture)


def _squared_distance(a: nn.Module, b: nn.Module) -> float:
    """sum over floating tensors of ||a_p - b_p||^2."""
    state_b = b.state_dict()
    return sum(float((v.double() - state_b[k].double()).square().sum())
               for k, v in a.state_dict().items() if v.is_floating_point())


def _same(previous: list[Alignment] | None, current: list[Alignment]) -> bool:
    """True when every map of ``current`` equals the one of ``previous`` (then so would every later round)."""
    if previous is None:
        return False
    for old, new in zip(previous, current):
        for name, t in new.transforms.items():
            before = old.transforms[name]
            if isinstance(t, Permutation) and isinstance(before, Permutation):
                if not torch.equal(t.indices, before.indices):
                    return False
            elif not torch.equal(t.matrix, before.matrix):
                return False
    return True


def _in_frame(alignments: list[Alignment], frame: int, histories: list[list[float]]) -> list[Alignment]:
    """The maps T_frame^-1 T_m (the frame model's own map exactly the identity), with their histories."""
    result = []
    for m, alignment in enumerate(alignments):
        if m == frame:
            transforms = {n: identity(t.kind, t.size_in) for n, t in alignment.transforms.items()}
        else:
            transforms = pairwise_alignment(alignments, frame, m).transforms
        result.append(Alignment(transforms, alignment.spec, tuple(histories[m]), alignment.architecture))
    return result


def universe_matching(
    models: Sequence[nn.Module],
    *,
    classes: Classes = ("permutation",),
    rounds: int = 5,
    method: str = "weight",
    data: Iterable[tuple[Tensor, Tensor]] | None = None,
    frame: int = 0,
    progress: bool = False,
) -> list[Alignment]:
    """Align K >= 2 models of one architecture to a common universe (module docstring); one exact
    :class:`~lmc_lib.alignment.Alignment` per model, all in the frame of ``models[frame]``.

    U(0) = theta_frame; round t: T_m = ALIGN(U(t-1), theta_m) for every m, U(t) = (1/K) sum_m T_m(theta_m)
    (the tensors averaged, :func:`lmc_lib.evaluation.mix`). ALIGN is :func:`~lmc_lib.weight_matching`
    (``method="weight"``, data-free) or :func:`~lmc_lib.activation_matching` on ``data``
    (``method="activation"``), with ``classes`` (e.g. "paper" for canonical Transformers: an
    orthogonal residual, permutations of heads compared by their circuits and of MLP units). At
    most ``rounds`` rounds; it stops early once a round reproduces the previous round's maps.
    Returned maps: T_frame^-1 T_m, so ``als[m].apply(models[m])`` is model m in model ``frame``'s
    coordinates and ``als[frame]`` is the identity; :func:`pairwise_alignment` gives T_ij. Each
    alignment's ``history`` holds, per round, the squared distance sum_p ||U_p - T_m(theta_m)_p||^2
    between the model aligned in that round and the universe it was aligned to.
    """
    _checked_models(models, "universe_matching")
    if method not in METHODS:
        raise ValueError(f"universe_matching: method must be one of {METHODS}, got {method!r}")
    if method == "activation" and data is None:
        raise ValueError("universe_matching: method='activation' needs data (batches of inputs)")
    if method == "weight" and data is not None:
        raise ValueError("universe_matching: data is only read by method='activation'; weight matching is data-free")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"universe_matching: rounds must be a positive integer, got {rounds!r}")
    frame = _check_index(frame, len(models), "universe_matching: frame")
    data = reusable(data) if data is not None else None
    universe = models[frame]
    alignments: list[Alignment] | None = None
    histories: list[list[float]] = [[] for _ in models]
    for _ in tqdm(range(rounds), disable=not progress, desc="universe matching"):
        if method == "weight":
            current = [weight_matching(universe, model, classes=classes) for model in models]
        else:
            current = [activation_matching(universe, model, data, classes=classes) for model in models]
        aligned = [alignment.apply(model) for alignment, model in zip(current, models)]
        for history, model in zip(histories, aligned):
            history.append(_squared_distance(universe, model))
        converged = _same(alignments, current)
        alignments = current
        if converged:
            break
        universe = mix(aligned, np.full(len(models), 1 / len(models)))
    return _in_frame(alignments, frame, histories)


class _SimplexPath:
    """Mixtures sum_m l_m pi_m(theta_m) of K aligned models, and each pi_m(theta_m), as tensors for
    functional_call. With ``circuits`` mixtures run on a skeleton whose heads are K times wider
    (:func:`~lmc_lib.circuits.mix_circuits`: every head's circuits are the mixture of the K models'
    circuits), endpoints on the models' own; the spaces keep their names and sizes in both specs,
    so one map per space serves both."""

    def __init__(self, aligned: Sequence[nn.Module], circuits: bool) -> None:
        self.circuits = circuits
        self.skeleton = copy.deepcopy(aligned[0]).eval().requires_grad_(False)
        self.spec = spec_for(self.skeleton)
        self.states = [{k: v.detach() for k, v in model.state_dict().items()} for model in aligned]
        if circuits:
            wide = [family_of(model).widen_heads(model, len(aligned)) for model in aligned]
            self.wide_skeleton = wide[0].eval().requires_grad_(False)
            self.wide_spec = spec_for(self.wide_skeleton)
            self.wide_states = [{k: v.detach() for k, v in model.state_dict().items()} for model in wide]
        else:
            self.wide_skeleton, self.wide_spec, self.wide_states = self.skeleton, self.spec, self.states

    def mixture(self, maps: Sequence[dict[str, tuple[Tensor, Tensor]]], weights: Tensor) -> dict[str, Tensor]:
        moved = [transform_tensors(state, self.wide_spec, m) for state, m in zip(self.wide_states, maps)]
        if self.circuits:
            return mix_circuits(moved, weights, self.wide_spec)
        mixed = {}
        for name, tensor in moved[0].items():
            if tensor.is_floating_point():
                tensor = sum(w.to(tensor) * state[name] for w, state in zip(weights, moved))
            mixed[name] = tensor
        return mixed

    def endpoint(self, maps: dict[str, tuple[Tensor, Tensor]], m: int) -> dict[str, Tensor]:
        return transform_tensors(self.states[m], self.spec, maps)

    @staticmethod
    def loss(skeleton: nn.Module, tensors: dict[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        losses = loss_fn(logits_of(functional_call(skeleton, tensors, (x,))), y)
        return losses[y != -100].mean()


def _checked_init(init: Sequence[Alignment], models: Sequence[nn.Module]) -> None:
    if not isinstance(init, Sequence) or len(init) != len(models):
        raise ValueError(f"learned_universe: init must hold one Alignment per model ({len(models)})")
    for index, (alignment, model) in enumerate(zip(init, models)):
        if not isinstance(alignment, Alignment):
            raise TypeError(f"learned_universe: init[{index}] must be an Alignment, got {type(alignment).__name__}")
        check_model(model, alignment.spec, alignment.architecture)


def learned_universe(
    models: Sequence[nn.Module],
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    init: Sequence[Alignment] | None = None,
    classes: Classes = "paper",
    frame: int = 0,
    steps: int = 200,
    lr: float = 0.05,
    alpha: float = 0.1,
    eval_every: int = 25,
    project_every: int = 1,
    circuits: bool | None = None,
    loss_fn: LossFn = cross_entropy,
    seed: int = 0,
    progress: bool = False,
) -> list[Alignment]:
    """Refine the maps of K models on the multi-model barrier of their mixtures (the paper's section 4.3):

        min over pi_m, m != frame, of E_l [ L(sum_m l_m pi_m(theta_m)) - sum_m l_m L(pi_m(theta_m)) ],
        l ~ Dirichlet(alpha 1_K),

    by Adam (``lr``) for ``steps`` steps on batches of ``data`` (cycled), each map a latent projected
    onto its class on every forward pass (:mod:`lmc_lib.learned`: assignment with a straight-through
    estimator for permutations, exp of a skew latent for orthogonal maps; ``project_every`` > 1
    re-solves assignments less often). ``models[frame]`` stays fixed: it is the frame. ``init`` (one
    Alignment per model; default :func:`universe_matching` with ``classes``) is where the maps
    start; ``classes`` are the learned ones (permutations and orthogonal maps). ``circuits``
    (default: whenever the family can widen heads) mixes heads in circuit space. ``history`` (the
    same on every alignment) holds the mean objective of each ``eval_every`` steps. The returned maps
    are exact: ``als[m].apply(models[m])`` computes what ``models[m]`` computes.
    """
    spec = _checked_models(models, "learned_universe")
    for name, value in (("steps", steps), ("eval_every", eval_every), ("project_every", project_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"learned_universe: {name} must be a positive integer, got {value!r}")
    for name, value in (("lr", lr), ("alpha", alpha)):
        if not value > 0:
            raise ValueError(f"learned_universe: {name} must be > 0, got {value!r}")
    frame = _check_index(frame, len(models), "learned_universe: frame")
    kinds = resolve_classes(spec, classes, ("permutation", "orthogonal"), caller="learned_universe")
    circuits = family_of(models[0]).widen_heads is not None if circuits is None else circuits
    inside = [name for name in _hosts(spec) if name in kinds]
    if circuits and inside:
        raise ValueError(f"learned_universe: maps inside a head ({inside[0]!r}, ...) leave circuit-space mixtures "
                         "unchanged; leave them out (e.g. classes='paper') or mix factors with circuits=False")
    init = universe_matching(models, classes=classes, frame=frame) if init is None else init
    _checked_init(init, models)
    data = reusable(data)
    device = model_device(models[0], "learned_universe")
    path = _SimplexPath([alignment.apply(model) for alignment, model in zip(init, models)], circuits)
    latents = {m: _latents(path.spec, kinds, device) for m in range(len(models)) if m != frame}
    optimizer = torch.optim.Adam([latent.tensor for own in latents.values() for latent in own.values()], lr=lr)
    generator = np.random.default_rng(seed)
    batches = _cycled(data)
    history, window = [], []
    for step in tqdm(range(steps), disable=not progress, desc="learned universe"):
        drawn = generator.dirichlet(np.full(len(models), alpha))  # small alpha: most draws near a vertex
        weights = torch.as_tensor(drawn, dtype=torch.float32, device=device)
        x, y = (tensor.to(device) for tensor in next(batches))
        reassign = step % project_every == 0
        maps = [{n: latent.project(reassign) for n, latent in latents[m].items()} if m in latents else {}
                for m in range(len(models))]
        mixture = path.loss(path.wide_skeleton, path.mixture(maps, weights), x, y, loss_fn)
        endpoints = torch.stack([path.loss(path.skeleton, path.endpoint(own, m), x, y, loss_fn)
                                 for m, own in enumerate(maps)])
        objective = mixture - (weights * endpoints).sum()
        if not torch.isfinite(objective):
            raise FloatingPointError(f"learned_universe: the objective is {float(objective)} at step {step}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        window.append(float(objective.detach()))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            history.append(sum(window) / len(window))
            window = []
    result = []
    for m, (alignment, model) in enumerate(zip(init, models)):
        learned = {name: latent.element() for name, latent in latents.get(m, {}).items()}
        start = dict(alignment.transforms)
        for name, t in learned.items():
            start.setdefault(name, identity(t.kind, t.size_in))
        outer = {name: learned.get(name, identity(t.kind, t.size_out)) for name, t in start.items()}
        transforms = _composed(alignment.spec, outer, start)
        result.append(Alignment(transforms, alignment.spec, tuple(history), architecture(model)))
    return result
