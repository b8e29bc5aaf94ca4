"""The ``lmc`` command (also ``python -m lmc_lib``): inspect, canonicalize, align and compare checkpoints.

    lmc info MODEL
    lmc canonicalize MODEL OUT
    lmc align A B OUT [--classes paper] [--method weight|activation|learned] [--data DATA] [--steps N]
    lmc barrier A B --data DATA [--lambdas 11] [--json FILE] [--plot FILE]
    lmc merge MODEL MODEL [MODEL...] OUT [--classes paper] [--method weight|activation] [--data DATA]

MODEL is a folder (one :func:`lmc_lib.save` wrote, a Hugging Face GPT-2 folder, a timm export),
``timm:NAME:WEIGHTS`` (a named timm ViT, built without a network, with the weights of a local
file) or ``hf:NAME`` (a Hugging Face hub name: the only form that uses a network). DATA is
``mnist``, ``digits``, ``tiny_shakespeare`` (characters), a text file read with ``--tokenizer
FOLDER``, a ``.safetensors`` file holding ``inputs`` and ``targets``, or a folder of images with one
subfolder per class (read with the ViT's own timm data config); datasets are read from
``$LMC_DATA_DIR`` and never downloaded. ``lmc align`` writes OUT/a (A as aligned against:
canonical when the classes need it) and OUT/b (B aligned to A). Bad input ends with status 1
and one line on stderr naming what and where; usage errors with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from . import io
from .alignment import CLASS_PRESETS, check_pair
from .family import canonicalize, family_of, spec_for
from .sources import CommandError, check_fits, first_line, open_model, quiet_transformers, read_data
from .symmetry import CLASS_ORDER

__all__ = ["main", "build_parser"]

#: families whose canonical form (RMSNorm residual) admits orthogonal maps of the residual stream
_CANONICAL_FAMILIES = ("hf-gpt2", "timm-vit")


def _is_canonical(model: nn.Module) -> bool:
    from .canonical import RMSNorm

    return any(isinstance(m, RMSNorm) for m in model.modules())


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def _out_folder(path: str, force: bool) -> Path:
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
        raise CommandError(f"OUT {path!r} exists and is not empty; choose another folder or pass --force")
    return folder


# --- commands -----------------------------------------------------------------------------------

def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    """``text`` on stdout, or ``payload`` as JSON: on stdout for ``--json``; to FILE, and the text on stdout,
    for ``--json FILE``."""
    if args.json is None:
        print(text)
        return
    rendered = json.dumps(payload, indent=2)
    if args.json == "-":
        print(rendered)
    else:
        Path(args.json).write_text(rendered + "\n", encoding="utf-8")
        print(text)


def _passes(sidecar: dict) -> str:
    names = []
    for entry in sidecar.get("passes", []):
        detail = ", ".join(str(entry[k]) for k in ("method", "classes") if entry.get(k) is not None)
        names.append(f"{entry.get('name')} ({detail})" if detail else str(entry.get("name")))
    return " -> ".join(names) or "none recorded"


def _info(args: argparse.Namespace) -> int:
    model, sidecar = open_model(args.model)
    spec = spec_for(model)
    spaces = [{"name": s.name, "group": s.group, "size": s.size, "classes": list(s.classes)}
              for s in spec.spaces.values()]
    groups: dict[str, dict] = {}
    for space in spaces:
        entry = groups.setdefault(space["group"] or "-", {"spaces": 0, "sizes": set(), "classes": space["classes"]})
        entry["spaces"] += 1
        entry["sizes"].add(space["size"])
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    payload = {
        "model": args.model, "family": spec.family, "class": type(model).__name__, "canonical": _is_canonical(model),
        "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtypes, "passes": sidecar.get("passes", []),
        "spaces": spaces,
    }
    lines = [f"model      {args.model}", f"family     {spec.family} ({type(model).__name__}), "
             f"{payload['parameters']:,} parameters, {'/'.join(dtypes)}",
             f"canonical  {'yes' if payload['canonical'] else 'no'}", f"passes     {_passes(sidecar)}",
             f"spaces     {len(spaces)} in {len(groups)} groups", f"  {'group':<10}{'spaces':>7}  {'size':<12}classes"]
    for group, entry in groups.items():
        sizes = "/".join(str(s) for s in sorted(entry["sizes"]))
        lines.append(f"  {group:<10}{entry['spaces']:>7}  {sizes:<12}{', '.join(entry['classes'])}")
    if args.spaces:
        lines += [f"  {s['name']}: size {s['size']}, {', '.join(s['classes'])}" for s in spaces]
    _emit(args, payload, "\n".join(lines))
    return 0


def _canonicalize(args: argparse.Namespace) -> int:
    model, sidecar = open_model(args.model)
    family = family_of(model).name
    if family not in _CANONICAL_FAMILIES:
        raise CommandError(f"model {args.model!r}: a {family} model has no canonical form (only Transformers: "
                           f"{', '.join(_CANONICAL_FAMILIES)})")
    out = _out_folder(args.out, args.force)
    already = _is_canonical(model)
    canon = model if already else canonicalize(model)
    passes = sidecar.get("passes", []) + ([] if already else [{"name": "canonicalize"}])
    io.save(canon, out, passes=passes, seed=args.seed, sources={"model": args.model}, overwrite=args.force)
    note = " (it was canonical already)" if already else ""
    _emit(args, {"model": args.model, "out": str(out), "was_canonical": already},
          f"wrote {out}: {args.model} in canonical form (RMSNorm, centred residual){note}")
    return 0


def _classes(text: str) -> str | tuple[str, ...]:
    """A preset name or comma-separated class names; CommandError for anything else."""
    aliases = {name.replace(" ", sep): name for name in CLASS_PRESETS for sep in "-_"}
    if text in CLASS_PRESETS or text in aliases:
        return aliases.get(text, text)
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or any(name not in CLASS_ORDER for name in names):
        presets = ", ".join(name.replace(" ", "-") for name in CLASS_PRESETS)
        raise CommandError(f"--classes {text!r}: unknown class set; expected a preset ({presets}) or class names "
                           f"separated by commas ({', '.join(CLASS_ORDER)})")
    return names


def _needs_canonical(classes: str | tuple[str, ...]) -> bool:
    """Whether ``classes`` ask for an orthogonal residual, which exists only in canonical form."""
    if isinstance(classes, str):
        return "orthogonal" in CLASS_PRESETS[classes].get("residual", ())
    return "orthogonal" in classes


def _same_form(a: nn.Module, b: nn.Module, wanted: bool) -> tuple[nn.Module, nn.Module, list[str]]:
    """Both models canonical when ``wanted`` or when one of them is already; names the ones converted."""
    if family_of(a).name not in _CANONICAL_FAMILIES or family_of(b).name not in _CANONICAL_FAMILIES:
        return a, b, []
    target = wanted or _is_canonical(a) or _is_canonical(b)
    converted = [label for label, m in (("A", a), ("B", b)) if target and not _is_canonical(m)]
    return (canonicalize(a) if "A" in converted else a), (canonicalize(b) if "B" in converted else b), converted


def _check_pair(a: nn.Module, b: nn.Module) -> None:
    try:
        check_pair(a, b)
    except ValueError as error:
        raise CommandError(f"A and B have different architectures: {first_line(error)}") from None


def _progress(args: argparse.Namespace) -> bool:
    return args.progress if args.progress is not None else sys.stderr.isatty()


def _align(args: argparse.Namespace) -> int:
    from .activations import activation_matching
    from .learned import learned_matching
    from .matching import weight_matching

    if args.method not in ("weight", "activation", "learned"):
        raise CommandError(f"--method {args.method!r}: unknown; expected weight, activation or learned")
    if args.method in ("activation", "learned") and args.data is None:
        what = "the activations are collected" if args.method == "activation" else "the transforms are trained"
        raise CommandError(f"--method {args.method} needs --data ({what} on it)")
    classes = _classes(args.classes)
    device = _device(args.device)
    out = _out_folder(args.out, args.force)
    (a, side_a), (b, side_b) = open_model(args.a, "A"), open_model(args.b, "B")
    a, b, converted = _same_form(a, b, _needs_canonical(classes))
    _check_pair(a, b)
    a, b = a.to(device), b.to(device)
    data = read_data(args, a) if args.data is not None else None
    if data is not None:
        check_fits(a, data, args.data, "A", device)
    torch.manual_seed(args.seed)
    try:
        if args.method == "weight":
            alignment = weight_matching(a, b, classes=classes, seed=args.seed, progress=_progress(args))
        elif args.method == "activation":
            alignment = activation_matching(a, b, data, classes=classes, progress=_progress(args))
        else:
            alignment = learned_matching(a, b, data, classes=classes, steps=args.steps, seed=args.seed,
                                         progress=_progress(args))
    except ValueError as error:
        raise CommandError(f"cannot align with --classes {args.classes!r}: {first_line(error)}") from None
    aligned = alignment.apply(b)
    change = _output_change(b, aligned, data[0][0].to(device)) if data is not None else None
    canonical_pass = [{"name": "canonicalize"}]
    io.save(a, out / "a", passes=side_a.get("passes", []) + (canonical_pass if "A" in converted else []),
            seed=args.seed, sources={"model": args.a}, overwrite=args.force)
    io.save(aligned, out / "b", alignment=alignment, method=args.method, classes=classes, seed=args.seed,
            passes=side_b.get("passes", []) + (canonical_pass if "B" in converted else []),
            sources={"a": args.a, "b": args.b}, overwrite=args.force)
    kinds = Counter(t.kind for t in alignment.transforms.values())
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    form = f"; canonicalized {' and '.join(converted)} first" if converted else ""
    if change is not None:
        form += f"; aligned B's outputs differ from B's by at most {change:.2g} (relative) on the first batch"
    text = (f"aligned B to A by {args.method} matching (classes {args.classes}): {summary}{form}\n"
            f"wrote {out / 'a'} (A) and {out / 'b'} (B aligned to A); "
            f"next: lmc barrier {out / 'a'} {out / 'b'} --data ...")
    payload = {"a": str(out / "a"), "b": str(out / "b"), "method": args.method, "classes": args.classes,
               "canonicalized": converted, "transforms": dict(kinds), "history": list(alignment.history),
               "max_output_change": change}
    _emit(args, payload, text)
    return 0


def _output_change(b: nn.Module, aligned: nn.Module, x: Tensor) -> float:
    """max |f_aligned(x) - f_B(x)| / max |f_B(x)|: ~1e-7 in float32, the same function."""
    with torch.no_grad():
        outputs = [m(x) for m in (b, aligned)]
    before, after = (out.logits if hasattr(out, "logits") else out for out in outputs)
    return float((after - before).abs().max() / before.abs().max().clamp_min(1e-30))


def _lambdas(text: str) -> int | list[float]:
    try:
        return int(text) if "," not in text and "." not in text else [float(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"--lambdas {text!r}: expected a count (11) or points in [0, 1] (0,0.25,0.5,1)") from None


def _plot(curve, path: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3), layout="constrained")
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    curve.plot(ax=loss_axis, metric="loss")
    curve.plot(ax=accuracy_axis, metric="accuracy")
    figure.savefig(path)


def _barrier(args: argparse.Namespace) -> int:
    from .barrier import barrier

    device = _device(args.device)
    lambdas = _lambdas(args.lambdas)
    (a, _), (b, _) = open_model(args.a, "A"), open_model(args.b, "B")
    if _is_canonical(a) != _is_canonical(b):
        which = "A" if _is_canonical(a) else "B"
        raise CommandError(f"model {which} is in canonical form and the other is not: compare OUT/a with OUT/b "
                           "of lmc align, or run lmc canonicalize on the other")
    _check_pair(a, b)
    data = read_data(args, a)
    a, b = a.to(device), b.to(device)
    check_fits(a, data, args.data, "A", device)
    torch.manual_seed(args.seed)
    try:
        curve = barrier(a, b, data, lambdas, device=device, progress=_progress(args))
    except ValueError as error:
        raise CommandError(first_line(error)) from None
    if args.plot:
        _plot(curve, args.plot)
    rows = [f"{'lambda':>8}  {'loss':>10}  {'accuracy':>8}"]
    points = zip(curve.lambdas, curve.losses, curve.accuracies)
    rows += [f"{lam:>8.3f}  {loss:>10.5f}  {accuracy:>8.4f}" for lam, loss, accuracy in points]
    rows.append(f"loss barrier {curve.barrier:.5f}, accuracy barrier {curve.accuracy_barrier:.5f}")
    payload = {"a": args.a, "b": args.b, "data": args.data, "examples": sum(len(y) for _, y in data),
               "lambdas": curve.lambdas.tolist(), "losses": curve.losses.tolist(),
               "accuracies": curve.accuracies.tolist(), "barrier": curve.barrier,
               "accuracy_barrier": curve.accuracy_barrier}
    _emit(args, payload, "\n".join(rows))
    return 0


def _merge(args: argparse.Namespace) -> int:
    """Universe matching of every MODEL, then their average: the merged model, written to OUT."""
    from .evaluation import mix
    from .training import evaluate
    from .universe import universe_matching

    if len(args.models) < 3:
        raise CommandError("lmc merge needs at least two models and OUT: lmc merge MODEL MODEL [MODEL...] OUT")
    *specs, out_path = args.models
    if args.method not in ("weight", "activation"):
        raise CommandError(f"--method {args.method!r}: merging takes weight or activation")
    if args.method == "activation" and args.data is None:
        raise CommandError("--method activation needs --data (the activations are collected on it)")
    classes = _classes(args.classes)
    device = _device(args.device)
    out = _out_folder(out_path, args.force)
    opened = [open_model(spec, f"#{index + 1}") for index, spec in enumerate(specs)]
    models = [model for model, _ in opened]
    canonical = _needs_canonical(classes) or any(_is_canonical(m) for m in models)
    if canonical and all(family_of(m).name in _CANONICAL_FAMILIES for m in models):
        models = [m if _is_canonical(m) else canonicalize(m) for m in models]
    for index, model in enumerate(models[1:], start=2):
        try:
            check_pair(models[0], model)
        except ValueError as error:
            raise CommandError(f"models #1 and #{index} have different architectures: {first_line(error)}") from None
    models = [m.to(device) for m in models]
    data = read_data(args, models[0]) if args.data is not None else None
    if data is not None:
        check_fits(models[0], data, args.data, "#1", device)
    try:
        statistics = data if args.method == "activation" else None  # weight matching reads no data
        alignments = universe_matching(models, classes=classes, method=args.method, data=statistics,
                                       progress=_progress(args))
    except ValueError as error:
        raise CommandError(f"cannot merge with --classes {args.classes!r}: {first_line(error)}") from None
    merged = mix([al.apply(m) for al, m in zip(alignments, models)], [1 / len(models)] * len(models))
    passes = [{"name": "merge", "method": f"universe {args.method} matching", "classes": args.classes,
               "models": list(specs)}]
    io.save(merged, out, passes=passes, seed=args.seed, sources={"models": ", ".join(specs)}, overwrite=args.force)
    payload = {"out": str(out), "models": list(specs), "method": args.method, "classes": args.classes}
    text = f"merged {len(models)} models by universe {args.method} matching (classes {args.classes}) into {out}"
    if data is not None:
        losses = [evaluate(m, data)[0] for m in (*models, merged)]
        payload["losses"] = {"models": losses[:-1], "merged": losses[-1]}
        text += f"\ntest loss: models {', '.join(f'{x:.3f}' for x in losses[:-1])}; merged {losses[-1]:.3f}"
    _emit(args, payload, text)
    return 0


# --- the parser ---------------------------------------------------------------------------------

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _data_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", required=required, help="mnist, digits, tiny_shakespeare, FILE.safetensors "
                        "(inputs, targets) or a text FILE with --tokenizer")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="dataset split (default test)")
    parser.add_argument("--limit", type=_positive, help="use the first N examples (windows of text)")
    parser.add_argument("--batch-size", type=_positive, default=100, help="examples per batch (default 100)")
    parser.add_argument("--tokenizer", help="tokenizer folder for a text file (e.g. GPT-2 BPE: vocab.json, merges.txt)")
    parser.add_argument("--block-size", type=_positive, help="tokens per window of text (default: min(context, 256))")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lmc`` and its subcommands."""
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="torch device (default cpu)")
    common.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    common.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="machine-readable output: JSON on stdout, or written to FILE")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars on stderr (default: when stderr is a terminal)")
    common.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    parser = argparse.ArgumentParser(
        prog="lmc", description="Linear mode connectivity under neural-network symmetries: inspect, canonicalize, "
        "align and compare checkpoints.", epilog="MODEL: a folder (lmc_lib, Hugging Face GPT-2, timm export), "
        "timm:NAME:WEIGHTS or hf:NAME (hub; needs a network).")
    parser.add_argument("--version", action="version", version=f"lmc_lib {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="family, canonical form, symmetry spaces of MODEL")
    info.add_argument("model", metavar="MODEL")
    info.add_argument("--spaces", action="store_true", help="list every space")
    info.set_defaults(handler=_info)

    canon = commands.add_parser("canonicalize", parents=[common], help="write MODEL in canonical form to OUT")
    canon.add_argument("model", metavar="MODEL")
    canon.add_argument("out", metavar="OUT")
    canon.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    canon.set_defaults(handler=_canonicalize)

    align = commands.add_parser("align", parents=[common], help="align B to A; write OUT/a and OUT/b")
    align.add_argument("a", metavar="A")
    align.add_argument("b", metavar="B")
    align.add_argument("out", metavar="OUT")
    align.add_argument("--classes", default="paper", help="paper (default), permutations, invertible-heads, or class "
                       f"names separated by commas ({', '.join(CLASS_ORDER)})")
    align.add_argument("--method", default="weight",
                       help="weight (default, data-free), activation or learned (both need --data; learned: the "
                       "training split, --split train)")
    align.add_argument("--steps", type=_positive, default=200, help="learned matching: Adam steps (default 200)")
    align.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    _data_options(align, required=False)
    align.set_defaults(handler=_align)

    barrier = commands.add_parser("barrier", parents=[common], help="loss and accuracy along the path from A to B")
    barrier.add_argument("a", metavar="A")
    barrier.add_argument("b", metavar="B")
    barrier.add_argument("--lambdas", default="11", help="number of points (default 11) or points 0,0.5,1")
    barrier.add_argument("--plot", metavar="FILE", help="save the loss and accuracy curves to FILE (png, pdf, svg)")
    _data_options(barrier, required=True)
    barrier.set_defaults(handler=_barrier)

    merge = commands.add_parser("merge", parents=[common], help="align several models to a common universe and "
                                "average them")
    merge.add_argument("models", nargs="*", metavar="MODEL", help="two or more models, then OUT")
    merge.add_argument("--classes", default="paper", help="as for align")
    merge.add_argument("--method", default="weight", help="weight (default) or activation (needs --data)")
    merge.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    _data_options(merge, required=False)
    merge.set_defaults(handler=_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lmc`` with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, usage errors
        return int(exit.code or 0) if not isinstance(exit.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with quiet_transformers():
            return args.handler(args)
    except CommandError as error:
        print(f"lmc {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug, or an input we did not foresee: one line unless --debug
        if args.debug:
            raise
        print(f"lmc {args.command}: {type(error).__name__}: {first_line(error)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
