"""Adding a measure or a salience method is one module and one registry line (tests/toys.py, a plugin named in
``ETM_PLUGINS``): the spec validates it, the OpenAPI enums list it, the engine computes it, the report and the
page show it. Locally through ``etm.evaluation.evaluate``, and end to end through the real service."""

from __future__ import annotations

import html
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)
NOTE = "centre of mass's distance from the image centre (share of the half-diagonal)"


@pytest.fixture(scope="module")
def toys() -> Iterator[Any]:
    """The plugin, registered in this process as ETM_PLUGINS would (an import), and unregistered afterwards so that
    the other tests' default measure list stays the built-ins'."""
    import etm.plugins
    from etm.measures import MEASURES
    from etm.salience import registry

    mod = importlib.import_module("tests.toys")
    yield mod
    MEASURES.pop("mass", None)
    registry._METHODS.pop("edges", None)
    sys.modules.pop("tests.toys", None)
    etm.plugins._loaded.discard("tests.toys")


def _direct_centre_distance(toys: Any, dataset: Path, size: tuple[int, int]) -> float:
    """``mass.center`` of ``edges`` maps computed here, outside the registries and the engine: the maps do not
    depend on the model, so every run and every candidate has this value."""
    from etm.datasets import iter_batches, open_dataset

    ds = open_dataset(dataset)
    per_image = []
    for batch in iter_batches(ds, range(len(ds)), 8, size):
        per_image.append(toys.centre_distance(toys.sobel_magnitude(batch.images, "grey")))
    return float(np.nanmean(np.concatenate(per_image)))


def test_the_spec_and_its_schema_read_the_registries(toys: Any) -> None:
    from etm.spec import MEASURE_FAMILIES, METHODS, EvaluationSpec

    assert "mass" in MEASURE_FAMILIES and "edges" in METHODS and "gradcam++" in METHODS
    spec = EvaluationSpec(candidates=[{"name": "a", "models": ["m"]}], dataset="d", measures=["mass"], method="edges")
    assert spec.measures == ["mass"] and spec.method == "edges"
    assert "mass" in EvaluationSpec(candidates=[{"name": "a", "models": ["m"]}], dataset="d").measures
    props = EvaluationSpec.model_json_schema()["properties"]
    assert "mass" in props["measures"]["items"]["enum"] and "all" in props["measures"]["items"]["enum"]
    assert props["method"]["enum"][0] == "gradcam" and "edges" in props["method"]["enum"]
    with pytest.raises(ValidationError, match=r"unknown parameter\(s\) \['mapp'\] for mass; accepted: "
                       r"\['bootstrap_resamples', 'map'\]"):
        EvaluationSpec(candidates=[{"name": "a", "models": ["m"]}], dataset="d", measures=["mass"],
                       measure_params={"mass": {"mapp": "native"}})
    with pytest.raises(ValidationError, match="map must be one of 'native', 'upsampled', got 'sideways'"):
        EvaluationSpec(candidates=[{"name": "a", "models": ["m"]}], dataset="d", measures=["mass"],
                       measure_params={"mass": {"map": "sideways"}})
    with pytest.raises(ValidationError, match="unknown salience method 'edgez'"):
        EvaluationSpec(candidates=[{"name": "a", "models": ["m"]}], dataset="d", method="edgez")


def test_a_plugin_measure_and_method_are_computed_and_reported(
    toys: Any, family_onnx: list[Path], dataset_dir: Path
) -> None:
    from api.pages import render_report_html
    from etm.evaluation import evaluate
    from etm.measures import variant_notes
    from etm.spec import EvaluationSpec

    spec = EvaluationSpec(
        candidates=[{"name": "a", "models": [str(p) for p in family_onnx[:2]]}],
        dataset=str(dataset_dir),
        measures=["mass", "entropy"],
        method="edges",
        bootstrap_resamples=100,
    )
    report = evaluate(spec).report
    m = report["candidates"][0]["measures"]["mass.center"]
    assert m["direction"] == "lower" and m["variant"] == "extra" and m["n"] == 24
    want = _direct_centre_distance(toys, dataset_dir, (32, 32))
    assert m["value"] == pytest.approx(want, rel=1e-9)
    assert all(r["value"] == pytest.approx(want, rel=1e-9) for r in m["per_run"])
    assert report["candidates"][0]["runs"][0]["capabilities"]["edges"]["available"] is True
    assert variant_notes()["mass.center"] == NOTE
    page = render_report_html(report)
    assert "mass.center" in page


def test_the_page_shows_a_plugin_measures_note(toys: Any, family_onnx: list[Path], dataset_dir: Path) -> None:
    from api.pages import render_report_html
    from etm.evaluation import evaluate
    from etm.spec import EvaluationSpec

    spec = EvaluationSpec(candidates=[{"name": "a", "models": [str(family_onnx[0])]}], dataset=str(dataset_dir),
                          measures=["mass"], method="edges", bootstrap_resamples=100, max_images=8)
    assert NOTE in html.unescape(render_report_html(evaluate(spec).report))  # as the reader sees it


def test_the_service_validates_computes_and_reports_a_plugin(
    tmp_path: Path, toys: Any, family_onnx: list[Path], dataset_dir: Path
) -> None:
    with ServiceKit(tmp_path / "kit", n_workers=1, env={"ETM_PLUGINS": "tests.toys"}) as kit:
        model = kit.upload_model(family_onnx[0], metadata=family_onnx[0].with_name(family_onnx[0].name + ".json")
                                 .read_text())
        assert model.status_code == 201, model.text
        assert model.json()["capabilities"]["edges"]["available"] is True  # the sandboxed inspection knows it
        ds = kit.upload_dataset(dataset_dir, "tiny.zip")
        assert ds.status_code == 201, ds.text
        doc = kit.client.get("/openapi.json").json()
        props = doc["components"]["schemas"]["JobRequest"]["properties"]
        assert "mass" in props["measures"]["items"]["enum"] and "edges" in props["method"]["enum"]

        body: dict[str, Any] = {
            "candidates": [{"name": "a", "models": [model.json()["id"]]}],
            "dataset": ds.json()["id"],
            "measures": ["mass"],
            "method": "edges",
            "bootstrap_resamples": 100,
        }
        # A typo in a measure parameter is refused at submission, as problem+json naming the accepted keys.
        bad = kit.submit(body | {"measure_params": {"mass": {"mapp": "native"}}})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert "'mapp'" in bad.json()["detail"] and "['bootstrap_resamples', 'map']" in bad.json()["detail"]
        assert kit.client.get("/v1/jobs").json()["items"] == []  # nothing was queued

        r = kit.submit(body)
        assert r.status_code == 202, r.text
        job = kit.wait(r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        report = kit.client.get(job["links"]["report"]).json()
        m = report["candidates"][0]["measures"]["mass.center"]
        assert m["value"] == pytest.approx(_direct_centre_distance(toys, dataset_dir, (32, 32)), rel=1e-9)
        page = kit.client.get(f"/v1/jobs/{job['id']}/report.html")
        assert page.status_code == 200 and "mass.center" in page.text
        assert json.dumps(report)  # the report is plain JSON
