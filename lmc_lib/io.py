"""Save and load models with their history: :func:`save` and :func:`load`.

A saved folder holds the weights, what rebuilds the architecture, and a JSON sidecar ``lmc.json``:
the family, canonical or not, the passes applied (canonicalize, align with which method and classes,
...), the transforms of an alignment (``transforms.safetensors``), the seed, the versions of lmc_lib,
torch, transformers and timm. The weights are stored in one of two ways:

- **the model's own library**, when the model is still in that library's architecture (a LayerNorm
  GPT-2 or ViT aligned by permutations): ``save_pretrained`` for Hugging Face models; for a timm
  VisionTransformer ``model.safetensors`` and ``timm_config.json``, whose ``kwargs`` rebuild it as
  ``VisionTransformer(**kwargs)``. transformers or timm alone load such a folder.
- **lmc_lib's**: ``lmc_model.safetensors`` and ``model_config.json`` (the architecture the model was
  built from) for canonical Transformers (RMSNorm, centred residual), heads widened by
  :func:`~lmc_lib.circuits.circuit_pair`, and MLPs. :func:`load` builds that architecture, replays
  the structural passes (canonicalize, widen the heads), restores the scalar settings that differ
  (a lifted model's norm eps) and assigns the saved tensors: the state dict is bit-equal.

:func:`save` rebuilds the architecture itself before writing and refuses a model it could not
rebuild exactly, so a folder it writes always loads back.
"""

from __future__ import annotations

import inspect
import json
import platform
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .alignment import Alignment, architecture
from .canonical import RMSNorm
from .family import canonicalize, family_of
from .symmetry import SYMMETRY_CLASSES, Invertible, Orthogonal, Permutation, SemiPermutation, Transform

__all__ = ["save", "load", "read_sidecar", "load_transforms", "versions", "SIDECAR", "FORMAT_VERSION"]

SIDECAR = "lmc.json"
WEIGHTS = "model.safetensors"
#: lmc_lib's storage names its weights so that no library mistakes them for its own checkpoint
LMC_WEIGHTS = "lmc_model.safetensors"
MODEL_CONFIG = "model_config.json"
TIMM_CONFIG = "timm_config.json"
TRANSFORMS = "transforms.safetensors"
FORMAT_VERSION = 1
VIT_CLASS = "timm.models.vision_transformer.VisionTransformer"
#: files a save may write; ``overwrite=True`` removes these (and HF shards), nothing else
_OWN_FILES = (SIDECAR, WEIGHTS, LMC_WEIGHTS, MODEL_CONFIG, TIMM_CONFIG, TRANSFORMS, "config.json",
              "generation_config.json", "model.safetensors.index.json")
#: module attributes that say where a model came from, not what it computes
_BOOKKEEPING = frozenset({"name_or_path"})
#: timm activation names tried, in order, to name a ViT's MLP activation (None: timm's default, nn.GELU)
_TIMM_ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu", "silu", "quick_gelu", "tanh", "sigmoid", "leaky_relu")


def versions() -> dict[str, str | None]:
    """Versions of lmc_lib, python, torch, transformers, timm and safetensors (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("lmc_lib", "torch", "transformers", "timm", "safetensors"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


# --- transforms ---------------------------------------------------------------------------------

def _transform_tensor(t: Transform) -> Tensor:
    """The tensor that determines ``t``: a permutation's indices, a semi-permutation's weights, else T."""
    if isinstance(t, Permutation):
        return t.indices
    if isinstance(t, SemiPermutation):
        return t.weights
    return t.matrix


def _transform_from(kind: str, tensor: Tensor) -> Transform:
    if kind not in SYMMETRY_CLASSES:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {tuple(SYMMETRY_CLASSES)}")
    return {"permutation": Permutation, "semi_permutation": SemiPermutation,
            "orthogonal": Orthogonal, "invertible": Invertible}[kind](tensor)


def load_transforms(folder: str | Path) -> dict[str, Transform]:
    """The transforms (space name -> Transform) of the alignment recorded in ``folder``; {} if none."""
    folder = Path(folder)
    described = read_sidecar(folder).get("transforms") or {}
    if not described:
        return {}
    tensors = load_file(str(folder / TRANSFORMS))
    return {name: _transform_from(entry["kind"], tensors[name]) for name, entry in described.items()}


# --- describing and rebuilding the architecture -------------------------------------------------

def _single(module: nn.Module) -> tuple[str, dict]:
    """(class name, scalar settings) of ``module`` itself."""
    return architecture(module)[""]


def _timm_activation(act: nn.Module) -> str | None:
    """The timm ``act_layer`` name whose module equals ``act`` (class and settings)."""
    from timm.layers import get_act_layer

    for name in _TIMM_ACTIVATIONS:
        made = (get_act_layer(name) or nn.GELU)()
        if type(made) is type(act) and _single(made) == _single(act):
            return name
    raise ValueError(f"the MLP activation {type(act).__name__} has no timm act_layer name")


def _mlp_ratio(hidden: int, width: int) -> float:
    """A ratio r with int(width * r) == hidden, as timm's Block computes the MLP width."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _vit_kwargs(model: nn.Module) -> dict:
    """``VisionTransformer(**kwargs)`` builds ``model``'s architecture (checked by the caller)."""
    from timm.layers import DropPath, PatchDropout

    embed = model.patch_embed
    size = [int(s) for s in embed.img_size]
    patch = [int(s) for s in embed.patch_size]
    kwargs = dict(
        img_size=size[0] if size[0] == size[1] else size, patch_size=patch[0] if patch[0] == patch[1] else patch,
        in_chans=embed.proj.in_channels, num_classes=model.num_classes, global_pool=model.global_pool,
        embed_dim=model.embed_dim, depth=len(model.blocks), class_token=model.cls_token is not None,
        pos_embed="learn" if model.pos_embed is not None else "none", no_embed_class=model.no_embed_class,
        reg_tokens=model.num_reg_tokens, pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(model.fc_norm, nn.Identity), dynamic_img_size=bool(model.dynamic_img_size),
        dynamic_img_pad=bool(getattr(embed, "dynamic_img_pad", False)), drop_rate=model.head_drop.p,
        pos_drop_rate=model.pos_drop.p,
        patch_drop_rate=model.patch_drop.prob if isinstance(model.patch_drop, PatchDropout) else 0.0,
    )
    if len(model.blocks):
        first, last = model.blocks[0], model.blocks[-1]
        attn, mlp = first.attn, first.mlp
        kwargs.update(
            num_heads=attn.num_heads, mlp_ratio=_mlp_ratio(mlp.fc1.out_features, model.embed_dim),
            qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
            attn_drop_rate=attn.attn_drop.p, proj_drop_rate=attn.proj_drop.p,
            drop_path_rate=last.drop_path1.drop_prob if isinstance(last.drop_path1, DropPath) else 0.0,
        )
        activation = _timm_activation(mlp.act)
        if activation is not None:
            kwargs["act_layer"] = activation
    return kwargs


def _sequential_layers(model: nn.Sequential) -> list[dict]:
    """Each child of an MLP as {name, type (a torch.nn class), kwargs}."""
    layers = []
    for name, module in model.named_children():
        cls = type(module)
        if getattr(nn, cls.__name__, None) is not cls:
            raise ValueError(f"module {name!r} is a {cls.__qualname__}, not a torch.nn class (rebuilt by name)")
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in _single(module)[1].items() if k in accepted}
        if isinstance(module, nn.Linear):
            kwargs["bias"] = module.bias is not None
        layers.append({"name": name, "type": cls.__name__, "kwargs": kwargs})
    return layers


def _describe(model: nn.Module) -> dict:
    """What builds ``model``'s architecture before any structural pass: {"family", "class", ...}."""
    from .models import MLP

    family = family_of(model).name
    if family == "hf-gpt2":
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__]
        return {"family": family, "class": f"transformers.{type(model).__name__}", "config": config}
    if family == "timm-vit":
        return {"family": family, "class": VIT_CLASS, "kwargs": _vit_kwargs(model)}
    if isinstance(model, MLP):
        return {"family": family, "class": "lmc_lib.MLP", "config": asdict(model.config)}
    return {"family": family, "class": "torch.nn.Sequential", "layers": _sequential_layers(model)}


def _construct(description: Mapping) -> nn.Module:
    """The architecture ``description`` names, with freshly initialised tensors."""
    cls = description["class"]
    if description["family"] == "hf-gpt2":
        import transformers

        name = cls.removeprefix("transformers.")
        if name not in ("GPT2LMHeadModel", "GPT2Model"):
            raise ValueError(f"model class {cls!r}; lmc_lib saves GPT2LMHeadModel and GPT2Model")
        return getattr(transformers, name)(transformers.GPT2Config.from_dict(dict(description["config"])))
    if description["family"] == "timm-vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**description["kwargs"])
    if cls == "lmc_lib.MLP":
        from .models import MLP, MLPConfig

        return MLP(MLPConfig(**description["config"]))
    layers = [(layer["name"], getattr(nn, layer["type"])(**layer["kwargs"])) for layer in description["layers"]]
    return nn.Sequential(OrderedDict(layers))


def _head_dims(model: nn.Module) -> list[int]:
    """Every attention module's head width (timm Attention, GPT2Attention), in module order."""
    return [int(m.head_dim) for m in model.modules() if hasattr(m, "head_dim") and hasattr(m, "num_heads")]


def _is_canonical(model: nn.Module) -> bool:
    return any(isinstance(m, RMSNorm) for m in model.modules())


def _structure(description: Mapping, canonical: bool, head_factor: int) -> nn.Module:
    """Build ``description`` (on the meta device: no memory, no initialisation cost) and replay the
    structural passes: canonicalize, widen every head ``head_factor`` times."""
    with torch.device("meta"):
        model = _construct(description)
        if canonical:
            model = canonicalize(model)
        if head_factor != 1:
            model = family_of(model).widen_heads(model, head_factor)
    return model


def _setting_differences(model: nn.Module, built: nn.Module) -> dict[str, dict]:
    """module -> {setting: model's value} where ``built`` differs; ValueError where no setting can fix it."""
    mine, theirs = architecture(model), architecture(built)
    if mine.keys() != theirs.keys():
        only = sorted(set(mine) ^ set(theirs))[:3]
        raise ValueError(f"its modules {only} are not in the architecture its configuration builds")
    differences: dict[str, dict] = {}
    for name, (kind, settings) in mine.items():
        kind_built, settings_built = theirs[name]
        config_differs = name == "<config>" and settings != settings_built
        if kind != kind_built or settings.keys() != settings_built.keys() or config_differs:
            raise ValueError(f"module {name or '<model>'!r} is {kind} {settings}, its configuration builds "
                             f"{kind_built} {settings_built}")
        changed = {k: v for k, v in settings.items() if v != settings_built[k] and k not in _BOOKKEEPING}
        if changed:
            differences[name] = changed
    return differences


def _form(model: nn.Module, description: Mapping) -> dict:
    """How ``model`` departs from the architecture ``description`` builds: canonical, the head widening
    factor, the scalar settings to restore. ValueError when a rebuild would not give ``model``."""
    canonical = _is_canonical(model)
    built = _structure(description, canonical, 1)
    own, fresh = _head_dims(model), _head_dims(built)
    factors = {mine // theirs for mine, theirs in zip(own, fresh) if mine % theirs == 0}
    if len(own) != len(fresh) or len(factors) > 1 or any(mine % theirs for mine, theirs in zip(own, fresh)):
        raise ValueError(f"its head widths {own} are not one multiple of the configuration's {fresh}")
    factor = factors.pop() if factors else 1
    if factor != 1:
        built = _structure(description, canonical, factor)
    settings = _setting_differences(model, built)
    state, state_built = model.state_dict(), built.state_dict()
    if state.keys() != state_built.keys():
        raise ValueError(f"its tensors {sorted(set(state) ^ set(state_built))[:3]} are not in the rebuilt architecture")
    for name, tensor in state.items():
        if tensor.shape != state_built[name].shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)}, the rebuilt architecture "
                             f"{tuple(state_built[name].shape)}")
    return {"canonical": canonical, "head_factor": factor, "settings": settings}


def _rebuild(description: Mapping, form: Mapping, state: Mapping[str, Tensor]) -> nn.Module:
    """The saved model: the architecture with the structural passes replayed, settings restored, ``state`` assigned."""
    model = _structure(description, form.get("canonical", False), form.get("head_factor", 1))
    for name, changed in form.get("settings", {}).items():
        module = model.get_submodule(name)
        for key, value in changed.items():
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
    expected = model.state_dict().keys()
    if set(expected) != set(state):
        raise ValueError(f"the weights do not fit the architecture: tensors {sorted(set(expected) ^ set(state))[:3]} "
                         "are in only one of them")
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"the weights leave tensors {left[:3]} of the architecture unset")
    return model.eval()


# --- save ---------------------------------------------------------------------------------------

def _clear(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} exists and is not empty; choose another folder or pass overwrite=True")
        for name in [*_OWN_FILES, *(p.name for p in folder.glob("model-*-of-*.safetensors"))]:
            (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict on the CPU, every tensor its own contiguous copy (safetensors refuses shared storage)."""
    return {name: tensor.detach().cpu().clone().contiguous() for name, tensor in model.state_dict().items()}


def _jsonable_classes(classes: object) -> object:
    if classes is None or isinstance(classes, str):
        return classes
    if isinstance(classes, type):
        return getattr(classes, "kind", classes.__name__)
    if isinstance(classes, Mapping):
        return {str(group): _jsonable_classes(list(names) if not isinstance(names, str) else names)
                for group, names in classes.items()}
    return [_jsonable_classes(item) for item in classes]


def _pass(entry: str | Mapping) -> dict:
    return {"name": entry} if isinstance(entry, str) else dict(entry)


def _write_weights(model: nn.Module, folder: Path, storage: str, description: Mapping) -> None:
    if storage == "transformers":
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model.save_pretrained(folder)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return
    weights = folder / (WEIGHTS if storage == "timm" else LMC_WEIGHTS)
    save_file(_cpu_state(model), str(weights), metadata={"format": "pt"})
    if storage == "timm":
        _write_json(folder / TIMM_CONFIG, {"class": VIT_CLASS, "kwargs": description["kwargs"]})
    else:
        _write_json(folder / MODEL_CONFIG, description)


def _ties_hold(model: nn.Module) -> bool:
    """False when a config ties the LM head to the embedding but the two tensors differ (transformers
    would load one of them for both)."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return True
    return torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def _storage(model: nn.Module, description: Mapping, form: Mapping) -> str:
    native = not form["canonical"] and form["head_factor"] == 1 and not form["settings"] and _ties_hold(model)
    if native and description["family"] == "hf-gpt2":
        return "transformers"
    if native and description["family"] == "timm-vit":
        return "timm"
    return "lmc_lib"


def save(
    model: nn.Module,
    folder: str | Path,
    *,
    alignment: Alignment | None = None,
    method: str | None = None,
    classes: object = None,
    seed: int | None = None,
    passes: Sequence[str | Mapping] = (),
    sources: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to ``folder`` with the sidecar ``lmc.json``; return the folder.

    A model still in its library's architecture is stored in that library's format (transformers'
    ``save_pretrained``; timm: ``model.safetensors`` + ``timm_config.json``), any other (canonical,
    widened heads, an MLP) in lmc_lib's (``lmc_model.safetensors`` + ``model_config.json``); see the module
    docstring. ``passes`` lists what was applied before (names or dicts, oldest first); a canonical
    model gets a "canonicalize" pass if none is listed. With ``alignment`` (the one that produced
    ``model``), an "align" pass with ``method``, ``classes``, ``seed`` and the alignment's history is
    appended and its transforms are written to ``transforms.safetensors``. ``sources`` names where
    the models came from (e.g. {"a": ..., "b": ...}). A non-empty ``folder`` is refused unless
    ``overwrite``, which removes only the files a save writes. ValueError when the model cannot be
    rebuilt exactly from what would be written.
    """
    folder = Path(folder)
    family = family_of(model).name
    try:
        description = _describe(model)
        form = _form(model, description)
    except ValueError as error:
        raise ValueError(f"lmc.save: this {family} model cannot be rebuilt from its configuration: {error}") from None
    storage = _storage(model, description, form)
    history = [_pass(p) for p in passes]
    if form["canonical"] and not any(p.get("name") == "canonicalize" for p in history):
        history.append({"name": "canonicalize"})
    transforms = dict(alignment.transforms) if alignment is not None else {}
    if alignment is not None:
        history.append({"name": "align", "method": method, "classes": _jsonable_classes(classes), "seed": seed,
                        "spaces": len(transforms), "history": [float(h) for h in alignment.history]})
    _clear(folder, overwrite)
    _write_weights(model, folder, storage, description)
    if transforms:
        save_file({name: _transform_tensor(t).contiguous() for name, t in transforms.items()}, str(folder / TRANSFORMS),
                  metadata={"format": "pt", **{name: t.kind for name, t in transforms.items()}})
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict().values() if t.is_floating_point()})
    sidecar = {
        "lmc_lib_checkpoint": FORMAT_VERSION,
        "family": family,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "canonical": form["canonical"],
        "storage": storage,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "form": form,
        "passes": history,
        "transforms": {name: {"kind": t.kind, "size_in": t.size_in, "size_out": t.size_out}
                       for name, t in transforms.items()},
        "seed": seed,
        "sources": dict(sources or {}),
        "versions": versions(),
    }
    if storage == "lmc_lib":
        sidecar["model_config"] = MODEL_CONFIG
    _write_json(folder / SIDECAR, sidecar)
    return folder


# --- load ---------------------------------------------------------------------------------------

def read_sidecar(folder: str | Path) -> dict:
    """The sidecar ``lmc.json`` of a folder :func:`save` wrote; {} for a folder without one."""
    path = Path(folder) / SIDECAR
    return _read_json(path) if path.is_file() else {}


def _load_transformers(folder: Path) -> nn.Module:
    import transformers
    from transformers.utils import logging as hf_logging

    config = _read_json(folder / "config.json")
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{folder}: a Hugging Face {config.get('model_type')!r} model; lmc_lib supports GPT-2 "
                         "(GPT2LMHeadModel, GPT2Model)")
    name = (config.get("architectures") or ["GPT2LMHeadModel"])[0]
    if name not in ("GPT2LMHeadModel", "GPT2Model"):
        raise ValueError(f"{folder}: a {name}; lmc_lib supports GPT2LMHeadModel and GPT2Model")
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model = getattr(transformers, name).from_pretrained(folder, local_files_only=True).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    for module in model.modules():  # the folder it came from: bookkeeping, which the pair check would compare
        if isinstance(getattr(module, "name_or_path", None), str):
            module.name_or_path = ""
    return model


def _load_timm(folder: Path, device: str) -> nn.Module:
    config = _read_json(folder / TIMM_CONFIG)
    if config.get("class") != VIT_CLASS:
        raise ValueError(f"{folder / TIMM_CONFIG}: class {config.get('class')!r}; lmc_lib saves {VIT_CLASS}")
    description = {"family": "timm-vit", "class": VIT_CLASS, "kwargs": config["kwargs"]}
    return _rebuild(description, {}, load_file(str(folder / WEIGHTS), device=device))


def load(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model in ``folder``, in eval mode, with every tensor as saved (dtype included).

    A Hugging Face model's ``name_or_path`` is left empty (it would name the folder), so that two
    loaded models compare equal in architecture.

    Reads folders :func:`save` wrote (any storage), plain Hugging Face GPT-2 folders
    (``config.json`` + weights) and timm folders (``timm_config.json`` + ``model.safetensors``).
    ValueError naming the folder when it holds none of these.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    sidecar = read_sidecar(folder)
    storage = sidecar.get("storage")
    if storage is None:
        if (folder / "config.json").is_file():
            storage = "transformers"
        elif (folder / TIMM_CONFIG).is_file():
            storage = "timm"
        else:
            raise ValueError(f"{folder}: not a model folder (no {SIDECAR}, config.json or {TIMM_CONFIG})")
    if storage == "transformers":
        return _load_transformers(folder).to(device)
    if storage == "timm":
        return _load_timm(folder, str(device))
    if storage != "lmc_lib":
        raise ValueError(f"{folder / SIDECAR}: unknown storage {storage!r}")
    description = _read_json(folder / sidecar.get("model_config", MODEL_CONFIG))
    try:
        return _rebuild(description, sidecar.get("form", {}), load_file(str(folder / LMC_WEIGHTS), device=str(device)))
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from None
