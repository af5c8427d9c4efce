"""The trust boundary as the service runs it: the API never loads a model (uploads are inspected by a
worker in its sandbox), a model run that hangs is killed on cancel within 5 s and at its budget with a
problem+json, and an upload nobody can inspect answers 503 and leaves nothing behind."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import export, tiny_family
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


class HeavyNet(torch.nn.Module):
    """A legitimate but slow classifier: 24 convolutions of 256 channels at full resolution (seconds per
    image on one thread), GAP + linear head, so a job on it stays inside one forward pass for long."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 256, 3, padding=1), torch.nn.ReLU()]
        for _ in range(23):
            layers += [torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def heavy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(HeavyNet(), tmp_path_factory.mktemp("heavy") / "heavy.onnx", "onnx", size=32)


def sandbox_processes() -> list[int]:
    """PIDs of sandboxed model processes on this machine (bwrap or the child it runs)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"etm.sandbox.child" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def upload(kit: ServiceKit, path: Path) -> Any:
    return kit.upload_model(path, metadata=path.with_name(path.name + ".json").read_text())


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ServiceKit(
        tmp_path_factory.mktemp("boundary"),
        # The budget test waits the whole soft limit; 20 s still leave the cancel test (killed about 1 s into
        # its forward pass, after a sandbox start of a few seconds) far inside it.
        env={"ETM_TASK_SOFT_TIME_LIMIT": "20", "ETM_TASK_TIME_LIMIT": "30", "ETM_VISIBILITY_TIMEOUT": "120"},
    ) as k:
        yield k


def test_the_api_never_loads_a_model(kit: ServiceKit, family_onnx: list[Path], tmp_path: Path) -> None:
    for path in (family_onnx[0], tiny_family(tmp_path, k=1, fmt="pt2")[0]):
        r = upload(kit, path)
        assert r.status_code == 201, r.text
        assert r.json()["capabilities"]["gradcam"]["available"] is True
    # Inspected by the worker, in its sandbox: no ONNX Runtime in the API process (it imports torch only for
    # the measures' parameter checks), and no API module imports a model loader.
    assert "onnxruntime" not in mapped_libraries(kit.procs["api"].pid)
    loaders = ("etm.models.loader", "etm.models.pt2_model", "etm.models.onnx_model", "onnxruntime")
    for source in (REPO / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith(loaders) for n in names), f"{source} imports {names}"


def test_cancel_kills_a_model_run_within_5_s(kit: ServiceKit, heavy_model: Path, dataset_dir: Path) -> None:
    model = upload(kit, heavy_model)
    assert model.status_code == 201, model.text
    ds = kit.upload_dataset(dataset_dir, "tiny.zip")
    assert ds.status_code == 201, ds.text
    body = {
        "candidates": [{"name": "heavy", "models": [model.json()["id"]]}],
        "dataset": ds.json()["id"],
        "measures": ["entropy"],
        "batch_size": 16,
        "bootstrap_resamples": 100,
    }
    job = kit.submit(body).json()
    kit.wait(job["id"], timeout=60, until=lambda j: j["status"] == "running" and bool(sandbox_processes()))
    time.sleep(1.0)  # inside a forward pass of 16 images now
    t0 = time.time()
    assert kit.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    ended = kit.wait(job["id"], timeout=10, poll=0.1)
    assert ended["status"] == "canceled" and time.time() - t0 < 5, ended
    deadline = time.time() + 5
    while sandbox_processes() and time.time() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []


def test_a_run_past_its_budget_fails_with_a_problem(kit: ServiceKit, heavy_model: Path, dataset_dir: Path) -> None:
    model = upload(kit, heavy_model)
    ds = kit.upload_dataset(dataset_dir, "tiny.zip")
    body = {
        "candidates": [{"name": "heavy", "models": [model.json()["id"]]}],
        "dataset": ds.json()["id"],
        "measures": ["entropy", "geometry", "noise"],
        "batch_size": 8,
        "bootstrap_resamples": 100,
        "seed": 1,
    }
    job = kit.submit(body).json()
    ended = kit.wait(job["id"], timeout=120)
    assert ended["status"] == "failed", ended
    err = ended["error"]
    assert err["status"] == 504 and "20 s" in err["detail"], err
    assert err["type"].endswith(("/model-time-limit", "/time-limit"))
    assert sandbox_processes() == []


def test_upload_without_an_inspecting_worker_is_503_and_stores_nothing(
    tmp_path: Path, family_onnx: list[Path]
) -> None:
    with ServiceKit(tmp_path / "kit", env={"ETM_INSPECT_WAIT_SECONDS": "2"}) as kit:
        kit.kill("worker0")
        t0 = time.time()
        r = upload(kit, family_onnx[1])
        assert r.status_code == 503 and time.time() - t0 < 10, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "ETM_INSPECT_WAIT_SECONDS" in r.json()["detail"]
        assert kit.client.get("/v1/models").json()["items"] == []
        blobs = [p for p in (tmp_path / "kit" / "store").rglob("*") if p.is_file() and "blobs" in p.parts]
        assert blobs == []
