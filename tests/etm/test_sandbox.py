"""The model sandbox holds: code running inside it (as a hostile model's payload would) cannot reach the
network, read a file outside what it was given, write anywhere but its scratch folder, or see its
parent's environment; its budgets kill it; cancel kills it; what it leaves behind is read without
following links. The probes run under exactly the command the service uses (``runner.run`` with ``argv``)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from etm.errors import Canceled, ModelRefused, ModelRuntimeError
from etm.sandbox import Limits, SandboxCrashed, SandboxTimeout, run
from etm.sandbox.files import UnsafeOutput, read_bytes

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, socket
from pathlib import Path
req = json.loads(Path("request.json").read_text())
r = {}
def attempt(name, fn):
    try:
        fn()
        r[name] = "ok"
    except Exception as e:
        r[name] = type(e).__name__
def tcp():
    socket.create_connection(("127.0.0.1", req["port"]), timeout=2).close()
def unix():
    s = socket.socket(socket.AF_UNIX)
    s.connect(req["unix"])
attempt("tcp", tcp)
attempt("unix", unix)
attempt("inet_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("inet6_socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
import ctypes
r["ptrace_errno"] = (ctypes.CDLL(None, use_errno=True).ptrace(16, 1, 0, 0), ctypes.get_errno())  # PTRACE_ATTACH
r["unshare_errno"] = (ctypes.CDLL(None, use_errno=True).unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
attempt("read_secret", lambda: open(req["secret"]).read())
attempt("read_store", lambda: os.listdir(req["store"]))
attempt("read_model", lambda: open(req["model"], "rb").read())
attempt("overwrite_model", lambda: open(req["model"], "r+b").write(b"x"))
attempt("write_marker", lambda: open(req["marker"], "w").write("escaped"))
attempt("write_scratch", lambda: open("out.txt", "w").write("x"))
r["env"] = dict(os.environ)
blobs = []
for p in Path("/proc").glob("[0-9]*/environ"):
    try:
        blobs.append(p.read_bytes().decode("latin-1"))
    except OSError:
        pass
r["proc_environ"] = blobs
r["pids"] = sorted(int(p.name) for p in Path("/proc").glob("[0-9]*"))
r["repo_visible"] = {n: os.path.exists(os.path.join(req["repo"], n)) for n in ("var", "tests", "api", ".git")}
print(json.dumps({"event": "result", "payload": r}), flush=True)
"""

LIMITS = Limits(wall_seconds=60, cpu_seconds=60, memory_bytes=4 * 2**30, threads=1)


def probe_run(scratch: Path, code: str, request: dict, readable: list[Path], limits: Limits = LIMITS, **kw):
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "probe.py").write_text(code)
    return run(request, readable, limits, scratch=scratch, argv=[sys.executable, "-I", "/scratch/probe.py"], **kw)


def test_code_inside_cannot_reach_network_files_or_parent_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETM_REDIS_URL", "redis://:TOPSECRET-REDIS@127.0.0.1:6379/0")
    monkeypatch.setenv("ETM_API_KEY", "etm_TOPSECRET-KEY")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "redis.sock"))
    unix.listen()
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "model.onnx"
    model.write_bytes(b"MODEL")
    (tmp_path / "models" / "other-tenant.onnx").write_bytes(b"OTHER")
    (tmp_path / "secret.txt").write_text("TOPSECRET-FILE")
    (tmp_path / "store" / "registry").mkdir(parents=True)
    request = {
        "port": server.getsockname()[1],
        "unix": str(tmp_path / "redis.sock"),
        "secret": str(tmp_path / "secret.txt"),
        "store": str(tmp_path / "store"),
        "model": str(model),
        "marker": str(tmp_path / "models" / "marker"),
        "repo": str(REPO),
    }
    try:
        out = probe_run(tmp_path / "scratch", PROBE, request, [model]).result
    finally:
        server.close()
        unix.close()
    # No network socket can even be created (seccomp), so the host's listener is out of reach; a Unix socket
    # finds no host path to connect to.
    assert out["tcp"] == out["inet_socket"] == out["inet6_socket"] == out["netlink_socket"] == "OSError"
    assert out["ptrace_errno"] == [-1, 1] and out["unshare_errno"] == [-1, 1]  # EPERM
    assert out["unix"] == "FileNotFoundError"
    assert out["read_secret"] == "FileNotFoundError"
    assert out["read_store"] == "FileNotFoundError"
    assert out["read_model"] == "ok"  # what it was given, and only that
    assert out["overwrite_model"] == "OSError"  # read-only (EROFS)
    assert out["write_scratch"] == "ok"
    assert (tmp_path / "scratch" / "out.txt").read_text() == "x"
    assert not (tmp_path / "models" / "marker").exists()  # a write there lands in the sandbox's tmpfs only
    assert model.read_bytes() == b"MODEL"
    assert "ETM_REDIS_URL" not in out["env"] and "ETM_API_KEY" not in out["env"]
    assert not any("TOPSECRET" in v for v in out["env"].values())
    assert not any("TOPSECRET" in e for e in out["proc_environ"])
    assert os.getpid() not in out["pids"] and max(out["pids"]) < 10  # a PID namespace of its own
    assert out["repo_visible"] == {"var": False, "tests": False, "api": False, ".git": False}


def test_wall_clock_budget_kills_a_spinning_child(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(SandboxTimeout, match="wall-clock budget"):
        probe_run(tmp_path, "while True: pass\n", {}, [], Limits(2, 60, 2**30, 1))
    assert time.monotonic() - t0 < 10


def test_cpu_budget_kills_a_spinning_child(tmp_path: Path) -> None:
    with pytest.raises(SandboxTimeout, match="CPU budget"):
        probe_run(tmp_path, "while True: pass\n", {}, [], Limits(60, 2, 2**30, 1))


def test_memory_budget_stops_an_allocation_bomb(tmp_path: Path) -> None:
    code = "blocks = [bytearray(2**28) for _ in range(64)]\n"  # 16 GiB against a 1.5 GiB limit
    with pytest.raises(SandboxCrashed, match="memory budget"):
        probe_run(tmp_path, code, {}, [], Limits(60, 60, 3 * 2**29, 1))


def test_cancel_kills_the_child_within_seconds(tmp_path: Path) -> None:
    code = "import os, time\nopen('pid', 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.1)\n"
    t_cancel = time.monotonic() + 1.5
    t0 = time.monotonic()
    with pytest.raises(Canceled):
        probe_run(tmp_path, code, {}, [], should_cancel=lambda: time.monotonic() > t_cancel)
    assert time.monotonic() - t0 < 1.5 + 5
    # The bwrap process group is gone: nothing of it runs on (bwrap's own PID namespace hides the child's pid,
    # so look for any process whose command line names this scratch folder).
    lingering = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path).encode() in cmdline.read_bytes():
                lingering.append(cmdline.parent.name)
        except OSError:
            pass
    assert lingering == []


def test_errors_cross_as_known_classes_only(tmp_path: Path) -> None:
    def emit(obj: dict) -> str:
        return f"print({json.dumps(json.dumps(obj))}, flush=True)\n"

    with pytest.raises(ModelRefused, match="not a model"):
        probe_run(tmp_path / "a", emit({"event": "error", "kind": "ModelRefused", "message": "not a model"}), {}, [])
    # A class the parent does not know (or one that would do something on construction) is a runtime error.
    with pytest.raises(ModelRuntimeError, match="boom"):
        probe_run(tmp_path / "b", emit({"event": "error", "kind": "os.system", "message": "boom"}), {}, [])
    with pytest.raises(SandboxCrashed, match="over-long"):
        probe_run(tmp_path / "c", "import sys\nsys.stdout.write('x' * (3 << 20))\nsys.stdout.flush()\n", {}, [])
    with pytest.raises(SandboxCrashed, match="without reporting a result"):
        probe_run(tmp_path / "d", "import os\nos._exit(3)\n", {}, [])


def test_results_are_read_without_following_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code = (
        "import os\nos.makedirs('out/artifacts', exist_ok=True)\n"
        f"os.symlink({str(secret)!r}, 'out/report.json')\n"
        f"os.symlink({str(tmp_path)!r}, 'out/linked')\n"
        "os.mkfifo('out/fifo')\n"
        "open('out/artifacts/ok.png', 'wb').write(b'PNG')\n"
        "print('{\"event\": \"result\", \"payload\": {}}', flush=True)\n"
    )
    outcome = probe_run(tmp_path / "scratch", code, {}, [])
    out = outcome.scratch / "out"
    assert read_bytes(out, "artifacts/ok.png") == b"PNG"
    with pytest.raises(UnsafeOutput):
        read_bytes(out, "report.json")  # a link to a host file the child could not see itself
    with pytest.raises(UnsafeOutput):
        read_bytes(out, "linked/secret.txt")
    with pytest.raises(UnsafeOutput):
        read_bytes(out, "fifo")
    with pytest.raises(UnsafeOutput):
        read_bytes(out, "../request.json")
