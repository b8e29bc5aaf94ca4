"""Lift a model exactly to larger widths, so that models of different widths can be aligned.

Each named space of size N grows to M >= N by an exact map, the most general its class allows:

- a space that admits orthogonal maps (a Transformer's residual stream in canonical form, a
  hidden layer without activation) gets a random M x N matrix O with orthonormal columns:
  writers O W, readers W O^T; the family rescales what norms read (paper, App. E);
- a space that admits semi-permutations (ReLU-like units, a ViT's heads) is split: every unit
  gets one or more copies, writers copied, readers weighted so the copies sum back to the unit;
- any other space of elementwise units (GELU, tanh, sigmoid, whose spec admits no
  semi-permutation: act(a z) != a act(z)) is padded: M - N new units with zero rows in the
  writers and zero columns in the readers, which add nothing whatever the activation makes of
  their zero input. ``split=False`` pads ReLU-like units too (to compare the two lifts).

The lifted model has the shapes of a model built at the larger widths, so it can be aligned to
one and interpolated with it. The paper's recipe for a narrow and a wide model::

    lifted = lmc.lift(narrow, {"residual": 512, "mlp": 2048}, generator=g)
    init = lmc.weight_matching(wide, lifted, classes="paper")
    al = lmc.learned_matching(wide, lifted, data, init=init, sampler=lmc.learned.uniform(0.5, 0.8))

where lambda ~ U(0.5, 0.8) weights the lifted model, i.e. the wide one gets U(0.2, 0.5), as in the
paper's code.

Norm eps. An exact residual lift from N to M scales each norm's eps by N / M, so the lift pairs
with a wide model whose eps is the narrow one's times N / M: train the narrow model with the wide
eps times M / N (``lmc.book.narrowed`` does) and nothing is approximate. For checkpoints that were
trained otherwise, ``norm_eps=`` sets the lifted norms' eps to the wide model's, which is not exact:
every norm then divides by sqrt(ms + norm_eps M / N) instead of sqrt(ms + eps), ms the mean
square of the narrow stream it reads, a relative change of about (norm_eps M / N - eps) / (2 ms);
measure it before trusting a barrier (small streams, e.g. a language model's embeddings, feel it
most).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from .canonical import RMSNorm
from .family import family_of, spec_for
from .spec import Space, SymmetrySpec
from .symmetry import Orthogonal, SemiPermutation
from .transform import transform, transform_tensors

__all__ = ["lift"]


def _listed(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _targets(spec: SymmetrySpec, sizes: Mapping[str, int]) -> dict[str, int]:
    """space name -> new size, in spec order; a key is a space name or a space group (all its spaces)."""
    if not isinstance(sizes, Mapping):
        raise TypeError(f"lift: sizes must be a mapping from space names or groups to sizes, "
                        f"got {type(sizes).__name__}")
    groups = {space.group for space in spec.spaces.values()}
    targets: dict[str, int] = {}
    for key, size in sizes.items():
        if key not in spec.spaces and key not in groups:
            raise ValueError(f"lift: {key!r} is neither a space nor a space group of the {spec.family} spec; "
                             f"its groups are {sorted(groups)}, its spaces {_listed(list(spec.spaces))}")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"lift: the size of {key!r} must be an integer, got {type(size).__name__}")
        for name, space in spec.spaces.items():
            if name == key or (key not in spec.spaces and space.group == key):
                if size < space.size:
                    raise ValueError(f"lift: space {name!r} has size {space.size}; a lift only widens "
                                     f"(asked for {size})")
                targets[name] = int(size)
    return {name: targets[name] for name in spec.spaces if name in targets and targets[name] != spec.spaces[name].size}


def _method(space: Space, family: str, split: bool) -> str:
    """How the space is lifted: "orthogonal", "semi_permutation" or "padding"; ValueError when none is exact."""
    if not space.resizable:
        raise ValueError(f"lift: space {space.name!r} has a fixed size {space.size} (the architecture sets it)")
    for kind in ("orthogonal", "semi_permutation") if split else ("orthogonal",):
        if kind in space.classes:
            return kind
    if space.normed:
        raise ValueError(f"lift: space {space.name!r} is read through LayerNorms, whose statistics change with the "
                         "width; call lmc.canonicalize on the model first (a rectangular orthogonal map then lifts it)")
    if space.circuits and "semi_permutation" in space.classes:  # split=False
        raise ValueError(f"lift: the heads of space {space.name!r} can be split, not padded; "
                         "lift them with split=True")
    if space.circuits:
        raise ValueError(f"lift: the {family} family cannot add heads (space {space.name!r} admits only "
                         f"{space.classes}); lift the residual stream instead, which widens every head")
    return "padding"


def _padded(model: nn.Module, spec: SymmetrySpec, name: str, size: int) -> nn.Module:
    """``model`` with the space padded to ``size`` units: zero writer rows and zero reader columns
    appended (E = [I; 0] applied to both sides, in float64 on the CPU, then the family's rebuild)."""
    embedding = torch.eye(size, spec.spaces[name].size, dtype=torch.float64)
    work = {k: v.detach().cpu().double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    work = transform_tensors(work, spec, {name: (embedding, embedding)})
    return family_of(model).rebuild(model, work)  # which casts every tensor back to its dtype and device


def _with_norm_eps(lifted: nn.Module, model: nn.Module, eps: float) -> nn.Module:
    """``lifted`` (a fresh copy) with ``eps`` in every norm the lift resized and, for a Hugging Face model, in
    the config's ``layer_norm_epsilon`` that mirrors them (in place)."""
    before = dict(model.named_modules())
    resized = [module for name, module in lifted.named_modules() if isinstance(module, RMSNorm)
               and module.normalized_shape != getattr(before.get(name), "normalized_shape", None)]
    if not resized:
        raise ValueError("lift: norm_eps sets the eps of the norms a residual lift resizes, and this lift resizes "
                         "none; leave norm_eps out")
    for module in resized:
        module.eps = eps
    config = getattr(lifted, "config", None)
    if config is not None and hasattr(config, "layer_norm_epsilon"):
        config.layer_norm_epsilon = eps
    return lifted


def lift(model: nn.Module, sizes: Mapping[str, int], *, generator: torch.Generator | None = None,
         split: bool = True, norm_eps: float | None = None) -> nn.Module:
    """An exactly equivalent copy of ``model`` with the named spaces at the given sizes (module docstring).

    ``sizes`` maps space names or space groups (e.g. ``{"residual": 512, "mlp": 2048}`` for a
    Transformer, every MLP of its blocks; ``{"hidden": 1024}`` or ``{"fc1": 1024}`` for an MLP) to
    sizes at least the current ones. Orthogonal lifts and splits are drawn with ``generator``;
    padding puts the new units last. A residual lift also widens a Transformer's heads (GPT-2:
    head_dim = width / n_head, refused when n_head does not divide the width) and scales the
    norms' eps by N / M, so a model built at the wide width interpolates with the lift when its eps
    is the narrow one's times N / M (the paper's App. E). ``split=False`` pads units that could be
    split (ReLU-like units; heads cannot be padded). ``norm_eps`` sets the eps of the resized norms
    instead (e.g. to a wide model's), which is not exact (module docstring: the change it makes).
    ValueError names a space that cannot be lifted exactly and says why. The input is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lift: model must be an nn.Module, got {type(model).__name__}")
    spec = spec_for(model)
    targets = _targets(spec, sizes)
    if norm_eps is not None and (isinstance(norm_eps, bool) or not isinstance(norm_eps, numbers.Real)
                                 or not math.isfinite(norm_eps) or norm_eps <= 0):
        raise ValueError(f"lift: norm_eps must be a positive number (the wide model's eps), got {norm_eps!r}")
    methods = {name: _method(spec.spaces[name], spec.family, split) for name in targets}
    lifted = model
    for name, size in targets.items():  # one space at a time: a lift changes the spec of the next
        current = spec_for(lifted)
        n = current.spaces[name].size
        if methods[name] == "orthogonal":
            lifted = transform(lifted, {name: Orthogonal.random(n, size, generator)}, spec=current)
        elif methods[name] == "semi_permutation":
            lifted = transform(lifted, {name: SemiPermutation.random(n, size, generator)}, spec=current)
        else:
            lifted = _padded(lifted, current, name, size)
    return lifted if norm_eps is None else _with_norm_eps(lifted, model, float(norm_eps))
