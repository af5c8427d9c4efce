"""Access control against the real service (ETM_AUTH=keys): API keys made with the admin CLI, every
refusal with its exact status and message, tenant isolation of models, datasets, jobs, reports,
artifacts, lists and leaderboards, per-key rate limits; and ETM_AUTH=off refused off loopback.

One kit for the module (redis-server, uvicorn, one worker); uploads and jobs are the tiny ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.app import create_app
from api.devserver import auth_settings
from api.security.auth import MISSING_DETAIL, NOT_BEARER_DETAIL, OFF_REMOTE_DETAIL, is_loopback
from api.security.keys import KeyStore
from api.security.ratelimit import RateLimiter
from etm.settings import Settings
from jobs.storage import ArtifactStore
from tests.servicekit import PY, REPO, RedisServer, ServiceKit, zip_folder

pytestmark = pytest.mark.timeout(300)

PROBLEM = "application/problem+json"
CACHE_SECONDS = 1.5
RATE = 10  # uploads and job submissions per minute per key in this kit
CHALLENGE = 'Bearer realm="explain-to-me"'


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = ServiceKit(
        tmp_path_factory.mktemp("authkit"),
        env={
            "ETM_AUTH": "keys",
            "ETM_AUTH_CACHE_SECONDS": str(CACHE_SECONDS),
            "ETM_RATE_UPLOADS_PER_MINUTE": str(RATE),
            "ETM_RATE_JOBS_PER_MINUTE": str(RATE),
        },
    )
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def keys(kit: ServiceKit) -> dict[str, str]:
    return {"a": kit.create_key("tenant-a", "alice"), "b": kit.create_key("tenant-b", "bob")}


@pytest.fixture(scope="module")
def clients(kit: ServiceKit, keys: dict[str, str]) -> Any:
    cs = {name: kit.client_for(key) for name, key in keys.items()}
    yield cs
    for c in cs.values():
        c.close()


def _upload_model(c: httpx.Client, path: Path) -> httpx.Response:
    meta = path.with_name(path.name + ".json").read_text()
    return c.post("/v1/models", files={"file": (path.name, path.read_bytes())}, data={"metadata": meta})


def _upload_dataset(c: httpx.Client, folder: Path) -> httpx.Response:
    return c.post("/v1/datasets", files={"file": ("tiny.zip", zip_folder(folder), "application/zip")})


def _body(models: list[str], dataset: str, **over: Any) -> dict[str, Any]:
    return {
        "candidates": [{"name": "a", "models": models}],
        "dataset": dataset,
        "measures": ["entropy", "accuracy"],
        "bootstrap_resamples": 100,
        "batch_size": 8,
        "max_images": 8,
        "overlays": 2,
        **over,
    }


def _wait(c: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def _problem(r: httpx.Response, status: int, detail: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["detail"]
    if detail is not None:
        assert body["detail"] == detail
    return body


@pytest.fixture(scope="module")
def tenant_a(clients: dict[str, httpx.Client], family_onnx: list[Path], dataset_dir: Path) -> dict[str, Any]:
    """Tenant A's two models, its dataset and one succeeded job."""
    a = clients["a"]
    models = []
    for p in family_onnx[:2]:
        r = _upload_model(a, p)
        assert r.status_code == 201, r.text
        models.append(r.json()["id"])
    r = _upload_dataset(a, dataset_dir)
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = a.post("/v1/jobs", json=_body(models[:1], dataset), headers={"Idempotency-Key": "shared-key"})
    assert r.status_code == 202, r.text
    job = _wait(a, r.json()["id"])
    assert job["status"] == "succeeded", job
    return {"models": models, "dataset": dataset, "job": job["id"]}


# -- keys and refusals -------------------------------------------------------------------------------


def test_key_from_the_admin_cli_works(kit: ServiceKit, keys: dict[str, str], clients: dict[str, httpx.Client]) -> None:
    assert keys["a"].startswith("etm_") and keys["a"] != keys["b"]
    r = clients["a"].get("/v1/models")
    assert r.status_code == 200 and r.json() == {"items": []}


def test_no_header_is_401_saying_how_to_send_the_key(kit: ServiceKit) -> None:
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/families"),
                         ("GET", "/v1/jobs/j-0123456789abcdef0123/report"), ("DELETE", "/v1/datasets/d-x")):
        r = kit.client.request(method, path)
        _problem(r, 401, MISSING_DETAIL)
        assert r.headers["www-authenticate"] == CHALLENGE


def test_malformed_authorization_is_401(kit: ServiceKit, keys: dict[str, str]) -> None:
    r = kit.client.get("/v1/models", headers={"Authorization": f"Basic {keys['a']}"})
    _problem(r, 401, NOT_BEARER_DETAIL)
    assert r.headers["www-authenticate"] == CHALLENGE + ', error="invalid_request"'
    r = kit.client.get("/v1/models", headers={"Authorization": "Bearer not-a-key"})
    _problem(r, 401, "the bearer token is not an Explain-to-Me API key (they look like etm_<id>_<secret>)")
    assert r.headers["www-authenticate"] == CHALLENGE + ', error="invalid_token"'


def test_wrong_or_unknown_key_is_401(kit: ServiceKit, keys: dict[str, str]) -> None:
    unknown = (
        "this API key is not known to the service; check ETM_API_KEY or ask an operator for a key "
        "(etm-admin keys create)"
    )
    key_id = keys["a"].split("_")[1]
    wrong_secret = f"etm_{key_id}_{'x' * 43}"
    wrong_id = "etm_000000000000_" + keys["a"].split("_", 2)[2]
    for key in (wrong_secret, wrong_id):
        r = kit.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        _problem(r, 401, unknown)
        assert r.headers["www-authenticate"] == CHALLENGE + ', error="invalid_token"'


def test_revoked_key_is_refused_within_the_cache_window(kit: ServiceKit) -> None:
    # With the admin CLI (a Python start-up: the cache window may be over before it returns).
    key = kit.create_key("tenant-c")
    key_id = key.split("_")[1]
    with kit.client_for(key) as c:
        assert c.get("/v1/models").status_code == 200
        res = kit.admin("keys", "revoke", key_id)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + CACHE_SECONDS + 1
        while (r := c.get("/v1/models")).status_code == 200:
            assert time.monotonic() < deadline, "revocation not seen in time"
            time.sleep(0.05)
    body = _problem(r, 401)
    assert body["detail"].startswith(f"API key {key_id} was revoked at ") and body["detail"].endswith(
        "; ask an operator for a new key"
    )
    # Timed: revoked in the store right after a verified request, at three points of the window. The key
    # keeps working until the API process's cache entry expires, then is refused.
    keys = KeyStore(ArtifactStore(str(kit.workdir / "store")))
    took = []
    for offset in (0.0, CACHE_SECONDS / 3, 2 * CACHE_SECONDS / 3):
        key = kit.create_key("tenant-c")
        with kit.client_for(key) as c:
            assert c.get("/v1/models").status_code == 200
            verified = time.monotonic()
            time.sleep(offset)
            keys.revoke(key.split("_")[1])
            revoked = time.monotonic()
            while (r := c.get("/v1/models")).status_code == 200:
                assert time.monotonic() - verified < CACHE_SECONDS + 1, "revocation not seen in time"
                time.sleep(0.02)
            took.append(time.monotonic() - revoked)
        _problem(r, 401)
    assert max(took) <= CACHE_SECONDS + 0.5
    print(f"revocation took effect after {', '.join(f'{t:.2f}' for t in took)} s (ETM_AUTH_CACHE_SECONDS="
          f"{CACHE_SECONDS})")


def test_open_endpoints_need_no_key(kit: ServiceKit) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert kit.client.get(path).status_code == 200, path
    spec = kit.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/jobs"]["post"]
    assert {"401", "403", "429"} <= set(op["responses"]) and op["security"] == [{"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []  # open, and says so (linters and generators read it)


def test_admin_list_never_shows_secrets(kit: ServiceKit, keys: dict[str, str]) -> None:
    secrets = [k.split("_", 2)[2] for k in keys.values()]
    for args in (("keys", "list"), ("keys", "list", "--json"), ("keys", "list", "--tenant", "tenant-a", "--json")):
        res = kit.admin(*args)
        assert res.returncode == 0, res.stderr
        out = res.stdout + res.stderr
        assert not any(s in out for s in secrets) and "argon2" not in out and "hash" not in out
    listed = json.loads(kit.admin("keys", "list", "--tenant", "tenant-a", "--json").stdout)
    assert [r["tenant"] for r in listed] == ["tenant-a"] and listed[0]["name"] == "alice"
    assert set(listed[0]) == {"key_id", "tenant", "name", "created_at", "revoked_at"}
    res = kit.admin("keys", "revoke", "ffffffffffff")
    assert res.returncode == 2 and "no key 'ffffffffffff'" in res.stderr
    res = kit.admin("keys", "create", "--tenant", "Bad Tenant!")
    assert res.returncode == 2 and "bad tenant name" in res.stderr


# -- tenants -----------------------------------------------------------------------------------------


def test_other_tenants_resources_answer_404(clients: dict[str, httpx.Client], tenant_a: dict[str, Any]) -> None:
    a, b = clients["a"], clients["b"]
    m, d, j = tenant_a["models"][0], tenant_a["dataset"], tenant_a["job"]
    artifacts = a.get(f"/v1/jobs/{j}/artifacts").json()["items"]
    assert artifacts, "tenant A's job has artifacts"
    name = artifacts[0]["name"]
    for path in (f"/v1/jobs/{j}", f"/v1/jobs/{j}/report", f"/v1/jobs/{j}/report.csv", f"/v1/jobs/{j}/report.html",
                 f"/v1/jobs/{j}/artifacts", f"/v1/jobs/{j}/artifacts/{name}"):
        assert a.get(path).status_code == 200, path
        _problem(b.get(path), 404, f"no job {j!r}; list jobs at GET /v1/jobs")
    _problem(b.post(f"/v1/jobs/{j}/cancel"), 404, f"no job {j!r}; list jobs at GET /v1/jobs")
    _problem(b.get(f"/v1/models/{m}"), 404, f"no model {m!r}; list models at GET /v1/models")
    _problem(b.delete(f"/v1/models/{m}"), 404, f"no model {m!r}; list models at GET /v1/models")
    _problem(b.get(f"/v1/datasets/{d}"), 404, f"no dataset {d!r}; list datasets at GET /v1/datasets")
    _problem(b.delete(f"/v1/datasets/{d}"), 404, f"no dataset {d!r}; list datasets at GET /v1/datasets")
    _problem(b.get(f"/v1/leaderboards/{d}"), 404, f"no dataset {d!r}; list datasets at GET /v1/datasets")
    # An id that exists nowhere answers exactly the same: no existence leak.
    nowhere = "j-00000000000000000000"
    _problem(b.get(f"/v1/jobs/{nowhere}"), 404, f"no job {nowhere!r}; list jobs at GET /v1/jobs")
    assert b.get("/v1/models").json()["items"] == []
    assert b.get("/v1/datasets").json()["items"] == []
    assert b.get("/v1/jobs").json()["items"] == []
    assert [x["id"] for x in a.get("/v1/jobs").json()["items"]] == [j]
    assert a.get(f"/v1/leaderboards/{d}").json()["boards"]


def test_job_naming_another_tenants_model_is_unknown(
    clients: dict[str, httpx.Client], tenant_a: dict[str, Any], dataset_dir: Path
) -> None:
    b = clients["b"]
    r = _upload_dataset(b, dataset_dir)
    assert r.status_code == 201, r.text  # B's own record of the same content: created, not "already there"
    assert r.json()["id"] == tenant_a["dataset"]
    m2 = tenant_a["models"][1]
    p = _problem(b.post("/v1/jobs", json=_body([m2], tenant_a["dataset"])), 422)
    assert p["detail"] == f"unknown model id(s) [{m2!r}] (see GET /v1/models)"
    # B's leaderboard on B's copy of the dataset shows none of A's jobs.
    assert b.get(f"/v1/leaderboards/{tenant_a['dataset']}").json()["boards"] == []


def test_idempotency_keys_are_per_tenant(
    clients: dict[str, httpx.Client], tenant_a: dict[str, Any], family_onnx: list[Path]
) -> None:
    # A used "shared-key" for its job; B's different job under the same key is B's own new job.
    b = clients["b"]
    r = _upload_model(b, family_onnx[2])
    assert r.status_code == 201, r.text
    r = b.post("/v1/jobs", json=_body([r.json()["id"]], tenant_a["dataset"]), headers={"Idempotency-Key": "shared-key"})
    assert r.status_code == 202, r.text
    assert r.json()["id"] != tenant_a["job"] and "idempotent-replayed" not in r.headers
    assert _wait(b, r.json()["id"])["status"] == "succeeded"


def test_same_bytes_are_one_record_per_tenant(
    kit: ServiceKit, clients: dict[str, httpx.Client], tenant_a: dict[str, Any], family_onnx: list[Path]
) -> None:
    a, b = clients["a"], clients["b"]
    m = tenant_a["models"][0]
    r = _upload_model(b, family_onnx[0])
    assert r.status_code == 201, r.text  # not 200: B must not learn that A has these bytes
    assert r.json()["id"] == m
    assert a.delete(f"/v1/models/{m}").status_code == 204
    _problem(a.get(f"/v1/models/{m}"), 404)
    assert b.get(f"/v1/models/{m}").json()["sha256"] == r.json()["sha256"]
    # B's job on it computes (another seed: no cache hit), so the shared blob must still be there.
    r = b.post("/v1/jobs", json=_body([m], tenant_a["dataset"], seed=5))
    assert r.status_code == 202, r.text
    job = _wait(b, r.json()["id"])
    assert job["status"] == "succeeded" and not job["cache_hit"], job
    # The worker wrote the final record with its tenant: after Redis forgets everything (this kit's own
    # redis-server), GET still answers B and only B.
    stored = json.loads((kit.workdir / "store" / "jobs" / f"{job['id']}.json").read_text())
    assert stored["tenant"] == "tenant-b"
    assert kit.redis is not None
    redis.Redis.from_url(kit.redis.url).flushall()
    assert b.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    _problem(a.get(f"/v1/jobs/{job['id']}"), 404)


# -- rate limits -------------------------------------------------------------------------------------


def test_rate_limits_answer_429_with_retry_after(kit: ServiceKit) -> None:
    key = kit.create_key("tenant-r")
    with kit.client_for(key) as c, kit.client_for(kit.create_key("tenant-r")) as other:
        for i in range(RATE):  # bad bodies still count: the limit is on attempts
            assert c.post("/v1/jobs", json={}).status_code == 422, i
        r = c.post("/v1/jobs", json={})
        p = _problem(r, 429)
        retry = int(r.headers["retry-after"])
        assert 1 <= retry <= 60 // RATE + 1
        assert p["detail"] == (
            f"rate limit reached: at most {RATE} job submissions (POST /v1/jobs) per minute per API key "
            f"(ETM_RATE_JOBS_PER_MINUTE); retry in {retry} s"
        )
        for i in range(RATE):
            assert c.post("/v1/models", files={"other": ("x", b"x")}).status_code == 400, i
        r = c.post("/v1/datasets", files={"other": ("x", b"x")})
        p = _problem(r, 429)
        assert f"at most {RATE} uploads (POST /v1/models, POST /v1/datasets) per minute per API key" in p["detail"]
        # Per key: another key of the same tenant has its own budget; reads are never limited.
        assert other.post("/v1/jobs", json={}).status_code == 422
        assert c.get("/v1/jobs").status_code == 200
        time.sleep(retry)
        assert c.post("/v1/jobs", json={}).status_code == 422  # a token came back


def test_rate_limit_is_atomic_under_concurrent_requests(kit: ServiceKit) -> None:
    # 16 submissions at once on a fresh key: exactly RATE pass the bucket, whatever the interleaving.
    with kit.client_for(kit.create_key("tenant-burst")) as c, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: c.post("/v1/jobs", json={}).status_code, range(16)))
    assert sorted(codes) == [422] * RATE + [429] * (16 - RATE), codes


def test_token_bucket_never_overdraws(tmp_path: Path) -> None:
    # The Lua bucket alone, 20 rounds of 32 concurrent takes on fresh buckets: exactly the limit passes.
    server = RedisServer(tmp_path / "redis")
    try:
        limiter = RateLimiter(redis.Redis.from_url(server.url), "t:")
        with ThreadPoolExecutor(32) as pool:
            for round_ in range(20):
                waits = list(pool.map(lambda _, r=round_: limiter.take("jobs", f"key:{r}", 5), range(32)))
                assert sum(w == 0 for w in waits) == 5, waits
                assert all(0 < w <= 12 for w in waits if w), waits  # 60 s / 5 per minute: one token per 12 s
    finally:
        server.stop()


def test_etm_client_reads_the_key_from_the_environment(kit: ServiceKit, keys: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETM_")} | {"ETM_API_URL": kit.base_url}
    cmd = [PY, "-m", "client.cli", "models", "list", "--retries", "1"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "401" in res.stderr and "ETM_API_KEY" in res.stderr, res.stderr
    res = subprocess.run(cmd, cwd=REPO, env=env | {"ETM_API_KEY": keys["b"]}, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr


# -- auth off ----------------------------------------------------------------------------------------


def test_auth_off_serves_only_loopback_peers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="etm.auth"):
        app = create_app(Settings(store_url=str(tmp_path / "store"), auth="off"))
    assert "AUTHENTICATION IS OFF (ETM_AUTH=off)" in caplog.text  # the loud start-up banner

    async def get(client: tuple[str, int], path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://etm.test") as c:
            return await c.get(path, headers={"Authorization": "Bearer ignored-when-off"})

    r = asyncio.run(get(("10.0.0.5", 1234), "/v1/models"))
    _problem(r, 403, OFF_REMOTE_DETAIL)
    assert asyncio.run(get(("10.0.0.5", 1234), "/healthz")).status_code == 200
    for peer in ("127.0.0.1", "::1"):
        assert asyncio.run(get((peer, 1234), "/v1/models")).status_code == 200


def test_devserver_refuses_auth_off_on_a_public_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETM_")} | {
        "ETM_AUTH": "off", "ETM_API_HOST": "0.0.0.0", "ETM_VAR_DIR": str(tmp_path / "var"),
    }
    res = subprocess.run([PY, "-m", "api.devserver"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "refusing to start: ETM_AUTH=off is allowed only on a loopback address" in res.stderr
    assert not (tmp_path / "var" / "redis").exists()  # nothing was started


def test_devserver_auth_defaults() -> None:
    assert auth_settings(Settings(api_host="127.0.0.1"), explicit=False).auth == "off"  # `make run`
    assert auth_settings(Settings(api_host="0.0.0.0"), explicit=False).auth == "keys"
    assert auth_settings(Settings(api_host="0.0.0.0", auth="keys"), explicit=True).auth == "keys"
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "10.0.0.5", "0.0.0.0", "::")] == [
        True, True, True, True, False, False, False
    ]
