"""Optimal transport between neuron clouds (Ferbach et al., AISTATS 2024).

If the n neurons of a layer are i.i.d. draws from one weight distribution, two networks hold two
samples of it, and the best permutation between them is an optimal-transport plan: for uniform
empirical measures of equal size, W_p^p = min over permutations pi of (1/n) sum_i ||x_i - y_pi(i)||^p
(Birkhoff-von Neumann), solved exactly by linear assignment.

- :func:`wasserstein_distance`: exact W_p between two equal-size samples;
- :func:`effective_dimension`: the participation ratio (tr S)^2 / tr(S^2) of a PSD matrix;
  :func:`layer_dimensions` applies it to each layer's weight cloud, raw or seen through the data,
  :func:`activation_dimensions` to each layer's activations;
- :func:`input_moments`: uncentred second moments E[z z^T] of every Linear's input on data;
- :func:`ot_matching`: the paper's sequential layer-wise OT matching of incoming weights, Euclidean
  or in the metric of A's input second moment (which matches pre-activations).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import distributed
from .data import check_max_batches, checked_batches, reusable
from .alignment import Alignment, architecture, matched_pair
from .evaluation import evaluating
from .family import spec_for
from .solvers import solve_assignment
from .spec import Space, SymmetrySpec
from .symmetry import Permutation, Transform
from .transform import transform_state

__all__ = [
    "wasserstein_distance",
    "transport_permutation",
    "effective_dimension",
    "cloud_dimension",
    "InputMoments",
    "input_moments",
    "incoming_weights",
    "layer_dimensions",
    "activation_dimensions",
    "ot_matching",
]


def _as_points(points: Tensor, name: str) -> Tensor:
    points = torch.as_tensor(points).detach().to(torch.float64).cpu()
    points = points.unsqueeze(-1) if points.ndim == 1 else points
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"{name}: expected n >= 1 points as an (n, d) or (n,) tensor, got shape {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name}: the points have NaN or infinite entries")
    return points


def _check_samples(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points and y has {y.shape[0]}: exact OT by assignment needs equal sizes")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x lives in dimension {x.shape[1]} and y in dimension {y.shape[1]}")
    return x, y


def wasserstein_distance(x: Tensor, y: Tensor, p: float = 2) -> float:
    """W_p between the uniform measures on the rows of x and y, both (n, d) (or (n,) for d = 1).

    W_p = (min_pi (1/n) sum_i ||x_i - y_pi(i)||^p)^(1/p), the minimum over permutations (exact, O(n^3)).
    """
    if not p >= 1:
        raise ValueError(f"wasserstein_distance: p must be >= 1, got {p}")
    x, y = _check_samples(x, y)
    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** p
    plan = solve_assignment(-cost)
    matched = cost[torch.arange(x.shape[0]), plan.indices]
    return float(matched.mean() ** (1 / p))


def transport_permutation(x: Tensor, y: Tensor, *, metric: Tensor | None = None) -> Permutation:
    """The permutation pi minimising sum_i ||x_i - y_pi(i)||_M^2 with ||v||_M^2 = v^T M v (M = I by default).

    x, y: (n, d); metric: (d, d) PSD. Equivalent to maximising sum_i x_i^T M y_pi(i), since the
    squared norms do not depend on pi. ``y[pi.indices]`` is y aligned to x.
    """
    x, y = _check_samples(x, y)
    if metric is None:
        return solve_assignment(x @ y.T)
    metric = torch.as_tensor(metric).detach().to(torch.float64).cpu()
    if metric.shape != (x.shape[1], x.shape[1]):
        d = x.shape[1]
        raise ValueError(f"metric has shape {tuple(metric.shape)}; points of dimension {d} need ({d}, {d})")
    return solve_assignment(x @ metric @ y.T)


def effective_dimension(matrix: Tensor) -> float:
    """Participation ratio (tr S)^2 / tr(S^2) = (sum lambda)^2 / sum lambda^2 of a PSD matrix S.

    Lies in [1, rank S]: d for the identity in R^d, k for a rank-k orthogonal projector.
    """
    matrix = torch.as_tensor(matrix).detach().to(torch.float64).cpu()
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"effective_dimension: expected a square matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError("effective_dimension: matrix has NaN or infinite entries")
    scale = matrix.abs().max()
    if scale == 0:
        raise ValueError("effective_dimension: the matrix is zero")
    if (matrix - matrix.T).abs().max() > 1e-8 * scale:
        raise ValueError("effective_dimension: the matrix is not symmetric")
    eigenvalues = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    if eigenvalues.min() < -1e-8 * eigenvalues.abs().max():
        lowest = float(eigenvalues.min())
        raise ValueError(f"effective_dimension: the matrix is not positive semi-definite (eigenvalue {lowest:.3g})")
    eigenvalues = eigenvalues.clamp_min(0)
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def cloud_dimension(weight: Tensor, second_moment: Tensor | None = None) -> float:
    """Effective dimension of the cloud of neuron weight vectors (the rows of ``weight``, (n, d)).

    Raw: S = W^T W (d x d). Seen through the input second moment Sigma (d x d): S = W Sigma W^T,
    whose non-zero spectrum is that of Sigma^(1/2) W^T W Sigma^(1/2), the cloud of pre-activation maps.
    """
    weight = _as_points(weight, "weight")
    if second_moment is None:
        return effective_dimension(weight.T @ weight)
    second_moment = torch.as_tensor(second_moment).detach().to(torch.float64).cpu()
    if second_moment.shape != (weight.shape[1], weight.shape[1]):
        d = weight.shape[1]
        raise ValueError(f"second moment has shape {tuple(second_moment.shape)}; weights of fan-in {d} need ({d}, {d})")
    gram = weight @ second_moment @ weight.T
    return effective_dimension((gram + gram.T) / 2)


@dataclass(frozen=True, eq=False)
class InputMoments:
    """Uncentred moments of a layer's input z over ``count`` examples: mean E[z] (d,), second E[z z^T] (d, d)."""

    mean: Tensor
    second: Tensor
    count: int

    @property
    def augmented(self) -> Tensor:
        """E[(z, 1)(z, 1)^T], (d + 1, d + 1): the metric for incoming weights with the bias appended."""
        top = torch.cat([self.second, self.mean[:, None]], dim=1)
        bottom = torch.cat([self.mean, torch.ones(1, dtype=self.mean.dtype)])[None]
        return torch.cat([top, bottom], dim=0)


def input_moments(
    model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *, max_batches: int | None = None, group=None
) -> dict[str, InputMoments]:
    """Moments of the input of every ``nn.Linear`` of ``model`` on ``data`` (one streaming pass, float64).

    Keys are module names; for an MLP, ``moments["fc2"]`` describes the activations of hidden layer 1.
    With ``group`` (a ``torch.distributed`` process group) each rank passes its own shard of ``data``
    and the sums are added up over the ranks in float64: every rank gets the moments of the whole data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"input_moments: model must be an nn.Module, got {type(model).__name__}")
    check_max_batches(max_batches, "input_moments")
    group = distributed.check_group(group, "input_moments")
    if group is not None:  # a rank without a batch would leave the others waiting in the all-reduce
        data = reusable(data)
        distributed.check_every_rank_has_data(next(iter(data), None) is not None, group, "input_moments")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(f"input_moments: {type(model).__name__} has no nn.Linear")
    sums = {name: [0, 0.0, 0.0] for name in linears}  # count, sum z, sum z z^T

    def hook(name: str):
        def collect(_module, inputs):
            z = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double().cpu()
            total = sums[name]
            total[0] += z.shape[0]
            total[1] = total[1] + z.sum(0)
            total[2] = total[2] + z.T @ z

        return collect

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    device = next(model.parameters()).device
    try:
        with evaluating(model), torch.no_grad():
            for index, (x, _) in enumerate(checked_batches(data, targets=False)):
                if max_batches is not None and index >= max_batches:
                    break
                model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    if group is not None:  # every rank's sums added up in float64, one all-reduce
        flat = []
        for name, (count, first, second) in sums.items():
            width = linears[name].in_features
            flat += [torch.tensor(float(count)), first + torch.zeros(width, dtype=torch.float64),
                     second + torch.zeros(width, width, dtype=torch.float64)]
        summed = iter(distributed.all_reduce_sum(flat, group))
        for total in sums.values():
            count, total[1], total[2] = next(summed), next(summed), next(summed)
            total[0] = int(count)
    if sums[next(iter(linears))][0] == 0:
        raise ValueError("input_moments: the data yielded no batches")
    return {name: InputMoments(s[1] / s[0], s[2] / s[0], s[0]) for name, s in sums.items()}


def _writer(space: Space) -> tuple[str, bool]:
    """(module name, has bias) of the Linear whose whole weight rows (and bias) write ``space``."""
    weight = next((a for a in space.writes if a.param.endswith(".weight")), None)
    module = weight.param.rpartition(".")[0] if weight is not None else None
    expected = {(f"{module}.weight", 0), (f"{module}.bias", 0)}
    found = {(a.param, a.dim) for a in space.writes}
    if (
        weight is None
        or not found <= expected
        or any(a.start or a.length is not None or a.block != 1 for a in space.writes)
    ):
        raise ValueError(
            "layer-wise OT needs spaces written by the whole rows of one Linear; "
            f"space {space.name!r} is written by {sorted(found)}"
        )
    return module, (f"{module}.bias", 0) in found


def incoming_weights(state: Mapping[str, Tensor], space: Space) -> Tensor:
    """The neurons of ``space`` as points: rows [w_i, b_i] of its Linear's weight and bias, (n, fan_in (+1))."""
    module, has_bias = _writer(space)
    weight = state[f"{module}.weight"].double()
    return torch.cat([weight, state[f"{module}.bias"].double()[:, None]], dim=1) if has_bias else weight


def _metric(space: Space, moments: Mapping[str, InputMoments] | None) -> Tensor | None:
    """The input second moment that matches pre-activations w . z + b (augmented when there is a bias)."""
    if moments is None:
        return None
    module, has_bias = _writer(space)
    if module not in moments:
        raise KeyError(f"no input moments for {module!r}; pass input_moments(a, data)")
    return moments[module].augmented if has_bias else moments[module].second


def layer_dimensions(model: nn.Module, moments: Mapping[str, InputMoments] | None = None) -> dict[str, float]:
    """Per hidden space: the effective dimension of its neurons' [w_i, b_i] cloud, raw or through ``moments``."""
    spec = spec_for(model)
    state = model.state_dict()
    return {
        name: cloud_dimension(incoming_weights(state, space), _metric(space, moments))
        for name, space in spec.spaces.items()
    }


def activation_dimensions(model: nn.Module, moments: Mapping[str, InputMoments]) -> dict[str, float]:
    """Per hidden space: the effective dimension of its activations' second moment E[h h^T].

    The activations of a space are the input of the Linear that reads it, so ``moments`` is
    ``input_moments(model, data)``; this is the measure that activation matching has to match.
    """
    spec = spec_for(model)
    dimensions = {}
    for name, space in spec.spaces.items():
        reader = space.reads[0].param.rpartition(".")[0] if len(space.reads) == 1 else None
        if reader not in moments:
            reads = [axis.param for axis in space.reads]
            raise ValueError(f"space {name!r}: need one reading Linear with input moments, found reads {reads}")
        dimensions[name] = effective_dimension(moments[reader].second)
    return dimensions


def _matching_cost(u: Tensor, v: Tensor, metric: Tensor | None) -> float:
    """(1/n) sum_i ||u_i - v_i||_M^2 for already aligned rows."""
    diff = u - v
    weighted = diff if metric is None else diff @ metric
    return float((weighted * diff).sum() / u.shape[0])


def ot_matching(a: nn.Module, b: nn.Module, *, moments: Mapping[str, InputMoments] | None = None) -> Alignment:
    """Sequential layer-wise OT: align B's neurons to A's, one layer at a time from the input.

    For each space (in spec order, the forward order for MLPs), B's incoming weights are first
    expressed in the already aligned input coordinates; then pi minimises
    sum_i ||[w, b]^A_i - [w, b]^B_pi(i)||_M^2 with M = I (Euclidean, "naive" weight matching) or
    M = E[(z, 1)(z, 1)^T] from ``moments`` (A's input second moment: this matches pre-activations
    on the data). Only incoming weights are used. ``history`` holds each layer's matched cost.
    """
    spec: SymmetrySpec = matched_pair(a, b, caller="ot_matching")
    state_a, state_b = a.state_dict(), b.state_dict()
    transforms: dict[str, Transform] = {}
    costs: list[float] = []
    for name, space in spec.spaces.items():
        if "permutation" not in space.classes:
            raise ValueError(f"space {name!r} admits no permutations")
        aligned = transform_state(state_b, spec, transforms)
        u, v = incoming_weights(state_a, space), incoming_weights(aligned, space)
        metric = _metric(space, moments)
        transforms[name] = transport_permutation(u, v, metric=metric)
        costs.append(_matching_cost(u, v[transforms[name].indices], metric))
    return Alignment(transforms, spec, tuple(costs), architecture(b))
