"""Parent side of the sandbox: start the confined child, relay its progress, enforce limits, kill it.

The child speaks one JSON object per line on stdout (``etm.sandbox.protocol``); everything it
writes is untrusted: lines are bounded, parsed as JSON only, and errors are rebuilt from a fixed
table of exception classes. Results cross as files in the scratch folder (JSON, CSV, PNG, ``.npz``
loaded with ``allow_pickle=False``), never as objects.

Limits: CPU seconds and address space as rlimits of the child (set before ``exec``, inherited by
everything it starts), a wall-clock deadline and cancellation enforced here by killing the child's
whole process group (bwrap dies with its parent too). A killed or crashed child ends the call with
``SandboxTimeout``, ``Canceled`` or ``SandboxCrashed``; nothing it half-wrote is published, because the
caller only reads the scratch folder after a ``result`` line.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm.errors import Canceled
from etm.sandbox import protocol
from etm.sandbox.bwrap import SCRATCH, Mounts, SandboxUnavailable, command
from etm.sandbox.files import MAX_FILE_BYTES

log = logging.getLogger("etm.sandbox")
child_log = logging.getLogger("etm.sandbox.child")  # what the model process wrote to its stderr

# Hardware facts the child needs (OpenBLAS kernel choice on some CPUs, the GPU a worker was given); nothing else.
_PASSED_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES")
MAX_LINE = 1 << 20  # a progress or result line; results proper travel as files
_BOOT = "import sys; sys.path.insert(0, {root!r}); from etm.sandbox.child import main; main()"


class SandboxTimeout(RuntimeError):
    """The child ran past its wall-clock or CPU budget and was killed."""

    title = "Model run exceeded its time budget"


class SandboxCrashed(RuntimeError):
    """The child died without reporting a result (killed for memory, crashed, or broke the protocol)."""

    title = "Model process crashed"


@dataclass(frozen=True)
class Limits:
    """Budgets of one sandboxed run. ``memory_bytes`` 0: no address-space limit (CUDA reserves huge
    virtual ranges, so GPU workers rely on the container's memory limit instead)."""

    wall_seconds: float
    cpu_seconds: int
    memory_bytes: int
    threads: int = 1
    # The few settings the domain reads inside the child (its environment is otherwise empty).
    settings_env: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    """A finished run: the child's ``result`` payload and the scratch folder holding its files."""

    result: dict[str, Any]
    scratch: Path


def _preexec(limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        if limits.memory_bytes > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))

    return apply


def _child_env(limits: Limits) -> dict[str, str]:
    n = str(limits.threads)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": SCRATCH,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        **{k: v for k, v in os.environ.items() if k in _PASSED_THROUGH},
        **dict(limits.settings_env),
    }


def child_command(
    argv: list[str],
    readable: list[Path],
    scratch: Path,
    limits: Limits,
    gpu: bool,
    isolation: str,
    seccomp_fd: int | None = None,
) -> tuple[list[str], dict[str, str], Path | None]:
    """``(command, environment for Popen, cwd)`` of a confined child running ``argv``."""
    env = _child_env(limits)
    if isolation == "bwrap":
        mounts = Mounts(scratch, tuple(Path(p).resolve() for p in readable))
        return command(mounts, argv, env, gpu, seccomp_fd), {}, None
    # "process": a separate process with the limits, no namespaces (docs/SECURITY.md: trusted models only)
    return argv, {**env, "HOME": str(scratch), "ETM_SANDBOX_SCRATCH": str(scratch)}, scratch


def run(
    request: dict[str, Any],
    readable: list[Path],
    limits: Limits,
    scratch: Path | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    gpu: bool = False,
    isolation: str = "bwrap",
    argv: list[str] | None = None,
) -> Outcome:
    """Run ``request`` (see ``etm.sandbox.child``) confined; ``readable`` are the only host paths it sees.

    ``argv`` replaces the child's command (tests run probes with it under the same confinement).

    Raises:
        the domain's error the child reported (ModelRefused, BadInput, ModelRuntimeError, ...);
        Canceled: ``should_cancel`` turned true (the child is killed first);
        SandboxTimeout, SandboxCrashed, SandboxUnavailable.
    """
    scratch = scratch or Path(tempfile.mkdtemp(prefix="etm-sandbox-"))
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "request.json").write_text(json.dumps(request))
    root = str(Path(__import__("etm").__file__).resolve().parent.parent)
    argv = argv or [sys.executable, "-I", "-B", "-c", _BOOT.format(root=root)]
    stderr = _StderrRelay()
    with contextlib.ExitStack() as stack:
        fds: tuple[int, ...] = ()
        if isolation == "bwrap":
            bpf = stack.enter_context(_seccomp_file())
            fds = (bpf.fileno(),)
        cmd, popen_env, cwd = child_command(argv, readable, scratch, limits, gpu, isolation, fds[0] if fds else None)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_preexec(limits),  # noqa: PLW1509 - only setrlimit, before exec
                close_fds=True,
                pass_fds=fds,
                env=popen_env,
                cwd=cwd,
            )
        except OSError as exc:
            raise SandboxUnavailable(f"could not start bubblewrap: {exc}") from exc
        try:
            result = _relay(proc, limits, on_progress, should_cancel, stderr)
        finally:
            _kill(proc)
    if result is None:
        raise _crash(proc.returncode, stderr.tail(), limits)
    return Outcome(result, scratch)


def _seccomp_file() -> Any:
    try:
        from etm.sandbox.seccomp import filter_file

        return filter_file()
    except (ImportError, OSError, RuntimeError) as exc:  # pyseccomp present but no libseccomp.so.2
        raise SandboxUnavailable(
            f"the sandbox's seccomp filter cannot be built ({exc}); install libseccomp2 (Debian/Ubuntu) or "
            "libseccomp (Fedora)"
        ) from exc


class _StderrRelay:
    """The child's stderr (its log and tracebacks) into this process's log, prefixed and bounded: a model
    that floods it is cut off after ``MAX_LOGGED`` bytes; the last few KiB are kept to explain a crash."""

    MAX_LOGGED = 256 * 1024

    def __init__(self) -> None:
        self.buf = b""
        self.logged = 0
        self.last = collections.deque(maxlen=64)

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while b"\n" in self.buf or len(self.buf) > 4096:
            line, _, self.buf = self.buf.partition(b"\n") if b"\n" in self.buf else (self.buf, b"", b"")
            text = line[:2000].decode("utf-8", "replace")
            self.last.append(text)
            if self.logged < self.MAX_LOGGED:
                self.logged += len(line)
                child_log.info("%s", text)
                if self.logged >= self.MAX_LOGGED:
                    child_log.warning("the model process writes too much; the rest of its output is not logged")

    def tail(self) -> str:
        return "\n".join([*self.last, self.buf[:2000].decode("utf-8", "replace")])


def _relay(
    proc: subprocess.Popen,
    limits: Limits,
    on_progress: Callable[[str, int, int], None] | None,
    should_cancel: Callable[[], bool] | None,
    stderr: _StderrRelay,
) -> dict[str, Any] | None:
    """Read the child's lines until it exits; enforce the deadline and cancellation."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.wall_seconds
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_streams = 2
    buf = b""
    result: dict[str, Any] | None = None
    next_cancel_check = 0.0
    while True:
        now = time.monotonic()
        if now > deadline:
            _kill(proc)
            raise SandboxTimeout(
                f"the model run was stopped after {limits.wall_seconds:.0f} s (its wall-clock budget); a model "
                "that loops or a job too large for the budget ends here: use max_images or a smaller model, or "
                "raise the limit (ETM_TASK_SOFT_TIME_LIMIT for jobs, ETM_SANDBOX_INSPECT_SECONDS for uploads)"
            )
        if should_cancel is not None and now >= next_cancel_check:
            next_cancel_check = now + 0.5
            if should_cancel():
                _kill(proc)
                raise Canceled()
        events = sel.select(timeout=0.25)
        if not events:
            if proc.poll() is not None:
                break
            continue
        chunk = b""
        for key, _ in events:
            data = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
            elif key.fileobj is proc.stderr:
                stderr.feed(data)
            else:
                chunk += data
        if open_streams == 0:
            proc.wait()
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = protocol.parse_line(line)
            if msg is None:
                continue
            if msg["event"] == "progress" and on_progress is not None:
                on_progress(msg["stage"], msg["done"], msg["total"])
            elif msg["event"] == "result":
                result = msg["payload"]
            elif msg["event"] == "error":
                _kill(proc)
                raise protocol.rebuild_error(msg)
        if len(buf) > MAX_LINE:
            _kill(proc)
            raise SandboxCrashed("the model process wrote an over-long message and was stopped")
        if open_streams == 0:
            break
    sel.close()
    return result


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _crash(code: int | None, tail: str, limits: Limits) -> Exception:
    tail = tail[-4000:]
    log.warning("sandboxed child exited with %s without a result; stderr tail:\n%s", code, tail)
    if "bwrap:" in tail and ("namespace" in tail or "Operation not permitted" in tail or "No permissions" in tail):
        return SandboxUnavailable(
            f"bubblewrap cannot create its namespaces on this host ({tail.strip().splitlines()[-1][:200]}); "
            "allow unprivileged user namespaces (docs/SECURITY.md says how)"
        )
    # bwrap reports a child killed by a signal as 128 + the signal; without bwrap, Popen gives -signal.
    sig = -code if code is not None and code < 0 else (code - 128 if code is not None and code > 128 else None)
    if sig in (signal.SIGXCPU, signal.SIGKILL) and "MemoryError" not in tail:
        return SandboxTimeout(
            f"the model process was killed (signal {sig}) after using its CPU budget ({limits.cpu_seconds} s) "
            "or by the kernel; a model that loops ends here"
        )
    if "MemoryError" in tail or "std::bad_alloc" in tail or "Cannot allocate memory" in tail:
        return SandboxCrashed(
            f"the model process ran out of its memory budget ({limits.memory_bytes // 2**20} MiB, "
            "ETM_SANDBOX_MEMORY_BYTES) outside a retryable batch"
        )
    return SandboxCrashed(f"the model process exited with code {code} without reporting a result")
