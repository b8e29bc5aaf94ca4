"""Canonical form of a pre-norm Transformer: LayerNorm -> RMSNorm, so rotations of the residual apply.

LayerNorm(x) = g * RMSNorm(M x) + s with M = I - 11^T / D (SliceGPT; the paper's section 3.2). Once
every linear map that writes the residual stream is multiplied by M, the stream stays mean-zero,
M x = x, and each norm's gain g and shift s move into the linear map that reads it:
W LayerNorm(x) + b = (W diag(g)) RMSNorm(x) + (b + W s). RMSNorm commutes with every orthogonal O
(||O x|| = ||x||), LayerNorm only with permutations.

These are functions over tensors (float64 in, float64 out) and one parameter-free module; the
model families in ``lmc_lib/models`` apply them to their own tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RMSNorm", "center", "fold_norm", "pad_heads", "scale_heads", "replace_module"]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) over the last dimension of size ``width``; no gain, no shift.

    The gain of the LayerNorm it replaces lives in the linear map that reads it.
    """

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.normalized_shape = (width,)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps:g}"


def center(tensor: Tensor, dim: int) -> Tensor:
    """M applied along ``dim``: each slice along ``dim`` minus its mean (a residual writer made mean-zero)."""
    return tensor - tensor.mean(dim, keepdim=True)


def fold_norm(
    weight: Tensor, bias: Tensor | None, gain: Tensor | None, shift: Tensor | None, in_dim: int
) -> tuple[Tensor, Tensor | None]:
    """The reader W, b of a norm with gain g and shift s, rewritten to read the bare RMSNorm.

    W' = W diag(g) (g scales the input axis ``in_dim``), b' = b + W s. Returns (W', b'); b' is None
    only when there was neither a bias nor a shift.
    """
    if gain is not None:
        shape = [1] * weight.ndim
        shape[in_dim] = -1
        weight_out = weight * gain.view(shape)
    else:
        weight_out = weight
    if shift is None:
        return weight_out, bias
    moved = torch.tensordot(weight, shift, dims=([in_dim], [0]))  # W s, over the input axis
    return weight_out, moved if bias is None else bias + moved


def pad_heads(tensor: Tensor, dim: int, head_dim: int, new_head_dim: int) -> Tensor:
    """Widen every head block of ``head_dim`` entries along ``dim`` to ``new_head_dim`` with zeros.

    Zero query/key rows leave q k^T unchanged; zero value rows and out-projection columns leave
    the output unchanged. Works on fused q|k|v tensors (every block is one head of one part).
    """
    dim = dim % tensor.ndim
    shape = tensor.shape
    blocks = tensor.reshape(*shape[:dim], shape[dim] // head_dim, head_dim, *shape[dim + 1 :])
    padding = [0, 0] * (tensor.ndim - dim - 1) + [0, new_head_dim - head_dim]
    return F.pad(blocks, padding).reshape(*shape[:dim], -1, *shape[dim + 1 :])


def scale_heads(tensor: Tensor, dim: int, length: int, factor: float) -> Tensor:
    """``tensor`` with entries [0, length) along ``dim`` (the query part of a fused q|k|v) times ``factor``."""
    dim = dim % tensor.ndim
    head, rest = tensor.split([length, tensor.shape[dim] - length], dim)
    return torch.cat([head * factor, rest], dim)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` inside ``model`` (which the caller owns: a copy)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)
