"""How the points of a chunk run on one batch: one after another ("loop") or stacked ("vmap").

Point p of a chunk is the model theta_p = sum_k W[p, k] theta_k of K endpoint models. Both runners
hold the chunk's mixed floating tensors and call one skeleton copy of the model through
``torch.func.functional_call``, and both read each batch once for all the points of the chunk:

- ``LoopRunner``: the points take turns on the batch, each running the model's own forward (its
  hooks and parametrizations included) as the plain per-point model would. On a CPU this is the
  fast order: a point's activations stay in the caches while its layers run.
- ``VmapRunner``: the points' tensors are stacked along a new leading axis and the forward runs
  once under ``vmap``. This pays the per-call overhead once per chunk, which is what costs on a
  GPU and for small batches, but its elementwise passes run over P times larger activations.

When the family exposes an affine *stem* (the first Linear of an MLP: its output is linear in its
parameters), both compute it once per endpoint and blend the outputs, stem_p(x) = sum_k W[p, k]
stem_k(x), which saves its arithmetic for every other point.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .family import family_of

__all__ = ["combine", "logits_of", "Endpoints", "LoopRunner", "VmapRunner", "Footprint", "footprint"]


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


def combine(tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``(P, *shape)``: sum_k W[p, k] t_k for the rows of ``weights`` (P, K), in the tensors' dtype.

    Computed in float32 or wider; for K = 2 as the lerp t_0 + W[p, 1] (t_1 - t_0), which gives both
    endpoints exactly, and otherwise as the weighted sum, exact at the corners of the simplex.
    """
    dtype = tensors[0].dtype
    work = torch.promote_types(dtype, torch.float32)
    weights = weights.to(tensors[0].device, work)
    shape = (-1, *([1] * tensors[0].ndim))
    if len(tensors) == 2:
        start, end = (tensor.to(work).unsqueeze(0) for tensor in tensors)
        return torch.lerp(start, end, weights[:, 1].reshape(shape)).to(dtype)
    mixed = weights[:, 0].reshape(shape) * tensors[0].to(work)
    for k, tensor in enumerate(tensors[1:], start=1):
        mixed = mixed + weights[:, k].reshape(shape) * tensor.to(work)
    return mixed.to(dtype)


@dataclass(frozen=True)
class Footprint:
    """What one forward pass of one model costs on a batch: the bytes of its leaf modules' outputs (an
    upper bound on its activations) and of the largest of them, the multiply-adds of its layers
    with weight matrices and of its convolutions, and the number of leaf-module calls (each costs
    about the same fixed overhead)."""

    activation_bytes: int
    largest_output_bytes: int
    multiply_adds: int
    calls: int

    def times(self, factor: int) -> Footprint:
        """The footprint on ``factor`` times as many examples (the same calls)."""
        return Footprint(self.activation_bytes * factor, self.largest_output_bytes * factor,
                         self.multiply_adds * factor, self.calls)


def _multiply_adds(module: nn.Module, output: Tensor) -> int:
    """Multiply-adds of a module with a weight matrix (a Linear, HF's Conv1D, ...) or a convolution that
    produced ``output``; 0 for any other module (an embedding is a lookup)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or output.ndim == 0:
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() * weight[0].numel()  # weight (out, in / groups, *kernel)
    if weight.ndim == 2:  # one of its dimensions is the output's last
        return output.numel() * weight.numel() // max(output.shape[-1], 1)
    return 0


def footprint(model: nn.Module, x: Tensor) -> Footprint:
    """The :class:`Footprint` of ``model`` on the batch ``x``, from one forward pass with hooks."""
    totals = [0, 0, 0, 0]

    def hook(module, _inputs, output):
        outputs = [out for out in (output if isinstance(output, tuple) else (output,)) if isinstance(out, Tensor)]
        sizes = [out.numel() * out.element_size() for out in outputs]
        totals[0] += sum(sizes)
        totals[1] = max(totals[1], *sizes, 0)
        totals[2] += _multiply_adds(module, outputs[0]) if outputs else 0
        totals[3] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return Footprint(*totals)


class Endpoints:
    """The K endpoint models' tensors on ``device`` and one skeleton copy to run them in; with ``stem``
    the skeleton is split into the family's affine stem and the rest."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device, *, stem: bool) -> None:
        self.device = device
        self.model = copy.deepcopy(models[0]).eval().requires_grad_(False).to(device)
        split = family_of(self.model).split_stem if stem else None
        self.stem, self.rest = split(self.model) if split is not None else (None, self.model)
        states = [{k: v.to(device) for k, v in model.state_dict().items()} for model in models]
        rest_names = self.rest.state_dict().keys()
        self.floating = [k for k in rest_names if states[0][k].is_floating_point()]
        self.fixed = {k: states[0][k] for k in rest_names if not states[0][k].is_floating_point()}
        stem_names = self.stem.state_dict().keys() if self.stem is not None else ()
        self.stem_states = [{k: state[k] for k in stem_names} for state in states]
        self.states = states

    def parameter_bytes(self) -> int:
        """Bytes of one point's mixed floating tensors (those of the rest; the stem's are not mixed)."""
        return sum(self.states[0][k].numel() * self.states[0][k].element_size() for k in self.floating)

    def mixed(self, weights: Tensor) -> dict[str, Tensor]:
        """The rest's floating tensors of the points whose weights are the rows of ``weights``, stacked (P, ...)."""
        return {k: combine([state[k] for state in self.states], weights) for k in self.floating}

    def stems(self, x: Tensor) -> list[Tensor] | None:
        """Each endpoint's stem output on ``x`` (None without a stem)."""
        if self.stem is None:
            return None
        return [functional_call(self.stem, state, (x,), tie_weights=False) for state in self.stem_states]

    def run(self, tensors: dict[str, Tensor], inputs: Tensor) -> Tensor:
        """The rest's logits with floating ``tensors`` on ``inputs`` (the batch, or a point's blended stem)."""
        # tie_weights=False: tied names (a GPT-2's wte and lm_head) each get their own mixed tensor,
        # as interpolating the state dict gives them
        return logits_of(functional_call(self.rest, {**tensors, **self.fixed}, (inputs,), tie_weights=False))


def _on_device(weights: Tensor, device: torch.device) -> Tensor:
    """``weights`` on ``device``, once per chunk (float32 where the device has no float64)."""
    return weights.to(device, torch.float32 if device.type == "mps" else weights.dtype)


class LoopRunner:
    """The points of one chunk, run one after another on each batch."""

    def __init__(self, endpoints: Endpoints, weights: Tensor) -> None:
        self.endpoints, self.weights = endpoints, _on_device(weights, endpoints.device)
        stacked = endpoints.mixed(self.weights)
        self.points = [{k: v[p] for k, v in stacked.items()} for p in range(weights.shape[0])]

    def __call__(self, x: Tensor) -> Iterator[Tensor]:
        """Logits ``(1, *batch, C)`` of each point in turn."""
        stems = self.endpoints.stems(x)
        for p, tensors in enumerate(self.points):
            inputs = x if stems is None else combine(stems, self.weights[p : p + 1])[0]
            yield self.endpoints.run(tensors, inputs).unsqueeze(0)


class VmapRunner:
    """The points of one chunk, stacked and run together under ``vmap``."""

    def __init__(self, endpoints: Endpoints, weights: Tensor) -> None:
        self.endpoints, self.weights = endpoints, _on_device(weights, endpoints.device)
        self.stacked = endpoints.mixed(self.weights)

    def __call__(self, x: Tensor) -> Iterator[Tensor]:
        """Logits ``(P, *batch, C)`` of all the points at once."""
        stems = self.endpoints.stems(x)
        with warnings.catch_warnings():
            # CPU flash attention has no vmap batching rule; the fallback is correct, only slower
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            if stems is None:
                yield vmap(self.endpoints.run, in_dims=(0, None))(self.stacked, x)
            else:
                yield vmap(self.endpoints.run, in_dims=(0, 0))(self.stacked, combine(stems, self.weights))
