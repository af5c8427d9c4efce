"""The HTML report page: rendered from a real evaluation of the tiny models (in process, no service) and
opened in real headless Chromium over the DevTools protocol: no console errors, no request leaves the
page, every image loads; a full-page screenshot is kept under test-artifacts/. With the benchmark's
``xent`` and ``cyborg`` families present, their report ranks cyborg first where the replication says so.

Chromium is Debian's ``chromium`` package; the session fixture installs it when missing (apt-get) and
skips with the reason when that fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import torch

from api.pages import fmt, render_report_html
from tests.helpers.tiny import TinyNet, export
from tests.servicekit import REPO

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
                  "--mute-audio", "--no-default-browser-check"]
BENCH_MODELS = REPO / "benchdata" / "models"
BENCH_FACES = Path(os.environ.get("ETM_BENCHMARK_DATA_DIR", REPO / "var" / "benchmark")) / "faces"


# -- Chromium ----------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and apt-get is not usable here (need root): apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "chromium"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log.append(f"$ {' '.join(cmd)} -> {r.returncode}: {r.stderr.strip()[-300:]}")
        if cmd[1] == "install" and r.returncode == 0:
            break
    path = _find_chromium()
    if not path:
        pytest.skip("could not install Chromium with apt-get:\n" + "\n".join(log))
    return path


class WebSocket:
    """The client side of RFC 6455 on a plain socket: just what the DevTools protocol needs (text frames,
    fragmentation, ping, close). No extra dependency."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"DevTools refused the websocket: {status!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text: str) -> None:
        self._frame(0x1, text.encode())

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x9:
                self._frame(0xA, data)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (0x0, 0x1, 0x2):
                parts.append(data)
                if fin:
                    return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._frame(0x8, b"")
        self.sock.close()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol; keeps every event."""

    def __init__(self, binary: str, width: int = 1366, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="etm-chromium-")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                self.close()
                raise RuntimeError(f"Chromium did not open its DevTools port:\n{err}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = WebSocket(page["webSocketDebuggerUrl"])
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hit = next((e for e in self.events if e["method"] == method), None)
            if hit:
                return hit
            self.ws.sock.settimeout(max(0.1, deadline - time.time()))
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        # Let decoding and layout settle (every image is inline, so this is quick).
        self.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions, failed loads and log errors (CSP violations among them)."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
            elif m == "Network.loadingFailed":
                out.append(f"failed load: {p.get('errorText')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, full_page: bool = True) -> tuple[int, int]:
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return width, height

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.close()


# -- reports -----------------------------------------------------------------------------------------


def evaluate_with_artifacts(spec_data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A real evaluation and its artifacts, in process (what a worker stores for a job)."""
    from etm.artifacts import compute_artifacts
    from etm.evaluation import Resolver, evaluate
    from etm.spec import EvaluationSpec

    spec = EvaluationSpec.model_validate(spec_data)
    resolver = Resolver()
    result = evaluate(spec, resolver)
    return result.report, compute_artifacts(spec, result.report, resolver)


@pytest.fixture(scope="module")
def tiny_report(family_onnx: list[Path], dataset_dir: Path, ood_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, bytes]]:
    other = tmp_path_factory.mktemp("fam_other")
    family_b = []
    for k in range(3):  # another recipe: other initialisations (legacy exporter: quick)
        torch.manual_seed(100 + k)
        family_b.append(export(TinyNet(), other / f"run{k}.onnx", "onnx-legacy"))
    return evaluate_with_artifacts({
        "candidates": [{"name": "baseline", "models": [str(p) for p in family_onnx]},
                       {"name": "candidate", "models": [str(p) for p in family_b]}],
        "dataset": str(dataset_dir),
        "ood_dataset": str(ood_dir),
        "measures": ["all"],
        "bootstrap_resamples": 200,
        "batch_size": 16,
        "overlays": 6,
    })


def render(report: dict[str, Any], artifacts: dict[str, bytes], job_id: str) -> str:
    return render_report_html(report, overlays=json.loads(artifacts["overlays.json"]), images=artifacts,
                              job={"id": job_id, "finished_at": "2025-01-01T12:00:00Z", "cache_hit": False})


def check_in_browser(browser: Browser, page: str, name: str, n_images: int) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix="etm-page-")) / f"{name}.html"
    path.write_text(page, encoding="utf-8")
    url = path.as_uri()
    browser.open(url)
    assert browser.problems() == [], "the page logged problems in Chromium"
    outside = [u for u in browser.requests() if u != url and not u.startswith("data:")]
    assert outside == [], f"the page requested something outside itself: {outside}"
    images = browser.evaluate(
        "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth}))")
    assert len(images) == n_images
    broken = [i for i in images if not (i["complete"] and i["w"] > 0)]
    assert broken == [], f"images that did not load: {broken}"
    svgs = browser.evaluate("document.querySelectorAll('svg').length")
    assert svgs > 0
    layout = browser.evaluate(
        "({w: document.documentElement.scrollWidth, vw: window.innerWidth, h: document.body.scrollHeight,"
        " title: document.title, h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent)})")
    assert layout["w"] <= layout["vw"], "the page scrolls sideways on a 1366 px laptop screen"
    full = browser.screenshot(ARTIFACTS / f"{name}.png")
    browser.screenshot(ARTIFACTS / f"{name}-top.png", full_page=False)
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 20_000
    return {**layout, "screenshot": full}


def test_page_is_self_contained_and_complete(tiny_report: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, artifacts = tiny_report
    page = render(report, artifacts, "j-0123456789abcdef0123")
    assert page.startswith("<!doctype html>") and "j-0123456789abcdef0123" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page.replace(
        "https://explain-to-me.dev/schemas/report.json", "")
    for section in ("summary", "ranking", "measures", "overlays", "curves", "stability", "provenance"):
        assert f'<section id="{section}">' in page, section
    assert page.count("data:image/png;base64,") == 2 * 6
    # Every measure of the report is in the table, with its value as printed.
    for cand in report["candidates"]:
        for name, m in cand["measures"].items():
            assert f"<th scope=\"row\">{name} " in page or f"<th scope=\"row\">{name}<" in page, name
            assert fmt(m["value"]) in page
    # One line chart per curve kind (noise: score, entropy, ssim; deletion: morf, lerf, random).
    assert page.count('<svg class="chart"') == 6
    assert page.count('<svg class="heat"') == 2 * 2  # stability.ssim and .pearson, per candidate
    for sha in report["provenance"]["model_sha256"]["baseline"]:
        assert sha in page
    # Without artifacts the page still renders (no overlays section).
    bare = render_report_html(report)
    assert 'id="overlays"' not in bare and 'id="ranking"' in bare


def test_page_in_chromium(browser: Browser, tiny_report: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    report, artifacts = tiny_report
    info = check_in_browser(browser, render(report, artifacts, "j-0123456789abcdef0123"), "report-tiny", 12)
    # The tiny untrained models draw metadata warnings (chance accuracy), shown first when there are any.
    expected = ["Warnings"] if report["warnings"] else []
    assert info["h2"][: len(expected) + 3] == [*expected, "Summary", "Ranking", "All measures"]
    assert "Salience overlays" in info["h2"] and "Provenance" in info["h2"]
    assert info["screenshot"][0] == 1366


def test_the_browser_check_sees_problems(browser: Browser, tmp_path: Path) -> None:
    """A negative control: a page with a console error, an outside request and a broken image fails each check."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="http://127.0.0.1:9/nothing.png" alt="x"><script>console.error("boom")</script>'
                    "</body></html>")
    browser.open(page.as_uri())
    assert any("boom" in p for p in browser.problems())
    assert "http://127.0.0.1:9/nothing.png" in browser.requests()
    assert browser.evaluate("document.images[0].naturalWidth") == 0


def _bench_family(name: str) -> list[Path]:
    return sorted((BENCH_MODELS / name).glob("run*.onnx"))


# Where the replication (benchdata.replicate.SEEN, docs/REPLICATION.md) shows the paper's direction and
# this job computes the measure (noise and the out-of-set accuracy need passes the job leaves out).
DIRECTED = ("entropy.spatial", "stability.ssim", "geometry.ssim", "agreement.human")
BENCH_RUNS = 3  # runs per family: enough for stability, and the job stays under a minute on two cores


def test_benchmark_job_ranks_cyborg_first(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The benchmark's built-in families through the service: the xent vs cyborg job ranks cyborg first on the
    directed measures where the replication of Crum et al. says it should, and its report page is clean."""
    from client import Client
    from jobs.builtins import register_builtins
    from jobs.registry import Registry
    from jobs.storage import ArtifactStore
    from tests.servicekit import ServiceKit

    runs = {f: _bench_family(f) for f in ("xent", "cyborg")}
    if any(len(r) < 2 for r in runs.values()):
        pytest.skip(f"the benchmark families are not in {BENCH_MODELS} (need xent/ and cyborg/ with 2+ runs; "
                    "make benchmark-models)")
    if not (BENCH_FACES / "manifest.csv").is_file() or not (BENCH_FACES.parent / "benchmark.json").is_file():
        pytest.skip(f"the benchmark data is not in {BENCH_FACES.parent} (make benchmark-data)")
    # Built-ins limited to what the job needs (the faces dataset, 3 runs a family), so registration is quick.
    root = tmp_path_factory.mktemp("bench")
    data, models = root / "data", root / "models"
    data.mkdir()
    (data / "faces").symlink_to(BENCH_FACES.resolve())
    shutil.copy(BENCH_FACES.parent / "benchmark.json", data / "benchmark.json")
    for fam, files in runs.items():
        (models / fam).mkdir(parents=True)
        for f in files[:BENCH_RUNS]:
            for src in (f, f.with_name(f.name + ".json")):
                if src.exists():
                    (models / fam / src.name).symlink_to(src.resolve())
    kit = ServiceKit(root / "kit", n_workers=1, env={"ETM_BENCHMARK_DATA_DIR": str(data),
                                                     "ETM_BENCHMARK_MODELS_DIR": str(models)})
    summary = register_builtins(Registry(ArtifactStore(str(kit.workdir / "store"))), data, models)
    assert "builtin:faces" in summary["datasets"], summary
    with kit, Client(kit.base_url) as etm:
        fams = {f.name: f.models for f in etm.families()}
        job, report = etm.evaluate(
            {"xent": fams["xent"], "cyborg": fams["cyborg"]}, "builtin:faces", split="test", max_images=96,
            measures=["entropy", "geometry", "stability", "agreement"], bootstrap_resamples=300,
            overlays=6, timeout=400,
        )
        page = etm.report_html(job.id)
    ranking = {name: report.raw["comparison"]["measures"][name]["ranking"] for name in DIRECTED}
    wrong = {n: [(e["candidate"], e["rank"], fmt(e["value"])) for e in r] for n, r in ranking.items()
             if not (r[0]["candidate"] == "cyborg" and r[0]["rank"] == 1)}
    assert wrong == {}, f"cyborg is not ranked first on: {wrong}"
    check_in_browser(browser, page, "report-benchmark", 12)


def test_formatting() -> None:
    assert (fmt(None), fmt(float("nan")), fmt(0), fmt(0.51234), fmt(-2.5e-5), fmt(1234.5)) == (
        "—", "—", "0", "0.512", "-2.50e-05", "1,234.5")
    assert (fmt(0.0012956), fmt(-0.0161), fmt(12.3456), fmt(0.000934)) == ("0.00130", "-0.0161", "12.346",
                                                                           "0.000934")
