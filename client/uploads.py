"""Upload bodies that stream: a model or an archive is read from disk in chunks, a dataset *folder* is zipped
while it is sent (an unseekable zip with data descriptors: no temporary archive, about one chunk in memory).

A body is a ``BodyMaker``: called anew for every try (a stream cannot be replayed), it opens what it reads on
the ``ExitStack`` it is given and returns httpx request keyword arguments."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_STORED = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip", ".gz"}  # already compressed: store, do not deflate
_CHUNK = 1 << 20

BodyMaker = Callable[[ExitStack, bool], dict[str, Any]]  # (stack, for the async client) -> httpx kwargs


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


class _Sink(io.RawIOBase):
    """An unseekable buffer zipfile writes into; ``take`` drains it. Unseekable on purpose: zipfile then
    writes data descriptors instead of seeking back, so the archive can be streamed."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.buf += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def dataset_files(folder: Path) -> list[tuple[Path, str]]:
    """The files a folder upload sends: regular files in sorted order, hidden names (``.git``,
    ``.DS_Store``) left out; ``(path, name in the archive)``."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append((p, rel.as_posix()))
    return out


def zip_stream(folder: Path, chunk: int = _CHUNK) -> Iterator[bytes]:
    """A zip archive of ``folder``, produced piece by piece (at most about ``chunk`` bytes held)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for path, name in dataset_files(folder):
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                while block := src.read(chunk):
                    dst.write(block)
                    if len(sink.buf) >= chunk:
                        yield sink.take()
            if sink.buf:
                yield sink.take()
    if sink.buf:  # the central directory, written on close
        yield sink.take()


def _multipart_stream(boundary: str, filename: str, ctype: str, body: Iterator[bytes]) -> Iterator[bytes]:
    safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    yield from body
    yield f"\r\n--{boundary}--\r\n".encode()


async def _aiter(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A sync byte iterator for the async client; each piece is made in a thread (it reads files)."""
    done = object()
    while True:
        piece = await asyncio.to_thread(next, it, done)
        if piece is done:
            return
        yield piece  # type: ignore[misc]


def metadata_text(metadata: Mapping[str, Any] | str | Path | None) -> str | None:
    """A model's metadata as the JSON text the upload sends: from a dict, JSON text or a JSON file."""
    if metadata is None:
        return None
    if isinstance(metadata, Path):
        return metadata.read_text()
    if isinstance(metadata, str):
        json.loads(metadata)  # fail here, with the JSON error, rather than as a 422 later
        return metadata
    return json.dumps(dict(metadata))


def model_body(path: Path, metadata: str | None) -> BodyMaker:
    """The ``POST /v1/models`` body: the file, streamed, and the metadata field when there is one."""
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")

    def make(stack: ExitStack, _async: bool) -> dict[str, Any]:
        f = stack.enter_context(path.open("rb"))
        kw: dict[str, Any] = {"files": {"file": (path.name, f, "application/octet-stream")}}
        if metadata is not None:
            kw["data"] = {"metadata": metadata}
        return kw

    return make


def dataset_body(path: Path) -> BodyMaker:
    """The ``POST /v1/datasets`` body: a folder zipped on the fly, or an archive as it is."""
    if path.is_dir():
        if not dataset_files(path):
            raise FileNotFoundError(f"dataset folder {path} has no files")
        filename = f"{path.resolve().name or 'dataset'}.zip"

        def make(stack: ExitStack, is_async: bool) -> dict[str, Any]:
            boundary = uuid.uuid4().hex
            body = _multipart_stream(boundary, filename, "application/zip", zip_stream(path))
            return {
                "content": _aiter(body) if is_async else body,
                "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            }

        return make
    if is_archive(path):

        def make_file(stack: ExitStack, _async: bool) -> dict[str, Any]:
            f = stack.enter_context(path.open("rb"))
            return {"files": {"file": (path.name, f, "application/octet-stream")}}

        return make_file
    if path.is_file():
        raise ValueError(f"{path} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    raise FileNotFoundError(f"dataset {path} does not exist")
