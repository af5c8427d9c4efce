"""The versioned report: JSON for machines, a per-image CSV beside it.

The report holds no wall-clock timestamps outside ``provenance.timing``, so two identical runs give
identical reports apart from that block.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from etm.comparison import compare, mark_untrusted
from etm.datasets import Dataset
from etm.measures import MEASURES_VERSION
from etm.measures.base import Columns, Measure, MeasureResult
from etm.spec import EvaluationSpec

SCHEMA = "https://explain-to-me.dev/schemas/report.json"
# 1.1.0: warnings (likely metadata mistakes), top level and per run; 1.2.0: the sanity verdict (candidates[].sanity,
# comparison.sanity, ranking entries' trusted) and the opt-in families' details (strategies' clusters). Additive.
SCHEMA_VERSION = "1.2.0"
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "openapi" / "report.schema.json"
_LIBS = ("explain-to-me", "torch", "onnxruntime", "onnx", "numpy", "scipy", "scikit-image", "pillow")


def library_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBS:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


@dataclass
class EvaluationResult:
    report: dict[str, Any]
    columns: dict[str, dict[str, Columns]]  # candidate -> family -> columns
    keys: list[str]

    def per_image_csv(self) -> str:
        """Long format: one row per candidate, run and image; scalar per-image columns only."""
        buf = io.StringIO()
        rows: list[dict[str, Any]] = []
        fields: list[str] = ["candidate", "run", "key"]
        for cand, fams in self.columns.items():
            k_runs = 1
            scalar: dict[str, np.ndarray] = {}
            for fam, cols in fams.items():
                if fam.startswith("_"):  # the plan's own columns (the warnings' diagnostics), not a measure's
                    continue
                for col, arr in cols.items():
                    if arr.ndim in (1, 2) and arr.dtype.kind in "fiub" and len(arr) == len(self.keys):
                        scalar[f"{fam}.{col}"] = arr
                        if arr.ndim == 2 and fam != "stability":
                            k_runs = max(k_runs, arr.shape[1])
            for name in scalar:
                if name not in fields:
                    fields.append(name)
            for r in range(k_runs):
                for i, key in enumerate(self.keys):
                    row: dict[str, Any] = {"candidate": cand, "run": r, "key": key}
                    for name, arr in scalar.items():
                        if arr.ndim == 1:
                            row[name] = arr[i]
                        elif arr.shape[1] == k_runs and not name.startswith("stability."):
                            row[name] = arr[i, r]
                    rows.append(row)
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.9g}" if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
        return buf.getvalue()

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "report.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, sort_keys=False))
        (out_dir / "per_image.csv").write_text(self.per_image_csv())
        tmp.replace(out_dir / "report.json")  # the report appears only when complete


def _sanity_verdicts(flat: dict[str, list[MeasureResult]]) -> dict[str, dict[str, Any]]:
    """Candidate -> its sanity verdict (``etm.measures.sanity.mprt_verdict``), for candidates scored with
    ``sanity.mprt``; empty when the job did not run the sanity checks."""
    from etm.measures.sanity import MPRT

    out: dict[str, dict[str, Any]] = {}
    for cand, rs in flat.items():
        for r in rs:
            if r.name == MPRT and "verdict" in r.details:
                out[cand] = {**r.details["verdict"], "trusted": r.details["verdict"]["passed"] is not False}
    return out


def build_report(
    spec: EvaluationSpec,
    dataset: Dataset,
    ood: Dataset | None,
    families: list[Any],
    results: dict[str, dict[str, list[MeasureResult]]],
    columns: dict[str, dict[str, Columns]],
    seconds: dict[str, float],
    measures: dict[str, dict[str, Measure]],
    warnings: list[dict[str, Any]] | None = None,
) -> EvaluationResult:
    import torch

    from etm.measures import needs_salience

    k_clean = "salience" if needs_salience(spec.measures) else "forward"  # accuracy alone: forward passes only
    candidates = []
    flat: dict[str, list[MeasureResult]] = {}
    for fam in families:
        rs = [r for name in results[fam.name] for r in results[fam.name][name]]
        flat[fam.name] = rs
        passes = {name: m.passes_per_image(len(fam.models)) for name, m in measures[fam.name].items()}
        candidates.append(
            {
                "name": fam.name,
                "n_runs": len(fam.models),
                "runs": [{"run": i, **m.describe()} for i, m in enumerate(fam.models)],
                "measures": {r.name: r.as_dict() for r in rs},
                "passes_per_image": {"clean": {"salience": 0, "forward": 0, k_clean: len(fam.models)}, **passes},
            }
        )
    comparison = compare(flat, spec.seed, spec.bootstrap_resamples)
    verdicts = _sanity_verdicts(flat)
    if verdicts:  # only jobs that ran the sanity checks carry the verdict: other reports keep their bytes
        for cand in candidates:
            cand["sanity"] = verdicts.get(cand["name"], {"passed": None, "rule": "", "message": "not checked"})
        from etm.measures.sanity import salience_based_variants

        mark_untrusted(comparison, verdicts, salience_based_variants())
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "config": spec.canonical(),
        "dataset": dataset.describe(),
        "ood_dataset": ood.describe() if ood is not None else None,
        "candidates": candidates,
        "comparison": comparison,
        # Likely metadata mistakes, each with its fix (etm.models.checks; docs/MODELS.md).
        "warnings": warnings or [],
        "provenance": {
            "measures_version": MEASURES_VERSION,
            "libraries": library_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": str(families[0].models[0].device) if families else "cpu",
            "cuda": torch.cuda.is_available(),
            "seed": spec.seed,
            "model_sha256": {f.name: [m.sha256 for m in f.models] for f in families},
            "dataset_sha256": dataset.sha256,
            "ood_dataset_sha256": ood.sha256 if ood is not None else None,
            "timing": {"seconds": {k: round(v, 3) for k, v in seconds.items()}},
        },
    }
    keys = [it.key for it in dataset.items]
    return EvaluationResult(report=_json_safe(report), columns=columns, keys=keys)
