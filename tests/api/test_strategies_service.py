"""strategies (#20) through the real service (Redis, the API under uvicorn, a Celery worker): too few images
for the clustering is refused at submission with problem+json 422 naming the fix; a sharded job gives the
clusters of the unsharded library run, the representatives' overlays are artifacts and the page shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from etm.evaluation import Resolver, evaluate
from etm.report import SCHEMA_FILE
from etm.spec import EvaluationSpec
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)
SMALL = {"n_neighbors": 4, "max_clusters": 3, "grid": 4}  # at least 5 maps per class


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = ServiceKit(tmp_path_factory.mktemp("kit"), n_workers=1, env={"ETM_SHARD_IMAGES": "16"})
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def ids(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path) -> dict[str, Any]:
    models = []
    for p in family_onnx:
        r = kit.upload_model(p, metadata=p.with_name(p.name + ".json").read_text())
        assert r.status_code == 201, r.text
        models.append(r.json()["id"])
    ds = kit.upload_dataset(dataset_dir, "tiny.zip")
    assert ds.status_code == 201, ds.text
    return {"models": models, "dataset": ds.json()["id"],
            "paths": {m: p for m, p in zip(models, family_onnx, strict=True)} | {ds.json()["id"]: dataset_dir}}


def body(ids: dict[str, Any], **over: Any) -> dict[str, Any]:
    b = {"candidates": [{"name": "a", "models": ids["models"][:2]}], "dataset": ids["dataset"],
         "measures": ["strategies"], "bootstrap_resamples": 100, "batch_size": 8, "overlays": 0}
    b.update(over)
    return {k: v for k, v in b.items() if v is not None}


def test_too_few_images_to_cluster_is_a_422_problem(kit: ServiceKit, ids: dict[str, Any]) -> None:
    r = kit.submit(body(ids, max_images=8))  # default n_neighbors 10: needs 11 images
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    detail = r.json()["detail"]
    assert "strategies needs at least 11 images" in detail and "the job has 8" in detail
    assert "n_neighbors" in detail and "max_clusters" in detail
    # the same job with parameters that fit is accepted
    ok = kit.submit(body(ids, max_images=8, measure_params={"strategies": {"n_neighbors": 3, "max_clusters": 2}}))
    assert ok.status_code == 202, ok.text
    assert kit.wait(ok.json()["id"])["status"] == "succeeded"
    # a bad value is refused with the accepted ones
    r = kit.submit(body(ids, measure_params={"strategies": {"normalise": "max"}}))
    assert r.status_code == 422 and "normalise must be one of 'sum', 'l2'" in r.json()["detail"]


def test_sharded_job_clusters_and_page(kit: ServiceKit, ids: dict[str, Any]) -> None:
    r = kit.submit(body(ids, measure_params={"strategies": SMALL}))
    assert r.status_code == 202, r.text
    job = kit.wait(r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["shards"] == 2 and job["n_images"] == 24
    served = kit.client.get(job["links"]["report"]).json()
    paths = ids["paths"]
    local = evaluate(EvaluationSpec.model_validate(job["spec"]),
                     Resolver(model_path=lambda i: paths[i], dataset_path=lambda i: paths[i], threads=1)).report
    jsonschema.validate(served, json.loads(SCHEMA_FILE.read_text()))
    got, want = (x["candidates"][0]["measures"]["strategies.clusters"] for x in (served, local))
    assert got == want and got["value"] >= 1

    names = {a["name"] for a in kit.client.get(job["links"]["artifacts"]).json()["items"]}
    reps = [(cls, cl["cluster"], i) for cls, c in got["details"]["classes"].items()
            for cl in c.get("clusters", []) for i in range(len(cl["representatives"]))]
    assert reps and {f"strategy_a_c{c}_k{k}_{i}.png" for c, k, i in reps} <= names
    index = kit.client.get(f"/v1/jobs/{job['id']}/artifacts/overlays.json").json()
    assert len(index["strategies"]["a"]) == len(reps)

    page = kit.client.get(f"/v1/jobs/{job['id']}/report.html")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert '<section id="strategies">' in html and html.count('class="mapheat"') == len(
        {(c, k) for c, k, _ in reps})
    assert html.count("data:image/png;base64,") == len(reps)  # overlays: 0, so only the representatives
    assert 'class="scatter"' in html and json.dumps(got["details"]["pooling"])[1:-1] in html
