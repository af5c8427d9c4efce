"""Reading what the sandboxed child wrote, without following anything it could have planted.

The scratch folder is writable by the child, so any name in it may be a symlink to a host file (the
child cannot see the target, but the parent would follow it). Every component is opened relative to
its folder with ``O_NOFOLLOW``, only regular files are read, and reads are bounded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_FILE_BYTES = 2 * 2**30  # also the child's RLIMIT_FSIZE


class UnsafeOutput(RuntimeError):
    """The child left something other than a plain file where a result was expected."""


def read_bytes(root: Path, rel: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``root/rel`` (``rel`` a relative path with ``/``); UnsafeOutput for links, specials, sizes."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafeOutput(f"bad result path {rel!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        try:
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            raise UnsafeOutput(f"result {rel!r} is missing or a link ({exc.strerror})") from exc
    except NotADirectoryError as exc:
        raise UnsafeOutput(f"a folder on the way to {rel!r} is not a folder") from exc
    except OSError as exc:
        if isinstance(exc, UnsafeOutput):
            raise
        raise UnsafeOutput(f"result {rel!r} is missing or a link ({exc.strerror})") from exc
    finally:
        os.close(fd)
    try:
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeOutput(f"result {rel!r} is not a regular file")
        if st.st_size > limit:
            raise UnsafeOutput(f"result {rel!r} is {st.st_size} bytes, above the limit of {limit}")
        chunks, total = [], 0
        while chunk := os.read(ffd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise UnsafeOutput(f"result {rel!r} grew above the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(ffd)


def copy_out(root: Path, rel: str, dest: Path, limit: int = MAX_FILE_BYTES) -> Path:
    """``read_bytes`` written to ``dest`` (a file the parent owns)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(read_bytes(root, rel, limit))
    return dest
