"""Log a finished job to MLflow: one parent run for the job (its configuration as parameters, the report,
the HTML page and the overlays as artifacts) and one nested run per candidate (each measure's value, CI
bounds and rank as metrics), so that MLflow's run table compares candidates column by column.

Needs the optional ``mlflow`` package (``pip install 'explain-to-me[mlflow]'``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from client.http import Client

_PARAMS = ("dataset", "split", "ood_dataset", "ood_split", "method", "layer", "target", "seed", "bootstrap_resamples",
           "max_images", "batch_size")
_KEY_OK = re.compile(r"[^A-Za-z0-9_\-. /]")


class MlflowMissing(RuntimeError):
    """mlflow is not installed."""


def _key(name: str) -> str:
    """A metric/param key MLflow accepts (alphanumerics, _ - . space /)."""
    return _KEY_OK.sub("_", name)


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def log_job(
    client: Client,
    job_id: str,
    tracking_uri: str,
    experiment: str | None = None,
    run_name: str | None = None,
    with_artifacts: bool = True,
) -> dict[str, Any]:
    """Log job ``job_id`` to the MLflow tracking server at ``tracking_uri``.

    Returns:
        ``{"experiment_id", "run_id", "candidate_runs": {name: run_id}, "metrics": n}``.

    Raises:
        MlflowMissing: mlflow is not installed.
        ApiError: the job has no report (not finished, unknown).
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # an optional extra
        raise MlflowMissing("mlflow-log needs mlflow: pip install 'explain-to-me[mlflow]' (or pip install mlflow)") \
            from exc
    if _is_file_store(tracking_uri):
        # The user asked for a file store explicitly; MLflow 3 refuses one unless this is set.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    job = client.job(job_id)
    report = client.report(job_id)
    raw = report.raw
    cmp_ = report.comparison
    cfg = raw.get("config") or {}
    ml = MlflowClient(tracking_uri=tracking_uri)
    exp_name = experiment or "explain-to-me"
    exp = ml.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp is not None else ml.create_experiment(exp_name)
    now = int(time.time() * 1000)
    tags = {
        "etm.job_id": job_id,
        "etm.dataset": str(cfg.get("dataset", "")),
        "etm.schema_version": report.schema_version,
        "etm.service": client.base_url,
        "etm.pareto_set": ",".join(cmp_.pareto_set),
    }
    parent = ml.create_run(exp_id, run_name=run_name or f"etm {job_id}", tags=tags)
    pid = parent.info.run_id
    params = [Param(k, json.dumps(cfg[k]) if not isinstance(cfg[k], str) else cfg[k]) for k in _PARAMS if k in cfg]
    params.append(Param("measures", ",".join(cfg.get("measures") or [])))
    params.append(Param("candidates", ",".join(report.candidates)))
    ml.log_batch(pid, params=params)
    n_metrics = 0
    children: dict[str, str] = {}
    try:
        for cand in raw.get("candidates", []):
            name = cand["name"]
            models = next((c.get("models", []) for c in cfg.get("candidates", []) if c["name"] == name), [])
            child = ml.create_run(
                exp_id,
                run_name=name,
                tags={"mlflow.parentRunId": pid, "etm.job_id": job_id, "etm.candidate": name,
                      "etm.pareto": str(name in cmp_.pareto_set).lower()},
            )
            cid = child.info.run_id
            metrics = []
            for mname, m in (cand.get("measures") or {}).items():
                v, ci = m.get("value"), m.get("ci")
                if isinstance(v, (int, float)):
                    metrics.append(Metric(_key(mname), float(v), now, 0))
                if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
                    metrics += [Metric(_key(f"{mname}.ci_low"), float(ci[0]), now, 0),
                                Metric(_key(f"{mname}.ci_high"), float(ci[1]), now, 0)]
                rank = cmp_.rank_of(name, mname)
                if rank is not None:
                    metrics.append(Metric(_key(f"{mname}.rank"), float(rank), now, 0))
            for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
                ml.log_batch(cid, metrics=metrics[i:i + 900])
            ml.log_batch(cid, params=[Param("models", ",".join(models)[:6000]), Param("n_runs", str(cand["n_runs"]))],
                         tags=[RunTag("etm.models", ",".join(models)[:5000])])
            ml.set_terminated(cid)
            children[name] = cid
            n_metrics += len(metrics)
        ml.log_text(pid, json.dumps(raw, indent=1), "report.json")
        if with_artifacts:
            ml.log_text(pid, client.report_html(job_id), "report.html")
            with tempfile.TemporaryDirectory(prefix="etm-mlflow-") as tmp:
                out = Path(tmp) / "overlays"
                names = [a.name for a in client.artifacts(job_id) if a.name.startswith("overlay")]
                client.download_artifacts(job_id, out, names)
                if any(out.iterdir()):
                    ml.log_artifacts(pid, str(out), "overlays")
        ml.set_terminated(pid)
    except BaseException:
        ml.set_terminated(pid, status="FAILED")
        for cid in children.values():
            ml.set_terminated(cid, status="FAILED")
        raise
    return {"experiment_id": exp_id, "run_id": pid, "candidate_runs": children, "metrics": n_metrics,
            "job_status": job.status}
