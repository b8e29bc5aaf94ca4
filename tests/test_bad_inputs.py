"""Bad inputs to every public function: a clear error that names the culprit, and untouched inputs.

A research library must never answer a request it cannot honour with a plausible number. Each
:class:`Case` below hands one public function one bad input and expects an error of a stated type
whose message names the offending argument, tensor or module (``pytest.raises(..., match=...)``).
Every case is also run under a fingerprint of its inputs (every state_dict tensor, every module's
training flag, scalar settings and hooks, every parameter object and its ``requires_grad``, every
data tensor): a call that fails must leave its inputs as it found them. A second sweep fingerprints
the inputs around valid calls of every public function.

Models are tiny and built once per configuration; every case gets its own deep copies.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import lmc_lib as lmc
from lmc_lib.spec import Axis, Probe, Space, SymmetrySpec
from strategies import build_mlp
from test_models_gpt2 import VOCAB, gpt2
from test_models_vit import vit

NAN, INF = float("nan"), float("inf")
#: two models whose heads differ at equal tensor shapes: the message names the attention module and what differs
HEADS_DIFFER = r"attn.*(head_dim|num_heads|n_head)|(head_dim|num_heads|n_head).*attn"
GPT2_QKV = "transformer.h.0.attn.c_attn.weight"


# -- tiny inputs, built once per configuration, handed out as deep copies --------------------------

_BUILT: dict[tuple, object] = {}
#: folders the data loaders and lmc.save / lmc.load are pointed at; removed when the session ends
_SCRATCH = tempfile.TemporaryDirectory(prefix="lmc-bad-inputs-")


def shared(key: tuple, build: Callable[[], object]) -> object:
    """A deep copy of ``build()``, which runs once per ``key``."""
    if key not in _BUILT:
        _BUILT[key] = build()
    return copy.deepcopy(_BUILT[key])


def mlp(widths: tuple[int, ...] = (8,), activation: str = "relu", *, seed: int = 0,
        dtype: torch.dtype = torch.float32) -> lmc.MLP:
    """MLP 4 -> widths -> 3."""
    config = lmc.MLPConfig(in_features=4, widths=widths, out_features=3, activation=activation)
    return shared(("mlp", config, seed, dtype), lambda: build_mlp(config, seed).to(dtype))


def gpt(seed: int = 0, *, canonical: bool = False, dtype: torch.dtype = torch.float32, **config) -> nn.Module:
    """GPT2LMHeadModel, n_embd=16, one block of 2 heads unless ``config`` says otherwise."""
    config = {"n_embd": 16, "n_layer": 1, "n_head": 2, **config}
    key = ("gpt2", tuple(sorted(config.items())), seed, canonical, dtype)
    return shared(key, lambda: gpt2(config, seed, canonical=canonical).to(dtype))


def vision(seed: int = 0, *, canonical: bool = False, **config) -> nn.Module:
    """timm VisionTransformer on 8x8 images, embed_dim=16, one block of 2 heads unless ``config`` says otherwise."""
    config = {"embed_dim": 16, "depth": 1, "num_heads": 2, **config}
    key = ("vit", tuple(sorted((k, repr(v)) for k, v in config.items())), seed, canonical)
    return shared(key, lambda: vit(config, seed, canonical=canonical))


def sequential(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


def reused_linear() -> nn.Sequential:
    """Linear(4, 4) -> ReLU -> the same Linear again: one module at two places."""
    linear = nn.Linear(4, 4)
    return nn.Sequential(linear, nn.ReLU(), linear)


def _noop_hook(_module, _inputs, _output) -> None:
    return None


def hooked(model: nn.Module) -> nn.Module:
    """``model`` with a forward hook on fc1 (a hook may change the output: no family describes it)."""
    model.fc1.register_forward_hook(_noop_hook)
    return model


def poisoned(model: nn.Module, tensor: str, value: float = NAN) -> nn.Module:
    """``model`` with one entry of ``tensor`` set to ``value`` (NaN or inf)."""
    with torch.no_grad():
        model.state_dict()[tensor].view(-1)[0] = value
    return model


def batches(n: int = 2, rows: int = 5, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` batches of (rows, 4) inputs and (rows,) targets in 0..2, for :func:`mlp`."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 4, generator=generator), torch.randint(0, 3, (rows,), generator=generator))
            for _ in range(n)]


def token_batches(n: int = 2, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` batches of (3, 10) token ids and their next tokens, for :func:`gpt`."""
    generator = torch.Generator().manual_seed(seed)
    texts = [torch.randint(0, VOCAB, (3, 11), generator=generator) for _ in range(n)]
    return [(text[:, :-1], text[:, 1:]) for text in texts]


def image_batches(n: int = 2, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` batches of four 1x8x8 images and labels in 0..4, for :func:`vision`."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 8, 8, generator=generator), torch.randint(0, 5, (4,), generator=generator))
            for _ in range(n)]


def with_entry(data: list[tuple[Tensor, Tensor]], value: float) -> list[tuple[Tensor, Tensor]]:
    """``data`` with the first input of batch 0 set to ``value``."""
    x, y = data[0]
    x = x.clone()
    x.view(-1)[0] = value
    return [(x, y), *data[1:]]


def tensor_data(rows: int = 10, nan: bool = False) -> lmc.TensorData:
    ((x, y),) = batches(1, rows)
    if nan:
        x[0, 0] = NAN
    return lmc.TensorData(x, y, "toy")


def missing_folder() -> Path:
    return Path(tempfile.mkdtemp(dir=_SCRATCH.name)) / "missing"


def shakespeare_root(characters: int = 300) -> Path:
    """A data root holding a short tinyshakespeare/input.txt."""
    root = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    (root / "tinyshakespeare").mkdir()
    text = ("To be, or not to be: that is the question.\n" * 10)[:characters]
    (root / "tinyshakespeare" / "input.txt").write_text(text)
    return root


def _alignment(key: tuple, find: Callable[[], lmc.Alignment]) -> lmc.Alignment:
    """An alignment found once per ``key``; every caller gets its own transforms mapping (the spec is frozen)."""
    if key not in _BUILT:
        _BUILT[key] = find()
    found = _BUILT[key]
    return lmc.Alignment(dict(found.transforms), found.spec, found.history, found.architecture)


def gpt2_paper_alignment() -> lmc.Alignment:
    """The paper's weight matching of two canonical GPT-2s."""
    return _alignment(("alignment", "gpt2-paper"),
                      lambda: lmc.weight_matching(gpt(0, canonical=True), gpt(1, canonical=True), classes="paper"))


def mlp_alignment() -> lmc.Alignment:
    return _alignment(("alignment", "mlp"), lambda: lmc.weight_matching(mlp(), mlp(seed=1)))


def mlp_spec() -> SymmetrySpec:
    return lmc.spec_for(mlp())


# -- fingerprints ----------------------------------------------------------------------------------


def _tensor_print(tensor: Tensor) -> tuple:
    """dtype, shape, requires_grad and the exact bytes (so that NaN compares equal to itself)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return str(tensor.dtype), tuple(tensor.shape), tensor.requires_grad, flat.view(torch.uint8).numpy().tobytes()


def _scalars(module: nn.Module) -> str:
    """A module's public scalar attributes (eps, num_heads, inplace, ...)."""
    scalar = (bool, int, float, str, tuple, type(None))
    return repr({k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, scalar)})


def fingerprint(obj: object, path: str = "inputs", found: dict[str, object] | None = None) -> dict[str, object]:
    """path -> comparable value, for everything a call could change in place inside ``obj``."""
    found = {} if found is None else found
    if isinstance(obj, nn.Module):
        for name, module in obj.named_modules(remove_duplicate=False):
            hooks = tuple(len(getattr(module, h)) for h in
                          ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks"))
            found[f"{path}.modules[{name!r}]"] = (type(module).__qualname__, module.training, hooks, _scalars(module))
        for name, param in obj.named_parameters(remove_duplicate=False):
            found[f"{path}.parameters[{name!r}]"] = (id(param), param.requires_grad)
        for name, tensor in obj.state_dict(keep_vars=True).items():
            found[f"{path}.state[{name!r}]"] = _tensor_print(tensor)
        config = getattr(obj, "config", None)
        if config is not None:
            found[f"{path}.config"] = repr(config.to_dict() if hasattr(config, "to_dict") else config)
    elif isinstance(obj, Tensor):
        found[path] = _tensor_print(obj)
    elif isinstance(obj, lmc.TensorData):
        fingerprint(obj.inputs, f"{path}.inputs", found)
        fingerprint(obj.targets, f"{path}.targets", found)
    elif isinstance(obj, lmc.Transform):
        fingerprint(obj.matrix, f"{path}.matrix", found)
    elif isinstance(obj, lmc.Alignment):
        fingerprint(dict(obj.transforms), f"{path}.transforms", found)
        found[f"{path}.spec"] = repr(obj.spec)
    elif isinstance(obj, SymmetrySpec):
        found[path] = repr(obj)
    elif isinstance(obj, Mapping):
        found[f"{path}.keys"] = repr(list(obj))
        for key, value in obj.items():
            fingerprint(value, f"{path}[{key!r}]", found)
    elif isinstance(obj, (list, tuple)):
        found[f"{path}.len"] = len(obj)
        for index, value in enumerate(obj):
            fingerprint(value, f"{path}[{index}]", found)
    elif isinstance(obj, (bool, int, float, str, type(None))):
        found[path] = repr(obj)
    return found


def assert_untouched(before: dict[str, object], after: dict[str, object]) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>"))
    assert not changed, f"the call modified its inputs at {changed[:8]}"


# -- the catalogue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """``call(*inputs())`` must raise ``error`` with a message matching ``match`` (which names the
    offending argument, tensor or module) and leave the objects ``inputs()`` made untouched."""

    id: str
    call: Callable[..., object]
    error: type[Exception]
    match: str
    inputs: Callable[[], tuple] = tuple


def symmetry_cases() -> list[Case]:
    """The four classes' constructors, their random elements and compose."""
    long = lambda *v: lambda: (torch.tensor(v),)  # noqa: E731
    matrix = lambda rows: lambda: (torch.tensor(rows, dtype=torch.float64),)  # noqa: E731
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    P, S, O, A = lmc.Permutation, lmc.SemiPermutation, lmc.Orthogonal, lmc.Invertible  # noqa: N806, E741
    return [
        Case("Permutation-repeated-index", P, ValueError, r"Permutation: index 1 repeats", long(0, 1, 1)),
        Case("Permutation-index-out-of-range", P, ValueError, r"Permutation: indices must lie in \[0, 3\)",
             long(0, 1, 5)),
        Case("Permutation-negative-index", P, ValueError, r"Permutation: indices", long(-1, 0, 1)),
        Case("Permutation-float-indices", P, ValueError, r"Permutation: expected a 1-D integer", long(0.0, 1.0)),
        Case("Permutation-bool-indices", P, ValueError, r"Permutation: expected a 1-D integer", long(True, False)),
        Case("Permutation-2d-indices", P, ValueError, r"Permutation: expected a 1-D", long([0, 1], [1, 0])),
        Case("SemiPermutation-fewer-rows", S, ValueError, r"SemiPermutation: needs M >= N", matrix([[0.5, 0.5]])),
        Case("SemiPermutation-negative-entry", S, ValueError, r"SemiPermutation: entries must be non-negative",
             matrix([[1.5, 0.0], [-0.5, 1.0]])),
        Case("SemiPermutation-column-not-stochastic", S, ValueError, r"SemiPermutation: column 0 sums to 2",
             matrix([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])),
        Case("SemiPermutation-row-with-two-sources", S, ValueError, r"SemiPermutation: row 0 has 2 positive",
             matrix([[0.5, 0.5], [0.5, 0.0], [0.0, 0.5]])),
        Case("SemiPermutation-nan", S, ValueError, r"SemiPermutation: matrix has NaN",
             matrix([[NAN, 0.0], [0.0, 1.0]])),
        Case("Orthogonal-not-orthogonal", O, ValueError, r"Orthogonal: matrix is not orthogonal",
             lambda: (2 * eye(3),)),
        Case("Orthogonal-fewer-rows", O, ValueError, r"Orthogonal: needs M >= N", lambda: (eye(3)[:2],)),
        Case("Orthogonal-1d", O, ValueError, r"Orthogonal: expected a 2-D matrix", lambda: (torch.ones(3),)),
        Case("Orthogonal-inf", O, ValueError, r"Orthogonal: matrix has NaN or infinite",
             matrix([[1.0, 0.0], [0.0, INF]])),
        Case("Invertible-singular", A, ValueError, r"Invertible: matrix is singular", matrix([[1.0, 2.0], [2.0, 4.0]])),
        Case("Invertible-ill-conditioned", A, ValueError, r"Invertible: matrix is singular or nearly so",
             matrix([[1.0, 0.0], [0.0, 1e-14]])),
        Case("Invertible-not-square", A, ValueError, r"Invertible: needs a square matrix", lambda: (torch.ones(3, 2),)),
        Case("Invertible-nan", A, ValueError, r"Invertible: matrix has NaN", matrix([[NAN]])),
        Case("Orthogonal.random-m-below-n", partial(O.random, 3, 2), ValueError, r"m=2 must be >= n=3"),
        Case("SemiPermutation.random-m-below-n", partial(S.random, 3, 2), ValueError, r"m=2 must be >= n=3"),
        Case("compose-size-mismatch", lambda p, q: p.compose(q), ValueError,
             r"cannot compose permutation of input size 3",
             lambda: (P.identity(3), P.identity(4))),
        Case("compose-in-no-class", lambda s, o: s.compose(o), ValueError, r"semi_permutation and orthogonal",
             lambda: (S.random(3, 4, torch.Generator().manual_seed(0)), O.identity(3))),
    ]


def spec_cases() -> list[Case]:
    """lmc.spec: Space, Axis, Probe and SymmetrySpec construction, SymmetrySpec.check."""
    write, read = (Axis("fc1.weight", 0),), (Axis("fc2.weight", 1),)
    space = lambda size=8, classes=("permutation",): Space("h", size, classes, write, read)  # noqa: E731
    return [
        Case("Space-unknown-class", lambda: space(classes=("rotation",)), ValueError,
             r"space 'h': unknown symmetry classes \['rotation'\]"),
        Case("Space-preset-as-class", lambda: space(classes=("permutations",)), ValueError,
             r"space 'h': unknown symmetry classes \['permutations'\]"),
        Case("Space-classes-a-bare-string", lambda: space(classes="orthogonal"), ValueError,
             r"space 'h'[^;]*'orthogonal'"),  # the string itself, not a list of its letters
        Case("Space-negative-size", lambda: space(size=-1), ValueError, r"space 'h'.*size"),
        Case("Axis-negative-start", lambda: Axis("fc1.weight", 0, start=-1), ValueError, r"fc1\.weight.*start"),
        Case("Axis-negative-length", lambda: Axis("fc1.weight", 0, length=-2), ValueError, r"fc1\.weight.*length"),
        Case("Axis-zero-block", lambda: Axis("fc1.weight", 0, block=0), ValueError, r"fc1\.weight.*block"),
        Case("Probe-unknown-role", lambda: Probe("act1", role="both"), ValueError, r"probe of 'act1': role must be"),
        Case("SymmetrySpec-key-differs-from-name", lambda: SymmetrySpec("toy", {"g": space()}), ValueError,
             r"spec key 'g' differs from its space's name 'h'"),
        Case("SymmetrySpec.check-missing-tensor", lambda spec: spec.check({}), ValueError,
             r"parameter 'fc1\.weight' is not in the model", lambda: (mlp_spec(),)),
        Case("SymmetrySpec.check-wrong-shape", lambda spec, state: spec.check(state), ValueError,
             r"does not fit fc1\.weight", lambda: (mlp_spec(), mlp((6,)).state_dict())),
        Case("SymmetrySpec.check-unaccounted-tensor", lambda spec, state: spec.check({**state, "extra": torch.ones(2)}),
             ValueError, r"not declared invariant: \['extra'\]", lambda: (mlp_spec(), mlp().state_dict())),
    ]


def family_cases() -> list[Case]:
    """spec_for and canonicalize of models no family describes: the error names the module."""
    unsupported = [
        ("Sequential-starting-with-Conv2d", lambda: sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)),
         TypeError, r"unsupported module '0' \(Conv2d\)"),
        ("Sequential-starting-with-LayerNorm", lambda: sequential(nn.LayerNorm(4), nn.Linear(4, 3)),
         TypeError, r"unsupported module '0' \(LayerNorm\)"),
        ("Sequential-with-BatchNorm",
         lambda: sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
         TypeError, r"unsupported module '1' \(BatchNorm1d\)"),
        ("Sequential-reusing-one-Linear", reused_linear, ValueError, r"'0'.*'2'|'2'.*'0'"),
        ("Sequential-without-Linear", lambda: sequential(nn.Flatten(), nn.ReLU()), TypeError, r"holds no nn\.Linear"),
        ("Sequential-mismatched-Linears", lambda: sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(6, 3)),
         ValueError, r"does not fit 2\.weight"),
        ("MLP-with-a-forward-hook", lambda: hooked(mlp()), ValueError, r"'fc1'.*forward hooks"),
        ("bare-Linear", lambda: nn.Linear(4, 3), TypeError, r"no symmetry spec for Linear"),
        ("state-dict-not-module", lambda: mlp().state_dict(), TypeError, r"no symmetry spec for (OrderedDict|dict)"),
        ("ViT-LayerScale", lambda: vision(init_values=0.1), ValueError, r"blocks\.0\.ls1 is LayerScale"),
        ("ViT-qk-norm", lambda: vision(qk_norm=True), ValueError, r"blocks\.0\.attn\.q_norm"),
        ("ViT-register-tokens", lambda: vision(reg_tokens=2), ValueError, r"reg_token"),
        ("ViT-max-pool", lambda: vision(global_pool="max"), ValueError, r"global_pool 'max'"),
        ("GPT2-cross-attention", lambda: gpt(add_cross_attention=True), ValueError, r"h\.0\.crossattention"),
    ]
    found = []
    for name, build, error, match in unsupported:
        model = lambda build=build: (build(),)  # noqa: E731
        found.append(Case(f"spec_for-{name}", lmc.spec_for, error, match, model))
        found.append(Case(f"canonicalize-{name}", lmc.canonicalize, error, match, model))
    found.append(Case("canonicalize-ViT-head-without-final-norm", lmc.canonicalize, ValueError, r"without a final norm",
                      lambda: (vision(final_norm=False),)))
    return found


def transform_cases() -> list[Case]:
    """transform and transform_state with transforms the spec cannot take."""
    relu = lambda: (mlp(),)  # noqa: E731
    perm = lmc.Permutation.identity

    def with_transforms(transforms: Callable[[], object], **kw) -> Callable:
        return lambda model, *spec: lmc.transform(model, transforms(), **kw, **({"spec": spec[0]} if spec else {}))

    rotation = lambda: {"residual": lmc.Orthogonal.random(16, generator=torch.Generator().manual_seed(0))}  # noqa: E731
    widen_head = lambda: {  # noqa: E731
        "transformer.h.0.attn.head0.qk": lmc.Orthogonal.random(8, 10, torch.Generator().manual_seed(0))}
    return [
        Case("transform-unknown-space", with_transforms(lambda: {"fc9": perm(8)}), KeyError, r"'fc9'", relu),
        Case("transform-wrong-size", with_transforms(lambda: {"fc1": perm(5)}), ValueError,
             r"space 'fc1' has size 8 but its permutation acts on 5", relu),
        Case("transform-class-not-admitted", with_transforms(lambda: {"fc1": lmc.Orthogonal.identity(8)}), ValueError,
             r"space 'fc1' admits .*not orthogonal", relu),
        Case("transform-invertible-on-gelu", with_transforms(lambda: {"fc1": lmc.Invertible(2 * torch.eye(8))}),
             ValueError, r"space 'fc1' admits .*not invertible", lambda: (mlp((8,), "gelu"),)),
        Case("transform-orthogonal-residual-non-canonical-gpt2", with_transforms(rotation), ValueError,
             r"lmc\.canonicalize", lambda: (gpt(),)),
        Case("transform-orthogonal-residual-non-canonical-vit", with_transforms(rotation), ValueError,
             r"lmc\.canonicalize", lambda: (vision(),)),
        Case("transform-canonical-spec-on-LayerNorm-original", with_transforms(rotation), ValueError,
             r"canonicali[sz]e", lambda: (gpt(), lmc.spec_for(gpt(canonical=True)))),
        Case("transform-spec-of-a-wider-model", with_transforms(lambda: {"fc1": perm(8)}), ValueError, r"fc1",
             lambda: (mlp((6,)), mlp_spec())),
        Case("transform-spec-of-another-family", with_transforms(lambda: {"fc1": perm(8)}), ValueError,
             r"mlp|hf-gpt2", lambda: (gpt(), mlp_spec())),
        Case("transform-widen-fixed-size-head", with_transforms(widen_head), ValueError,
             r"space 'transformer\.h\.0\.attn\.head0\.qk' has a fixed size 8", lambda: (gpt(canonical=True),)),
        Case("transform-transforms-not-a-mapping", with_transforms(lambda: [perm(8)]), TypeError, r"transforms", relu),
        Case("transform-value-not-a-transform", with_transforms(lambda: {"fc1": torch.arange(8)}), TypeError, r"'fc1'",
             relu),
        Case("transform-model-not-a-module", with_transforms(dict), TypeError, r"OrderedDict|dict",
             lambda: (mlp().state_dict(),)),
        Case("transform_state-missing-tensor",
             lambda state, spec: lmc.transform_state({k: v for k, v in state.items() if k != "fc2.weight"}, spec,
                                                     {"fc1": perm(8)}),
             ValueError, r"fc2\.weight", lambda: (mlp().state_dict(), mlp_spec())),
        Case("transform_state-wrong-shape", lambda state, spec: lmc.transform_state(state, spec, {"fc1": perm(8)}),
             ValueError, r"fc1\.weight|fc2\.weight", lambda: (mlp((6,)).state_dict(), mlp_spec())),
        Case("transform_state-unknown-space", lambda state, spec: lmc.transform_state(state, spec, {"hidden": perm(8)}),
             KeyError, r"'hidden'", lambda: (mlp().state_dict(), mlp_spec())),
    ]


def classes_cases(name: str, call: Callable, inputs: Callable[[], tuple], gpt_inputs: Callable[[], tuple],
                  vit_inputs: Callable[[], tuple]) -> list[Case]:
    """Class requests that cannot be honoured: ``call(*inputs(), classes=...)`` (MLP inputs, ReLU hidden layers)."""
    with_classes = lambda classes: lambda *args: call(*args, classes=classes)  # noqa: E731
    requests = [
        ("unknown-class", ("rotation",), ValueError, r"unknown symmetry class 'rotation'"),
        ("misspelled-class", ("permutaton",), ValueError, r"unknown symmetry class 'permutaton'"),
        ("misspelled-preset", "paperr", ValueError, r"'paperr'"),
        ("misspelled-bare-class", "orthogonl", ValueError, r"'orthogonl'"),
        ("unknown-group", {"residul": ("orthogonal",)}, ValueError, r"\['residul'\]"),
        ("unknown-class-in-group", {"hidden": ("rotation",)}, ValueError, r"classes\['hidden'\].*'rotation'"),
        ("class-no-space-admits", ("orthogonal",), ValueError, r"admits 'orthogonal'"),
        ("group-class-no-space-admits", {"hidden": ("invertible",)}, ValueError, r"'hidden'.*'invertible'"),
        ("empty-classes", (), ValueError, r"classes"),
        ("classes-a-number", 42, TypeError, r"classes"),
        ("classes-none", None, TypeError, r"classes"),
    ]
    found = [Case(f"{name}-{rid}", with_classes(classes), error, match, inputs)
             for rid, classes, error, match in requests]
    found += [
        Case(f"{name}-orthogonal-residual-non-canonical-gpt2", with_classes({"residual": ("orthogonal",)}), ValueError,
             r"lmc\.canonicalize", gpt_inputs),
        Case(f"{name}-paper-preset-non-canonical-gpt2", with_classes("paper"), ValueError, r"lmc\.canonicalize",
             gpt_inputs),
        Case(f"{name}-paper-preset-non-canonical-vit", with_classes("paper"), ValueError, r"lmc\.canonicalize",
             vit_inputs),
    ]
    return found


def pair_cases(name: str, call: Callable, *, mlps: bool = True, transformers: bool = True) -> list[Case]:
    """Two models that cannot be compared, or hold NaN or inf: ``call(a, b)``."""
    found = []
    if mlps:
        found += [
            Case(f"{name}-different-families", call, ValueError, r"MLP.*GPT2LMHeadModel", lambda: (mlp(), gpt())),
            Case(f"{name}-different-widths", call, ValueError, r"fc1", lambda: (mlp((8,)), mlp((6,), seed=1))),
            Case(f"{name}-different-depths", call, ValueError, r"fc3|act2", lambda: (mlp((8,)), mlp((8, 8), seed=1))),
            Case(f"{name}-relu-vs-gelu", call, ValueError, r"'act1'",
                 lambda: (mlp((8,), "relu"), mlp((8,), "gelu", seed=1))),
            Case(f"{name}-float32-vs-float64", call, ValueError, r"'fc1\.weight'.*dtype",
                 lambda: (mlp(), mlp(seed=1, dtype=torch.float64))),
            Case(f"{name}-a-not-a-module", call, TypeError, r"\ba\b|model A|OrderedDict|dict",
                 lambda: (mlp().state_dict(), mlp(seed=1))),
            Case(f"{name}-nan-in-A", call, ValueError, r"(?i)model a\b.*'fc2\.bias'",
                 lambda: (poisoned(mlp(), "fc2.bias"), mlp(seed=1))),
            Case(f"{name}-inf-in-B", call, ValueError, r"(?i)model b\b.*'fc1\.weight'",
                 lambda: (mlp(), poisoned(mlp(seed=1), "fc1.weight", INF))),
        ]
    if transformers:
        found += [
            Case(f"{name}-gpt2-different-head-counts", call, ValueError, HEADS_DIFFER,
                 lambda: (gpt(n_head=2), gpt(1, n_head=4))),
            Case(f"{name}-gpt2-different-norm-eps", call, ValueError, r"eps",
                 lambda: (gpt(layer_norm_epsilon=1e-5), gpt(1, layer_norm_epsilon=1e-3))),
            Case(f"{name}-vit-different-head-counts", call, ValueError, HEADS_DIFFER,
                 lambda: (vision(num_heads=2), vision(1, num_heads=4))),
            Case(f"{name}-gpt2-vs-vit", call, ValueError, r"GPT2LMHeadModel.*VisionTransformer",
                 lambda: (gpt(), vision())),
            Case(f"{name}-gpt2-nan-in-B", call, ValueError, rf"(?i)model b\b.*'{GPT2_QKV}'",
                 lambda: (gpt(), poisoned(gpt(1), GPT2_QKV))),
        ]
    return found


def data_cases(name: str, call: Callable, model: Callable[[], nn.Module] = mlp) -> list[Case]:
    """Data that is not a usable iterable of (inputs, targets) batches: ``call(model(), data)``."""
    x = lambda: batches(1)[0][0]  # noqa: E731  (5, 4) inputs
    y = lambda: batches(1)[0][1]  # noqa: E731  (5,) targets
    bad = [
        ("dict-batches", lambda: [{"x": x(), "y": y()}], TypeError, r"batch 0 is a dict"),
        ("3-tuple-batches", lambda: [(x(), y(), torch.ones(5))], TypeError, r"batch 0 is a tuple of 3"),
        ("bare-tensor-batches", lambda: [x()[:2], x()[2:4]], TypeError, r"batch 0 is a Tensor"),
        ("data-a-bare-tensor", x, TypeError, r"data"),
        ("data-unbatched-TensorData", tensor_data, TypeError, r"\.batches\(\)"),
        ("data-empty", lambda: [], ValueError, r"no batches"),
        ("nan-inputs", lambda: with_entry(batches(), NAN), ValueError, r"batch 0.*(NaN|infinite)"),
        ("inf-inputs-in-a-later-batch", lambda: [batches()[0], *with_entry(batches(1, seed=1), INF)], ValueError,
         r"batch 1.*(NaN|infinite)"),
        ("inputs-and-targets-disagree", lambda: [(x(), y()[:3])], ValueError, r"batch 0"),
        ("targets-not-a-tensor", lambda: [(x(), y().tolist())], TypeError, r"batch 0.*targets"),
    ]
    return [Case(f"{name}-{rid}", call, error, match, lambda data=data: (model(), data()))
            for rid, data, error, match in bad]


def weight_matching_cases() -> list[Case]:
    pair = lambda: (mlp(), mlp(seed=1))  # noqa: E731
    match = lambda **kw: lambda a, b: lmc.weight_matching(a, b, **kw)  # noqa: E731
    options = [
        ("negative-max_iter", dict(max_iter=-1), r"max_iter"),
        ("zero-max_iter", dict(max_iter=0), r"max_iter"),
        ("fractional-max_iter", dict(max_iter=2.5), r"max_iter"),
        ("bool-max_iter", dict(max_iter=True), r"max_iter"),
        ("integer-score_dtype", dict(score_dtype=torch.int64), r"score_dtype"),
        ("bool-score_dtype", dict(score_dtype=torch.bool), r"score_dtype"),
        ("string-score_dtype", dict(score_dtype="float32"), r"score_dtype"),
        ("negative-tolerance", dict(tolerance=-1e-3), r"tolerance"),
        ("nan-tolerance", dict(tolerance=NAN), r"tolerance"),
    ]
    found = [Case(f"weight_matching-{rid}", match(**kw), ValueError, pattern, pair) for rid, kw, pattern in options]
    found += classes_cases("weight_matching", lmc.weight_matching, pair, lambda: (gpt(), gpt(1)),
                           lambda: (vision(), vision(1)))
    found += [
        Case("weight_matching-parameter-free", match(), TypeError, r"holds no nn\.Linear",
             lambda: (sequential(nn.Flatten(), nn.ReLU()), sequential(nn.Flatten(), nn.ReLU()))),
        Case("weight_matching-unsupported-Conv2d", match(), TypeError, r"'0' \(Conv2d\)",
             lambda: (sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)),) * 2),
        Case("weight_matching-forward-hook-on-B", match(), ValueError, r"'fc1'.*forward hooks",
             lambda: (mlp(), hooked(mlp(seed=1)))),
        Case("weight_matching-vit-LayerScale", match(), ValueError, r"blocks\.0\.ls1",
             lambda: (vision(init_values=0.1), vision(1, init_values=0.1))),
        Case("weight_matching-gpt2-cross-attention", match(), ValueError, r"h\.0\.crossattention",
             lambda: (gpt(add_cross_attention=True), gpt(1, add_cross_attention=True))),
    ]
    return found + pair_cases("weight_matching", lambda a, b: lmc.weight_matching(a, b))


def activation_matching_cases() -> list[Case]:
    pair = lambda: (mlp(), mlp(seed=1), batches())  # noqa: E731
    match = lambda a, b, data, **kw: lmc.activation_matching(a, b, data, **kw)  # noqa: E731
    found = classes_cases("activation_matching", match, pair, lambda: (gpt(), gpt(1), token_batches()),
                          lambda: (vision(), vision(1), image_batches()))
    found += data_cases("activation_matching", lambda m, data: lmc.activation_matching(m, copy.deepcopy(m), data))
    found += pair_cases("activation_matching", lambda a, b: lmc.activation_matching(a, b, batches()),
                        transformers=False)
    found += [
        Case("activation_matching-negative-max_batches", partial(match, max_batches=-1), ValueError, r"max_batches",
             pair),
        Case("activation_matching-zero-max_batches", partial(match, max_batches=0), ValueError, r"max_batches", pair),
        Case("activation_matching-gpt2-different-head-counts", partial(match, data=token_batches()), ValueError,
             HEADS_DIFFER, lambda: (gpt(n_head=2), gpt(1, n_head=4))),
    ]
    return found


def barrier_cases() -> list[Case]:
    pair = lambda: (mlp(), mlp(seed=1), batches())  # noqa: E731
    run = lambda **kw: lambda a, b, data: lmc.barrier(a, b, data, progress=False, **kw)  # noqa: E731
    lambdas = [
        ("empty-lambdas", []),
        ("nan-lambda", [0.5, NAN]),
        ("inf-lambda", [INF]),
        ("negative-lambda", [-0.1, 0.5]),
        ("lambda-above-one", [0.5, 1.5]),
        ("negative-lambda-count", -3),
        ("zero-lambda-count", 0),
        ("one-lambda-count", 1),
        ("float-lambda-count", 11.0),
    ]
    found = [Case(f"barrier-{rid}", run(lambdas=value), ValueError, r"lambdas", pair) for rid, value in lambdas]
    ignored = lambda: (mlp(), mlp(seed=1), [(torch.randn(5, 4), torch.full((5,), -100))])  # noqa: E731
    found += [
        Case("barrier-string-lambdas", run(lambdas="11"), TypeError, r"lambdas", pair),
        Case("barrier-unknown-strategy", run(strategy="fast"), ValueError, r"strategy", pair),
        Case("barrier-strategy-in-capitals", run(strategy="VMAP"), ValueError, r"strategy", pair),
        Case("barrier-strategy-none", run(strategy=None), ValueError, r"strategy", pair),
        Case("barrier-negative-memory_budget", run(memory_budget=-1), ValueError, r"memory_budget", pair),
        Case("barrier-loss_fn-returns-a-scalar", run(loss_fn=lambda logits, y: logits.sum()), ValueError, r"loss_fn",
             pair),
        Case("barrier-loss_fn-returns-nan", run(loss_fn=lambda logits, y: torch.full(y.shape, NAN)), ValueError,
             r"non-finite loss", pair),
        Case("barrier-targets-out-of-range", run(), ValueError, r"batch 0.*target",
             lambda: (mlp(), mlp(seed=1), [(torch.randn(5, 4), torch.full((5,), 7))])),
        Case("barrier-all-targets-ignored", run(), ValueError, r"no targets", ignored),
        Case("barrier-lm-targets-of-the-wrong-shape", run(), ValueError, r"batch 0",
             lambda: (gpt(), gpt(1), [(x, y[:, 0]) for x, y in token_batches()])),
        Case("barrier-vmap-forward-hook", run(strategy="vmap"), ValueError, r"'fc1'.*forward hooks",
             lambda: (hooked(mlp()), mlp(seed=1), batches())),
        Case("barrier-parameter-free-models", run(), ValueError, r"parameters",
             lambda: (sequential(nn.Flatten()), sequential(nn.Flatten()), batches())),
    ]
    found += data_cases("barrier", lambda m, data: lmc.barrier(m, copy.deepcopy(m), data, lambdas=3, progress=False))
    loop = lambda m, data: lmc.barrier(  # noqa: E731
        m, copy.deepcopy(m), data, lambdas=3, strategy="loop", progress=False)
    found += data_cases("barrier-loop", loop)[:5]
    found += pair_cases("barrier", lambda a, b: lmc.barrier(a, b, batches(), lambdas=3, progress=False),
                        transformers=False)
    return found


def interpolate_cases() -> list[Case]:
    pair = lambda: (mlp(), mlp(seed=1))  # noqa: E731
    at = lambda lam: lambda a, b: lmc.interpolate(a, b, lam)  # noqa: E731
    found = [
        Case("interpolate-nan-lam", at(NAN), ValueError, r"\blam\b", pair),
        Case("interpolate-inf-lam", at(INF), ValueError, r"\blam\b", pair),
        Case("interpolate-string-lam", at("0.5"), TypeError, r"\blam\b", pair),
        Case("interpolate-tensor-of-lams", at(torch.tensor([0.2, 0.8])), TypeError, r"\blam\b", pair),
    ]
    return found + pair_cases("interpolate", at(0.5))


def circuit_cases() -> list[Case]:
    models = lmc.circuits.circuit_models
    found = [
        Case("circuit_pair-mlps", lmc.circuit_pair, ValueError, r"mlp models have no attention heads",
             lambda: (mlp(), mlp(seed=1))),
        Case("circuit_models-one-model", lambda m: models([m]), ValueError, r"at least two models", lambda: (gpt(),)),
        Case("circuit_models-no-models", lambda: models([]), ValueError, r"at least two models"),
        Case("circuit_pair-vit-LayerScale", lmc.circuit_pair, ValueError, r"blocks\.0\.ls1",
             lambda: (vision(init_values=0.1), vision(1, init_values=0.1))),
        Case("circuit_pair-gpt2-float32-vs-float64", lmc.circuit_pair, ValueError, r"dtype",
             lambda: (gpt(), gpt(1, dtype=torch.float64))),
        Case("circuit_models-third-model-differs", lambda a, b, c: models([a, b, c]), ValueError, HEADS_DIFFER,
             lambda: (gpt(), gpt(1), gpt(2, n_head=4))),
    ]
    return found + pair_cases("circuit_pair", lmc.circuit_pair, mlps=False)


def alignment_cases() -> list[Case]:
    apply = lambda alignment, model: alignment.apply(model)  # noqa: E731
    return [
        Case("Alignment.apply-canonical-alignment-on-LayerNorm-original", apply, ValueError, r"lmc\.canonicalize",
             lambda: (gpt2_paper_alignment(), gpt(1))),
        Case("Alignment.apply-other-width", apply, ValueError, r"'fc1'", lambda: (mlp_alignment(), mlp((6,), seed=1))),
        Case("Alignment.apply-other-activation", apply, ValueError, r"'act1'",
             lambda: (mlp_alignment(), mlp((8,), "gelu", seed=1))),
        Case("Alignment.apply-other-head-count", apply, ValueError, HEADS_DIFFER,
             lambda: (gpt2_paper_alignment(), gpt(1, canonical=True, n_head=4))),
        Case("Alignment.apply-other-family", apply, ValueError, r"(?i)mlp.*gpt2|gpt2.*mlp",
             lambda: (mlp_alignment(), gpt(canonical=True))),
        Case("Alignment.apply-not-a-module", apply, TypeError, r"OrderedDict|dict|model",
             lambda: (mlp_alignment(), mlp().state_dict())),
    ]


def random_transform_cases() -> list[Case]:
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    draw = lambda **kw: lambda spec: lmc.random_transform(spec, generator=seeded(), **kw)  # noqa: E731
    spec = lambda: (mlp_spec(),)  # noqa: E731
    found = [
        Case("random_transform-expand-below-one", draw(classes=("semi_permutation",), expand=0.5), ValueError,
             r"expand", spec),
        Case("random_transform-nan-expand", draw(classes=("semi_permutation",), expand=NAN), ValueError, r"expand",
             spec),
        Case("random_transform-model-instead-of-spec", draw(), TypeError, r"spec", lambda: (mlp(),)),
        Case("random_transform-int-generator", lambda s: lmc.random_transform(s, generator=0), TypeError, r"generator",
             spec),
    ]
    return found + classes_cases("random_transform", lambda s, classes: lmc.random_transform(s, classes), spec,
                                 lambda: (lmc.spec_for(gpt()),), lambda: (lmc.spec_for(vision()),))


def evaluate_cases() -> list[Case]:
    return data_cases("evaluate", lmc.evaluate) + [
        Case("evaluate-all-targets-ignored", lmc.evaluate, ValueError, r"no targets",
             lambda: (mlp(), [(torch.randn(5, 4), torch.full((5,), -100))])),
        Case("evaluate-lm-targets-of-the-wrong-shape", lmc.evaluate, ValueError, r"batch 0",
             lambda: (gpt(), [(x, y[:, 0]) for x, y in token_batches()])),
        Case("evaluate-not-a-module", lmc.evaluate, TypeError, r"model|OrderedDict|dict",
             lambda: (mlp().state_dict(), batches())),
    ]


def training_cases() -> list[Case]:
    configs = [
        ("unknown-optimizer", dict(optimizer="sgdd"), r"optimizer"),
        ("optimizer-class-name", dict(optimizer="Adam"), r"optimizer"),
        ("unknown-schedule", dict(schedule="linear"), r"schedule"),
        ("negative-epochs", dict(epochs=-1), r"epochs"),
        ("fractional-epochs", dict(epochs=2.5), r"epochs"),
        ("zero-batch_size", dict(batch_size=0), r"batch_size"),
        ("zero-lr", dict(lr=0.0), r"lr"),
        ("nan-lr", dict(lr=NAN), r"lr"),
        ("momentum-one", dict(momentum=1.0), r"momentum"),
        ("negative-weight_decay", dict(weight_decay=-0.1), r"weight_decay"),
        ("negative-warmup_steps", dict(warmup_steps=-1), r"warmup_steps"),
    ]
    found = [Case(f"TrainConfig-{rid}", partial(lmc.TrainConfig, **kw), ValueError, match)
             for rid, kw, match in configs]
    config = lmc.TrainConfig(epochs=1, batch_size=4)
    train = partial(lmc.train, seed=0, progress=False)
    found += [
        Case("train-data-a-list-of-batches", lambda data: train(mlp, data, config), TypeError, r"TensorData",
             lambda: (batches(),)),
        Case("train-model-instead-of-builder", lambda model, data: train(model, data, config), TypeError, r"build",
             lambda: (mlp(), tensor_data())),
        Case("train-config-a-dict", lambda data: train(mlp, data, {"epochs": 1}), TypeError, r"config",
             lambda: (tensor_data(),)),
        Case("train-nan-inputs", lambda data: train(mlp, data, config), ValueError, r"(?i)inputs.*(NaN|infinite)",
             lambda: (tensor_data(nan=True),)),
    ]
    return found


def mlp_config_cases() -> list[Case]:
    configs = [
        ("unknown-activation", dict(activation="relu6"), ValueError, r"activation 'relu6'"),
        ("activation-class-name", dict(activation="ReLU"), ValueError, r"activation 'ReLU'"),
        ("zero-width", dict(widths=(8, 0)), ValueError, r"widths"),
        ("negative-width", dict(widths=(-3,)), ValueError, r"widths"),
        ("widths-an-int", dict(widths=8), TypeError, r"widths"),
        ("zero-in_features", dict(in_features=0), ValueError, r"in_features"),
        ("zero-out_features", dict(out_features=0), ValueError, r"out_features"),
    ]
    found = [Case(f"MLPConfig-{rid}", partial(lmc.MLPConfig, **kw), error, match) for rid, kw, error, match in configs]
    return found + [Case("MLP-config-a-dict", lambda: lmc.MLP({"widths": (8,)}), TypeError, r"config|MLPConfig")]


def data_loader_cases() -> list[Case]:
    shakespeare = partial(lmc.tiny_shakespeare, download=False)
    return [
        Case("mnist-missing-root", lambda: lmc.mnist(root=missing_folder(), download=False), FileNotFoundError,
             r"MNIST not found under .*missing"),
        Case("cifar10-missing-root", lambda: lmc.cifar10(root=missing_folder(), download=False), FileNotFoundError,
             r"CIFAR-10 not found under .*missing"),
        Case("tiny_shakespeare-bogus-split", lambda: shakespeare(split="bogus", root=missing_folder()), ValueError,
             r"split must be 'train', 'val' or 'test', got 'bogus'"),
        Case("tiny_shakespeare-missing-root", lambda: shakespeare(root=missing_folder()), FileNotFoundError,
             r"Tiny Shakespeare not found at .*missing"),
        Case("tiny_shakespeare-zero-block_size", lambda: shakespeare(block_size=0, root=shakespeare_root()),
             ValueError, r"block_size"),
        Case("tiny_shakespeare-block-longer-than-split",
             lambda: shakespeare("test", block_size=64, root=shakespeare_root()), ValueError,
             r"shorter than one block of 64"),
        Case("tiny_shakespeare-test_fraction-above-one",
             lambda: shakespeare(block_size=4, test_fraction=1.5, root=shakespeare_root()), ValueError,
             r"test_fraction"),
        Case("digits-test_size-above-dataset", lambda: lmc.digits(test_size=5000), ValueError, r"test_size"),
        Case("digits-negative-test_size", lambda: lmc.digits(test_size=-1), ValueError, r"test_size"),
        Case("TensorData-length-mismatch", lambda x, y: lmc.TensorData(x, y, "toy"), ValueError,
             r"toy: 5 inputs but 3 targets", lambda: (torch.randn(5, 4), torch.zeros(3, dtype=torch.long))),
    ]


def io_cases() -> list[Case]:
    """lmc.save / lmc.load: folders that hold no model, or that a save would overwrite."""
    def filled() -> Path:
        folder = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
        (folder / "notes.txt").write_text("keep me")
        return folder

    return [
        Case("load-missing-folder", lambda: lmc.load(missing_folder()), FileNotFoundError, r"missing"),
        Case("load-empty-folder", lambda: lmc.load(tempfile.mkdtemp(dir=_SCRATCH.name)), ValueError,
             r"not a model folder"),
        Case("save-into-a-non-empty-folder", lambda model: lmc.save(model, filled()), FileExistsError,
             r"exists and is not empty", lambda: (mlp(),)),
        Case("save-a-state-dict", lambda state: lmc.save(state, missing_folder()), TypeError, r"OrderedDict|dict",
             lambda: (mlp().state_dict(),)),
    ]


def solver_cases() -> list[Case]:
    solvers = lmc.solvers
    return [
        Case("solve_assignment-nan-score", solvers.solve_assignment, ValueError, r"score.*NaN",
             lambda: (torch.tensor([[1.0, NAN], [0.0, 1.0]]),)),
        Case("solve_assignment-1d-score", solvers.solve_assignment, ValueError, r"score", lambda: (torch.ones(3),)),
        Case("solve_assignment-rectangular-score", solvers.solve_assignment, ValueError, r"score.*square|square.*score",
             lambda: (torch.eye(3, 4),)),
        Case("solve_assignment-list-score", solvers.solve_assignment, TypeError, r"score",
             lambda: ([[1.0, 0.0], [0.0, 1.0]],)),
        Case("nearest_orthogonal-nan", solvers.nearest_orthogonal, ValueError, r"NaN",
             lambda: (torch.tensor([[NAN, 0.0], [0.0, 1.0]]),)),
        Case("nearest_orthogonal-1d", solvers.nearest_orthogonal, ValueError, r"2-D|matrix|shape",
             lambda: (torch.ones(3),)),
        Case("fit_invertible-zero-statistics", solvers.fit_invertible, ValueError,
             r"invertible fit: .*condition number",
             lambda: (torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, 3))),
        Case("fit_invertible-mismatched-shapes", solvers.fit_invertible, ValueError, r"shape",
             lambda: (torch.eye(3), torch.eye(4), torch.eye(3))),
        Case("fit_invertible-nan-cross", solvers.fit_invertible, ValueError, r"cross.*(NaN|infinite)",
             lambda: (torch.full((2, 2), NAN), torch.eye(2), torch.eye(2))),
    ]


def ot_cases() -> list[Case]:
    ot = lmc.ot
    points = lambda n, d, m=None, e=None: lambda: (torch.randn(n, d), torch.randn(m or n, e or d))  # noqa: E731
    distance = lambda **kw: lambda x, y: ot.wasserstein_distance(x, y, **kw)  # noqa: E731
    found = [
        Case("wasserstein_distance-different-sizes", distance(), ValueError, r"x has 5 points and y has 4",
             points(5, 2, 4)),
        Case("wasserstein_distance-different-dimensions", distance(), ValueError,
             r"x lives in dimension 2 and y in dimension 3", points(4, 2, 4, 3)),
        Case("wasserstein_distance-p-below-one", distance(p=0.5), ValueError, r"p must be >= 1", points(4, 2)),
        Case("wasserstein_distance-nan-p", distance(p=NAN), ValueError, r"p must be >= 1", points(4, 2)),
        Case("wasserstein_distance-empty-x", distance(), ValueError, r"x: expected n >= 1 points", points(0, 2)),
        Case("wasserstein_distance-3d-y", distance(), ValueError, r"y: expected",
             lambda: (torch.randn(4, 2), torch.randn(4, 2, 1))),
        Case("wasserstein_distance-nan-in-x", distance(), ValueError, r"\bx\b.*(NaN|infinite)",
             lambda: (torch.tensor([[NAN], [0.0]]), torch.zeros(2, 1))),
        Case("transport_permutation-metric-wrong-shape", lambda x, y, m: ot.transport_permutation(x, y, metric=m),
             ValueError, r"metric has shape \(3, 3\)", lambda: (*points(4, 2)(), torch.eye(3))),
        Case("effective_dimension-not-square", ot.effective_dimension, ValueError, r"square",
             lambda: (torch.ones(2, 3),)),
        Case("effective_dimension-not-symmetric", ot.effective_dimension, ValueError, r"not symmetric",
             lambda: (torch.tensor([[1.0, 1.0], [0.0, 1.0]]),)),
        Case("effective_dimension-not-psd", ot.effective_dimension, ValueError, r"not positive semi-definite",
             lambda: (torch.diag(torch.tensor([1.0, -1.0])),)),
        Case("effective_dimension-zero", ot.effective_dimension, ValueError, r"the matrix is zero",
             lambda: (torch.zeros(2, 2),)),
        Case("effective_dimension-nan", ot.effective_dimension, ValueError, r"NaN", lambda: (torch.tensor([[NAN]]),)),
        Case("cloud_dimension-second-moment-wrong-shape", ot.cloud_dimension, ValueError,
             r"second moment has shape \(2, 2\)", lambda: (torch.randn(5, 3), torch.eye(2))),
        Case("input_moments-no-Linear", ot.input_moments, ValueError, r"has no nn\.Linear",
             lambda: (sequential(nn.Flatten(), nn.ReLU()), batches())),
        Case("input_moments-not-a-module", ot.input_moments, TypeError, r"model|OrderedDict|dict",
             lambda: (mlp().state_dict(), batches())),
        Case("input_moments-negative-max_batches", partial(ot.input_moments, max_batches=-1), ValueError,
             r"max_batches", lambda: (mlp(), batches())),
        Case("ot_matching-moments-missing-a-layer", partial(ot.ot_matching, moments={}), KeyError, r"'fc1'",
             lambda: (mlp(), mlp(seed=1))),
        Case("ot_matching-gpt2", ot.ot_matching, ValueError, r"space 'residual'", lambda: (gpt(), gpt(1))),
    ]
    found += data_cases("input_moments", ot.input_moments)
    return found + pair_cases("ot_matching", ot.ot_matching, transformers=False)


def book_cases() -> list[Case]:
    Table = lmc.book.Table  # noqa: N806
    return [
        Case("Table-row-too-short", lambda: Table(("a", "b"), ((1,),)), ValueError,
             r"row \(1,\) has 1 values for 2 columns"),
        Case("Table-row-too-long", lambda: Table(("a",), ((1, 2),)), ValueError, r"has 2 values for 1 columns"),
        Case("Table-negative-digits", lambda: Table(("a",), ((1.0,),), digits=-1), ValueError, r"digits"),
        Case("Table-columns-a-string", lambda: Table("ab", (("x", "y"),)), TypeError, r"columns"),
    ]


CASES: list[Case] = [
    *symmetry_cases(), *spec_cases(), *family_cases(), *transform_cases(), *random_transform_cases(),
    *weight_matching_cases(), *activation_matching_cases(), *barrier_cases(), *interpolate_cases(), *circuit_cases(),
    *alignment_cases(), *evaluate_cases(), *training_cases(), *mlp_config_cases(), *data_loader_cases(),
    *io_cases(), *solver_cases(), *ot_cases(), *book_cases(),
]


def test_catalogue_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 150
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_name(bad: Case):
    inputs = bad.inputs()
    with pytest.raises(bad.error, match=bad.match):
        bad.call(*inputs)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_leaves_inputs_untouched(bad: Case):
    inputs = bad.inputs()
    before = fingerprint(inputs)
    try:
        bad.call(*inputs)
    except Exception:  # noqa: BLE001 -- whatever it raises, it must not have modified its inputs
        pass
    assert_untouched(before, fingerprint(inputs))


# -- the mutation sweep over valid calls -----------------------------------------------------------


def dressed(model: nn.Module) -> nn.Module:
    """``model`` in an unusual but legal state that a careless call would disturb: in training mode
    with its first child in eval mode, and its first parameter frozen. (The library refuses models
    with forward hooks, whose output they may change; the fingerprint still counts hooks, so that
    one a call leaves behind shows.)"""
    model.train()
    next(iter(model.children())).eval()
    next(model.parameters()).requires_grad_(False)
    return model


@dataclass(frozen=True)
class Valid:
    id: str
    call: Callable[..., object]
    inputs: Callable[[], tuple]


def valid_calls() -> list[Valid]:
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    mlps = lambda: (dressed(mlp()), dressed(mlp(seed=1)))  # noqa: E731
    gpts = lambda: (dressed(gpt(canonical=True)), dressed(gpt(1, canonical=True)))  # noqa: E731
    vits = lambda: (dressed(vision(canonical=True)), dressed(vision(1, canonical=True)))  # noqa: E731
    config = lmc.TrainConfig(epochs=1, batch_size=4)
    quiet = dict(lambdas=3, progress=False)
    moments_then_ot = lambda a, b, data: lmc.ot.ot_matching(a, b, moments=lmc.ot.input_moments(a, data))  # noqa: E731
    return [
        Valid("spec_for", lmc.spec_for, lambda: (dressed(gpt()),)),
        Valid("canonicalize-gpt2", lmc.canonicalize, lambda: (dressed(gpt()),)),
        Valid("canonicalize-vit", lmc.canonicalize, lambda: (dressed(vision()),)),
        Valid("transform-mlp", lmc.transform,
              lambda: (dressed(mlp()), lmc.random_transform(mlp_spec(), generator=seeded()))),
        Valid("transform-gpt2-orthogonal-residual", lmc.transform,
              lambda: (dressed(gpt(canonical=True)), {"residual": lmc.Orthogonal.random(16, generator=seeded())})),
        Valid("transform-vit-widened-residual", lmc.transform,
              lambda: (dressed(vision(canonical=True)),
                       {"residual": lmc.Orthogonal.random(16, 20, generator=seeded())})),
        Valid("transform_state", lmc.transform_state,
              lambda: (mlp().state_dict(), mlp_spec(), {"fc1": lmc.SemiPermutation.random(8, 12, seeded())})),
        Valid("random_transform", lambda spec: lmc.random_transform(spec, "paper", seeded()),
              lambda: (lmc.spec_for(gpt(canonical=True)),)),
        Valid("weight_matching-mlp", lmc.weight_matching, mlps),
        Valid("weight_matching-gpt2-paper", partial(lmc.weight_matching, classes="paper"), gpts),
        Valid("weight_matching-vit-invertible-heads",
              partial(lmc.weight_matching, classes="invertible heads", max_iter=2), vits),
        Valid("activation_matching-mlp", lmc.activation_matching, lambda: (*mlps(), batches())),
        Valid("activation_matching-vit-paper", partial(lmc.activation_matching, classes="paper"),
              lambda: (*vits(), image_batches())),
        Valid("Alignment.apply", lambda alignment, model: alignment.apply(model),
              lambda: (mlp_alignment(), dressed(mlp(seed=1)))),
        Valid("barrier-mlp-vmap", partial(lmc.barrier, strategy="vmap", **quiet), lambda: (*mlps(), batches())),
        Valid("barrier-mlp-loop", partial(lmc.barrier, strategy="loop", **quiet), lambda: (*mlps(), batches())),
        Valid("barrier-gpt2", partial(lmc.barrier, **quiet), lambda: (*gpts(), token_batches())),
        Valid("interpolate", partial(lmc.interpolate, lam=0.3), mlps),
        Valid("circuit_pair-gpt2", lmc.circuit_pair, gpts),
        Valid("circuit_models-vit", lambda *models: lmc.circuits.circuit_models(models),
              lambda: (*vits(), dressed(vision(2, canonical=True)))),
        Valid("evaluate-mlp", lmc.evaluate, lambda: (dressed(mlp()), batches())),
        Valid("evaluate-gpt2", lmc.evaluate, lambda: (dressed(gpt()), token_batches())),
        Valid("train-from-a-held-model",
              lambda held, data: lmc.train(lambda: held, data, config, seed=0, progress=False),
              lambda: (dressed(mlp()), tensor_data())),
        Valid("save", lambda model: lmc.save(model, missing_folder()), lambda: (dressed(gpt(canonical=True)),)),
        Valid("ot.input_moments", lmc.ot.input_moments, lambda: (dressed(mlp()), batches())),
        Valid("ot.ot_matching", moments_then_ot, lambda: (*mlps(), batches())),
        Valid("ot.layer_dimensions", lmc.ot.layer_dimensions, lambda: (dressed(mlp()),)),
        Valid("ot.wasserstein_distance", lmc.ot.wasserstein_distance, lambda: (torch.randn(6, 3), torch.randn(6, 3))),
        Valid("solvers.solve_assignment", lmc.solvers.solve_assignment, lambda: (torch.randn(5, 5),)),
        Valid("solvers.nearest_orthogonal", lmc.solvers.nearest_orthogonal, lambda: (torch.randn(5, 5),)),
        Valid("Orthogonal", lmc.Orthogonal, lambda: (torch.eye(3),)),
        Valid("Permutation", lmc.Permutation, lambda: (torch.tensor([2, 0, 1]),)),
    ]


VALID = valid_calls()


@pytest.mark.parametrize("valid", VALID, ids=[v.id for v in VALID])
def test_valid_call_leaves_inputs_untouched(valid: Valid):
    inputs = valid.inputs()
    before = fingerprint(inputs)
    valid.call(*inputs)
    assert_untouched(before, fingerprint(inputs))


@pytest.mark.parametrize("change", [
    lambda model, data: model.fc1.weight.data.add_(1),
    lambda model, data: model.act1.eval(),
    lambda model, data: model.fc2.register_forward_hook(_noop_hook),
    lambda model, data: model.fc2.bias.requires_grad_(False),
    lambda model, data: setattr(model.fc2, "bias", nn.Parameter(model.fc2.bias.detach().clone())),
    lambda model, data: setattr(model.act1, "inplace", True),
    lambda model, data: data[0][0].mul_(2),
    lambda model, data: data.append(data[0]),
], ids=["tensor", "training-flag", "hook", "requires_grad", "parameter-object", "setting", "data-tensor", "data-list"])
def test_fingerprint_sees_every_kind_of_change(change):
    """The sweeps can fail: each kind of change to a model or its data shows in the fingerprint."""
    model, data = mlp().train(), batches()
    before = fingerprint((model, data))
    change(model, data)
    with pytest.raises(AssertionError, match="modified its inputs"):
        assert_untouched(before, fingerprint((model, data)))
