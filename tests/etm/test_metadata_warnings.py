"""Metadata mistakes caught, not scored: load warnings (metadata, probe batch), the report's warnings from a
job's numbers, ``score_activation: none``, and the warnings on the HTML page and `etm score`'s stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from api.pages import render_report_html
from client.cli import main
from etm.evaluation import Resolver, evaluate
from etm.models import checks
from etm.models.loader import load_model
from etm.models.metadata import ModelMetadata
from etm.report import SCHEMA_FILE
from etm.spec import EvaluationSpec
from tests.helpers.tiny import META, TinyNet, export

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Softmaxed(torch.nn.Module):
    """A graph that ends in a softmax: its outputs are probabilities already."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("warn")
    torch.manual_seed(0)
    soft = export(_Softmaxed(), out / "soft.onnx", "onnx-legacy")
    torch.manual_seed(0)
    plain = export(TinyNet(), out / "plain.onnx", "onnx-legacy")
    # The same bytes with wrong metadata, as a user would upload them (sidecars: what `etm` reads).
    variants = {
        "scale255": {**META, "mean": [127.5] * 3, "std": [128.0] * 3},
        "sigmoid2": {**META, "score_activation": "sigmoid"},
    }
    paths = {"soft": soft, "plain": plain}
    for name, meta in variants.items():
        p = out / f"{name}.onnx"
        p.write_bytes(plain.read_bytes())
        p.with_name(p.name + ".json").write_text(json.dumps({**meta, "input_size": [32, 32]}))
        paths[name] = p
    return paths


def _codes(ws: list[dict[str, Any]]) -> list[str]:
    return [w["code"] for w in ws]


def test_load_warnings_name_the_fix(models: dict[str, Path]) -> None:
    assert load_model(models["plain"]).describe()["warnings"] == []
    scale = load_model(models["scale255"]).warnings
    assert _codes(scale) == ["mean_std_0_255"] and "divide them by 255" in scale[0]["fix"]
    assert "[0.5, 0.5, 0.5]" in scale[0]["fix"]  # the corrected values are spelled out
    assert _codes(load_model(models["sigmoid2"]).warnings) == ["sigmoid_on_several_outputs"]
    soft = load_model(models["soft"])
    assert _codes(soft.warnings) == ["outputs_are_probabilities"]
    assert "score_activation 'none'" in soft.warnings[0]["fix"]
    # The suggested option is real: the outputs are then the probabilities, and nothing is warned.
    none = load_model(models["soft"], metadata=ModelMetadata(**{**META, "score_activation": "none"}))
    assert none.warnings == []
    x = torch.rand(4, 3, 32, 32)
    out = none.logits(x)
    assert torch.equal(none.probabilities(out), out.float()) and torch.equal(none.predicted(out), out.argmax(1))
    # `none` on logits is the opposite mistake.
    wrong = load_model(models["plain"], metadata=ModelMetadata(**{**META, "score_activation": "none"}))
    assert _codes(wrong.warnings) == ["outputs_not_probabilities"] and "'softmax'" in wrong.warnings[0]["fix"]
    # Without the loader's probe (the .pt2 path keeps none), describe() runs one probe batch itself.
    soft.warnings = None
    assert _codes(soft.describe()["warnings"]) == ["outputs_are_probabilities"]


def test_none_on_one_output_is_a_probability() -> None:
    meta = ModelMetadata(score_activation="none").resolved(1)
    assert meta.class_names == ["class_0", "class_1"]
    with pytest.raises(ValueError, match="'sigmoid' .* or 'none'"):
        ModelMetadata(score_activation="softmax").resolved(1)


def test_numbers_rules_and_thresholds() -> None:
    # The face classifier with 0-255 mean/std: accuracy 0.5, AUROC 0.99.
    w = checks.accuracy_warnings(0.5, 0.99, 200, 2)
    assert _codes(w) == ["chance_accuracy_far_auroc"] and "normalisation" in w[0]["fix"]
    # sigmoid on a 2-logit softmax model: AUROC 0.0 points at the class order / activation.
    w = checks.accuracy_warnings(0.5, 0.0, 200, 2)
    assert "positive_class" in w[0]["fix"] and "score_activation" in w[0]["fix"]
    assert checks.accuracy_warnings(0.5, 0.6, 200, 2) == []  # AUROC near 0.5: a weak model, not a misread one
    assert checks.accuracy_warnings(0.9, 0.99, 200, 2) == []  # not at chance
    assert checks.accuracy_warnings(0.5, 0.99, checks.MIN_IMAGES - 1, 2) == []  # too few images to say
    assert _codes(checks.input_warnings(255 * 0.5 / 0.25, 1.0)) == ["inputs_out_of_range"]  # std given /255 twice
    assert _codes(checks.input_warnings(0.99, 0.001)) == ["inputs_nearly_constant"]
    assert checks.input_warnings(0.9, 0.8) == []


def test_report_warns_from_the_jobs_numbers(models: dict[str, Path], dataset_dir: Path, tmp_path: Path) -> None:
    cands = [{"name": n, "models": [str(models[n])]} for n in ("plain", "scale255", "sigmoid2", "soft")]
    spec = EvaluationSpec(
        candidates=cands, dataset=str(dataset_dir), measures=["accuracy"], bootstrap_resamples=100, batch_size=8
    )
    result = evaluate(spec, Resolver())
    report = result.report
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    by: dict[tuple[str, str], list[str]] = {}
    for w in report["warnings"]:
        assert w["fix"] and w["message"] and w["run"] == 0 and w["model"] == str(models[w["candidate"]])
        by.setdefault((w["candidate"], w["source"]), []).append(w["code"])
    assert ("plain", "load") not in by
    assert not {"inputs_out_of_range", "inputs_nearly_constant", "activation_disagrees_with_predictions",
                "outputs_are_probabilities"} & set(by.get(("plain", "job"), []))
    assert by[("scale255", "load")] == ["mean_std_0_255"] and "inputs_nearly_constant" in by[("scale255", "job")]
    assert "activation_disagrees_with_predictions" in by[("sigmoid2", "job")]
    assert "outputs_are_probabilities" in by[("soft", "job")]
    runs = {c["name"]: c["runs"][0]["warnings"] for c in report["candidates"]}
    assert _codes(runs["scale255"]) == ["mean_std_0_255"] and runs["plain"] == []
    assert "_checks" not in result.per_image_csv().splitlines()[0]  # diagnostics are not per-image results
    page = render_report_html(report)
    assert 'id="warnings"' in page and "inputs_nearly_constant" in page and "divide them by 255" in page


def test_etm_score_prints_the_warnings(models: dict[str, Path], dataset_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = ["score", "--candidate", f"s={models['sigmoid2']}", "--dataset", str(dataset_dir),
            "--measures", "accuracy", "--bootstrap", "100", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "etm: warning: candidate 's' run 0:" in err and "[sigmoid_on_several_outputs]" in err
    assert "[activation_disagrees_with_predictions]" in err and "    fix: " in err
