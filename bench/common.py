"""Shared pieces of the benchmarks: thread settings, interleaved timing, results, cached models.

Every figure is a *ratio measured in one run*: the contenders are timed round-robin (ours, anchor,
ours, anchor, ...) so that a load spike from other processes on the shared machine hits all of them
alike, and each contender's figure is its best (minimum) time over the repetitions, as ``timeit``
recommends for "how fast can this code go". Speed is reported; correctness is enforced: a check
that fails makes ``bench.run`` exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "var" / "bench"
MODELS_DIR = BENCH_DIR / "models"

IMAGENET_META = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "class_names": ["real", "synthetic"],
    "positive_class": "synthetic",
    "score_activation": "softmax",
}


def set_threads(n: int = 1) -> str:
    """Pin torch's intra-op threads (OpenMP barriers make small ops ~30x slower with 2 threads on 2
    shared cores) and say what was set, for the figures' captions. ONNX Runtime sessions get the
    same count through ``intra_op_num_threads``."""
    torch.set_num_threads(n)
    return f"torch threads={torch.get_num_threads()}, ORT intra_op={n}, inter_op=1"


def ort_session(path: Path | str, threads: int = 1, providers: list[str] | None = None):
    """A bare ONNX Runtime session with the thread settings the service uses (no extra outputs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, round-robin, after ``warmup`` untimed calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def best(ts: list[float]) -> float:
    return float(min(ts))


@dataclass
class Row:
    """One line of the figures table."""

    figure: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Check:
    """A correctness check: a failed one makes the run exit non-zero."""

    figure: str
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    figure: str
    title: str
    setup: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def row(self, name: str, value: float | None, unit: str, target: str = "", met: bool | None = None,
            note: str = "") -> None:
        self.rows.append(Row(self.figure, name, value, unit, target, met, note))

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(self.figure, name, bool(ok), detail))
        return bool(ok)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover - onnxruntime is a runtime dependency
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def have(*modules: str) -> bool:
    """Whether the optional anchor packages are importable (the ``bench`` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair (float64); 1.0 where both rows are constant and equal, NaN where
    exactly one is constant."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    da = a - a.mean(axis=1, keepdims=True)
    db = b - b.mean(axis=1, keepdims=True)
    na, nb = np.sqrt((da * da).sum(axis=1)), np.sqrt((db * db).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (da * db).sum(axis=1) / (na * nb)
    both_const = (na == 0) & (nb == 0)
    r[both_const] = np.where(np.all(a[both_const] == b[both_const], axis=1), 1.0, np.nan)
    return r


def check_maps(rep: Report, ours: np.ndarray, theirs: dict[str, np.ndarray], minimum: float, label: str = "") -> None:
    """One check per contender: the per-image Pearson r of our native maps and theirs, all >= ``minimum``."""
    for name, maps in theirs.items():
        r = pearson_rows(ours, np.asarray(maps))
        worst = float(np.nanmin(r)) if np.isfinite(r).any() else float("nan")
        rep.check(f"native maps {label}vs {name}", bool(np.all(r >= minimum)),
                  f"min Pearson r over {len(r)} images = {worst:.6f} (need >= {minimum})")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))


def export_cached(name: str, build: Callable[[], torch.nn.Module], fmt: str, size: int, meta: dict,
                  models_dir: Path = MODELS_DIR) -> Path:
    """Export ``build()`` once per torch version (exports take a minute for ResNet-50) and reuse it.

    The cache is only a speed-up: every figure checks that the exported model and the eager module
    give the same logits, so a stale file cannot pass silently."""
    from tests.helpers.tiny import export

    ext = "pt2" if fmt == "pt2" else "onnx"
    out = models_dir / f"{name}-torch{torch.__version__.split('+')[0]}.{ext}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp." + ext)
        export(build(), tmp, fmt, size=size, meta=meta)
        tmp.with_name(tmp.name + ".json").replace(out.with_name(out.name + ".json"))
        tmp.replace(out)
    return out
