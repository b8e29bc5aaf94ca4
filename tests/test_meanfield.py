"""Mean-field two-layer networks: the particle view, mean-field SGD, the teacher task, OT matching."""

import pytest
import torch

import lmc_lib as lmc
from lmc_lib import meanfield as mf


def test_the_network_is_the_average_of_its_particles(generator):
    model = mf.meanfield_net(5, 30, seed=0)
    x = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    theta = mf.particles(model)
    w, b, a = theta[:, :5], theta[:, 5], theta[:, 6]
    expected = (torch.tanh(x @ w.T + b) * a).mean(1)
    torch.testing.assert_close(model(x.float()).squeeze(-1).double(), expected, rtol=1e-5, atol=1e-6)


def test_it_is_an_ordinary_mlp_for_the_library(generator):
    model = mf.meanfield_net(3, 8, seed=0)
    spec = lmc.spec_for(model)
    assert list(spec.spaces) == ["fc1"] and spec.spaces["fc1"].classes == ("permutation",)
    planted = lmc.random_transform(spec, ("permutation",), generator)
    torch.testing.assert_close(mf.particles(lmc.transform(model, planted)), mf.particles(model)[planted["fc1"].indices])


def test_closed_form_step_equals_autograd_sgd_with_mean_field_rates():
    data, _ = mf.teacher_data(mf.TeacherTask(dim=3, train_size=50, test_size=1))
    model, config = mf.meanfield_net(3, 16, seed=0), mf.MeanFieldSGD(steps=1, batch_size=10, lr=0.3)
    index = torch.randint(50, (10,), generator=torch.Generator().manual_seed(7))
    reference = mf.meanfield_net(3, 16, seed=0)
    mf.square_loss(reference(data.inputs[index]), data.targets[index]).mean().backward()
    with torch.no_grad():
        for param, step in (
            (reference.fc1.weight, 0.3 * 16),
            (reference.fc1.bias, 0.3 * 16),
            (reference.fc2.weight, 0.3 / 16),
        ):
            param -= step * param.grad
    stepped = mf.train_meanfield(model, data, config, seed=7)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(stepped.state_dict()[name], tensor, msg=name)


def test_training_fits_the_teacher_and_leaves_the_input_alone():
    train, test = mf.teacher_data(mf.TeacherTask(dim=4, train_size=500, test_size=200))
    model = mf.meanfield_net(4, 32, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = mf.train_meanfield(model, train, mf.MeanFieldSGD(steps=300), seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        losses = [float(mf.square_loss(m(test.inputs), test.targets).mean()) for m in (model, trained)]
    assert losses[1] < 0.2 * losses[0]


def test_train_pair_is_reproducible_and_independent():
    train, _ = mf.teacher_data(mf.TeacherTask(dim=3, train_size=200, test_size=1))
    config = mf.MeanFieldSGD(steps=20)
    a, b = mf.train_pair(train, 12, config)
    again, _ = mf.train_pair(train, 12, config)
    assert torch.equal(mf.particles(a), mf.particles(again))
    assert not torch.allclose(mf.particles(a), mf.particles(b))


def test_teacher_inputs_lie_on_a_subspace():
    train, test = mf.teacher_data(mf.TeacherTask(dim=10, intrinsic_dim=3, train_size=300, test_size=100), seed=2)
    assert train.inputs.shape == (300, 10) and test.inputs.shape == (100, 10) and train.targets.shape == (300,)
    assert torch.linalg.matrix_rank(train.inputs) == 3
    again, _ = mf.teacher_data(mf.TeacherTask(dim=10, intrinsic_dim=3, train_size=300, test_size=100), seed=2)
    assert torch.equal(again.targets, train.targets)
    with pytest.raises(ValueError, match=r"intrinsic_dim must lie in \[1, dim=4\]"):
        mf.TeacherTask(dim=4, intrinsic_dim=5)


@pytest.mark.parametrize("weighted", [False, True])
def test_particle_matching_recovers_a_planted_permutation(weighted, generator):
    train, _ = mf.teacher_data(mf.TeacherTask(dim=4, train_size=100, test_size=1))
    a = mf.meanfield_net(4, 40, seed=0)
    b = lmc.transform(a, lmc.random_transform(lmc.spec_for(a), ("permutation",), generator))
    moments = lmc.ot.input_moments(a, train.batches(50))["fc1"] if weighted else None
    aligned = mf.particle_matching(a, b, moments=moments).apply(b)
    torch.testing.assert_close(mf.particles(aligned), mf.particles(a))
    assert mf.midpoint_error(a, aligned, train.inputs) < 1e-6 < mf.midpoint_error(a, b, train.inputs)


def test_square_loss_drives_the_barrier():
    train, test = mf.teacher_data(mf.TeacherTask(dim=3, train_size=200, test_size=100))
    model = mf.meanfield_net(3, 10, seed=0)
    losses = mf.square_loss(model(test.inputs), test.targets)
    assert losses.shape == test.targets.shape
    torch.testing.assert_close(losses, 0.5 * (model(test.inputs)[:, 0] - test.targets) ** 2)
    assert mf.square_barrier(model, model, test) == pytest.approx(0.0, abs=1e-7)
    other = mf.meanfield_net(3, 10, seed=1)
    curve = lmc.barrier(model, other, test.batches(50), loss_fn=mf.square_loss, progress=False)
    assert mf.square_barrier(model, other, test) == pytest.approx(curve.barrier, rel=1e-5)


def test_other_models_are_refused():
    data, _ = mf.teacher_data(mf.TeacherTask(dim=3, train_size=10, test_size=1))
    with pytest.raises(ValueError, match="expected a mean-field net"):
        mf.particles(lmc.MLP(lmc.MLPConfig(3, (4,), 1)))
    with pytest.raises(ValueError, match="expected a mean-field net"):
        mf.train_meanfield(lmc.MLP(lmc.MLPConfig(3, (4,), 2)), data, mf.MeanFieldSGD(steps=1), seed=0)
