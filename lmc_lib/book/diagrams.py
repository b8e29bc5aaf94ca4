"""Schematic diagrams for the chapters, drawn with matplotlib in the house style.

:func:`circuit_construction` shows how :func:`lmc_lib.circuit_pair` writes two heads as one head
of width 2 d_head whose straight line interpolates the circuits; :func:`transformer_symmetries`
shows where each symmetry class acts in a pre-norm Transformer block.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .style import COLORS, PAGE_WIDTH

__all__ = ["circuit_construction", "transformer_symmetries"]

_A, _B, _SHARED, _ZERO = COLORS[0], COLORS[1], "#BDBDBD", "white"


def _block(ax, x: float, y: float, width: float, height: float, color: str, text: str = "") -> None:
    """One half of a factor: a filled rectangle with a TeX label written upwards in its middle."""
    ax.add_patch(Rectangle((x, y), width, height, facecolor=color, edgecolor="black", linewidth=0.8,
                           alpha=0.6 if color != _ZERO else 1.0))
    if text:
        ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", rotation=90, fontsize=10)


def _widened_head(ax, x0: float, title: str, query: tuple[str, ...], out: tuple[str, ...]) -> None:
    """A head of width 2 d_head as four D x 2 d_head factors W_Q, W_K, W_V, W_O^T, each in two halves.

    ``query`` and ``out`` are (left colour, left label, right colour, right label) of the model's own
    factors; keys and values hold A's half and B's half in every model.
    """
    shared = ((_A, "$W_K^A$", _B, "$W_K^B$"), (_A, "$W_V^A$", _B, "$W_V^B$"))
    factors = (("$W_Q$", query), ("$W_K$", shared[0]), ("$W_V$", shared[1]), (r"$W_O^\top$", out))
    for index, (name, (left, left_text, right, right_text)) in enumerate(factors):
        x = x0 + 1.95 * index
        _block(ax, x, 1.0, 0.8, 3.8, left, left_text)
        _block(ax, x + 0.8, 1.0, 0.8, 3.8, right, right_text)
        ax.text(x + 0.8, 0.75, name, ha="center", va="top", fontsize=10.5)
    ax.text(x0 + 3.7, 5.05, title, ha="center", va="bottom", fontsize=11)


def circuit_construction() -> Figure:
    """Model A and the aligned model B written as heads of width 2 d_head (what ``lmc.circuit_pair`` returns).

    Each keeps its own queries and out-projection in its half and zeros in the other; both hold the
    keys and values of A and B. The straight line between them has queries
    [(1 - l) c W_Q^A, l c W_Q^B] against keys [W_K^A, W_K^B], i.e. the circuit
    (1 - l) QK_A + l QK_B (c = sqrt 2 keeps the attention scale 1 / sqrt(d_head)), and likewise OV.
    """
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 2.9), layout="constrained")
    _widened_head(ax, 0.0, "A, widened", (_A, r"$c\,W_Q^A$", _ZERO, "0"), (_A, r"$W_O^{A\top}$", _ZERO, "0"))
    _widened_head(ax, 8.4, "B (aligned), widened", (_ZERO, "0", _B, r"$c\,W_Q^B$"), (_ZERO, "0", _B, r"$W_O^{B\top}$"))
    _widened_head(ax, 16.8, r"point $\lambda$ of the line",
                  (_A, r"$(1{-}\lambda)\,c\,W_Q^A$", _B, r"$\lambda\,c\,W_Q^B$"),
                  (_A, r"$(1{-}\lambda)W_O^{A\top}$", _B, r"$\lambda\,W_O^{B\top}$"))
    for x in (7.95, 16.35):
        ax.plot([x, x], [0.4, 5.4], color="#BBBBBB", linewidth=1)
    ax.set(xlim=(-0.2, 24.6), ylim=(0.1, 5.7))
    ax.axis("off")
    return fig


def _box(ax, x: float, y: float, text: str, *, width: float = 2.2, height: float = 0.8) -> None:
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                facecolor="#F2F2F2", edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "black") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, linewidth=1.0, color=color,
                                 shrinkA=0, shrinkB=0))


def _label(ax, x: float, y: float, text: str, color: str) -> None:
    ax.text(x, y, text, ha="left", va="center", fontsize=9.5, color=color,
            bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor=color, linewidth=1.0))


def transformer_symmetries() -> Figure:
    """A pre-norm Transformer block in canonical form with the symmetry classes that act on each space.

    Residual stream: one orthogonal O for all blocks (after the canonical form; a permutation
    without it). Attention: a permutation P of the heads; inside head i invertible maps of its QK
    and OV spaces. MLP: a permutation of the hidden units (a semi-permutation for ReLU-like units).
    """
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.4), layout="constrained")
    ax.plot([0.6, 0.6], [0.1, 7.2], color=COLORS[0], linewidth=5, solid_capstyle="butt")
    _arrow(ax, (0.6, 7.0), (0.6, 7.6), color=COLORS[0])
    ax.text(0.05, 3.7, r"residual stream $x \in \mathbb{R}^D$", rotation=90, ha="center", va="center", fontsize=10)
    rows = ((1.2, "attention\nheads $1, \\dots, H$"), (4.6, r"MLP $\sigma(x W_1)\,W_2$"))
    for y, middle in rows:
        _arrow(ax, (0.6, y), (1.45, y))
        _box(ax, 2.75, y, "RMSNorm", width=2.5)
        _arrow(ax, (4.05, y), (4.6, y))
        _box(ax, 6.6, y, middle, width=3.8, height=1.1)
        ax.plot([8.55, 9.1, 9.1, 1.0], [y, y, y + 1.3, y + 1.3], color="black", linewidth=1.0)
        _arrow(ax, (1.0, y + 1.3), (0.72, y + 1.3))
        ax.text(1.15, y + 1.5, "add", fontsize=9, ha="left", va="bottom")
    labels = (
        (6.9, "residual stream: orthogonal $O$ after the canonical form,\nonly a permutation $P$ with LayerNorm",
         COLORS[0], (0.7, 6.9)),
        (4.6, "MLP units: permutation $P$\n(semi-permutation $\\tilde P$ for ReLU)", COLORS[3], (8.55, 4.6)),
        (2.3, "across heads: permutation $P$\n(semi-permutation $\\tilde P$ to split a head)", COLORS[1], (8.55, 1.4)),
        (0.55, "inside head $i$: invertible $G_{QK}$, $G_{OV}$\n(or interpolate the circuits)", COLORS[2], (8.55, 1.0)),
    )
    for y, text, color, (x_from, y_from) in labels:
        ax.plot([x_from, 10.4], [y_from, y], color=color, linewidth=0.9, linestyle=":")
        _label(ax, 10.5, y, text, color)
    ax.set(xlim=(-0.3, 20.0), ylim=(-0.1, 7.7))
    ax.axis("off")
    return fig
