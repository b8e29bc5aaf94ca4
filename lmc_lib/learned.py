"""Learned matching (the paper's section 2.3): B's transforms learned on the task loss along the linear path.

Every matched space holds a latent matrix, projected onto its symmetry class on every forward pass:

- a permutation: the assignment P maximising <P, L> of a latent L started at the identity, with a
  straight-through estimator (the forward pass uses P, the backward pass treats P as L);
- an orthogonal map: O = exp(S - S^T) of a latent S started at zero. The exponential of a skew
  matrix is exactly orthogonal, and its gradient is smooth everywhere. The alternative, the polar
  factor U V^T of an SVD, has a backward with 1 / (s_i^2 - s_j^2) terms that blow up when the
  latent is the identity plus noise, where learning starts.

Each step draws lambda from ``sampler`` (the paper: U(0.4, 0.6)), forms theta = (1 - lambda)
theta_A + lambda pi(theta_B) through the differentiable transform core and takes an Adam step on the
task loss of that model on a training batch. Transformers interpolate their heads in circuit space
(:func:`~lmc_lib.circuits.mix_circuits`), as the paper does. B starts aligned by ``init`` (weight
matching by default); the result is an ordinary :class:`~lmc_lib.alignment.Alignment` of exact
symmetry elements, the learned ones composed with the initial ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from . import distributed
from .alignment import Alignment, Classes, architecture, check_model, matched_pair, resolve_classes
from .circuits import mix_circuits
from .data import checked_batches, reusable
from .evaluation import cross_entropy, logits_of, model_device
from .family import family_of, spec_for
from .matching import weight_matching
from .solvers import solve_assignment
from .spec import SymmetrySpec
from .symmetry import Orthogonal, Transform
from .transform import StraightThrough, transform_tensors

__all__ = [
    "learned_matching", "learned_matching_two_sided", "Schedule", "Sampler", "uniform", "clipped_normal", "fixed",
    "learn", "train_step",
]

#: draws one interpolation weight lambda in [0, 1] from a generator
Sampler = Callable[[torch.Generator], float]
LossFn = Callable[[Tensor, Tensor], Tensor]


def uniform(low: float = 0.4, high: float = 0.6) -> Sampler:
    """lambda ~ U(low, high) (the paper: U(0.4, 0.6); U(0, 1) covers the whole path)."""
    if not 0 <= low <= high <= 1:
        raise ValueError(f"uniform: need 0 <= low <= high <= 1, got {low}, {high}")
    return lambda generator: low + (high - low) * float(torch.rand((), generator=generator))


def clipped_normal(mean: float = 0.5, sd: float = 0.1) -> Sampler:
    """lambda ~ N(mean, sd^2) clipped to [0, 1]."""
    if not (0 <= mean <= 1 and sd >= 0):
        raise ValueError(f"clipped_normal: need mean in [0, 1] and sd >= 0, got {mean}, {sd}")
    return lambda generator: min(1.0, max(0.0, mean + sd * float(torch.randn((), generator=generator))))


def fixed(value: float = 0.5) -> Sampler:
    """lambda = value at every step."""
    if not 0 <= value <= 1:
        raise ValueError(f"fixed: lambda must lie in [0, 1], got {value}")
    return lambda generator: value


@dataclass
class _Latent:
    """One space's latent and how it projects onto its class; ``indices`` caches the last assignment.

    ``kind`` "soft" projects a permutation space onto doubly stochastic matrices (Sinkhorn of
    exp(L / temperature)): not a symmetry, see :mod:`lmc_lib.soft`."""

    kind: str
    tensor: Tensor
    indices: Tensor | None = None
    temperature: float = 0.1
    iterations: int = 20

    def project(self, reassign: bool) -> tuple[Tensor | StraightThrough, Tensor | StraightThrough]:
        """(T, S) for transform_tensors: writers W -> T W, readers V -> V S^T (S = T for these classes)."""
        if self.kind == "orthogonal":
            rotation = torch.matrix_exp(self.tensor - self.tensor.T)
            return rotation, rotation
        if self.kind == "soft":
            log = self.tensor / self.temperature
            for _ in range(self.iterations):  # Sinkhorn: alternate row and column normalisation in log space
                log = log - log.logsumexp(1, keepdim=True)
                log = log - log.logsumexp(0, keepdim=True)
            soft = log.exp()
            return soft, soft
        if reassign or self.indices is None:
            self.indices = solve_assignment(self.tensor.detach()).indices.to(self.tensor.device)
        straight = StraightThrough(self.tensor, self.indices)  # forward: P by indexing; backward: as if P were L
        return straight, straight

    def element(self) -> Transform:
        """The exact symmetry element the latent stands for now."""
        if self.kind == "orthogonal":
            skew = self.tensor.detach().double().cpu()
            return Orthogonal(torch.matrix_exp(skew - skew.T))
        if self.kind == "soft":
            raise TypeError("a soft permutation is not a symmetry element")
        return solve_assignment(self.tensor.detach())


def _latents(spec: SymmetrySpec, kinds: dict[str, str], device: torch.device) -> dict[str, _Latent]:
    latents = {}
    for name, kind in kinds.items():
        size = spec.spaces[name].size
        start = torch.zeros(size, size, device=device) if kind == "orthogonal" else torch.eye(size, device=device)
        latents[name] = _Latent(kind, start.requires_grad_(True))
    return latents


class _Path:
    """The model (1 - lambda) pi_A(theta_A) + lambda pi_B(theta_B) as tensors, for functional_call on ``skeleton``.

    Transformers whose family widens heads use circuit space: the skeleton is A with heads twice as
    wide, and both endpoints are widened likewise (the spaces keep their names in the wide spec)."""

    def __init__(self, a: nn.Module, b: nn.Module, circuits: bool) -> None:
        family = family_of(a)
        self.circuits = circuits
        if circuits:
            self.skeleton = family.widen_heads(a, 2)
            wide_b = family.widen_heads(b, 2)
        else:
            self.skeleton, wide_b = copy.deepcopy(a), b
        self.skeleton.eval().requires_grad_(False)
        self.spec = spec_for(self.skeleton)
        self.state_a = {k: v.detach() for k, v in self.skeleton.state_dict().items()}
        self.state_b = {k: v.detach() for k, v in wide_b.state_dict().items()}

    def tensors(self, maps_b: dict[str, tuple[Tensor, Tensor]], lam: float,
                maps_a: dict[str, tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        moved_b = transform_tensors(self.state_b, self.spec, maps_b)
        moved_a = transform_tensors(self.state_a, self.spec, maps_a) if maps_a else self.state_a
        weights = torch.tensor([1 - lam, lam])
        if self.circuits:
            return mix_circuits([moved_a, moved_b], weights, self.spec)
        return {k: torch.lerp(v, moved_b[k], lam) if v.is_floating_point() else v for k, v in moved_a.items()}

    def loss(self, tensors: dict[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        logits = logits_of(functional_call(self.skeleton, tensors, (x,)))
        losses = loss_fn(logits, y)
        return losses[y != -100].mean()


#: latents of B's spaces, and optionally of A's (two-sided learning)
Sides = dict[str, dict[str, _Latent]]


def _maps(sides: Sides, reassign: bool) -> tuple[dict, dict | None]:
    maps = {side: {name: latent.project(reassign) for name, latent in latents.items()}
            for side, latents in sides.items()}
    return maps["b"], maps.get("a")


def train_step(path: _Path, sides: Sides, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               lam: float, *, reassign: bool, loss_fn: LossFn, group: object | None = None) -> float:
    """One Adam step of the latents on the loss of the path's model at ``lam`` on one batch; the loss
    (with ``group``: on the union of every rank's batch, gradients all-reduced)."""
    maps_b, maps_a = _maps(sides, reassign)
    loss = path.loss(path.tensors(maps_b, lam, maps_a), x, y, loss_fn)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"learned_matching: the loss is {float(loss.detach())}; lower lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tensors = [latent.tensor for side in sides.values() for latent in side.values()]
    loss = distributed.average_gradients(tensors, loss, (y != -100).sum(), group)
    optimizer.step()
    return float(loss.detach())


def _cycled(data: Iterable[tuple[Tensor, Tensor]]):
    """The checked batches of ``data``, read again from the start whenever it ends."""
    while True:
        yield from checked_batches(data)


def _validation_loss(path: _Path, sides: Sides, data, loss_fn: LossFn, device, group: object | None = None) -> float:
    """The mean loss of the projected midpoint (lambda = 1/2) on ``data`` (on every rank's shard of it)."""
    with torch.no_grad():
        maps_b, maps_a = _maps(sides, True)
        tensors = path.tensors(maps_b, 0.5, maps_a)
        total, count = 0.0, 0
        for x, y in checked_batches(data):
            x, y = x.to(device), y.to(device)
            losses = loss_fn(logits_of(functional_call(path.skeleton, tensors, (x,))), y)[y != -100]
            total, count = total + float(losses.double().sum()), count + losses.numel()
    if group is not None:
        total, count = distributed.all_reduce_sum([torch.tensor([total, float(count)])], group)[0].tolist()
    return total / count


@dataclass(frozen=True)
class Schedule:
    """How the latents are learned (see :func:`learned_matching` for each option)."""

    steps: int = 200
    lr: float = 0.05
    sampler: Sampler | None = None
    validation: Iterable[tuple[Tensor, Tensor]] | None = None
    eval_every: int = 25
    patience: int | None = None
    project_every: int = 1
    loss_fn: LossFn = cross_entropy
    seed: int = 0
    progress: bool = False
    #: a torch.distributed process group: each rank passes its own shard of the data
    group: object | None = None

    def __post_init__(self) -> None:
        distributed.check_group(self.group, "learned_matching")
        for name in ("steps", "eval_every", "project_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"learned_matching: {name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"learned_matching: lr must be > 0, got {self.lr!r}")


def learn(path: _Path, sides: Sides, data: Iterable[tuple[Tensor, Tensor]], schedule: Schedule,
          device: torch.device) -> tuple[float, ...]:
    """Adam on every latent of ``sides`` for ``schedule.steps`` steps (keeping the best on validation data);
    the mean training loss of each ``eval_every`` steps."""
    latents = [latent for side in sides.values() for latent in side.values()]
    optimizer = torch.optim.Adam([latent.tensor for latent in latents], lr=schedule.lr)
    sampler = uniform() if schedule.sampler is None else schedule.sampler
    generator = torch.Generator().manual_seed(schedule.seed)
    data = reusable(data)
    if schedule.group is not None:  # a rank without a batch would leave the others waiting in the all-reduce
        distributed.check_every_rank_has_data(next(iter(data), None) is not None, schedule.group, "learned_matching")
    batches = _cycled(data)
    history, window = [], []
    best: tuple[float, list[Tensor] | None] = (float("inf"), None)
    waited = 0
    main = distributed.is_main(schedule.group)
    for step in tqdm(range(schedule.steps), disable=not schedule.progress or not main, desc="learned matching"):
        lam = sampler(generator)
        if not 0 <= lam <= 1:
            raise ValueError(f"learned_matching: the sampler drew lambda = {lam!r}, outside [0, 1]")
        x, y = next(batches)
        window.append(train_step(path, sides, optimizer, x.to(device), y.to(device), lam,
                                 reassign=step % schedule.project_every == 0, loss_fn=schedule.loss_fn,
                                 group=schedule.group))
        if (step + 1) % schedule.eval_every == 0 or step + 1 == schedule.steps:
            history.append(sum(window) / len(window))
            window = []
            if schedule.validation is not None:
                score = _validation_loss(path, sides, schedule.validation, schedule.loss_fn, device, schedule.group)
                if score < best[0]:
                    best, waited = (score, [latent.tensor.detach().clone() for latent in latents]), 0
                else:
                    waited += 1
                if schedule.patience is not None and waited >= schedule.patience:
                    break
    if best[1] is not None:
        for latent, tensor in zip(latents, best[1]):
            latent.tensor, latent.indices = tensor, None
    return tuple(history)


def prepared(a: nn.Module, b: nn.Module, init: Alignment | None, classes: Classes, circuits: bool | None,
             supported: tuple[str, ...], caller: str) -> tuple[SymmetrySpec, dict[str, str], Alignment, _Path]:
    """The checks and set-up every learned matcher shares: spec, classes, the initial alignment, the path."""
    spec = matched_pair(a, b, caller=caller)
    kinds = resolve_classes(spec, classes, supported, caller=caller)
    if init is None:
        init = weight_matching(a, b, classes=classes)
    if not isinstance(init, Alignment):
        raise TypeError(f"{caller}: init must be an Alignment, got {type(init).__name__}")
    check_model(b, init.spec, init.architecture)
    family = family_of(a)
    circuits = family.widen_heads is not None if circuits is None else circuits
    return spec, kinds, init, _Path(a, init.apply(b), circuits)


def _composed(latents: dict[str, _Latent], start: dict[str, Transform]) -> dict[str, Transform]:
    transforms = dict(start)
    for name, latent in latents.items():
        learned = latent.element()
        transforms[name] = learned.compose(transforms[name]) if name in transforms else learned
    return transforms


def learned_matching(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    init: Alignment | None = None,
    classes: Classes = "paper",
    circuits: bool | None = None,
    **schedule,
) -> Alignment:
    """Align B to A by learning its transforms on the loss along the path: min E_lambda L((1 - lambda) theta_A
    + lambda pi(theta_B)) over pi in the classes' groups, by Adam on projected latents (module docstring).

    ``data`` yields training batches, cycled for ``steps`` steps (default 200, Adam learning rate
    ``lr`` 0.05); ``sampler`` draws lambda (default :func:`uniform` (0.4, 0.6)). ``init`` is the
    alignment B starts from (default: weight matching with the same classes); the latents start at
    the identity on B aligned by it. ``classes``: the learned ones, e.g. "paper" (an orthogonal
    residual and permutations; canonical models) or "permutations" (the paper's ablation row). With
    ``validation`` data the midpoint's loss is measured every ``eval_every`` steps (default 25) and
    the best latents are kept (stopping after ``patience`` measurements without improvement).
    ``project_every`` > 1 re-solves the assignments only every that many steps. ``circuits``
    (default: whenever the family can widen heads) interpolates heads in circuit space. ``loss_fn``,
    ``seed``, ``progress`` as elsewhere. ``history`` holds the mean training loss of each
    ``eval_every`` steps. The returned transforms are exact: ``apply(b)`` computes what ``b`` computes.
    ``group`` (a ``torch.distributed`` process group): each rank passes its own shard of ``data`` (and
    of ``validation``); every step's gradient is that of the mean loss over all ranks' batches
    (all-reduced in float64), so every rank learns what one process on the union of the batches would.
    """
    options = Schedule(**schedule)
    spec, kinds, init, path = prepared(a, b, init, classes, circuits, ("permutation", "orthogonal"),
                                       "learned_matching")
    latents = _latents(path.spec, kinds, model_device(a, "learned_matching"))
    history = learn(path, {"b": latents}, data, options, model_device(a, "learned_matching"))
    return Alignment(_composed(latents, init.transforms), spec, history, architecture(b))


def learned_matching_two_sided(
    a: nn.Module,
    b: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    init: Alignment | None = None,
    classes: Classes = "paper",
    circuits: bool | None = None,
    **schedule,
) -> tuple[Alignment, Alignment]:
    """Learn a transform of each endpoint: min E_lambda L((1 - lambda) pi_A(theta_A) + lambda pi_B(theta_B)).

    Both models move into a common frame (the identity of A is no longer fixed), which recent work
    uses at larger scale. Returns (alignment of A, alignment of B), each exact: apply A's to ``a``
    and B's to ``b``, then interpolate. Options as :func:`learned_matching`.
    """
    options = Schedule(**schedule)
    spec, kinds, init, path = prepared(a, b, init, classes, circuits, ("permutation", "orthogonal"),
                                       "learned_matching_two_sided")
    device = model_device(a, "learned_matching_two_sided")
    sides = {"a": _latents(path.spec, kinds, device), "b": _latents(path.spec, kinds, device)}
    history = learn(path, sides, data, options, device)
    return (Alignment(_composed(sides["a"], {}), spec, history, architecture(a)),
            Alignment(_composed(sides["b"], init.transforms), spec, history, architecture(b)))
