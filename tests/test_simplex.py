"""simplex_barrier: equal to a per-point loop and, for two models, to lmc.barrier; grid, Eq. 2, plot, refusals."""

import matplotlib
import numpy as np
import pytest
import torch

import lmc_lib as lmc
from lmc_lib.simplex import simplex_grid
from strategies import build_mlp
from test_models_gpt2 import gpt2, tokens

matplotlib.use("Agg")

CONFIG = lmc.MLPConfig(6, (8, 7), 3)


def mlp_data(n: int = 40, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    return list(zip(x.split(batch), y.split(batch)))


def per_point(models, data, weights) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy of one mixed model per row of ``weights``."""
    results = [lmc.evaluate(lmc.evaluation.mix(models, row), data) for row in weights]
    return np.array([r[0] for r in results]), np.array([r[1] for r in results])


@pytest.mark.parametrize("count, points, expected", [(2, 11, 11), (3, 11, 66), (3, 2, 3), (4, 5, 35)])
def test_the_grid_covers_the_simplex(count, points, expected):
    grid = simplex_grid(count, points)
    assert grid.shape == (expected, count)
    assert np.allclose(grid.sum(1), 1) and (grid >= 0).all()
    assert len(np.unique(np.round(grid * (points - 1)).astype(int), axis=0)) == expected
    for vertex in np.eye(count):
        assert (grid == vertex).all(1).any()


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_three_models_equal_a_per_point_loop(strategy):
    models = [build_mlp(CONFIG, seed) for seed in range(3)]
    data = mlp_data()
    surface = lmc.simplex_barrier(models, data, points=5, strategy=strategy, progress=False)
    assert surface.weights.shape == (15, 3)
    losses, accuracies = per_point(models, data, surface.weights)
    np.testing.assert_allclose(surface.losses, losses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(surface.accuracies, accuracies, atol=1e-12, rtol=0)
    gaps = losses - surface.weights @ losses[[int(np.flatnonzero((surface.weights == v).all(1))[0])
                                              for v in np.eye(3)]]
    assert surface.barrier == pytest.approx(gaps.max(), abs=1e-5)


def test_a_language_model_surface_equals_a_per_point_loop():
    models = [gpt2(dict(n_embd=16, n_layer=1, n_head=2), seed) for seed in range(3)]
    generator = torch.Generator().manual_seed(0)
    data = [(tokens(generator, 2, 6), tokens(generator, 2, 6)) for _ in range(2)]
    surface = lmc.simplex_barrier(models, data, points=3, progress=False)
    losses, _ = per_point(models, data, surface.weights)
    np.testing.assert_allclose(surface.losses, losses, atol=1e-5, rtol=0)


def test_two_models_give_lmc_barrier():
    a, b = build_mlp(CONFIG, 0), build_mlp(CONFIG, 1)
    data = mlp_data()
    surface = lmc.simplex_barrier([a, b], data, progress=False)
    curve = lmc.barrier(a, b, data, lambdas=11, progress=False)
    np.testing.assert_allclose(surface.weights[:, 1], curve.lambdas, atol=1e-15)
    np.testing.assert_allclose(surface.losses, curve.losses, atol=1e-6)
    np.testing.assert_allclose(surface.accuracies, curve.accuracies)
    assert surface.barrier == pytest.approx(curve.barrier, abs=1e-6)
    assert surface.accuracy_barrier == pytest.approx(curve.accuracy_barrier, abs=1e-9)


def test_given_points_are_kept_in_order_and_the_vertices_added():
    models = [build_mlp(CONFIG, seed) for seed in range(3)]
    points = np.array([[1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    surface = lmc.simplex_barrier(models, mlp_data(), points=points, progress=False)
    np.testing.assert_array_equal(surface.weights, np.vstack([points, [[1, 0, 0], [0, 0, 1]]]))
    vertex_losses = surface.losses[[3, 1, 4]]
    np.testing.assert_array_equal(surface.vertex_losses, vertex_losses)
    assert surface.loss_gaps[0] == pytest.approx(surface.losses[0] - vertex_losses.mean())
    assert surface.barrier == pytest.approx(max(surface.loss_gaps))


def test_copies_of_one_model_have_zero_barrier():
    model = build_mlp(CONFIG, 0)
    surface = lmc.simplex_barrier([model, model, model], mlp_data(), progress=False)
    assert abs(surface.barrier) < 1e-6 and np.ptp(surface.losses) < 1e-6


def test_the_plot_is_a_ternary_map():
    models = [build_mlp(CONFIG, seed) for seed in range(3)]
    surface = lmc.simplex_barrier(models, mlp_data(), points=4, progress=False)
    for metric in ("loss", "gap", "accuracy"):
        ax = surface.plot(metric=metric, labels=("0", "1", "2"))
        assert ax.collections, metric  # the heat map
        assert [t.get_text() for t in ax.texts] == ["0", "1", "2"]
        matplotlib.pyplot.close(ax.figure)
    with pytest.raises(ValueError, match="metric must be one of"):
        surface.plot(metric="barrier")
    two = lmc.simplex_barrier(models[:2], mlp_data(), points=3, progress=False)
    with pytest.raises(ValueError, match="ternary map of three models; this surface has 2"):
        two.plot()


def test_bad_inputs_are_refused_by_name():
    models = [build_mlp(CONFIG, seed) for seed in range(3)]
    data = mlp_data()
    with pytest.raises(ValueError, match="needs at least two models to mix, got 1"):
        lmc.simplex_barrier(models[:1], data)
    with pytest.raises(TypeError, match="models must be a sequence of models, got MLP"):
        lmc.simplex_barrier(models[0], data)
    other = build_mlp(lmc.MLPConfig(6, (8, 9), 3), 0)
    with pytest.raises(ValueError, match="models 0 and 2 differ at module 'fc2': out_features = 7 vs 9"):
        lmc.simplex_barrier([models[0], models[1], other], data)
    with pytest.raises(ValueError, match="points must lie on the simplex of the 3 models: .*row 1 sums to 1.1"):
        lmc.simplex_barrier(models, data, points=[[1, 0, 0], [0.5, 0.5, 0.1]])
    with pytest.raises(ValueError, match=r"points must lie on the simplex .*weights\[0, 1\] = -0.5"):
        lmc.simplex_barrier(models, data, points=[[1, -0.5, 0.5]])
    with pytest.raises(ValueError, match=r"expected a \(points, 3\) matrix"):
        lmc.simplex_barrier(models, data, points=[[0.5, 0.5]])
    with pytest.raises(ValueError, match="points must be an integer >= 2, got 1"):
        lmc.simplex_barrier(models, data, points=1)
    with pytest.raises(TypeError, match="got a bool"):
        lmc.simplex_barrier(models, data, points=True)
