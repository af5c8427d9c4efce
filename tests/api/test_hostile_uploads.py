"""The hostile-model corpus (``tests/helpers/hostile_models.py``) against the service and local ``etm``:
every file is refused with problem+json (or a clear CLI error) or contained, and nothing it tries to do
happens: no marker file appears, no secret byte comes back, no file is created, the service keeps
answering. And where a validator could one day miss a payload, the sandbox still holds: the same payloads
loaded by torch's own loader *inside* the sandbox (as if the validators were absent) escape nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from etm.sandbox import Limits, run
from tests.helpers import hostile_models as hm
from tests.helpers.tiny import tiny_dataset
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]
SECRET = b"TOPSECRT"  # the 8 bytes a read payload would copy into the scores


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder outside every store and sandbox: the secret a payload wants, where its markers would land."""
    d = tmp_path_factory.mktemp("victim")
    (d / "secret.txt").write_bytes(SECRET + b" and more")
    return {"dir": d, "secret": d / "secret.txt"}


def corpus(tmp: Path, victim: dict[str, Path]) -> dict[str, Path]:
    """One file per attack kind (each payload really escapes when loaded without the validators)."""
    tmp.mkdir(parents=True, exist_ok=True)
    marker = victim["dir"] / "marker"
    rel = os.path.relpath(victim["secret"], REPO)  # relative to the API's and the workers' working directory
    files = {name: make(tmp / name, marker) for name, make in hm.PT2_MARKER_PAYLOADS.items()}
    files |= {name: make(tmp / name, marker) for name, make in hm.PT2_STOPPED_BY_TORCH.items()}
    files["from_file_read"] = hm.pt2_from_file_read(tmp, victim["secret"])
    files["from_file_create"] = hm.pt2_from_file_create(tmp, victim["dir"] / "created")
    for where in ("if_initializer", "nested_if", "constant", "sparse_initializer"):
        files[f"external_{where}"] = hm.onnx_external_data(tmp / where, rel, where)
    files["loop_bomb"] = hm.onnx_loop_bomb(tmp)
    files["loop_input_dependent"] = hm.onnx_loop_input_dependent(tmp)
    files["scan_bomb"] = hm.onnx_scan_bomb(tmp)
    files["custom_domain"] = hm.onnx_custom_domain(tmp)
    for op in ("ConstantOfShape", "Expand"):
        files[f"alloc_{op}"] = hm.onnx_allocation_bomb(tmp, op)
    return files


def no_escape(victim: dict[str, Path]) -> None:
    assert sorted(p.name for p in victim["dir"].iterdir()) == ["secret.txt"]  # no marker, no created file


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Two workers: the uploads below go two at a time (each inspection is a sandboxed process start of seconds).
    with ServiceKit(tmp_path_factory.mktemp("hostile"), n_workers=2, env={"ETM_AUTH": "keys"}) as k:
        yield k


def test_every_hostile_upload_is_refused_and_nothing_escapes(
    kit: ServiceKit, victim: dict[str, Path], tmp_path: Path
) -> None:
    client = kit.client_for(kit.create_key("mallory"))

    def post(path: Path) -> httpx.Response:
        with open(path, "rb") as f:
            return client.post("/v1/models", files={"file": (path.name, f, "application/octet-stream")},
                               data={"metadata": path.with_name(path.name + ".json").read_text()})

    files = corpus(tmp_path, victim)
    with ThreadPoolExecutor(max_workers=kit.n_workers) as pool:
        answers = dict(zip(files, pool.map(post, files.values()), strict=True))
    for name, r in answers.items():
        assert r.status_code == 422, (name, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), name
        assert SECRET.decode() not in r.text, name
    no_escape(victim)
    assert client.get("/v1/models").json()["items"] == []  # nothing half-stored
    store = kit.workdir / "store"
    assert not [p for p in store.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert "sympy" in answers["sympy_input"].json()["detail"] or "expr_str" in answers["sympy_input"].json()["detail"]
    assert "from_file" in answers["from_file_read"].json()["detail"]
    assert "external data" in answers["external_nested_if"].json()["detail"]
    assert "Loop" in answers["loop_input_dependent"].json()["detail"]
    assert kit.client.get("/readyz").status_code == 200  # API and worker still serve


def test_local_etm_refuses_them_too(victim: dict[str, Path], tmp_path: Path) -> None:
    files = corpus(tmp_path / "corpus", victim)
    images = tiny_dataset(tmp_path / "images", n_per_class=2, masks=False)
    for name in ("sympy_input", "guards_code", "from_file_create", "external_if_initializer", "loop_input_dependent"):
        res = subprocess.run(
            [sys.executable, "-m", "client.cli", "salience", "--model", str(files[name]), "--images", str(images),
             "--out", str(tmp_path / f"{name}.npz")],
            cwd=REPO, capture_output=True, text=True, timeout=180,
        )
        assert res.returncode == 2, (name, res.returncode, res.stderr[-2000:])
        assert "etm: error:" in res.stderr and "Traceback" not in res.stderr, (name, res.stderr[-2000:])
        assert not (tmp_path / f"{name}.npz").exists()
    no_escape(victim)


LOAD_UNCHECKED = r"""
import json, sys
from pathlib import Path
import torch
req = json.loads(Path("request.json").read_text())
outcome = {}
for name, path in req["files"].items():
    try:
        out = torch.export.load(path).module()(torch.zeros(2, 3, 32, 32))  # torch's loader, no validator
        outcome[name] = "ran: " + repr(out.flatten()[:8].tolist())
    except BaseException as exc:
        outcome[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
print(json.dumps({"event": "result", "payload": outcome}), flush=True)
"""


def test_payloads_that_pass_a_validator_are_still_contained(victim: dict[str, Path], tmp_path: Path) -> None:
    """As if a validator had a hole: torch.export.load runs each code and file payload inside the sandbox."""
    files = corpus(tmp_path / "corpus", victim)
    chosen = {n: files[n] for n in (*hm.PT2_MARKER_PAYLOADS, "from_file_read", "from_file_create")}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "probe.py").write_text(LOAD_UNCHECKED)
    t0 = time.monotonic()
    outcome = run(
        {"files": {n: str(p) for n, p in chosen.items()}},
        [f for p in chosen.values() for f in (p, p.with_name(p.name + ".json"))],
        Limits(wall_seconds=300, cpu_seconds=300, memory_bytes=4 * 2**30),
        scratch=scratch,
        argv=[sys.executable, "-I", "/scratch/probe.py"],
    ).result
    assert time.monotonic() - t0 < 300
    no_escape(victim)  # the payloads ran (or tried to) and left nothing on the host
    for name in ("sympy_input", "guards_code", "placeholder_name", "forward_arg_names", "fqn"):
        # The payload's own code ran (its write of the marker is what failed): containment, not validation.
        assert "No such file or directory" in outcome[name] and "marker" in outcome[name], (name, outcome[name])
    # The secret does not exist inside: the read payload fails or reads nothing of it.
    assert SECRET.decode() not in outcome["from_file_read"]
    assert str(list(SECRET)) not in outcome["from_file_read"]
