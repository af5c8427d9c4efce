"""Log a finished job to MLflow the way MLflow users expect: a parent run for the job (its configuration as
parameters, every candidate's measures as metrics, the report, the HTML page and the overlays as artifacts) and
one nested run per candidate (each measure's value, CI bounds and rank), so that MLflow's run table compares
candidates column by column.

MLflow's habits, kept:

- the tracking server is ``--tracking-uri``, or ``MLFLOW_TRACKING_URI`` as every MLflow tool reads it, or MLflow's
  own default (``./mlruns``);
- ``run_id`` logs into an existing run (the training run of the model that was scored): the job's parameters and
  metrics go there under an ``etm.`` prefix and the candidate runs nest under it; ``parent_run_id`` makes the job's
  run a child of an existing run instead. A run this module did not create keeps its status;
- idempotent by job id: a job is logged once per parent (the runs carry ``etm.job_id``); logging it again finds
  those runs and adds nothing, so a retried CI step leaves one set of metrics;
- parameters are the values as MLflow shows them (``64``, ``gradcam``), never ``"null"``: unset ones are left out.

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
           "max_images", "batch_size", "score", "profile")
_KEY_OK = re.compile(r"[^A-Za-z0-9_\-. /]")
DEFAULT_EXPERIMENT = "explain-to-me"


class MlflowMissing(RuntimeError):
    """mlflow is not installed."""


def _key(name: str) -> str:
    """A metric/param key MLflow accepts (alphanumerics, _ - . space /)."""
    return _KEY_OK.sub("_", name)


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def param_value(value: Any) -> str | None:
    """A parameter as MLflow shows it: ``64``, ``gradcam``, ``a,b``; None (left out) when unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, int | float | str) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default (what ``mlflow.get_tracking_uri`` says)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def candidate_metrics(report: Any, name: str, measures: dict[str, Any]) -> dict[str, float]:
    """``{measure: value, measure.ci_low, measure.ci_high, measure.rank}`` of one candidate, keys MLflow takes."""
    out: dict[str, float] = {}
    for mname, m in measures.items():
        v, ci = m.get("value"), m.get("ci")
        if isinstance(v, int | float):
            out[_key(mname)] = float(v)
        if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
            out[_key(f"{mname}.ci_low")], out[_key(f"{mname}.ci_high")] = float(ci[0]), float(ci[1])
        rank = report.comparison.rank_of(name, mname)
        if rank is not None:
            out[_key(f"{mname}.rank")] = float(rank)
    return out


def log_job(
    client: Client,
    job_id: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    with_artifacts: bool = True,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Log job ``job_id`` to MLflow (see the module's docstring for where and how).

    Returns:
        ``{"experiment_id", "run_id", "candidate_runs": {name: run_id}, "metrics": n, "already_logged": bool,
        "tracking_uri", "job_status"}``; ``metrics`` counts what this call logged (0 when already logged).

    Raises:
        MlflowMissing: mlflow is not installed.
        ValueError: both ``run_id`` and ``parent_run_id``, or an unknown run.
        ApiError: the job has no report (not finished, unknown).
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # an optional extra
        raise MlflowMissing("mlflow-log needs mlflow: pip install 'explain-to-me[mlflow]' (or pip install mlflow)") \
            from exc
    if run_id and parent_run_id:
        raise ValueError("give --run-id (log into that run) or --parent-run-id (nest a new run under it), not both")
    uri = resolve_tracking_uri(tracking_uri)
    if _is_file_store(uri):
        # A file store was asked for explicitly; MLflow 3 refuses one unless this is set.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    job = client.job(job_id)
    report = client.report(job_id)
    raw, cmp_ = report.raw, report.comparison
    cfg = raw.get("config") or {}
    ml = MlflowClient(tracking_uri=uri)
    host = run_id or parent_run_id
    try:
        host_run = ml.get_run(host) if host else None
    except MlflowException as exc:
        raise ValueError(f"MLflow at {uri} has no run {host!r}: {exc.message}") from exc
    if host_run is not None:
        exp_id = host_run.info.experiment_id
    else:
        exp = ml.get_experiment_by_name(experiment or DEFAULT_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else ml.create_experiment(experiment or DEFAULT_EXPERIMENT)
    stamp = int(time.time() * 1000)  # metrics are logged once per job and parent (see below), so one stamp

    def find(filter_string: str) -> Any:
        found = ml.search_runs([exp_id], filter_string=filter_string, max_results=2)
        return found[0] if found else None

    job_filter = f"tags.`etm.job_id` = '{job_id}'"
    if run_id:
        parent, created = host_run, False
        already = (host_run.data.tags.get(f"etm.logged.{_key(job_id)}") == "true")
    else:
        nest = f" and tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
        parent = find(f"{job_filter} and tags.`etm.role` = 'job'{nest}")
        already, created = parent is not None and parent.data.tags.get("etm.complete") == "true", parent is None
        if parent is None:
            tags = {
                "etm.job_id": job_id,
                "etm.role": "job",
                "etm.dataset": str(cfg.get("dataset", "")),
                "etm.schema_version": report.schema_version,
                "etm.service": client.base_url,
                "etm.pareto_set": ",".join(cmp_.pareto_set),
                **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
            }
            parent = ml.create_run(exp_id, run_name=run_name or f"etm {job_id}", tags=tags)
    pid = parent.info.run_id
    prefix = "etm." if run_id else ""  # inside a training run, keep clear of its own keys
    children: dict[str, str] = {}
    if already:
        for r in ml.search_runs([exp_id], filter_string=f"{job_filter} and tags.`mlflow.parentRunId` = '{pid}'"):
            children[r.data.tags.get("etm.candidate", r.info.run_id)] = r.info.run_id
        return {"experiment_id": exp_id, "run_id": pid, "candidate_runs": children, "metrics": 0,
                "already_logged": True, "tracking_uri": uri, "job_status": job.status}
    n_metrics = 0
    try:
        params = {f"{prefix}{k}": param_value(cfg.get(k)) for k in _PARAMS}
        params[f"{prefix}measures"] = param_value(cfg.get("measures") or [])
        params[f"{prefix}candidates"] = param_value(report.candidates)
        if run_id:
            params["etm.job_id"] = job_id
        existing = parent.data.params
        ml.log_batch(pid, params=[Param(_key(k), v[:6000]) for k, v in params.items()
                                  if v is not None and k not in existing])
        parent_metrics: dict[str, float] = {}
        for cand in raw.get("candidates", []):
            name = cand["name"]
            models = next((c.get("models", []) for c in cfg.get("candidates", []) if c["name"] == name), [])
            child = find(f"{job_filter} and tags.`etm.candidate` = '{name}' and tags.`mlflow.parentRunId` = '{pid}'")
            if child is None:
                child = ml.create_run(exp_id, run_name=name, tags={
                    "mlflow.parentRunId": pid, "etm.job_id": job_id, "etm.candidate": name,
                    "etm.pareto": str(name in cmp_.pareto_set).lower()})
            cid = child.info.run_id
            values = candidate_metrics(report, name, cand.get("measures") or {})
            if not child.data.metrics:  # a half-logged earlier attempt may have made the run, not its metrics
                metrics = [Metric(k, v, stamp, 0) for k, v in values.items()]
                for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
                    ml.log_batch(cid, metrics=metrics[i:i + 900])
                n_metrics += len(metrics)
            if not child.data.params:
                ml.log_batch(cid, params=[Param("models", ",".join(models)[:6000]),
                                          Param("n_runs", str(cand["n_runs"]))],
                             tags=[RunTag("etm.models", ",".join(models)[:5000])])
            ml.set_terminated(cid)
            children[name] = cid
            # The same values on the parent, under the candidate's name (``_key`` works character by character).
            parent_metrics.update({_key(f"{prefix}{name}.") + k: v for k, v in values.items()})
        if not any(k in parent.data.metrics for k in parent_metrics):
            metrics = [Metric(k, v, stamp, 0) for k, v in parent_metrics.items()]
            for i in range(0, len(metrics), 900):
                ml.log_batch(pid, metrics=metrics[i:i + 900])
            n_metrics += len(metrics)
        folder = "etm" if run_id else ""
        ml.log_text(pid, json.dumps(raw, indent=1), f"{folder}/report.json".lstrip("/"))
        if with_artifacts:
            ml.log_text(pid, client.report_html(job_id), f"{folder}/report.html".lstrip("/"))
            with tempfile.TemporaryDirectory(prefix="etm-mlflow-") as tmp:
                out = Path(tmp) / "overlays"
                names = [a.name for a in client.artifacts(job_id) if a.name.startswith("overlay")]
                client.download_artifacts(job_id, out, names)
                if any(out.iterdir()):
                    ml.log_artifacts(pid, str(out), f"{folder}/overlays".lstrip("/"))
        ml.set_tag(pid, f"etm.logged.{_key(job_id)}" if run_id else "etm.complete", "true")
        if created:
            ml.set_terminated(pid)
    except BaseException:
        if created:
            ml.set_terminated(pid, status="FAILED")
        raise
    return {"experiment_id": exp_id, "run_id": pid, "candidate_runs": children, "metrics": n_metrics,
            "already_logged": False, "tracking_uri": uri, "job_status": job.status}
