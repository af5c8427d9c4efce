"""A seccomp filter for the sandboxed child (bubblewrap's ``--seccomp FD``), compiled with libseccomp
through ``pyseccomp``.

Default allow, with the calls a model process never needs refused (``EPERM``/``EAFNOSUPPORT``): network
sockets (every address family but ``AF_UNIX``, whose only peers are inside the sandbox), and the kernel
interfaces most often used to attack the kernel or other processes from a user namespace: ptrace and
process memory access, BPF, perf events, keyrings, mounting and namespaces (after bubblewrap has made
its own), kernel modules, reboot/kexec, ``userfaultfd``, ``io_uring``. The network namespace already
leaves a socket nowhere to connect; this filter makes creating one fail at once.
"""

from __future__ import annotations

import errno
import functools
import socket
import tempfile
from typing import IO

_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "add_key", "request_key",
    "keyctl", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "unshare", "setns", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "acct", "quotactl", "lookup_dcookie", "open_by_handle_at", "name_to_handle_at",
)


@functools.cache
def _compiled() -> bytes:
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in _DENIED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # noqa: BLE001 - a call this kernel/architecture does not have
            continue
    # socket(domain, ...) for any domain but AF_UNIX; socketpair likewise.
    for call in ("socket", "socketpair"):
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, socket.AF_UNIX))
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


def filter_file() -> IO[bytes]:
    """A file holding the compiled BPF program, positioned at 0, for ``bwrap --seccomp <fd>``."""
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it once bwrap has read it
    tmp.write(_compiled())
    tmp.seek(0)
    return tmp
