"""The house style: figures of page width with legends below the panels, width axes labelled with the
widths, and the schematic diagrams drawn without error."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import lmc_lib as lmc  # noqa: E402
from lmc_lib.book import diagrams, style  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def curves():
    grid = np.linspace(0, 1, 5)
    return {
        "vanilla": lmc.BarrierCurve(grid, np.array([0.2, 0.8, 1.2, 0.8, 0.3]), np.array([0.9, 0.7, 0.5, 0.7, 0.9])),
        "weight matching": lmc.BarrierCurve(grid, np.array([0.2, 0.25, 0.3, 0.3, 0.3]), np.array([0.9] * 5)),
    }


def test_use_sets_the_house_fonts_and_palette():
    style.use()
    assert matplotlib.rcParams["font.size"] == style.FONT_SIZE
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0] == style.COLORS[0]


def test_plot_curves_draws_loss_and_accuracy_with_one_legend_below():
    fig = style.plot_curves(curves(), chord=True)
    loss, accuracy = fig.axes
    assert (loss.get_ylabel(), accuracy.get_ylabel()) == ("test loss", "test accuracy")
    np.testing.assert_allclose(accuracy.lines[0].get_ydata(), curves()["vanilla"].accuracies)
    assert loss.get_legend() is None and accuracy.get_legend() is None
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["vanilla", "weight matching", "chord"]
    assert loss.lines[0].get_color() == style.VANILLA
    assert fig.get_figwidth() == style.PAGE_WIDTH
    fig.canvas.draw()
    below = legend.get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in fig.axes)
    assert below


def test_width_axis_ticks_are_the_widths_themselves():
    fig, ax = style.figure()
    ax.plot([32, 64, 1024], [1, 2, 3])
    style.width_axis(ax, (32, 64, 1024))
    fig.canvas.draw()
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["32", "64", "1,024"]
    assert ax.get_xscale() == "log"


@pytest.mark.parametrize("draw", [diagrams.circuit_construction, diagrams.transformer_symmetries])
def test_diagrams_draw(draw):
    fig = draw()
    fig.canvas.draw()
    assert fig.get_figwidth() == style.PAGE_WIDTH
    assert any(text.get_text() for text in fig.axes[0].texts)


def test_plot_surfaces_draws_ternary_maps_on_one_colour_scale_with_one_colour_bar():
    weights = lmc.simplex.simplex_grid(3, 4)
    centre = weights.min(axis=1)  # 0 on the edges, largest in the middle

    def surface(height):
        return lmc.SimplexSurface(weights, 1.0 + height * centre, np.full(len(weights), 0.5))

    fig = style.plot_surfaces({"high": surface(3.0), "low": surface(0.5)})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["high", "low"] and len(fig.axes) == 3  # two panels, one colour bar
    for ax in panels:  # the gaps: 0 at the vertices, 3 and 0.5 times the centre weight inside
        assert ax.collections[0].get_clim() == pytest.approx((0.0, 3.0 * centre.max()))
