"""Results with their provenance: chapters and benchmarks write them as JSON, the appendix pages read them.

The book's reproduction and speed pages never type a number; they read files of this form (one
JSON object per file, ``<folder>/<name>.json``)::

    {
      "name": "07_vision_transformers",          # what produced the numbers
      "date": "2026-12-01",                      # ISO date of the run
      "machine": {"cpu": "...", "cores": 2, "torch_threads": 2, "gpu": null, "platform": "..."},
      "versions": {"python": "3.11.9", "torch": "2.14.1", "lmc_lib": "0.1.0", ...},
      "settings": {...},                         # what was run: scale, data, model, training
      "results": ...                             # the numbers: any JSON value
    }

Chapters write to ``$LMC_RESULTS_DIR`` (the Makefile points it into the build folder of each
scale; default ``~/.cache/lmc_lib/results``); benchmarks write to ``benchmarks/results``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..barrier import BarrierCurve

__all__ = ["REQUIRED_KEYS", "results_dir", "machine", "versions", "record", "read", "validate", "curve_summary"]

#: Keys every results file must hold.
REQUIRED_KEYS = ("name", "date", "machine", "versions", "results")
_PACKAGES = ("torch", "numpy", "scipy", "timm", "transformers")


def results_dir(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$LMC_RESULTS_DIR``, else ``~/.cache/lmc_lib/results``."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get("LMC_RESULTS_DIR") or Path.home() / ".cache" / "lmc_lib" / "results")


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict:
    """The CPU, its cores, torch's thread count, the GPU (name or None) and the platform of this run."""
    device = torch.device(device) if device is not None else None
    on_gpu = device is not None and device.type == "cuda"
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
        "platform": platform.platform(),
    }


def versions() -> dict:
    """Python's version and those of lmc_lib and the installed numerical packages it uses."""
    found = {"python": platform.python_version()}
    for package in ("lmc_lib", *_PACKAGES):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _jsonable(value):
    """Dataclasses, mappings, sequences, numpy and torch scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **_jsonable(dataclasses.asdict(value))}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate(document: Mapping) -> Mapping:
    """``document`` itself if it holds every key of :data:`REQUIRED_KEYS`; otherwise a ValueError naming
    the missing ones."""
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise ValueError(f"results file lacks {missing}; expected the keys {list(REQUIRED_KEYS)}")
    return document


def record(
    name: str,
    results,
    *,
    settings: Mapping | None = None,
    folder: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Write ``results`` with this run's date, machine and versions to ``<folder>/<name>.json``; return the path."""
    document = {
        "name": name,
        "date": datetime.date.today().isoformat(),
        "machine": machine(device),
        "versions": versions(),
        "settings": _jsonable(settings or {}),
        "results": _jsonable(results),
    }
    path = results_dir(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path


def read(name: str, folder: str | os.PathLike | None = None) -> dict | None:
    """The document ``<folder>/<name>.json`` (checked by :func:`validate`), or None when there is no such file."""
    path = results_dir(folder) / f"{name}.json"
    if not path.is_file():
        return None
    return dict(validate(json.loads(path.read_text())))


def curve_summary(curves: Mapping[str, BarrierCurve]) -> dict[str, dict[str, float]]:
    """Per path: loss and accuracy barriers and the endpoints' test losses and accuracies."""
    return {
        name: {
            "loss_barrier": curve.barrier,
            "accuracy_barrier": curve.accuracy_barrier,
            "loss_a": float(curve.losses[0]),
            "loss_b": float(curve.losses[-1]),
            "accuracy_a": float(curve.accuracies[0]),
            "accuracy_b": float(curve.accuracies[-1]),
            "points": int(len(curve.lambdas)),
        }
        for name, curve in curves.items()
    }
