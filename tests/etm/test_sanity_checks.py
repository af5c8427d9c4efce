"""The sanity check can fail, and its verdict reaches the ranking.

On a trained benchmark model, Grad-CAM's maps change when the weights are re-initialised (it passes MPRT); the
``edges`` control method of the toy plugin (tests/toys.py: the Sobel edges of the image, which ignore the model)
gives the same maps whatever the weights and fails; the report marks the candidates scored with it as not
trustworthy on their salience-based measures, and they hold no first place there. Also: sharded == unsharded,
and a model with no layer to randomise is refused with a message that says what to do.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchdata.paths import FACES_DIR, family_files
from etm.errors import BadInput
from etm.evaluation import evaluate, finish, run_inset
from etm.measures.sanity import MPRT_THRESHOLD
from etm.spec import EvaluationSpec
from tests.helpers.tiny import export

pytestmark = pytest.mark.timeout(300)
N_IMAGES = 16


@pytest.fixture(scope="module")
def toys() -> Iterator[Any]:
    """The toy plugin registered in this process, as ETM_PLUGINS would, and unregistered afterwards."""
    import etm.plugins
    from etm.measures import MEASURES
    from etm.salience import registry

    mod = importlib.import_module("tests.toys")
    yield mod
    MEASURES.pop("mass", None)
    registry._METHODS.pop("edges", None)
    sys.modules.pop("tests.toys", None)
    etm.plugins._loaded.discard("tests.toys")


def _spec(method: str, measures: list[str] | None = None, **kw: Any) -> EvaluationSpec:
    if not (FACES_DIR / "test").is_dir():
        pytest.skip("benchmark data not generated (make benchmark-data, or link var/ to a checkout that has it)")
    return EvaluationSpec(
        candidates=[{"name": r, "models": [str(family_files(r, "pt2")[0])]} for r in ("xent", "cyborg")],
        dataset=str(FACES_DIR), split="test", measures=measures or ["sanity", "entropy"], method=method,
        max_images=N_IMAGES, batch_size=8, bootstrap_resamples=200, **kw,
    )


@pytest.fixture(scope="module")
def reports(toys: Any) -> dict[str, dict[str, Any]]:
    return {m: evaluate(_spec(m)).report for m in ("gradcam", "edges")}


def _m(report: dict[str, Any], cand: str, name: str) -> dict[str, Any]:
    return next(c for c in report["candidates"] if c["name"] == cand)["measures"][name]


def test_gradcam_passes_and_edges_fails(reports: dict[str, dict[str, Any]]) -> None:
    for cand in ("xent", "cyborg"):
        g, e = _m(reports["gradcam"], cand, "sanity.mprt"), _m(reports["edges"], cand, "sanity.mprt")
        assert g["ci"][1] < MPRT_THRESHOLD and g["details"]["verdict"]["passed"] is True, g["ci"]
        assert e["value"] == pytest.approx(1.0) and e["details"]["verdict"]["passed"] is False
        # 9 layers (4 conv, 4 BatchNorm, the linear head), output first; then a curve point per step
        assert e["details"]["layers"][0] == "fc" and len(e["details"]["curves"]["mprt"]) == 10
        assert _m(reports["edges"], cand, "sanity.random_logit")["value"] == pytest.approx(1.0)
        assert _m(reports["edges"], cand, "sanity.emprt")["value"] == pytest.approx(0.0)
        assert abs(_m(reports["gradcam"], cand, "sanity.emprt")["value"]) > 1e-3  # the maps' complexity moved
        # passes per image: 9 maps for the cascade (eMPRT reuses the last) + 1 for random logit
        passes = next(c for c in reports["edges"]["candidates"] if c["name"] == cand)["passes_per_image"]
        assert passes["sanity"] == {"salience": 10, "forward": 0}


def test_the_verdict_marks_the_candidates_and_their_ranking(reports: dict[str, dict[str, Any]]) -> None:
    good, bad = reports["gradcam"], reports["edges"]
    assert all(c["sanity"]["passed"] is True and c["sanity"]["trusted"] for c in good["candidates"])
    assert good["comparison"]["sanity"]["untrusted"] == []
    assert all(c["sanity"]["passed"] is False and not c["sanity"]["trusted"] for c in bad["candidates"])
    sanity = bad["comparison"]["sanity"]
    assert sanity["untrusted"] == ["cyborg", "xent"] and "sanity.mprt" in sanity["rule"]
    assert "entropy.spatial" in sanity["measures_affected"] and "sanity.mprt" not in sanity["measures_affected"]
    from etm.comparison import first_place_holders

    for m in sanity["measures_affected"]:
        assert all(e["trusted"] is False for e in bad["comparison"]["measures"][m]["ranking"])
        assert first_place_holders(bad["comparison"]["measures"][m]["ranking"]) == []


def test_sharded_equals_unsharded(toys: Any) -> None:
    spec = _spec("gradcam", ["sanity"], measure_params={"sanity": {"independent": 1}})
    whole = evaluate(spec)
    parts = [run_inset(spec, shard=(i, 2)) for i in range(2)]
    merged = finish(spec, parts)
    for cand in ("xent", "cyborg"):
        for name in ("sanity.mprt", "sanity.mprt.independent", "sanity.emprt", "sanity.random_logit"):
            assert _m(whole.report, cand, name) == _m(merged.report, cand, name), name


class _NoWeights(torch.nn.Module):
    """Logits from the per-channel means of the image: no convolution, linear layer or norm to randomise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).mean(dim=(2, 3))[:, :2] * 4.0


def test_a_model_without_layers_is_bad_input(tmp_path: Path, dataset_dir: Path, toys: Any) -> None:
    path = export(_NoWeights(), tmp_path / "noweights.pt2", "pt2")
    spec = EvaluationSpec(candidates=[{"name": "flat", "models": [str(path)]}], dataset=str(dataset_dir),
                          measures=["sanity"], method="edges", max_images=4, bootstrap_resamples=100)
    with pytest.raises(BadInput, match="no layer whose weights can be randomised"):
        evaluate(spec)


def test_page_cli_leaderboard_gate_and_schema_read_the_verdict(reports: dict[str, dict[str, Any]]) -> None:
    import html
    import json

    import jsonschema

    from api.pages import render_report_html
    from api.routers.leaderboards import Board
    from client.cli import comparison_table
    from client.gate import evaluate as gate
    from client.gate import parse_requirements
    from client.types import Report
    from etm.leaderboard import build_boards

    schema = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "report.schema.json").read_text())
    good, bad = reports["gradcam"], reports["edges"]
    for r in (good, bad):
        jsonschema.validate(r, schema)

    typed = Report(bad)
    assert typed.comparison.sanity is not None and typed.comparison.sanity.untrusted == ["cyborg", "xent"]
    assert typed.sanity("xent")["passed"] is False and Report(good).sanity("xent")["passed"] is True
    assert all(not e.trusted for e in typed.comparison.measures["entropy.spatial"].ranking)
    assert typed.comparison.measures["entropy.spatial"].best == []

    table = comparison_table(typed)
    assert "sanity check: NOT TRUSTWORTHY: cyborg, xent" in table and "!#" in table
    assert "first places: xent 0, cyborg 0" in table or "first places: cyborg 0, xent 0" in table
    assert "every candidate passed" in comparison_table(Report(good))

    page = html.unescape(render_report_html(bad))
    assert "Not trustworthy:" in page and "failed the randomisation sanity check" in page and "✗ untrusted" in page
    assert "Every candidate passed the randomisation sanity check" in html.unescape(render_report_html(good))

    job = {"id": "j-1", "spec": bad["config"], "finished_at": 1.0, "status": "succeeded"}
    (board,) = [Board.model_validate(b) for b in build_boards([(job, bad)])]
    entries = board.measures["entropy.spatial"].ranking
    assert all(e.trusted is False and e.first_place is False for e in entries)
    assert all(c.sanity and c.sanity["passed"] is False for c in board.candidates)
    assert all(e.trusted for e in board.measures["sanity.mprt"].ranking)  # the check itself is not marked

    # The CI gate: sanity.mprt is a measure like any other
    assert gate(good, parse_requirements(["sanity.mprt:ci_high<=0.5"])).passed
    failed = gate(bad, parse_requirements(["sanity.mprt:ci_high<=0.5", "sanity.random_logit<0.9"]))
    assert not failed.passed and len(failed.failures) == 4


def test_reports_without_sanity_have_no_verdict_fields(toys: Any) -> None:
    report = evaluate(_spec("gradcam", ["entropy"])).report
    assert all("sanity" not in c for c in report["candidates"]) and "sanity" not in report["comparison"]
    assert all("trusted" not in e for m in report["comparison"]["measures"].values() for e in m["ranking"])
