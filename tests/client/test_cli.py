"""`etm` end to end: salience maps, scoring a family, determinism, shards + merge, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from client.cli import main

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "report.schema.json").read_text())


def _etm(*args: str) -> None:
    assert main(list(args)) == 0


def _numbers(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["provenance"].pop("timing")
    return report


@pytest.fixture(scope="module")
def scored(
    tmp_path_factory: pytest.TempPathFactory, family_onnx: list[Path], dataset_dir: Path, ood_dir: Path
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("score")
    cand = "fam=" + ",".join(str(p) for p in family_onnx)
    common = [
        "--candidate",
        cand,
        "--candidate",
        f"single={family_onnx[0]}",
        "--dataset",
        str(dataset_dir),
        "--ood",
        str(ood_dir),
        "--batch-size",
        "8",
        "--bootstrap",
        "200",
    ]
    _etm("score", *common, "--out", str(out / "a"))
    _etm("score", *common, "--out", str(out / "b"))
    for i in range(3):
        _etm("score", *common, "--shard", f"{i}/3", "--out", str(out / f"s{i}"))
    _etm("merge", *(str(out / f"s{i}") for i in range(3)), "--out", str(out / "merged"))
    return {k: out / k for k in ("a", "b", "merged")}


def test_report_validates_and_has_every_measure(scored: dict[str, Path]) -> None:
    report = json.loads((scored["a"] / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    fam = report["candidates"][0]
    assert fam["n_runs"] == 3
    expected = {
        "entropy.spatial",
        "entropy.histogram",
        "oos.noise",
        "oos.set",
        "geometry.ssim",
        "geometry.pearson",
        "stability.ssim",
        "stability.pearson",
        "degradation.blur",
        "degradation.deletion",
        "agreement.human",
        "accuracy",
    }
    assert expected <= set(fam["measures"])
    for name in expected:
        assert fam["measures"][name]["value"] is not None, name
    assert report["candidates"][1]["measures"]["stability.ssim"]["value"] is None  # K = 1
    assert report["dataset"]["n_images"] == 24
    assert report["provenance"]["model_sha256"]["fam"][0] == fam["runs"][0]["sha256"]
    csv = (scored["a"] / "per_image.csv").read_text().splitlines()
    assert csv[0].startswith("candidate,run,key")
    assert len(csv) == 1 + 24 * 3 + 24  # 3 runs of "fam", 1 of "single"


def test_identical_runs_give_identical_numbers(scored: dict[str, Path]) -> None:
    a = json.loads((scored["a"] / "report.json").read_text())
    b = json.loads((scored["b"] / "report.json").read_text())
    assert _numbers(a) == _numbers(b)
    assert (scored["a"] / "per_image.csv").read_bytes() == (scored["b"] / "per_image.csv").read_bytes()


def test_three_shards_merge_to_the_same_report(scored: dict[str, Path]) -> None:
    a = json.loads((scored["a"] / "report.json").read_text())
    m = json.loads((scored["merged"] / "report.json").read_text())
    assert _numbers(a) == _numbers(m)
    assert (scored["a"] / "per_image.csv").read_bytes() == (scored["merged"] / "per_image.csv").read_bytes()


def test_salience_npz(tmp_path: Path, family_onnx: list[Path], dataset_dir: Path) -> None:
    out = tmp_path / "maps.npz"
    _etm(
        "salience",
        "--model",
        str(family_onnx[0]),
        "--images",
        str(dataset_dir),
        "--method",
        "gradcam",
        "--out",
        str(out),
    )
    with np.load(out, allow_pickle=False) as z:
        assert list(z["files"]) == sorted(z["files"])
        assert z["maps"].shape == (24, 8, 8) and z["maps"].dtype == np.float32
        assert z["upsampled"].shape == (24, 32, 32) and z["upsampled"].dtype == np.float32
        assert z["targets"].shape == (24,) and z["scores"].shape == (24,)
        assert (z["maps"] >= 0).all()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *args], capture_output=True, text=True, timeout=300)


def test_exit_code_2_on_bad_input(tmp_path: Path, family_onnx: list[Path], dataset_dir: Path) -> None:
    r = _run_cli(
        "score",
        "--candidate",
        f"x={tmp_path / 'nope.onnx'}",
        "--dataset",
        str(dataset_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _run_cli(
        "score",
        "--candidate",
        f"x={family_onnx[0]}",
        "--dataset",
        str(dataset_dir),
        "--measures",
        "entropy,bogus",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "unknown measure" in r.stderr
    r = _run_cli(
        "salience",
        "--model",
        str(family_onnx[0]),
        "--images",
        str(dataset_dir),
        "--method",
        "integrated_gradients",
        "--out",
        str(tmp_path / "m.npz"),
    )
    assert r.returncode == 2 and "unavailable for an ONNX graph" in r.stderr
    r = _run_cli(
        "score", "--candidate", f"x={family_onnx[0]}", "--dataset", str(tmp_path), "--out", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.fixture(scope="module")
def nopool_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model without a global pool: the default method (gradcam) is refused on it."""
    import torch

    from tests.helpers.tiny import NoPoolNet, export

    torch.manual_seed(0)
    return export(NoPoolNet(), tmp_path_factory.mktemp("nopool") / "nopool.onnx", "onnx-legacy")


def test_accuracy_only_needs_no_salience_method(tmp_path: Path, nopool_onnx: Path, dataset_dir: Path) -> None:
    common = ["--candidate", f"np={nopool_onnx}", "--dataset", str(dataset_dir), "--bootstrap", "100"]
    _etm("score", *common, "--measures", "accuracy", "--out", str(tmp_path / "acc"))
    report = json.loads((tmp_path / "acc" / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    fam = report["candidates"][0]
    assert fam["measures"]["accuracy"]["value"] is not None and fam["measures"]["accuracy"]["n"] == 24
    assert fam["passes_per_image"]["clean"] == {"salience": 0, "forward": 1}
    assert report["candidates"][0]["runs"][0]["capabilities"]["gradcam"]["available"] is False
    # A measure that needs maps still refuses the method, with the capability table's reason.
    r = _run_cli("score", *common, "--measures", "accuracy,entropy", "--out", str(tmp_path / "ent"))
    assert r.returncode == 2 and "no global average pool" in r.stderr
