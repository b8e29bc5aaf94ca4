"""No public function modifies its inputs: every tensor, parameter object, training flag, requires_grad
flag and hook of the models, and every tensor of the data, is the same after the call as before."""

import copy

import pytest
import torch
from torch import nn

import lmc_lib as lmc
from lmc_lib.evaluation import evaluate_mixtures
from strategies import build_mlp
from test_barrier import classification_data

CONFIG = lmc.MLPConfig(6, (8, 8), 3)


def fingerprint(model: nn.Module) -> dict:
    """Everything about ``model`` that a call could change, in comparable form (tensors cloned)."""
    modules = list(model.named_modules(remove_duplicate=False))
    parameters = model.named_parameters(remove_duplicate=False)
    return {
        "tensors": {name: (t.detach().clone(), t.dtype, t.device) for name, t in model.state_dict().items()},
        "parameters": [(name, id(p), p.requires_grad, p.grad) for name, p in parameters],
        "training": [(name, m.training) for name, m in modules],
        "hooks": [(name, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                  for name, m in modules],
        "modules": [(name, id(m), type(m)) for name, m in modules],
    }


def data_fingerprint(data) -> list:
    return [(id(x), x.clone(), id(y), y.clone()) for x, y in data]


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    tensors_before, tensors_after = before.pop("tensors"), after.pop("tensors")
    assert tensors_before.keys() == tensors_after.keys()
    for name, (tensor, dtype, device) in tensors_before.items():
        other, other_dtype, other_device = tensors_after[name]
        assert (dtype, device) == (other_dtype, other_device) and torch.equal(tensor, other), name
    assert before == after


def assert_same_data(before: list, after: list) -> None:
    assert len(before) == len(after)
    for (id_x, x, id_y, y), (id_x2, x2, id_y2, y2) in zip(before, after):
        assert (id_x, id_y) == (id_x2, id_y2) and torch.equal(x, x2) and torch.equal(y, y2)


def odd_model(seed: int, hook: bool = False) -> nn.Module:
    """An MLP with mixed training flags, a frozen tensor and (optionally) a forward hook."""
    model = build_mlp(CONFIG, seed).train()
    model.act1.eval()
    model.fc1.bias.requires_grad_(False)
    if hook:
        model.act2.register_forward_hook(lambda module, args, out: out)
    return model


CALLS = {
    "barrier vmap": lambda a, b, data: lmc.barrier(a, b, data, 5, strategy="vmap", memory_budget=1, progress=False),
    "barrier loop": lambda a, b, data: lmc.barrier(a, b, data, 5, strategy="loop", progress=False),
    "evaluate_mixtures": lambda a, b, data: evaluate_mixtures([a, b, a], [[0.2, 0.3, 0.5], [0, 1, 0]], data,
                                                              progress=False),
    "evaluate": lambda a, b, data: lmc.evaluate(a, data),
    "interpolate": lambda a, b, data: lmc.interpolate(a, b, 0.3),
    "mix": lambda a, b, data: lmc.evaluation.mix([a, b], [0.5, 0.5]),
    "input_moments": lambda a, b, data: lmc.ot.input_moments(a, data),
}


@pytest.mark.parametrize("hook", [False, True], ids=["plain", "hooked"])
@pytest.mark.parametrize("call", CALLS)
def test_models_and_data_are_untouched(call, hook):
    if hook and call == "barrier vmap":
        pytest.skip("a hooked model is refused by the stacked path (tested in test_evaluation)")
    a, b = odd_model(0, hook), odd_model(1, hook)
    data = classification_data(6, 3)
    before = fingerprint(a), fingerprint(b), data_fingerprint(data)
    CALLS[call](a, b, data)
    assert_same(before[0], fingerprint(a))
    assert_same(before[1], fingerprint(b))
    assert_same_data(before[2], data_fingerprint(data))


def test_train_leaves_the_built_model_and_the_data_untouched():
    outside = odd_model(0, hook=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    data = lmc.TensorData(x, x[:, :3].argmax(1), "first three")
    before, tensors = fingerprint(outside), (data.inputs.clone(), data.targets.clone(), id(data.inputs))
    config = lmc.TrainConfig(epochs=2, batch_size=16, lr=1e-2)
    trained = lmc.train(lambda: outside, data, config, seed=0, progress=False)
    assert trained is not outside
    assert_same(before, fingerprint(outside))
    assert torch.equal(data.inputs, tensors[0]) and torch.equal(data.targets, tensors[1])
    assert id(data.inputs) == tensors[2]


def test_input_moments_restores_every_training_flag():
    model = odd_model(0)
    flags = [m.training for m in model.modules()]
    lmc.ot.input_moments(model, classification_data(6, 3))
    assert [m.training for m in model.modules()] == flags and flags != [True] * len(flags)


def test_fingerprint_sees_each_kind_of_change():
    """The fingerprint is not blind: each change a call might make shows in it."""
    model = odd_model(0)
    changes = [
        lambda m: m.fc1.weight.data.add_(1),
        lambda m: m.act1.train(),
        lambda m: m.fc1.bias.requires_grad_(True),
        lambda m: m.fc2.register_forward_hook(lambda *args: None),
        lambda m: setattr(m.fc2, "weight", nn.Parameter(m.fc2.weight.detach().clone())),
    ]
    for change in changes:
        changed = copy.deepcopy(model)
        before = fingerprint(changed)
        change(changed)
        with pytest.raises(AssertionError):
            assert_same(before, fingerprint(changed))
