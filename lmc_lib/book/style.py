"""The book's house style for figures: one look in every chapter, readable at the width of a page.

    from lmc_lib.book import style
    style.use()                                   # once, at the top of a chapter
    fig = style.plot_curves(curves)               # loss and accuracy panels, one legend below them
    fig, ax = style.figure()                      # an empty one-panel figure of page width
    style.width_axis(ax, (32, 64, 128))           # log2 axis labelled with the widths themselves
    fig = style.plot_surfaces(surfaces)           # ternary maps of three models, one colour scale

Figures are drawn ``PAGE_WIDTH`` inches wide, the width of the book's text column, so that a
font of ``FONT_SIZE`` points on the figure reads as that size on the page; the notebook shows them
as SVG (sharp at any zoom, selectable text is not needed). Legends go below the panels, where they
cannot cover a curve. Colours are the Okabe-Ito palette, which colour-blind readers can tell apart,
and "vanilla" paths are always grey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from ..barrier import BarrierCurve
from ..simplex import METRIC_LABELS, SimplexSurface

__all__ = [
    "PAGE_WIDTH", "FONT_SIZE", "COLORS", "VANILLA", "use", "figure", "color_for", "legend_below",
    "width_axis", "plot_curves", "plot_surfaces",
]

#: Width in inches of a figure that fills the book's text column (about 700 CSS pixels).
PAGE_WIDTH = 7.0
#: Font size in points of tick labels; axis labels are one point larger.
FONT_SIZE = 10.5
#: The Okabe-Ito palette (colour-blind safe), without its yellow (too pale on white) and grey.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
#: The colour of a path without alignment.
VANILLA = "#7F7F7F"

RC_PARAMS = {
    "figure.figsize": (PAGE_WIDTH, 3.2),
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": FONT_SIZE,
    "axes.labelsize": FONT_SIZE + 1,
    "axes.titlesize": FONT_SIZE + 1,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "legend.frameon": False,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.8,
    "lines.linewidth": 1.8,
    "lines.markersize": 4.5,
    "svg.fonttype": "path",
}


def use(*, formats: Sequence[str] = ("svg",)) -> None:
    """Apply the house style to every figure drawn from now on; in a notebook, show figures as ``formats``."""
    mpl.rcParams.update(RC_PARAMS)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to configure
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats(*formats)


def figure(ncols: int = 1, *, height: float = 3.2, width: float = PAGE_WIDTH, **kwargs) -> tuple[Figure, Axes]:
    """A figure of ``ncols`` panels side by side, ``width`` x ``height`` inches, laid out to fit its legends."""
    return plt.subplots(1, ncols, figsize=(width, height), layout="constrained", **kwargs)


def color_for(name: str, index: int) -> str:
    """Grey for a path named "vanilla...", otherwise the ``index``-th colour of the palette."""
    return VANILLA if name.lower().startswith("vanilla") else COLORS[index % len(COLORS)]


def legend_below(fig: Figure, *, ncol: int | None = None, axes: Axes | None = None) -> None:
    """One legend for the whole figure, centred below its panels (entries taken from ``axes`` or the first panel)."""
    source = axes if axes is not None else fig.axes[0]
    handles, labels = source.get_legend_handles_labels()
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    longest = max((len(label) for label in labels), default=1)
    columns = ncol or max(1, min(len(labels), int(PAGE_WIDTH * 9 // max(longest, 8))))
    fig.legend(handles, labels, loc="outside lower center", ncol=columns)


def width_axis(ax: Axes, widths: Sequence[int], *, label: str = "hidden width", axis: str = "x") -> None:
    """A log-2 axis whose ticks are exactly ``widths``, labelled with the numbers themselves (not 2^k)."""
    ticks = [int(w) for w in widths]
    set_scale, target = (ax.set_xscale, ax.xaxis) if axis == "x" else (ax.set_yscale, ax.yaxis)
    set_scale("log", base=2)
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(mpl.ticker.FixedFormatter([f"{w:,}" for w in ticks]))
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(label)


def plot_curves(
    curves: Mapping[str, BarrierCurve],
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    chord: bool = False,
    height: float = 3.2,
) -> Figure:
    """Loss (and accuracy) against lambda, one panel per metric, one colour per path, one legend below.

    With ``chord`` each loss curve gets its chord (1 - l) L(theta_A) + l L(theta_B) as a dotted line:
    the pointwise barrier B_l is the gap between a curve and its chord.
    """
    fig, axes = figure(len(metrics), height=height, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for index, (name, curve) in enumerate(curves.items()):
            color = color_for(name, index)
            curve.plot(ax, metric=metric, label=name, color=color)
            if chord and metric == "loss":
                ax.plot([0, 1], [curve.losses[0], curve.losses[-1]], ":", color=color, linewidth=1.2)
        if metric == "accuracy":
            ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
        ax.set_xlim(0, 1)
    if chord:
        axes[0][0].plot([], [], ":", color="black", linewidth=1.2, label="chord")
    legend_below(fig)
    return fig


def plot_surfaces(
    surfaces: Mapping[str, SimplexSurface],
    *,
    metric: str = "gap",
    labels: Sequence[str] = ("A", "B", "C"),
    height: float = 2.8,
) -> Figure:
    """Ternary maps of three models' surfaces side by side, one panel per entry (titled by its key), on one
    colour scale with one colour bar, so that a flatter surface looks flatter (``SimplexSurface.plot``
    draws each panel; ``metric`` and ``labels`` are its)."""
    fig, axes = figure(len(surfaces), height=height, squeeze=False)
    low = min(float(surface.values(metric).min()) for surface in surfaces.values())
    high = max(float(surface.values(metric).max()) for surface in surfaces.values())
    for ax, (title, surface) in zip(axes[0], surfaces.items()):
        surface.plot(ax, metric=metric, labels=labels, vmin=low, vmax=high, colorbar=False)
        ax.set_title(title)
    fig.colorbar(axes[0][0].collections[0], ax=axes[0].tolist(), label=METRIC_LABELS[metric], shrink=0.8)
    return fig
