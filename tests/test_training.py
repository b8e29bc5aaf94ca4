"""Training: seeded and reproducible, cached on disk, loss goes down; evaluate() and the config checks."""

import copy
import math

import pytest
import torch
from torch import nn

import lmc_lib as lmc
import lmc_lib.training as training
from contract import same_state

CONFIG = lmc.TrainConfig(epochs=10, batch_size=32, lr=3e-2)
MODEL = lmc.MLPConfig(8, (16,), 3)


def teacher_data(n: int = 192) -> lmc.TensorData:
    """Labels of a fixed random linear teacher: a problem a small MLP learns in a few epochs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=generator)
    teacher = torch.randn(8, 3, generator=generator)
    return lmc.TensorData(x, (x @ teacher).argmax(1), "teacher")


def build() -> lmc.MLP:
    return lmc.MLP(MODEL)


def fit(seed: int, **options) -> nn.Module:
    return lmc.train(build, teacher_data(), CONFIG, seed=seed, progress=False, **options)


def test_same_seed_gives_identical_weights():
    assert same_state(fit(0), fit(0))


def test_different_seeds_give_different_weights():
    assert not torch.equal(fit(0).fc1.weight, fit(1).fc1.weight)


def test_training_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    fit(0)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_training_on_the_cpu_seeds_no_accelerator(monkeypatch):
    """torch.manual_seed would reseed every CUDA (and MPS, XPU) generator of the caller: train must not call it."""
    calls = []
    for module, name in [(torch.cuda, "manual_seed_all"), (torch.cuda, "manual_seed"), (torch.mps, "manual_seed"),
                         (torch.xpu, "manual_seed_all"), (torch.xpu, "manual_seed")]:
        monkeypatch.setattr(module, name, lambda *args, _name=f"{module.__name__}.{name}": calls.append(_name))
    first = fit(0)
    assert calls == [] and same_state(first, fit(0))


DROPOUT = lmc.TrainConfig(epochs=2, batch_size=32, lr=1e-2)


def build_with_dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_leaves_the_callers_cuda_generator_alone_and_seeds_dropout_there():
    state = torch.cuda.get_rng_state()
    on_cpu = lmc.train(build_with_dropout, teacher_data(), DROPOUT, seed=0, progress=False)
    first = lmc.train(build_with_dropout, teacher_data(), DROPOUT, seed=0, progress=False, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), state)
    again = lmc.train(build_with_dropout, teacher_data(), DROPOUT, seed=0, progress=False, device="cuda")
    assert same_state(first, again) and not same_state(first.cpu(), on_cpu)


def test_loss_decreases_and_the_model_is_returned_in_eval_mode():
    data = teacher_data()
    before = lmc.evaluate(lmc.train(build, data, lmc.TrainConfig(epochs=0), seed=0, progress=False), data.batches())
    model = fit(0)
    after = lmc.evaluate(model, data.batches())
    assert after[0] < 0.25 * before[0] and after[1] > 0.95
    assert not model.training


def test_a_model_handed_in_by_build_is_not_modified():
    model = build().train()
    original = copy.deepcopy(model)
    trained = lmc.train(lambda: model, teacher_data(), CONFIG, seed=0, progress=False)
    assert trained is not model and not same_state(trained, model)
    assert same_state(model, original) and model.training


def test_second_call_loads_from_the_cache(tmp_path, monkeypatch):
    key = repr(MODEL)
    first = fit(0, cache_key=key, cache=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("trained although the weights are cached")

    monkeypatch.setattr(training, "_fit", refuse)
    second = fit(0, cache_key=key, cache=tmp_path)
    assert same_state(first, second) and not second.training
    # the key holds the seed, the config and the data: a change is a miss, which trains
    for options in (
        {"seed": 1},
        {"config": lmc.TrainConfig(epochs=11, batch_size=32, lr=3e-2)},
        {"data": teacher_data(100)},
    ):
        arguments = {"seed": 0, "config": CONFIG, "data": teacher_data(), **options}
        with pytest.raises(AssertionError, match="trained although"):
            lmc.train(
                build,
                arguments["data"],
                arguments["config"],
                seed=arguments["seed"],
                cache_key=key,
                cache=tmp_path,
                progress=False,
            )


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMC_CACHE_DIR", str(tmp_path))
    assert training.cache_dir() == tmp_path and training.cache_dir(tmp_path / "x") == tmp_path / "x"
    fit(0, cache_key="mlp")
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_train_refuses_arguments_of_the_wrong_kind():
    data = teacher_data()
    with pytest.raises(TypeError, match="train: build must be a function that returns a new model .* got MLP"):
        lmc.train(build(), data, CONFIG, seed=0, progress=False)
    with pytest.raises(TypeError, match="train: build\\(\\) must return an nn.Module, got OrderedDict"):
        lmc.train(lambda: build().state_dict(), data, CONFIG, seed=0, progress=False)
    with pytest.raises(TypeError, match="train: data must be a TensorData .* got list"):
        lmc.train(build, data.batches(32), CONFIG, seed=0, progress=False)
    with pytest.raises(TypeError, match="train: config must be a TrainConfig, got dict"):
        lmc.train(build, data, {"epochs": 1}, seed=0, progress=False)
    inputs = data.inputs.clone()
    inputs[5, 2] = float("nan")
    with pytest.raises(ValueError, match="train: the inputs of teacher hold NaN or infinite values"):
        lmc.train(build, lmc.TensorData(inputs, data.targets, "teacher"), CONFIG, seed=0, progress=False)


def test_evaluate_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="evaluate: model must be an nn.Module, got OrderedDict"):
        lmc.evaluate(build().state_dict(), teacher_data().batches())


def test_a_parameter_free_model_is_refused():
    with pytest.raises(ValueError, match="train: the Sequential has no parameters or buffers"):
        lmc.train(lambda: nn.Sequential(nn.Flatten()), teacher_data(), CONFIG, seed=0, progress=False)


def test_divergence_raises():
    exploding = lmc.TrainConfig(epochs=3, batch_size=32, lr=1e12, optimizer="sgd", schedule="constant")
    with pytest.raises(FloatingPointError, match="training diverged at epoch"):
        lmc.train(build, teacher_data(), exploding, seed=0, progress=False)


@pytest.mark.parametrize("optimizer, schedule, warmup, lr", [("sgd", "constant", 0, 0.1), ("adamw", "cosine", 5, 3e-2)])
def test_every_optimizer_and_schedule_trains(optimizer, schedule, warmup, lr):
    config = lmc.TrainConfig(
        epochs=8, batch_size=32, lr=lr, optimizer=optimizer, schedule=schedule, warmup_steps=warmup
    )
    data = teacher_data()
    assert lmc.evaluate(lmc.train(build, data, config, seed=0, progress=False), data.batches())[0] < 0.3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"epochs": -1}, "invalid epochs=-1"),
        ({"batch_size": 0}, "invalid batch_size=0"),
        ({"lr": 0.0}, "invalid lr=0.0"),
        ({"lr": float("nan")}, "invalid lr=nan"),
        ({"momentum": 1.0}, "invalid momentum=1.0"),
        ({"weight_decay": -0.1}, "invalid weight_decay=-0.1"),
        ({"warmup_steps": -5, "batch_size": -1}, "invalid batch_size=-1, warmup_steps=-5"),
        ({"epochs": 2.5}, "invalid epochs=2.5 .*need integers epochs >= 0"),
        ({"batch_size": True}, "invalid batch_size=True"),
        ({"warmup_steps": 1.0}, "invalid warmup_steps=1.0"),
        ({"patience": 0}, "invalid patience=0"),
        ({"patience": 1.5}, "invalid patience=1.5"),
    ],
)
def test_train_config_refuses_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        lmc.TrainConfig(**options)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(monkeypatch):
    """Scripted validation losses: best at epoch 2, then two worse epochs stop training with patience 2;
    the weights returned are those after epoch 2 (a constant schedule makes them a 2-epoch run's)."""
    scripted = iter([3.0, 2.0, 2.5, 2.6, 0.1, 0.1])
    calls = []

    def validation_loss(model, batches):
        calls.append(len(list(batches)))
        return next(scripted), 0.0

    monkeypatch.setattr(training, "evaluate", validation_loss)
    config = lmc.TrainConfig(epochs=6, batch_size=32, lr=3e-2, schedule="constant", patience=2)
    stopped = lmc.train(build, teacher_data(), config, seed=0, progress=False, validation=teacher_data(64))
    assert len(calls) == 4 and calls[0] == 2  # epochs 1-4 evaluated, on 64 examples in batches of 32
    two_epochs = lmc.train(build, teacher_data(), lmc.TrainConfig(epochs=2, batch_size=32, lr=3e-2,
                                                                  schedule="constant"), seed=0, progress=False)
    assert same_state(stopped, two_epochs) and not stopped.training


def test_early_stopping_needs_validation_data_and_patience_together():
    with pytest.raises(ValueError, match="early stopping needs both validation data and TrainConfig.patience"):
        lmc.train(build, teacher_data(), lmc.TrainConfig(patience=2), seed=0, progress=False)
    with pytest.raises(ValueError, match="validation=given, patience=None"):
        lmc.train(build, teacher_data(), CONFIG, seed=0, progress=False, validation=teacher_data(64))
    with pytest.raises(TypeError, match="validation must be a TensorData, got list"):
        lmc.train(build, teacher_data(), lmc.TrainConfig(patience=2), seed=0, progress=False,
                  validation=teacher_data(64).batches())


def test_early_stopping_is_part_of_the_cache_key(tmp_path, monkeypatch):
    config = lmc.TrainConfig(epochs=3, batch_size=32, lr=3e-2, patience=1)
    fit(0, cache_key="k", cache=tmp_path)
    lmc.train(build, teacher_data(), config, seed=0, progress=False, validation=teacher_data(64),
              cache_key="k", cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


# -- evaluate ------------------------------------------------------------------------------------


class ConstantLogits(nn.Module):
    """Logits [0, log 3] for every example: p = (1/4, 3/4), always predicts class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.0, math.log(3.0)]))
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.logits.expand(x.shape[0], 2)


def test_evaluate_by_hand():
    targets = torch.tensor([1, 1, 0, -100, 1])
    loss, accuracy = lmc.evaluate(
        ConstantLogits(), [(torch.zeros(3, 1), targets[:3]), (torch.zeros(2, 1), targets[3:])]
    )
    # three targets of class 1 (-log 3/4 each), one of class 0 (-log 1/4), one ignored
    assert loss == pytest.approx((3 * -math.log(0.75) - math.log(0.25)) / 4)
    assert accuracy == pytest.approx(3 / 4)


def test_evaluate_restores_every_module_flag():
    model = ConstantLogits().train()
    model.dropout.eval()
    lmc.evaluate(model, [(torch.zeros(2, 1), torch.tensor([0, 1]))])
    assert model.training and not model.dropout.training


def test_evaluate_refuses_data_without_targets():
    with pytest.raises(ValueError, match="evaluate: data yielded no targets"):
        lmc.evaluate(ConstantLogits(), [(torch.zeros(2, 1), torch.tensor([-100, -100]))])


def test_evaluate_refuses_a_non_finite_loss():
    model = ConstantLogits()
    with torch.no_grad():
        model.logits[1] = float("inf")  # log-softmax of [0, inf] is NaN
    with pytest.raises(ValueError, match="evaluate: the mean loss is nan; the model's outputs overflow or hold NaN"):
        lmc.evaluate(model, [(torch.zeros(2, 1), torch.tensor([0, 1]))])
