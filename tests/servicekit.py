"""Test harness that runs the real service: its own ``redis-server`` on a free port, the API under
uvicorn and Celery workers, each a subprocess in its own session (so that only the harness stops
them), all sharing a temporary store. Tests talk to it over HTTP with httpx.

Never touches the shared Redis on 6379: every kit starts its own, without persistence.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
HTTP_PROTOCOL = "api.httpserver:HardenedH11Protocol"  # uvicorn --http: read timeouts, a connection cap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_folder(folder: Path) -> bytes:
    """The folder's files in a zip (paths relative to the folder), in memory: test datasets are small."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def stop_process(proc: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop a process this harness started (and its process group, e.g. Celery's pool children)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. a Celery worker's pool processes), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


class RedisServer:
    """A private redis-server on a free port. Without persistence by default; ``persistent=True`` turns
    the append-only file on (fsync on every write), and ``restart`` brings it back on the same port and
    data folder, as a production Redis restarts."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis's clean shutdown (AOF flushed); SIGKILL: a crash."""
        stop_process(self.proc, grace=5, sig=sig)

    def restart(self, down_for: float = 0.0, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        time.sleep(down_for)
        self.start()


class ServiceKit:
    """Redis + API + ``n_workers`` Celery workers, configured through ``ETM_*`` variables."""

    def __init__(
        self, workdir: Path, n_workers: int = 1, env: dict[str, str] | None = None, redis_persistent: bool = False
    ) -> None:
        self.workdir = workdir
        self.n_workers = n_workers
        self.redis_persistent = redis_persistent
        self.extra_env = env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis: RedisServer | None = None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=60)

    def env(self) -> dict[str, str]:
        assert self.redis is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETM_")}
        env.update(
            {
                "ETM_REDIS_URL": self.redis.url,
                "ETM_STORE_URL": str(self.workdir / "store"),
                "ETM_CACHE_DIR": str(self.workdir / "cache"),
                "ETM_VAR_DIR": str(self.workdir / "var"),
                "ETM_BENCHMARK_DATA_DIR": str(self.workdir / "no-benchmark"),
                "ETM_REGISTER_BUILTINS": "false",
                "ETM_PROGRESS_INTERVAL": "0.2",
                "ETM_TORCH_THREADS": "1",
                "ETM_LOG_LEVEL": "INFO",
                "ETM_AUTH": "off",  # the kit listens on 127.0.0.1; pass env={"ETM_AUTH": "keys"} for keys
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process's lifetime
        self.procs[name] = subprocess.Popen(
            args, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 120) -> ServiceKit:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir / "redis", persistent=self.redis_persistent)
        self.start_api()
        for i in range(self.n_workers):
            self.start_worker(i)
        self.wait_ready(timeout)
        return self

    def start_api(self) -> None:
        self._spawn(
            "api",
            [PY, "-m", "uvicorn", "api.main:app", "--http", HTTP_PROTOCOL, "--host", "127.0.0.1", "--port",
             str(self.port), "--log-level", "warning"],
        )

    def start_worker(self, i: int) -> None:
        """(Re)start worker ``i``; its log is appended to, so that counting lines in it spans restarts."""
        self._spawn(f"worker{i}", [PY, "-m", "workers", "--hostname", f"w{i}@etm-test", "--concurrency", "1"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process of the kit and its whole process group (a worker with its pool), and reap it."""
        stop_process(self.procs[name], grace=10, sig=sig)

    def pool_children(self, worker: str) -> list[int]:
        return child_pids(self.procs[worker].pid)

    def wait_api(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the API did not come back within {timeout} s\n{self.log_tail('api')}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")
            try:
                r = self.client.get("/readyz", timeout=5)
                last = r.text
                if r.status_code == 200 and r.json()["checks"]["workers"] and self._all_workers_up():
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise RuntimeError(f"service not ready after {timeout} s (last: {last})\n{self.logs()}")

    def _all_workers_up(self) -> bool:
        return all((self.workdir / f"worker{i}.log").read_text(errors="replace").count("ready.") >= 1
                   for i in range(self.n_workers))

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name in sorted(self.procs, key=lambda n: n != "api"):
            codes[name] = stop_process(self.procs[name], grace=15)
        if self.redis is not None:
            self.redis.stop()
        self.client.close()
        return codes

    def __enter__(self) -> ServiceKit:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- diagnostics ---------------------------------------------------------------------------
    def log_tail(self, name: str, n: int = 4000) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log_tail(name)}" for name in self.procs)

    # -- access (ETM_AUTH=keys) -----------------------------------------------------------------
    def admin(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``python -m api.admin`` (etm-admin) on the kit's store, as an operator would."""
        return subprocess.run(
            [PY, "-m", "api.admin", *args], cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=60
        )

    def create_key(self, tenant: str, name: str | None = None) -> str:
        """A new API key for ``tenant`` (made with the admin CLI)."""
        res = self.admin("keys", "create", "--tenant", tenant, *(["--name", name] if name else []))
        if res.returncode != 0:
            raise RuntimeError(f"etm-admin keys create failed ({res.returncode}): {res.stderr}")
        return res.stdout.strip()

    def client_for(self, key: str | None) -> httpx.Client:
        """An HTTP client sending ``key`` as a bearer token (no header when None)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, timeout=60, headers=headers)

    # -- API helpers ---------------------------------------------------------------------------
    def upload_model(self, path: Path, metadata: str | None = None) -> httpx.Response:
        data = {"metadata": metadata} if metadata is not None else None
        with open(path, "rb") as f:
            return self.client.post("/v1/models", files={"file": (path.name, f, "application/octet-stream")}, data=data)

    def upload_dataset(self, folder: Path, name: str = "dataset.zip") -> httpx.Response:
        return self.client.post("/v1/datasets", files={"file": (name, zip_folder(folder), "application/zip")})

    def submit(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.client.post("/v1/jobs", json=body, headers=headers)

    def wait(
        self,
        job_id: str,
        timeout: float = 120,
        until: Callable[[dict[str, Any]], bool] | None = None,
        seen: list[dict[str, Any]] | None = None,
        poll: float = 0.1,
    ) -> dict[str, Any]:
        """Poll a job until ``until(job)`` (default: it ended); ``seen`` collects every poll."""
        until = until or (lambda j: j["status"] in ("succeeded", "failed", "canceled"))
        deadline = time.time() + timeout
        job: dict[str, Any] = {}
        while time.time() < deadline:
            r = self.client.get(f"/v1/jobs/{job_id}")
            r.raise_for_status()
            job = r.json()
            if seen is not None:
                seen.append(job)
            if until(job):
                return job
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}\n{self.logs()}")
