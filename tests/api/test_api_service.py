"""The service end to end: real redis-server, API under uvicorn and two Celery workers (subprocesses),
driven over HTTP with the tiny models and datasets.

The kit shards jobs above 16 images (ETM_SHARD_IMAGES=16): jobs limited to 16 images run whole, jobs
on all 24 images of the tiny dataset run as two shards that either worker may take.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from etm.evaluation import Resolver, evaluate
from etm.report import SCHEMA_FILE
from etm.spec import EvaluationSpec
from jobs.storage import sha256_file
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = ServiceKit(tmp_path_factory.mktemp("kit"), n_workers=2, env={"ETM_SHARD_IMAGES": "16"})
    k.start()
    yield k
    codes = k.stop()
    # Workers and API stop cleanly on SIGTERM (0; uvicorn may report -15 when killed mid-request).
    assert all(c in (0, -15) for c in codes.values()), codes


@pytest.fixture(scope="module")
def ids(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path, ood_dir: Path) -> dict[str, Any]:
    models = []
    for p in family_onnx:
        r = kit.upload_model(p, metadata=sidecar(p))
        assert r.status_code == 201, r.text
        models.append(r.json()["id"])
    ds = kit.upload_dataset(dataset_dir, "tiny.zip")
    assert ds.status_code == 201, ds.text
    ood = kit.upload_dataset(ood_dir, "tiny_ood.zip")
    assert ood.status_code == 201, ood.text
    return {
        "models": models,
        "dataset": ds.json()["id"],
        "ood": ood.json()["id"],
        "paths": {m: p for m, p in zip(models, family_onnx, strict=True)}
        | {ds.json()["id"]: dataset_dir, ood.json()["id"]: ood_dir},
    }


def sidecar(model: Path) -> str:
    return model.with_name(model.name + ".json").read_text()


def body(ids: dict[str, Any], **over: Any) -> dict[str, Any]:
    m = ids["models"]
    b = {
        "candidates": [{"name": "a", "models": m[:2]}, {"name": "b", "models": m[1:]}],
        "dataset": ids["dataset"],
        "bootstrap_resamples": 100,
        "batch_size": 8,
        "max_images": 16,
        "overlays": 3,
    }
    b.update(over)
    return {k: v for k, v in b.items() if v is not None}


def strip_timing(report: dict[str, Any]) -> dict[str, Any]:
    r = json.loads(json.dumps(report))
    r["provenance"].pop("timing")
    return r


def test_model_upload_reports_capabilities_and_dedupes(kit: ServiceKit, ids: dict[str, Any], family_onnx) -> None:
    again = kit.upload_model(family_onnx[0])
    assert again.status_code == 200
    rec = again.json()
    assert rec["id"] == ids["models"][0] and rec["sha256"] == sha256_file(family_onnx[0])
    assert rec["format"] == "onnx" and rec["metadata"]["class_names"] == ["real", "synthetic"]
    assert rec["capabilities"]["gradcam"]["available"] is True
    assert rec["capabilities"]["integrated_gradients"]["available"] is False
    listed = kit.client.get("/v1/models").json()["items"]
    assert set(ids["models"]) <= {m["id"] for m in listed}
    assert kit.client.get(f"/v1/models/{ids['models'][0]}").json()["sha256"] == rec["sha256"]
    other = json.loads(sidecar(family_onnx[0])) | {"class_names": ["cat", "dog"], "positive_class": "dog"}
    clash = kit.upload_model(family_onnx[0], metadata=json.dumps(other))
    assert clash.status_code == 409 and ids["models"][0] in clash.json()["detail"]
    bad = kit.upload_model(family_onnx[0], metadata="{not json")
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["detail"]


def test_dataset_upload_counts_and_dedupes(kit: ServiceKit, ids: dict[str, Any], dataset_dir: Path) -> None:
    r = kit.upload_dataset(dataset_dir, "again.zip")
    assert r.status_code == 200 and r.json()["id"] == ids["dataset"]
    d = r.json()
    assert d["counts"] == {"real": 12, "synthetic": 12} and d["n_images"] == 24
    assert d["annotations"]["n_with_mask"] == 24 and d["has_splits"] is False
    assert d["archive"]["format"] == "zip"


def test_job_succeeds_with_progress_report_csv_and_artifacts(kit: ServiceKit, ids: dict[str, Any]) -> None:
    r = kit.submit(body(ids, batch_size=2))
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}" and int(r.headers["Retry-After"]) >= 1
    seen: list[dict[str, Any]] = []
    job = kit.wait(r.json()["id"], seen=seen, poll=0.05)
    assert job["status"] == "succeeded", job["error"]
    assert job["cache_hit"] is False and job["shards"] is None and job["progress"]["fraction"] == 1.0
    fractions = [j["progress"]["fraction"] for j in seen]
    assert fractions == sorted(fractions), "progress went backwards"
    assert len({f for f in fractions if 0 < f < 1}) >= 2, f"progress did not move: {fractions}"
    assert {"queued", "running", "succeeded"} >= {j["status"] for j in seen}

    report = kit.client.get(job["links"]["report"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("application/json")
    jsonschema.validate(report.json(), json.loads(SCHEMA_FILE.read_text()))
    assert [c["name"] for c in report.json()["candidates"]] == ["a", "b"]

    csv = kit.client.get(job["links"]["report_csv"])
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("candidate,run,key") and len(lines) == 1 + 2 * 2 * 16

    arts = kit.client.get(job["links"]["artifacts"]).json()["items"]
    names = {a["name"] for a in arts}
    assert {"curves.json", "overlays.json"} <= names
    assert {n for n in names if n.startswith("overlay_a_")} == {f"overlay_a_{i:02d}.png" for i in range(3)}
    assert {n for n in names if n.startswith("overlay_b_")} == {f"overlay_b_{i:02d}.png" for i in range(3)}
    png = kit.client.get(f"/v1/jobs/{job['id']}/artifacts/overlay_b_01.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    index = kit.client.get(f"/v1/jobs/{job['id']}/artifacts/overlays.json").json()
    keys = [[o["key"] for o in index["overlays"][c]] for c in ("a", "b")]
    assert keys[0] == keys[1] == [i["key"] for i in index["images"]]  # the same images for every candidate
    assert kit.client.get(f"/v1/jobs/{job['id']}/artifacts/nope.png").status_code == 404

    # The same job again: answered from the result cache, at once.
    again = kit.submit(body(ids, batch_size=2))
    assert again.status_code == 202
    hit = again.json()
    assert hit["status"] == "succeeded" and hit["cache_hit"] is True and hit["id"] != job["id"]
    assert kit.client.get(f"/v1/jobs/{hit['id']}/report").json() == report.json()


def test_idempotency_key(kit: ServiceKit, ids: dict[str, Any]) -> None:
    b = body(ids, measures=["accuracy"], seed=5)
    first = kit.submit(b, key="idem-1")
    assert first.status_code == 202
    second = kit.submit(b, key="idem-1")
    assert second.status_code == 202 and second.json()["id"] == first.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = kit.submit(body(ids, measures=["accuracy"], seed=6), key="idem-1")
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in other.json()["detail"]
    assert kit.wait(first.json()["id"])["status"] == "succeeded"


def test_sharded_report_equals_unsharded(kit: ServiceKit, ids: dict[str, Any]) -> None:
    r = kit.submit(body(ids, max_images=None, ood_dataset=ids["ood"], overlays=2))
    assert r.status_code == 202, r.text
    job = kit.wait(r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["shards"] == 2 and job["n_images"] == 24
    served = kit.client.get(job["links"]["report"]).json()

    paths = ids["paths"]
    local = evaluate(
        EvaluationSpec.model_validate(job["spec"]),
        Resolver(model_path=lambda i: paths[i], dataset_path=lambda i: paths[i], threads=1),
    )
    assert strip_timing(served) == strip_timing(local.report)


def test_two_concurrent_jobs_both_finish(kit: ServiceKit, ids: dict[str, Any]) -> None:
    bodies = [body(ids, seed=s, measures=["entropy", "accuracy"]) for s in (21, 22)]
    responses: list[Any] = [None, None]

    def submit(i: int) -> None:
        responses[i] = kit.submit(bodies[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job_ids = [r.json()["id"] for r in responses]
    assert len(set(job_ids)) == 2
    done = [kit.wait(j) for j in job_ids]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"]
    assert not any(d["cache_hit"] for d in done)


def test_cancel_stops_a_running_job(kit: ServiceKit, ids: dict[str, Any]) -> None:
    slow = body(
        ids,
        max_images=None,
        batch_size=2,
        measures=["stability"],
        method="rise",
        method_params={"n_masks": 4000},
        seed=77,
    )
    r = kit.submit(slow)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    kit.wait(job_id, timeout=60, until=lambda j: j["status"] == "running" and j["progress"]["stage"] == "in-set")
    early = kit.client.get(f"/v1/jobs/{job_id}/report")
    assert early.status_code == 409 and early.headers["content-type"] == "application/problem+json"
    t0 = time.time()
    c = kit.client.post(f"/v1/jobs/{job_id}/cancel")
    assert c.status_code == 202 and c.json()["cancel_requested"] is True
    job = kit.wait(job_id, timeout=15)
    assert job["status"] == "canceled" and time.time() - t0 < 8
    assert kit.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_bad_jobs_are_422_with_actionable_messages(kit: ServiceKit, ids: dict[str, Any]) -> None:
    wrong = [{"name": "x", "models": ["m-nope", ids["models"][0]]}]
    r = kit.submit(body(ids, dataset="d-doesnotexist", candidates=wrong))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert "m-nope" in p["detail"] and "d-doesnotexist" in p["detail"]
    assert set(p) >= {"type", "title", "status", "detail", "instance"} and p["instance"] == "/v1/jobs"

    r = kit.submit(body(ids, method="integrated_gradients"))
    assert r.status_code == 422 and "ONNX Runtime has no autograd" in r.json()["detail"]

    r = kit.submit(body(ids, measures=["entropy", "bogus"]))
    assert r.status_code == 422 and "bogus" in r.json()["detail"] and r.json()["errors"]

    # Measure parameters are checked at submission: the problem names the allowed values.
    r = kit.submit(body(ids, measures=["degradation"], measure_params={"degradation": {"orders": ["morf", "up"]}}))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "orders" in r.json()["detail"] and "['morf', 'lerf', 'random']" in r.json()["detail"]
    # A typo in a parameter name is refused too (it used to be ignored, and to enter the cache key).
    r = kit.submit(body(ids, measures=["degradation"], measure_params={"degradation": {"stepz": [0, 50]}}))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "'stepz'" in r.json()["detail"] and "'steps'" in r.json()["detail"], r.json()["detail"]

    r = kit.client.post("/v1/jobs", content=b"not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json"


def test_accuracy_only_job_needs_no_salience_method(kit: ServiceKit, ids: dict[str, Any], tmp_path: Path) -> None:
    """gradcam (the default) is refused on a model without a global pool; accuracy alone never runs it."""
    import torch

    from tests.helpers.tiny import NoPoolNet, export

    torch.manual_seed(0)
    path = export(NoPoolNet(), tmp_path / "nopool.onnx", "onnx-legacy")
    # Also a metadata mistake: mean/std on the 0-255 scale is warned at upload and in the report, not refused.
    meta = json.loads(sidecar(path)) | {"mean": [127.5] * 3, "std": [128.0] * 3}
    up = kit.upload_model(path, metadata=json.dumps(meta))
    assert up.status_code == 201, up.text
    assert up.json()["capabilities"]["gradcam"]["available"] is False
    assert [w["code"] for w in up.json()["warnings"]] == ["mean_std_0_255"]
    cand = [{"name": "np", "models": [up.json()["id"]]}]
    refused = kit.submit(body(ids, candidates=cand, measures=["accuracy", "entropy"]))
    assert refused.status_code == 422 and "no global average pool" in refused.json()["detail"]
    r = kit.submit(body(ids, candidates=cand, measures=["accuracy"]))
    assert r.status_code == 202, r.text
    job = kit.wait(r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    report = kit.client.get(job["links"]["report"]).json()
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    assert report["candidates"][0]["measures"]["accuracy"]["n"] == 16
    codes = {(w["source"], w["code"]) for w in report["warnings"]}
    assert {("load", "mean_std_0_255"), ("job", "inputs_nearly_constant")} <= codes
    index = kit.client.get(f"/v1/jobs/{job['id']}/artifacts/overlays.json").json()
    assert index["overlays"] == {}  # no maps were computed, so no overlays


def test_model_refusals_and_http_errors_are_problems(kit: ServiceKit, tmp_path: Path) -> None:
    import pickle

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    r = kit.upload_model(bad)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "pickle" in r.json()["detail"] and "torch.onnx.export" in r.json()["detail"]

    for method, path, status in (
        ("GET", "/v1/jobs/j-nope", 404),
        ("GET", "/v1/models/m-nope", 404),
        ("GET", "/v1/datasets/d-nope", 404),
        ("GET", "/nowhere", 404),
        ("DELETE", "/v1/jobs", 405),
        ("GET", "/v1/jobs/j-nope/report", 404),
    ):
        r = kit.client.request(method, path)
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        p = r.json()
        assert p["status"] == status and p["detail"] and p["type"].startswith("https://") and p["instance"] == path

    r = kit.client.post("/v1/models", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 415


def test_list_jobs_pages_and_filters(kit: ServiceKit, ids: dict[str, Any]) -> None:
    first = kit.client.get("/v1/jobs", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = kit.client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert {j["id"] for j in first["items"]}.isdisjoint({j["id"] for j in second["items"]})
    created = [j["created_at"] for j in first["items"] + second["items"]]
    assert created == sorted(created, reverse=True)
    ok = kit.client.get("/v1/jobs", params={"status": "succeeded", "limit": 50}).json()["items"]
    assert ok and all(j["status"] == "succeeded" for j in ok)
    assert kit.client.get("/v1/jobs", params={"status": "weird"}).status_code == 422


def test_metrics_and_readiness(kit: ServiceKit) -> None:
    text = kit.client.get("/metrics").text
    for name in ("etm_jobs{state=\"succeeded\"}", "etm_queue_depth{queue=\"cpu\"}", "etm_job_duration_seconds_bucket",
                 "etm_images_per_second", "etm_images_processed_total"):
        assert name in text
    ready = kit.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["redis"] == "ok" and ready["checks"]["workers"]
    assert kit.client.get("/healthz").json()["status"] == "ok"
