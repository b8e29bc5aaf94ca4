"""lmc.save / lmc.load: exact round trips for every family and form, native formats, the sidecar, refusals."""

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2LMHeadModel, GPT2Model

import lmc_lib as lmc
from contract import max_relative_error, outputs, same_state
from lmc_lib import io
from test_models_gpt2 import gpt2, tokens
from test_models_vit import images, vit

GPT = dict(n_embd=16, n_layer=2, n_head=2, n_inner=24)
VIT = dict(embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


def _wide(model: nn.Module) -> nn.Module:
    return lmc.circuit_pair(model, model)[1]


def _lifted(model: nn.Module) -> nn.Module:
    return lmc.transform(model, {"residual": lmc.Orthogonal.random(16, 32, torch.Generator().manual_seed(0))})


def _mlp(double: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = lmc.MLP(lmc.MLPConfig(12, (10, 8), 4))
    return model.double() if double else model


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    layers = (nn.Flatten(), nn.Linear(12, 10), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(10, 4, bias=False))
    return nn.Sequential(*layers)


# (builder, the storage save picks, whether the form is canonical)
MODELS = {
    "gpt2": (lambda: gpt2(GPT, canonical=False), "transformers", False),
    "gpt2-tied-eager": (lambda: gpt2({**GPT, "attention": "eager"}, canonical=False), "transformers", False),
    "gpt2-model": (lambda: gpt2(GPT, canonical=False, cls=GPT2Model), "transformers", False),
    "gpt2-canonical": (lambda: gpt2(GPT), "lmc_lib", True),
    "gpt2-wide-heads": (lambda: _wide(gpt2(GPT)), "lmc_lib", True),
    "gpt2-lifted": (lambda: _lifted(gpt2(GPT)), "lmc_lib", True),
    "vit": (lambda: vit(VIT, canonical=False), "timm", False),
    "vit-relu-avg": (lambda: vit(dict(embed_dim=24, depth=2, num_heads=4, mlp_ratio=1.5, act_layer=nn.ReLU,
                                      global_pool="avg", qkv_bias=False, drop_path_rate=0.1), canonical=False),
                     "timm", False),
    "vit-no-class-token": (lambda: vit(dict(embed_dim=16, depth=1, num_heads=2, global_pool="avg", class_token=False,
                                            img_size=(8, 12), proj_bias=False), canonical=False), "timm", False),
    "vit-layernorm-eps": (lambda: vit({**VIT, "norm_layer": partial(nn.LayerNorm, eps=1e-5)}, canonical=False),
                          "lmc_lib", False),
    "vit-canonical": (lambda: vit(VIT), "lmc_lib", True),
    "vit-wide-heads": (lambda: _wide(vit(VIT)), "lmc_lib", True),
    "vit-native-wide-heads": (lambda: _wide(vit(VIT, canonical=False)), "lmc_lib", False),
    "mlp": (_mlp, "lmc_lib", False),
    "mlp-float64": (partial(_mlp, True), "lmc_lib", False),
    "sequential": (_sequential, "lmc_lib", False),
}


def _inputs(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    family = lmc.family.family_of(model).name
    if family == "hf-gpt2":
        return tokens(generator)
    if family == "timm-vit":
        return images(model, generator)
    return torch.randn(5, 12, generator=generator, dtype=next(model.parameters()).dtype)


def _hidden(output):
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_exact(name, tmp_path):
    build, storage, canonical = MODELS[name]
    model = build().eval()
    lmc.save(model, tmp_path / "m")
    loaded = lmc.load(tmp_path / "m")
    state, state_loaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == state_loaded.keys()
    for key, tensor in state.items():
        assert tensor.dtype == state_loaded[key].dtype and torch.equal(tensor, state_loaded[key]), key
    assert type(loaded) is type(model) and not loaded.training
    lmc.alignment.compare_architectures(lmc.alignment.architecture(model), lmc.alignment.architecture(loaded))
    x = _inputs(model)
    if "eager" in name:  # transformers loads with its default attention implementation (sdpa): rounding differs
        assert max_relative_error(_hidden(outputs(model, x)), _hidden(outputs(loaded, x))) <= 1e-6
    else:
        assert torch.equal(_hidden(outputs(model, x)), _hidden(outputs(loaded, x)))
    sidecar = io.read_sidecar(tmp_path / "m")
    assert sidecar["storage"] == storage and sidecar["canonical"] is canonical
    assert sidecar["family"] == lmc.family.family_of(model).name
    assert {"lmc_lib", "torch", "transformers", "timm"} <= sidecar["versions"].keys()
    assert [p["name"] for p in sidecar["passes"]] == (["canonicalize"] if canonical else [])


def test_a_tied_gpt2_whose_head_was_changed_is_not_stored_as_tied(tmp_path):
    model = gpt2(GPT, canonical=False)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() + 1)  # untied, config still says tied
    lmc.save(model, tmp_path / "m")
    assert io.read_sidecar(tmp_path / "m")["storage"] == "lmc_lib" and same_state(model, lmc.load(tmp_path / "m"))


def test_native_gpt2_loads_with_transformers_alone(tmp_path):
    model = gpt2(GPT, canonical=False)
    lmc.save(model, tmp_path / "m")
    alone = GPT2LMHeadModel.from_pretrained(tmp_path / "m")
    x = tokens(torch.Generator().manual_seed(0))
    assert max_relative_error(outputs(model, x), outputs(alone, x)) <= 1e-6


def test_native_vit_loads_with_timm_alone(tmp_path):
    model = vit(VIT, canonical=False)
    lmc.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "timm_config.json").read_text())
    assert config["class"] == "timm.models.vision_transformer.VisionTransformer"
    alone = VisionTransformer(**config["kwargs"])
    alone.load_state_dict(load_file(tmp_path / "m" / "model.safetensors"))
    x = images(model, torch.Generator().manual_seed(0))
    assert torch.equal(outputs(model, x), outputs(alone, x))


def test_canonical_folder_is_not_mistaken_for_a_transformers_checkpoint(tmp_path):
    lmc.save(gpt2(GPT), tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()
    with pytest.raises(OSError):
        GPT2LMHeadModel.from_pretrained(tmp_path / "m")


def test_sidecar_records_the_alignment_and_its_transforms(tmp_path):
    a, b = gpt2(GPT, seed=0), gpt2(GPT, seed=1)
    al = lmc.weight_matching(a, b, classes="invertible heads")
    lmc.save(al.apply(b), tmp_path / "m", alignment=al, method="weight", classes="invertible heads", seed=3,
             passes=["canonicalize"], sources={"a": "x", "b": "y"})
    sidecar = io.read_sidecar(tmp_path / "m")
    assert [p["name"] for p in sidecar["passes"]] == ["canonicalize", "align"]
    align = sidecar["passes"][1]
    assert (align["method"], align["classes"], align["seed"]) == ("weight", "invertible heads", 3)
    assert align["history"] == list(al.history) and sidecar["sources"] == {"a": "x", "b": "y"}
    transforms = io.load_transforms(tmp_path / "m")
    assert transforms.keys() == al.transforms.keys()
    assert {t.kind for t in transforms.values()} == {"orthogonal", "permutation", "invertible"}
    for name, t in transforms.items():
        assert type(t) is type(al.transforms[name]) and torch.equal(t.matrix, al.transforms[name].matrix)
        assert sidecar["transforms"][name]["kind"] == t.kind
    assert lmc.spec_for(b) == lmc.spec_for(lmc.load(tmp_path / "m"))
    x = tokens(torch.Generator().manual_seed(0))
    assert max_relative_error(outputs(b, x), outputs(lmc.transform(b, transforms), x)) <= 1e-5


def test_semi_permutation_transforms_round_trip(tmp_path):
    model = _mlp()
    t = {"fc1": lmc.SemiPermutation.random(10, 13, torch.Generator().manual_seed(0))}
    al = lmc.Alignment(t, lmc.spec_for(model))
    wide = al.apply(model)
    lmc.save(wide, tmp_path / "m", alignment=al, method="manual", classes=("semi_permutation",))
    loaded = lmc.load(tmp_path / "m")
    assert loaded.config.widths == (13, 8) and same_state(wide, loaded)
    x = _inputs(wide)  # transform leaves fc2.weight non-contiguous, so the products round differently
    assert max_relative_error(outputs(model, x), outputs(loaded, x)) <= 1e-6
    assert torch.equal(io.load_transforms(tmp_path / "m")["fc1"].weights, t["fc1"].weights)


def test_a_non_empty_folder_is_refused_unless_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        lmc.save(_mlp(), tmp_path)
    lmc.save(_mlp(), tmp_path, overwrite=True)
    lmc.save(vit(VIT, canonical=False), tmp_path, overwrite=True)  # another storage: the old files go
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "model_config.json").exists()
    assert isinstance(lmc.load(tmp_path), VisionTransformer)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        lmc.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        lmc.load(tmp_path / "missing")


def test_a_model_that_cannot_be_rebuilt_is_refused(tmp_path):
    class Gelu2(nn.GELU):
        pass

    model = nn.Sequential(nn.Linear(4, 3), Gelu2(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        lmc.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
