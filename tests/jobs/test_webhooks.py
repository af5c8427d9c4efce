"""Job callbacks: HMAC-signed, retried with growing delays on 5xx, sent only to allowed hosts.

A tiny local HTTP server (http.server in a thread) is the receiver. Delivery runs against a real
redis-server (the outcome is recorded in the job record); the end-to-end test runs a job through the
real service, whose kit allows loopback explicitly (ETM_WEBHOOK_ALLOWED_HOSTS=127.0.0.1/32).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.records import JobRecord, new_job_id
from jobs.storage import ArtifactStore
from jobs.webhooks import SIGNATURE_HEADER, CallbackRefused, check_callback_url, deliver, verify_signature
from tests.helpers.faults import upload_inputs
from tests.servicekit import RedisServer, ServiceKit

SECRET = "test-webhook-secret"
pytestmark = pytest.mark.timeout(300)


class Receiver:
    """Answers POSTs with the scripted statuses (then 200) and records each request with its arrival time."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"t": time.monotonic(), "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    workdir = tmp_path_factory.mktemp("webhooks")
    server = RedisServer(workdir / "redis")
    client = redis.Redis.from_url(server.url)
    yield JobStore(client, ArtifactStore(str(workdir / "store")))
    client.close()
    server.stop()


def settings(**over: Any) -> Settings:
    base: dict[str, Any] = {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1/32",
        "webhook_backoff_seconds": 0.2,
        "callback_attempts": 3,
        "callback_timeout": 5,
    }
    return Settings(**(base | over))


def ended_job(jobs: JobStore, url: str) -> JobRecord:
    t = time.time()
    return jobs.create(
        JobRecord(id=new_job_id(), status="succeeded", created_at=t, finished_at=t, spec={"seed": 0}, callback_url=url)
    )


# -- which hosts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://100.64.0.1/hook", "non-global"),
    ],
)
def test_private_and_special_addresses_are_refused_unless_allowed(url: str, kind: str) -> None:
    s = settings(webhook_allowed_hosts="")
    with pytest.raises(CallbackRefused) as exc:
        check_callback_url(url, s)
    assert f"a {kind} address" in str(exc.value)
    assert "ETM_WEBHOOK_ALLOW_PRIVATE" in str(exc.value) and "ETM_WEBHOOK_ALLOWED_HOSTS" in str(exc.value)
    assert check_callback_url(url, settings(webhook_allowed_hosts="", webhook_allow_private=True)).addresses


def test_allow_list_names_and_cidrs() -> None:
    named = check_callback_url("http://localhost:8080/x", settings(webhook_allowed_hosts="localhost"))
    assert named.host == "localhost" and named.addresses
    assert check_callback_url("http://10.1.2.3/x", settings(webhook_allowed_hosts="10.0.0.0/8")).addresses
    with pytest.raises(CallbackRefused, match="not in ETM_WEBHOOK_ALLOWED_HOSTS"):
        check_callback_url("http://10.1.2.3/x", settings(webhook_allowed_hosts="hooks.example.com,192.168.0.0/16"))
    with pytest.raises(ValueError, match="not a CIDR"):
        settings(webhook_allowed_hosts="10.0.0.0/40")


def test_no_secret_no_callbacks() -> None:
    with pytest.raises(CallbackRefused, match="ETM_WEBHOOK_SECRET"):
        check_callback_url("http://127.0.0.1/x", settings(webhook_secret=None))
    with pytest.raises(ValueError, match="at least 16 characters"):
        settings(webhook_secret="short")


def test_unresolvable_host_is_refused_with_the_host_named() -> None:
    with pytest.raises(CallbackRefused, match="'no-such-host.invalid' cannot be resolved"):
        check_callback_url("http://no-such-host.invalid/x", settings(webhook_allowed_hosts=""))


# -- delivery ----------------------------------------------------------------------------------------


def test_callback_is_signed_over_timestamp_and_body(jobs: JobStore, receiver: Receiver) -> None:
    job = ended_job(jobs, receiver.url)
    outcome = deliver(settings(), jobs, job)
    assert outcome.delivered and outcome.attempts == 1 and outcome.status_code == 200
    (req,) = receiver.requests
    body, header = req["body"], req["headers"][SIGNATURE_HEADER]
    assert json.loads(body)["id"] == job.id and json.loads(body)["status"] == "succeeded"
    # What a receiver computes with nothing but the shared secret and hmac:
    ts, mac = (p.split("=", 1)[1] for p in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected) and abs(time.time() - int(ts)) < 60
    assert verify_signature(SECRET, header, body)
    assert not verify_signature("another-secret", header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature(SECRET, header, body, now=int(ts) + 3600)  # a replay an hour later
    assert jobs.get(job.id).callback.delivered is True


def test_5xx_is_retried_with_growing_delays(jobs: JobStore) -> None:
    receiver = Receiver([500, 500, 200])
    try:
        job = ended_job(jobs, receiver.url)
        outcome = deliver(settings(), jobs, job)
    finally:
        receiver.close()
    assert outcome.attempts == 3 and outcome.delivered and outcome.status_code == 200
    assert outcome.delays_seconds == [0.2, 0.4]
    t = [r["t"] for r in receiver.requests]
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert len(gaps) == 2 and 0.18 < gaps[0] < gaps[1] and gaps[1] > 0.38, gaps
    assert [r["headers"]["X-ETM-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    recorded = jobs.get(job.id).callback
    assert recorded.attempts == 3 and recorded.status_code == 200


def test_4xx_is_not_retried_and_exhaustion_is_recorded(jobs: JobStore) -> None:
    receiver = Receiver([404, 503, 503, 503])
    try:
        gone = deliver(settings(), jobs, ended_job(jobs, receiver.url))
        down = deliver(settings(), jobs, ended_job(jobs, receiver.url))
    finally:
        receiver.close()
    assert gone.attempts == 1 and gone.status_code == 404 and not gone.delivered
    assert down.attempts == 3 and down.status_code == 503 and not down.delivered
    assert "503" in down.error


def test_loopback_receiver_is_refused_at_delivery_unless_allowed(jobs: JobStore, receiver: Receiver) -> None:
    job = ended_job(jobs, receiver.url)
    outcome = deliver(settings(webhook_allowed_hosts=""), jobs, job)
    assert not outcome.delivered and outcome.attempts == 1 and outcome.status_code is None
    assert "loopback" in outcome.error and receiver.requests == []
    assert jobs.get(job.id).callback.error == outcome.error
    assert deliver(settings(webhook_allowed_hosts="", webhook_allow_private=True), jobs, job).delivered


def test_unreachable_receiver_is_retried(jobs: JobStore) -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens on that port any more
    outcome = deliver(settings(), jobs, ended_job(jobs, url))
    assert outcome.attempts == 3 and not outcome.delivered and "ConnectError" in outcome.error


# -- through the service -----------------------------------------------------------------------------


def test_job_callback_end_to_end(tmp_path: Path, family_onnx: list[Path], dataset_dir: Path) -> None:
    env = {"ETM_WEBHOOK_SECRET": SECRET, "ETM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1/32"}
    receiver = Receiver([503])
    with ServiceKit(tmp_path / "kit", env=env | {"ETM_WEBHOOK_BACKOFF_SECONDS": "0.2"}) as kit:
        ids = upload_inputs(kit, family_onnx, dataset_dir)
        body = {
            "candidates": [{"name": "a", "models": ids["models"][:2]}],
            "dataset": ids["dataset"],
            "measures": ["entropy"],
            "max_images": 8,
            "bootstrap_resamples": 100,
            "overlays": 1,
        }
        refused = kit.submit(body | {"callback_url": "http://10.1.2.3/hook"})
        assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["type"].endswith("/callback-refused"), problem
        assert "'10.1.2.3'" in problem["detail"] and "ETM_WEBHOOK_ALLOWED_HOSTS" in problem["detail"]

        r = kit.submit(body | {"callback_url": receiver.url})
        assert r.status_code == 202, r.text
        # The only worker is busy with that job: a second one stays queued, and its cancel (by the API) also
        # ends it, so the API sends its callback.
        queued = kit.submit(body | {"callback_url": receiver.url, "seed": 1}).json()["id"]
        assert kit.client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
        job = kit.wait(r.json()["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        # Both callbacks are sent in the background (the worker's, and the API's for the cancel) and either may
        # meet the 503 and retry: wait for both records.
        deadline = time.time() + 30
        canceled = kit.client.get(f"/v1/jobs/{queued}").json()
        while time.time() < deadline and not all((j.get("callback") or {}).get("delivered") for j in (job, canceled)):
            time.sleep(0.2)
            job = kit.client.get(f"/v1/jobs/{job['id']}").json()
            canceled = kit.client.get(f"/v1/jobs/{queued}").json()
    receiver.close()
    by_job = {json.loads(q["body"])["id"]: q for q in receiver.requests}
    assert canceled["callback"]["delivered"] and json.loads(by_job[queued]["body"])["status"] == "canceled"
    # The 503 went to whichever callback came first; the other one was delivered at its first attempt.
    assert job["callback"]["delivered"] and job["callback"]["attempts"] + canceled["callback"]["attempts"] == 3
    last = by_job[job["id"]]
    assert verify_signature(SECRET, last["headers"][SIGNATURE_HEADER], last["body"])
    sent = json.loads(last["body"])
    assert sent["status"] == "succeeded" and sent["links"]["report"]
