"""Streaming multipart uploads: the file part goes straight to a temporary file on disk (hashed on
the way, bounded by a size limit), small text fields are kept in memory. Nothing is buffered whole.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from etm.errors import UnsupportedMedia, UploadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 8


class MalformedUpload(ValueError):
    pass


@dataclass
class Upload:
    """A received upload. Call ``cleanup`` (or use ``with``) to delete the temporary folder."""

    folder: Path
    path: Path | None = None
    filename: str = ""
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def safe_filename(name: str, default: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:120]
    return base or default


async def receive_upload(
    request: Request, file_field: str, limit: int, tmp_dir: Path | None, default_name: str
) -> Upload:
    """Parse a ``multipart/form-data`` request with one file part named ``file_field``.

    Raises:
        UnsupportedMedia: not multipart/form-data.
        UploadTooLarge: the file (or the declared body) is larger than ``limit`` bytes.
        MalformedUpload: broken multipart data, a missing file part, too many parts.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMedia(
            f"send multipart/form-data with the file in a field named {file_field!r} "
            f"(got {ctype.decode('latin-1') or 'no content type'}); e.g. curl -F {file_field}=@path"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUpload("the multipart content type lacks a boundary")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_PARTS * MAX_FIELD_BYTES:
        raise UploadTooLarge(f"the upload is {int(declared)} bytes; the limit is {limit} bytes")

    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    up = Upload(folder=Path(tempfile.mkdtemp(prefix="etm-upload-", dir=tmp_dir)))
    state: dict[str, Any] = {"headers": [], "hname": b"", "hvalue": b"", "parts": 0}
    pending: list[bytes] = []
    hasher = hashlib.sha256()
    out = None

    def on_part_begin() -> None:
        state.update(name=None, filename=None, data=bytearray(), is_file=False, disposition=b"")
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise MalformedUpload(f"too many form fields (at most {MAX_PARTS})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] += data[start:end]

    def on_header_end() -> None:
        if state["hname"].lower() == b"content-disposition":
            state["disposition"] = state["hvalue"]
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal out
        _, opts = parse_options_header(state["disposition"])
        if b"name" not in opts:
            raise MalformedUpload("a form part lacks a name in its Content-Disposition header")
        state["name"] = opts[b"name"].decode("utf-8", "replace")
        if state["name"] == file_field:
            if up.path is not None:
                raise MalformedUpload(f"send one {file_field!r} part only")
            state["is_file"] = True
            up.filename = opts.get(b"filename", b"").decode("utf-8", "replace")
            up.path = up.folder / safe_filename(up.filename, default_name)
            out = open(up.path, "wb")  # noqa: SIM115 - closed below, also on errors

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["is_file"]:
            up.size += len(chunk)
            if up.size > limit:
                raise UploadTooLarge(f"the {file_field!r} part is larger than the limit of {limit} bytes")
            hasher.update(chunk)
            pending.append(chunk)
        else:
            state["data"] += chunk
            if len(state["data"]) > MAX_FIELD_BYTES:
                raise MalformedUpload(f"form field {state['name']!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if not state["is_file"]:
            up.fields[state["name"]] = bytes(state["data"]).decode("utf-8", "replace")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = python_multipart.MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
            if pending and out is not None:
                data = b"".join(pending)
                pending.clear()
                await run_in_threadpool(out.write, data)
        parser.finalize()
        if pending and out is not None:
            await run_in_threadpool(out.write, b"".join(pending))
    except FormParserError as exc:
        up.cleanup()
        raise MalformedUpload(f"the multipart body is malformed: {exc}") from exc
    except BaseException:
        up.cleanup()
        raise
    finally:
        if out is not None:
            out.close()
    if up.path is None:
        up.cleanup()
        raise MalformedUpload(f"no file part named {file_field!r}; send it with curl -F {file_field}=@path")
    up.sha256 = hasher.hexdigest()
    return up
