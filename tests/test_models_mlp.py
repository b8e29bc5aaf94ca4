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
    relu, gelu, linear = (
        lmc.spec_for(lmc.MLP(lmc.MLPConfig(4, (3, 3), 2, activation=a))) for a in ("relu", "gelu", "identity")
    )
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


# -- stacks the spec cannot describe are refused, naming the module ----------------------------------


class Doubled(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class Scaled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class Scale(nn.Module):
    def forward(self, weight):
        return 2 * weight


def parametrized() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    torch.nn.utils.parametrize.register_parametrization(model[2], "weight", Scale())
    return model


def hooked(where: int, pre: bool) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    module = model if where < 0 else model[where]
    if pre:
        module.register_forward_pre_hook(lambda m, args: args)
    else:
        module.register_forward_hook(lambda m, args, out: out)
    return model


def shared(module: nn.Module, *around: nn.Module) -> nn.Sequential:
    return nn.Sequential(around[0], module, around[1], module, around[2])


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), TypeError,
         r"unsupported module '0' \(Conv2d\)"),
        (lambda: nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)), TypeError, r"unsupported module '0' \(LayerNorm\)"),
        (lambda: nn.Sequential(nn.Linear(4, 6), nn.Flatten(), nn.Linear(6, 2)), TypeError,
         r"unsupported module '1' \(Flatten\)"),
        (lambda: Doubled(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), TypeError,
         "Doubled overrides nn.Sequential.forward"),
        (lambda: nn.Sequential(Scaled(4, 6), nn.ReLU(), nn.Linear(6, 2)), TypeError,
         r"unsupported module '0' \(Scaled\).*\(not subclasses\)"),
        (lambda: shared(nn.ReLU(), nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)), ValueError,
         "modules '1' and '3' are the same ReLU object; give each position its own module"),
        (lambda: shared(nn.Linear(6, 6), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), ValueError,
         "modules '1' and '3' are the same Linear object"),
        (lambda: hooked(1, pre=False), ValueError, r"module '1' \(ReLU\) has forward hooks"),
        (lambda: hooked(2, pre=True), ValueError, r"module '2' \(Linear\) has forward hooks"),
        (lambda: hooked(-1, pre=False), ValueError, r"module '<the model itself>' \(Sequential\) has forward hooks"),
        (parametrized, ValueError, r"module '2' \(ParametrizedLinear\) has parametrizations of \['weight'\]"),
    ],
    ids=["conv2d", "layernorm", "late flatten", "own forward", "linear subclass", "reused relu", "reused linear",
         "forward hook", "pre-hook", "hook on the stack", "parametrization"],
)
def test_stacks_the_spec_cannot_describe_are_refused(build, error, message):
    model = build()
    with pytest.raises(error, match=f"MLP spec: .*{message}"):
        lmc.spec_for(model)
    with pytest.raises(error, match=f"MLP spec: .*{message}"):
        lmc.canonicalize(model)
    with pytest.raises(error, match=message):
        lmc.family.family_of(model).split_stem(model)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"widths": (8, 0)}, ValueError, r"widths\[1\] must be a positive int, got 0"),
        ({"widths": (-3,)}, ValueError, r"widths\[0\] must be a positive int, got -3"),
        ({"widths": (2.5,)}, ValueError, r"widths\[0\] must be a positive int, got 2.5"),
        ({"widths": 8}, TypeError, "widths must be a sequence of layer widths, e.g. \\(512, 512\\); got 8"),
        ({"in_features": 0}, ValueError, "in_features must be a positive int, got 0"),
        ({"out_features": True}, ValueError, "out_features must be a positive int, got True"),
        ({"activation": "ReLU"}, ValueError, "unknown activation 'ReLU'"),
    ],
)
def test_mlp_config_refuses_bad_sizes(options, error, message):
    with pytest.raises(error, match=f"MLPConfig: {message}"):
        lmc.MLPConfig(**options)


def test_mlp_config_reads_any_sequence_of_widths():
    assert lmc.MLPConfig(widths=(w for w in [4, 5])).widths == (4, 5) and lmc.MLPConfig(widths=[3]).widths == (3,)
    with pytest.raises(TypeError, match="MLP: config must be an MLPConfig, got dict"):
        lmc.MLP({"widths": (8,)})


def test_the_stem_of_a_described_stack_is_parameter_free_up_to_the_first_linear():
    model = lmc.MLP(lmc.MLPConfig(6, (5,), 3))
    stem, rest = lmc.family.family_of(model).split_stem(model)
    assert list(stem._modules) == ["flatten", "fc1"] and list(rest._modules) == ["act1", "fc2"]
    x = torch.randn(4, 6)
    torch.testing.assert_close(rest(stem(x)), model(x))
