"""The MLP family: adapter contract over depths, widths, activations and biases, plus its refusals."""

import pytest
import torch
from torch import nn

import lmc_lib as lmc
from contract import AdapterContract


class TestMLP(AdapterContract):
    CONFIGS = [
        lmc.MLPConfig(12, (16,), 3),
        lmc.MLPConfig(12, (16, 8, 24), 5, activation="relu"),
        lmc.MLPConfig(12, (10, 10), 4, activation="gelu", bias=False),
        lmc.MLPConfig(12, (9, 7), 4, activation="tanh"),
        lmc.MLPConfig(12, (8, 6), 4, activation="leaky_relu"),
        lmc.MLPConfig(12, (8, 6, 5), 4, activation="identity"),
    ]

    def build(self, config, seed):
        torch.manual_seed(seed)
        return lmc.MLP(config)

    def inputs(self, model, generator):
        return torch.randn(16, model.config.in_features, generator=generator)


def test_classes_follow_the_activation():
    relu, gelu, linear = (lmc.spec_for(lmc.MLP(lmc.MLPConfig(4, (3, 3), 2, activation=a))) for a in ("relu", "gelu", "identity"))
    assert relu.spaces["fc1"].classes == ("permutation", "semi_permutation")
    assert gelu.spaces["fc1"].classes == ("permutation",)
    assert linear.spaces["fc1"].classes == ("permutation", "semi_permutation", "orthogonal", "invertible")


def test_semi_permutation_gives_an_equivalent_wider_mlp(generator):
    model = lmc.MLP(lmc.MLPConfig(6, (5, 4), 3))
    wide = lmc.transform(model, lmc.random_transform(lmc.spec_for(model), ("semi_permutation",), generator, expand=2.0))
    assert wide.config.widths == (10, 8) and wide.fc1.out_features == 10 and wide.fc2.in_features == 10
    x = torch.randn(20, 6, generator=generator)
    torch.testing.assert_close(wide(x), model(x), rtol=1e-5, atol=1e-6)


def test_plain_sequential_is_described():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.1), nn.Linear(6, 2))
    spec = lmc.spec_for(model)
    assert list(spec.spaces) == ["0"] and spec.spaces["0"].probe == "1"


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    with pytest.raises(TypeError, match=r"unsupported module '1' \(BatchNorm1d\)"):
        lmc.spec_for(model)


def test_unknown_family_is_refused():
    with pytest.raises(TypeError, match="no symmetry spec for Conv2d"):
        lmc.spec_for(nn.Conv2d(1, 2, 3))


def test_classes_can_be_chosen_per_group(generator):
    a = lmc.MLP(lmc.MLPConfig(6, (8, 8), 3))
    spec = lmc.spec_for(a)
    assert {s.group for s in spec.spaces.values()} == {"hidden"}
    b = lmc.transform(a, lmc.random_transform(spec, {"hidden": ("permutation",)}, generator))
    by_group = lmc.weight_matching(a, b, classes={"hidden": ("permutation",)})
    plain = lmc.weight_matching(a, b)
    assert all(torch.equal(by_group.transforms[n].indices, plain.transforms[n].indices) for n in spec.spaces)
    with pytest.raises(ValueError, match="space groups \\['residual'\\] that the mlp spec does not have"):
        lmc.weight_matching(a, b, classes={"residual": ("orthogonal",)})
    with pytest.raises(ValueError, match="space groups \\['residual'\\] that the mlp spec does not have"):
        lmc.random_transform(spec, {"residual": ("orthogonal",)}, generator)
