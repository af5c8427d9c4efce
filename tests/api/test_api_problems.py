"""Errors as RFC 9457 problem+json, in process (no workers): Redis down, size limits, media types."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from etm.settings import Settings
from tests.servicekit import free_port

PROBLEM = "application/problem+json"


class Client:
    """A synchronous face over httpx's ASGI transport (the app in this process, no server)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://etm.test") as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        store_url=str(tmp_path / "store"),
        cache_dir=tmp_path / "cache",
        max_model_bytes=1000,
        max_archive_members=5,
        auth="off",  # the ASGI transport's peer is 127.0.0.1
    )
    return Client(create_app(settings))


def _problem(r, status: int) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body) and body["status"] == status
    assert "Traceback" not in r.text
    return body


def test_redis_down_is_503(client: Client) -> None:
    p = _problem(client.get("/v1/jobs/j-00000000000000000123"), 503)
    assert "Redis" in p["detail"] and client.get("/v1/jobs").status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")
    assert client.get("/healthz").status_code == 200


def test_upload_over_the_limit_is_413(client: Client) -> None:
    p = _problem(client.post("/v1/models", files={"file": ("big.onnx", b"\0" * 5000)}), 413)
    assert "1000 bytes" in p["detail"]


def test_archive_checks(client: Client) -> None:
    _problem(client.post("/v1/datasets", files={"file": ("d.txt", b"just text")}), 415)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    p = _problem(client.post("/v1/datasets", files={"file": ("d.zip", buf.getvalue())}), 422)
    assert "leaves the archive" in p["detail"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(10):
            zf.writestr(f"c/{i}.png", b"x")
    p = _problem(client.post("/v1/datasets", files={"file": ("d.zip", buf.getvalue())}), 413)
    assert "ETM_MAX_ARCHIVE_MEMBERS" in p["detail"]
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("real/notes.txt", b"hello")
    p = _problem(client.post("/v1/datasets", files={"file": ("d.zip", empty.getvalue())}), 422)
    assert "no usable images" in p["detail"]


def test_malformed_requests(client: Client) -> None:
    _problem(client.post("/v1/models", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}), 400)
    _problem(client.post("/v1/models", files={"other": ("a.onnx", b"x")}), 400)
    p = _problem(client.post("/v1/jobs", content=b"{bad", headers={"Content-Type": "application/json"}), 422)
    assert "not valid JSON" in p["detail"]
    p = _problem(client.post("/v1/jobs", json={"candidates": [], "dataset": "d"}), 422)
    assert "candidates" in p["detail"] and p["errors"]
    _problem(client.put("/v1/jobs"), 405)
    _problem(client.get("/v1/models/m-none"), 404)


def test_unexpected_errors_are_500_without_traceback(client: Client) -> None:
    @client.app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    p = _problem(client.get("/boom"), 500)
    assert "secret internals" not in p["detail"] and "logged" in p["detail"]


def test_job_that_cannot_be_queued_fails_instead_of_hanging(
    tmp_path: Path, family_onnx: list[Path], dataset_dir: Path
) -> None:
    from etm.datasets.archives import ArchiveLimits
    from jobs.registry import Registry
    from jobs.storage import ArtifactStore
    from tests.servicekit import RedisServer, zip_folder

    redis_server = RedisServer(tmp_path / "redis")
    try:
        settings = Settings(
            redis_url=redis_server.url, store_url=str(tmp_path / "store"), cache_dir=tmp_path / "c", auth="off"
        )
        reg = Registry(ArtifactStore(settings.store_url), tenant="local")  # what ETM_AUTH=off acts as
        model, _ = reg.ingest_model(family_onnx[0], "run0.onnx")
        (tmp_path / "ds.zip").write_bytes(zip_folder(dataset_dir))
        ds, _ = reg.ingest_dataset(tmp_path / "ds.zip", "ds.zip", ArchiveLimits(), tmp_path)
        app = create_app(settings)

        class DeadBroker:
            def send_task(self, *a: Any, **kw: Any) -> None:
                raise ConnectionRefusedError("broker down")

        app.state.services.__dict__["celery"] = DeadBroker()
        client = Client(app)
        job = {"candidates": [{"name": "a", "models": [model["id"]]}], "dataset": ds["id"], "max_images": 4}
        p = _problem(client.post("/v1/jobs", json=job), 503)
        assert "could not be queued" in p["detail"]
        listed = client.get("/v1/jobs").json()["items"]
        assert [j["status"] for j in listed] == ["failed"] and listed[0]["error"]["status"] == 503
    finally:
        redis_server.stop()
