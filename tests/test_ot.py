"""Optimal transport: exact W_p, the participation ratio, and layer-wise OT matching of MLPs."""

import itertools

import pytest
import torch

import lmc_lib as lmc


def brute_force_wasserstein(x, y, p):
    """min over all permutations of ((1/n) sum_i ||x_i - y_pi(i)||^p)^(1/p)."""
    n = x.shape[0]
    costs = torch.cdist(x.double(), y.double()) ** p
    best = min(sum(float(costs[i, pi[i]]) for i in range(n)) for pi in itertools.permutations(range(n)))
    return (best / n) ** (1 / p)


@pytest.mark.parametrize("d", [1, 3])
def test_permuted_copy_is_at_distance_zero(d, generator):
    x = torch.randn(50, d, generator=generator)
    assert lmc.ot.wasserstein_distance(x, x[torch.randperm(50, generator=generator)]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_matches_brute_force_over_all_permutations(p, d, generator):
    for n in (2, 4, 6):
        x, y = torch.randn(2, n, d, generator=generator)
        assert lmc.ot.wasserstein_distance(x, y, p) == pytest.approx(brute_force_wasserstein(x, y, p), rel=1e-10)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_one_dimensional_samples_are_matched_in_sorted_order(p, generator):
    x, y = torch.randn(2, 300, generator=generator).double()
    sorted_gap = (x.sort().values - y.sort().values).abs() ** p
    assert lmc.ot.wasserstein_distance(x, y, p) == pytest.approx(float(sorted_gap.mean() ** (1 / p)), rel=1e-10)


def test_translation_moves_a_sample_by_its_length(generator):
    x = torch.randn(40, 3, generator=generator).double()
    shift = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)
    assert lmc.ot.wasserstein_distance(x, x + shift) == pytest.approx(5.0, rel=1e-10)


def test_distance_is_symmetric_and_positive(generator):
    x, y = torch.randn(2, 30, 5, generator=generator)
    assert lmc.ot.wasserstein_distance(x, y) == pytest.approx(lmc.ot.wasserstein_distance(y, x), rel=1e-10)
    assert lmc.ot.wasserstein_distance(x, y) > 0.1


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="x has 3 points and y has 4"):
        lmc.ot.wasserstein_distance(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x lives in dimension 2 and y in dimension 3"):
        lmc.ot.wasserstein_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="p must be >= 1"):
        lmc.ot.wasserstein_distance(torch.zeros(3), torch.zeros(3), p=0.5)
    with pytest.raises(ValueError, match=r"n >= 1"):
        lmc.ot.wasserstein_distance(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        lmc.ot.wasserstein_distance(torch.tensor([0.0, float("nan")]), torch.zeros(2))


def test_transport_permutation_recovers_a_planted_shuffle(generator):
    x = torch.randn(64, 6, generator=generator)
    shuffle = torch.randperm(64, generator=generator)
    y = x[shuffle] + 1e-3 * torch.randn(64, 6, generator=generator)
    plan = lmc.ot.transport_permutation(x, y, metric=torch.diag(torch.arange(1.0, 7.0)))
    torch.testing.assert_close(y[plan.indices], x, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match=r"metric has shape \(5, 5\)"):
        lmc.ot.transport_permutation(x, y, metric=torch.eye(5))


@pytest.mark.parametrize("d", [1, 3, 17])
def test_effective_dimension_of_the_identity_is_d(d):
    assert lmc.ot.effective_dimension(2.5 * torch.eye(d)) == pytest.approx(d)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_effective_dimension_of_a_rank_k_projector_is_k(k, generator):
    basis = torch.linalg.qr(torch.randn(12, k, generator=generator, dtype=torch.float64))[0]
    assert lmc.ot.effective_dimension(basis @ basis.T) == pytest.approx(k)


def test_effective_dimension_lies_between_one_and_the_rank(generator):
    factor = torch.randn(9, 4, generator=generator, dtype=torch.float64) * torch.tensor([10.0, 1.0, 0.1, 0.01])
    value = lmc.ot.effective_dimension(factor @ factor.T)
    assert 1.0 <= value < 4.0


def test_effective_dimension_refuses_bad_matrices():
    with pytest.raises(ValueError, match="expected a square matrix"):
        lmc.ot.effective_dimension(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not symmetric"):
        lmc.ot.effective_dimension(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        lmc.ot.effective_dimension(torch.diag(torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match="the matrix is zero"):
        lmc.ot.effective_dimension(torch.zeros(3, 3))


def test_cloud_dimension_through_the_data_sees_only_the_data_subspace(generator):
    weight = torch.randn(200, 10, generator=generator, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(10, 2, generator=generator, dtype=torch.float64))[0]
    second = basis @ basis.T  # inputs spread on a plane
    root = basis @ basis.T  # the square root of a projector is itself
    assert lmc.ot.cloud_dimension(weight) == pytest.approx(lmc.ot.effective_dimension(weight.T @ weight))
    assert lmc.ot.cloud_dimension(weight) > 8
    assert lmc.ot.cloud_dimension(weight, second) == pytest.approx(
        lmc.ot.effective_dimension(root @ weight.T @ weight @ root)
    )
    assert lmc.ot.cloud_dimension(weight, second) <= 2 + 1e-9
    with pytest.raises(ValueError, match="fan-in 10 need"):
        lmc.ot.cloud_dimension(weight, torch.eye(3))


def relu_mlp(seed):
    torch.manual_seed(seed)
    return lmc.MLP(lmc.MLPConfig(7, (12, 9, 10), 3))


def test_input_moments_are_the_uncentred_moments_of_each_linear_input(generator):
    model = relu_mlp(0)
    x = torch.randn(40, 7, generator=generator)
    moments = lmc.ot.input_moments(model, [(x[:25], None), (x[25:], None)])
    assert set(moments) == {"fc1", "fc2", "fc3", "fc4"}
    torch.testing.assert_close(moments["fc1"].second, x.double().T @ x.double() / 40)
    hidden = model.act1(model.fc1(x)).detach().double()
    torch.testing.assert_close(moments["fc2"].mean, hidden.mean(0))
    augmented = moments["fc2"].augmented
    assert augmented.shape == (13, 13) and augmented[-1, -1] == 1
    torch.testing.assert_close(augmented[:-1, -1], hidden.mean(0))
    with pytest.raises(ValueError, match="yielded no batches"):
        lmc.ot.input_moments(model, [])


def planted_pair(generator):
    a = relu_mlp(0)
    b = lmc.transform(a, lmc.random_transform(lmc.spec_for(a), ("permutation",), generator))
    return a, b


def test_euclidean_ot_matching_recovers_a_planted_permutation(generator):
    a, b = planted_pair(generator)
    alignment = lmc.ot.ot_matching(a, b)
    assert all(t.kind == "permutation" for t in alignment.transforms.values())
    assert alignment.history == pytest.approx((0.0, 0.0, 0.0), abs=1e-10)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(alignment.apply(b).state_dict()[name], tensor, msg=name)


def test_covariance_ot_matching_recovers_a_planted_permutation(generator):
    a, b = planted_pair(generator)
    moments = lmc.ot.input_moments(a, [(torch.randn(64, 7, generator=generator), None)])
    aligned = lmc.ot.ot_matching(a, b, moments=moments).apply(b)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(aligned.state_dict()[name], tensor, msg=name)


def test_covariance_cost_is_the_mean_squared_pre_activation_gap(generator):
    a, b = relu_mlp(0), relu_mlp(1)
    x = torch.randn(100, 7, generator=generator)
    alignment = lmc.ot.ot_matching(a, b, moments=lmc.ot.input_moments(a, [(x, None)]))
    aligned = alignment.apply(b)
    with torch.no_grad():
        gap = (a.fc1(x) - aligned.fc1(x)).double()
    assert alignment.history[0] == pytest.approx(float((gap**2).mean()), rel=1e-6)  # mean over neurons and data


def test_covariance_matching_beats_euclidean_on_pre_activations(generator):
    a, b = relu_mlp(0), relu_mlp(1)
    x = torch.randn(100, 7, generator=generator) * torch.tensor([5.0, 5.0, 0.1, 0.1, 0.1, 0.1, 0.1])
    moments = lmc.ot.input_moments(a, [(x, None)])
    with torch.no_grad():
        alignments = (lmc.ot.ot_matching(a, b), lmc.ot.ot_matching(a, b, moments=moments))
        gaps = [float(((a.fc1(x) - alignment.apply(b).fc1(x)) ** 2).mean()) for alignment in alignments]
    assert gaps[1] <= gaps[0]


def test_layer_dimensions_are_reported_per_hidden_layer(generator):
    a = relu_mlp(0)
    moments = lmc.ot.input_moments(a, [(torch.randn(64, 7, generator=generator), None)])
    raw, seen = lmc.ot.layer_dimensions(a), lmc.ot.layer_dimensions(a, moments)
    assert set(raw) == set(seen) == {"fc1", "fc2", "fc3"}
    assert all(1 <= value <= 10 for value in raw.values())
    neurons = lmc.ot.incoming_weights(a.state_dict(), lmc.spec_for(a).spaces["fc1"])
    assert neurons.shape == (12, 8)  # [w_i, b_i]
    assert seen["fc1"] == pytest.approx(lmc.ot.cloud_dimension(neurons, moments["fc1"].augmented))


def test_ot_matching_refuses_mismatched_models_and_missing_moments(generator):
    a = relu_mlp(0)
    with pytest.raises(ValueError, match="models differ at"):
        lmc.ot.ot_matching(a, lmc.MLP(lmc.MLPConfig(7, (12, 9, 11), 3)))
    moments = lmc.ot.input_moments(a, [(torch.randn(8, 7, generator=generator), None)])
    del moments["fc2"]
    with pytest.raises(KeyError, match="no input moments for 'fc2'"):
        lmc.ot.ot_matching(a, relu_mlp(1), moments=moments)


def test_activation_dimensions_read_the_moments_of_each_hidden_layer(generator):
    a = relu_mlp(0)
    moments = lmc.ot.input_moments(a, [(torch.randn(64, 7, generator=generator), None)])
    dimensions = lmc.ot.activation_dimensions(a, moments)
    assert list(dimensions) == ["fc1", "fc2", "fc3"]
    assert dimensions["fc2"] == pytest.approx(lmc.ot.effective_dimension(moments["fc3"].second))
    del moments["fc4"]
    with pytest.raises(ValueError, match="space 'fc3': need one reading Linear"):
        lmc.ot.activation_dimensions(a, moments)
