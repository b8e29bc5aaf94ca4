"""Mean loss and accuracy of mixtures of K endpoint models, many mixtures per pass over the data.

A weight matrix W (P points x K models) with convex rows (non-negative, summing to 1) names P
points of the simplex spanned by the endpoints: point p is the model whose floating tensors are
theta_p = sum_k W[p, k] theta_k (other tensors are the first model's). The barrier along a line is
the case K = 2, W[p] = (1 - l_p, l_p).

Evaluating P points one model at a time costs P passes over the data. With ``strategy="vmap"`` all
points of a chunk share one pass: the parameters are stacked along a new leading axis and the model
is run with ``torch.func.functional_call`` under ``vmap``. When the family exposes an affine *stem*
(the first Linear of an MLP), its output is linear in the weights, so it is computed once per
endpoint and blended: stem_p(x) = sum_k W[p, k] stem_k(x).

Stacking saves per-call overhead and the stem's arithmetic, nothing else: a model whose forward is
bound by large matrix products (a Transformer on the CPU) runs faster one point at a time.
``strategy="auto"`` picks by :func:`barrier_strategy`, as measured in ``benchmarks/barrier_strategies.py``.
Only a model that a family fully describes (its spec accounts for every module and tensor) and that
carries no hooks or parametrizations is stacked: vmap runs its forward on batched tensors, which an
arbitrary forward, a hook or a parametrization may not handle as one model at a time would.
"""

from __future__ import annotations

import copy
import itertools
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import inf

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .alignment import check_finite, check_pair
from .data import checked_batches, reusable
from .family import family_of, load_state, spec_for

__all__ = [
    "MixtureEvaluation", "evaluate_mixtures", "mix", "mixture_weights", "barrier_strategy", "cross_entropy",
    "logits_of", "evaluating", "model_device", "point_totals", "STRATEGIES",
]

STRATEGIES = ("auto", "vmap", "loop")
#: how far a row of mixture weights may sum from 1 (float32 weights such as 1/3 are accepted)
WEIGHT_TOLERANCE = 1e-6

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-target cross-entropy: logits (..., C), targets (...) -> losses (...); -100 marks ignored targets."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)


def logits_of(output: object) -> Tensor:
    """The logits in a model's output: the output itself, its ``.logits``, or the first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"the model returned a {type(output).__name__}; expected a Tensor of logits, an object with "
                    ".logits, or a tuple whose first element is the logits")


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


def _strategy(requested: str, models: Sequence[nn.Module], labels: Sequence[str], device: torch.device) -> str:
    """The strategy to run: ``requested``, or for "auto" the rule of :func:`barrier_strategy`; ValueError
    for "vmap" on models the stacked path may not run, saying why."""
    if requested not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {requested!r}")
    refusal = _stacking_refusal(models, labels)
    if requested == "vmap" and refusal is not None:
        raise ValueError(f"strategy='vmap' cannot evaluate these models: {refusal}; use strategy='loop' or 'auto'")
    if requested != "auto":
        return requested
    if refusal is not None:
        return "loop"
    return "vmap" if device.type != "cpu" or family_of(models[0]).split_stem is not None else "loop"


def barrier_strategy(model: nn.Module, device: torch.device | str) -> str:
    """The strategy "auto" takes: "loop" for a model that the stacked path may not run (see the module
    docstring); else "vmap" on a GPU, and on the CPU for a family with an affine stem (whose arithmetic
    stacking saves); "loop" otherwise: there stacked matrix products and elementwise passes over P times
    larger activations cost more than the per-call overhead they save."""
    return _strategy("auto", [model], ["0"], torch.device(device))


def _leaf_output_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of every leaf module's output on one batch: an upper bound on one model's activations."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for out in output if isinstance(output, tuple) else (output,):
            if isinstance(out, Tensor):
                total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _blend(tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    """(P, *shape): t_0 + sum_{k >= 1} W[p, k] (t_k - t_0), which is sum_k W[p, k] t_k for convex rows;
    written around t_0 so that K = 2 is the lerp t_0 + l (t_1 - t_0)."""
    base = tensors[0]
    mixed = base.unsqueeze(0).expand(weights.shape[0], *base.shape)
    for k, tensor in enumerate(tensors[1:], start=1):
        weight = weights[:, k].to(base.dtype).view(-1, *([1] * base.ndim))
        mixed = mixed + weight * (tensor - base).unsqueeze(0)
    return mixed


class _StackedEvaluator:
    """Runs a chunk of points on one batch: parameters stacked along a leading point axis."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        self.model = copy.deepcopy(models[0]).eval().requires_grad_(False).to(device)
        split = family_of(self.model).split_stem
        self.stem, self.rest = split(self.model) if split else (None, self.model)
        states = [{k: v.to(device) for k, v in model.state_dict().items()} for model in models]
        rest_names = self.rest.state_dict().keys()
        self.floating = [k for k in rest_names if states[0][k].is_floating_point()]
        self.fixed = {k: states[0][k] for k in rest_names if not states[0][k].is_floating_point()}
        stem_names = self.stem.state_dict().keys() if self.stem is not None else ()
        self.stem_states = [{k: state[k] for k in stem_names} for state in states]
        self.states = states

    def bytes_per_point(self, x: Tensor) -> int:
        """Memory one more point costs on batch ``x``: its stacked floating tensors and its activations."""
        params = sum(self.states[0][k].numel() * self.states[0][k].element_size() for k in self.floating)
        return params + _leaf_output_bytes(self.model, x)

    def runner(self, weights: Tensor) -> Callable[[Tensor], Tensor]:
        """inputs -> logits (P, *batch, C) of the P points whose weights are the rows of ``weights``."""
        stacked = {k: _blend([state[k] for state in self.states], weights) for k in self.floating}

        def run(params, inputs):
            # tie_weights=False: tied names (a GPT-2's wte and lm_head) each get their own mixed tensor,
            # as interpolating the state dict gives them
            return logits_of(functional_call(self.rest, {**params, **self.fixed}, (inputs,), tie_weights=False))

        def logits(x: Tensor) -> Tensor:
            with warnings.catch_warnings():
                # CPU flash attention has no vmap batching rule; the fallback is correct, only slower
                warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
                if self.stem is None:
                    return vmap(run, in_dims=(0, None))(stacked, x)
                stems = [functional_call(self.stem, state, (x,), tie_weights=False) for state in self.stem_states]
                return vmap(run, in_dims=(0, 0))(stacked, _blend(stems, weights))

        return logits


def point_totals(logits: Tensor, targets: Tensor, loss_fn: LossFn, *, batch: int) -> Tensor:
    """(P, 3) float64: each point's loss sum, correct predictions and counted targets on one batch.

    ``logits`` are (P, *targets.shape, C); targets of -100 are ignored. ValueError when the targets
    do not have the logits' shape without the class axis, integer targets are not class indices in
    [0, C), or ``loss_fn`` does not return one loss per target.
    """
    if targets.shape != logits.shape[1:-1]:
        raise ValueError(f"data: batch {batch}: targets have shape {tuple(targets.shape)}, but the model's logits "
                         f"{tuple(logits.shape[1:])} need targets of shape {tuple(logits.shape[1:-1])}")
    valid = targets != -100
    classes = logits.shape[-1]
    if not targets.is_floating_point():
        outside = valid & ((targets < 0) | (targets >= classes))
        if outside.any():
            raise ValueError(f"data: batch {batch}: target {int(targets[outside][0])} is not a class index in "
                             f"[0, {classes}) (the model has {classes} outputs) nor -100 (ignored)")
    count = valid.double().sum()
    rows = []
    for point in logits:
        losses = loss_fn(point, targets)
        if losses.shape != targets.shape:
            raise ValueError(f"loss_fn must return one loss per target, shape {tuple(targets.shape)}; "
                             f"got {tuple(losses.shape)}")
        correct = (point.argmax(-1) == targets)[valid]
        rows.append(torch.stack([losses[valid].double().sum(), correct.double().sum(), count]))
    return torch.stack(rows)


def _one_model(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """inputs -> logits (1, *batch, C) of ``model``: the runner of one point."""
    return lambda x: logits_of(model(x)).unsqueeze(0)


def _pass(run: Callable[[Tensor], Tensor], data: Iterable, device: torch.device, loss_fn: LossFn,
          bar: tqdm) -> np.ndarray:
    """One pass over ``data``: the (P, 3) totals of the points that ``run`` evaluates."""
    totals = 0.0
    for index, (x, y) in enumerate(checked_batches(data)):
        totals = totals + point_totals(run(x.to(device)), y.to(device), loss_fn, batch=index).cpu().numpy()
        bar.update()
    return totals


@dataclass(frozen=True, eq=False)
class MixtureEvaluation:
    """Mean loss and accuracy at each point: weights (P, K), losses (P,), accuracies (P,)."""

    weights: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray


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
) -> MixtureEvaluation:
    """Mean loss and accuracy of theta_p = sum_k W[p, k] theta_k at every row p of ``weights`` (P x K).

    ``data`` yields (inputs, targets) batches; ``loss_fn(logits, targets)`` returns one loss per target
    (default: cross-entropy over all examples or tokens; targets of -100 are ignored). With
    ``strategy="vmap"`` the points are evaluated in chunks whose stacked parameters and activations
    fit ``memory_budget`` bytes, one pass over ``data`` per chunk; ``strategy="loop"`` builds one mixed
    model per point (:func:`mix`); ``"auto"`` takes :func:`barrier_strategy`. All give the same numbers
    up to float rounding. ``labels`` name the models in error messages (default "0", "1", ...).
    The models and the data are not modified; a one-shot iterator is read into a list first.
    """
    labels = _check_models(models, labels)
    weights = mixture_weights(weights, len(models))
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real) or not 0 < memory_budget < inf:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    device = torch.device(device) if device is not None else model_device(models[0], "evaluate_mixtures")
    strategy = _strategy(strategy, models, labels, device)
    data = reusable(data)
    points = weights.shape[0]
    with torch.no_grad():
        if strategy == "vmap":
            evaluator = _StackedEvaluator(models, device)
            first_inputs, _ = next(checked_batches(data))  # raises for data without batches
            per_point = evaluator.bytes_per_point(first_inputs.to(device))
            size = int(max(1, min(points, memory_budget // max(per_point, 1))))
        else:
            size = 1
        chunks = [range(i, min(i + size, points)) for i in range(0, points, size)]
        total = len(chunks) * len(data) if hasattr(data, "__len__") else None
        desc = f"{points} points in {len(chunks)} passes"
        totals = np.zeros((points, 3))  # loss sum, correct, count per point
        with tqdm(total=total, disable=not progress, desc=desc, leave=False) as bar:
            for chunk in chunks:
                if strategy == "vmap":
                    run = evaluator.runner(torch.tensor(weights[chunk], dtype=torch.float64, device=device))
                else:
                    run = _one_model(_mix(models, weights[chunk.start]).eval().requires_grad_(False).to(device))
                totals[chunk] = _pass(run, data, device, loss_fn, bar)
    sums, correct, counts = totals.T
    if (counts == 0).any():
        raise ValueError("data yielded no targets")
    losses = sums / counts
    if not np.isfinite(losses).all():
        raise ValueError(f"non-finite loss at the points with weights {weights[~np.isfinite(losses)].tolist()}")
    return MixtureEvaluation(weights, losses, correct / counts)
