"""The artifact store and the registry of models and datasets kept in it.

``ArtifactStore`` is a thin, content-addressed layer over any fsspec filesystem (a local folder
by default, ``s3://...`` or ``gs://...`` when API and workers run on different machines). It is the
system of record for everything that must outlive Redis:

```
blobs/sha256/<ab>/<sha256>          model files and dataset archives, by content
registry/models/<id>.json           model records (effective metadata, capability table)
registry/models-by-sha/<sha256>     -> model id (the same bytes are one model)
registry/datasets/<id>.json         dataset records (counts per split and class, skipped files)
registry/datasets-by-sha/<sha256>   -> dataset id (the same content is one dataset)
registry/tenants/<tenant>/...       a tenant's own uploads (models/, models-by-sha/, datasets/, ...)
auth/keys/<key id>.json             API keys (argon2 hashes; api.security.keys)
results/<cache key>/report.json     reports, per-image CSVs and artifacts, by result-cache key
jobs/<job id>.json                  final job records (GET falls back to them when Redis forgot)
partials/<job id>/<i>-of-<n>.npz    shard results until the job's finish step merges them
```

``Registry`` ingests uploads (model files are validated with ``load_model``; dataset archives are
extracted safely and validated with ``load_dataset``), checks job specs against what is
registered, derives result-cache keys and materialises models and datasets into a worker's local
cache. Nothing here imports FastAPI or Celery.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import fsspec

from etm.errors import BadInput, DatasetError, MethodUnavailable
from etm.spec import EvaluationSpec

CHUNK = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
DATASET_HASH_VERSION = "etm-dataset-splits-v1"
CACHE_KEY_VERSION = "etm-result-v2"  # v2: reports carry warnings (schema 1.1); v1 results lack them
MAX_ID_CHARS = 200  # longest quoted model/dataset id looked up in the registry (file names stop at 255 bytes)


class NotFound(KeyError):
    """A key, model or dataset that does not exist."""


class UploadTooLarge(BadInput):
    """An upload or archive is over a configured limit (HTTP 413)."""

    title = "Upload too large"
    status = 413


class UnsupportedMedia(BadInput):
    """An upload is not of an accepted kind (HTTP 415)."""

    title = "Unsupported media type"
    status = 415


class Conflict(BadInput):
    """The request conflicts with what is registered (HTTP 409)."""

    title = "Conflict"
    status = 409


class UnknownReference(BadInput):
    """A job names models or datasets that are not registered (HTTP 422)."""

    title = "Unknown model or dataset"


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# -- the store -----------------------------------------------------------------------------------


class ArtifactStore:
    """Keys (posix paths) to bytes on an fsspec filesystem; writes are atomic on local disks."""

    def __init__(self, url: str) -> None:
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def path(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError(f"invalid store key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    # bytes and files
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError as exc:
            raise NotFound(key) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def put_file(self, key: str, local: Path) -> None:
        target = self.path(key)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local), target)

    def get_file(self, key: str, local: Path) -> Path:
        """Copy ``key`` to ``local`` atomically (a reader never sees a half-written file)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.tmp-{uuid.uuid4().hex}")
        try:
            self.fs.get_file(self.path(key), str(tmp))
        except FileNotFoundError as exc:
            raise NotFound(key) from exc
        os.replace(tmp, local)
        return local

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(key))

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(prefix.rstrip("/")), recursive=True)

    def list(self, prefix: str) -> list[str]:
        """Names (not keys) directly under ``prefix``, sorted; empty when it does not exist."""
        try:
            entries = self.fs.ls(self.path(prefix.rstrip("/")), detail=False)
        except FileNotFoundError:
            return []
        names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if ".tmp-" not in n)

    # content addressing
    @staticmethod
    def blob_key(sha: str) -> str:
        if not _SHA_RE.match(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return f"blobs/sha256/{sha[:2]}/{sha}"

    def put_blob(self, local: Path, sha: str | None = None) -> str:
        sha = sha or sha256_file(local)
        key = self.blob_key(sha)
        if not self.exists(key):
            self.put_file(key, local)
        return sha

    def fetch_blob(self, sha: str, local: Path) -> Path:
        """Materialise blob ``sha`` at ``local`` (kept when already there), verifying the content."""
        if local.is_file():
            return local
        self.get_file(self.blob_key(sha), local)
        got = sha256_file(local)
        if got != sha:
            local.unlink(missing_ok=True)
            raise DatasetError(f"the store returned corrupt bytes for blob {sha} (got {got})")
        return local


# -- safe archive extraction ---------------------------------------------------------------------


# The compression-ratio limit applies once a member (or the archive) has inflated past this many bytes:
# small files of repetitive bytes legitimately compress far beyond any sane zip-bomb ratio.
RATIO_FLOOR = 1 << 20
MANIFEST_NAME = "manifest.csv"


# Bytes of zip central directory allowed per permitted member (a typical entry is 46 bytes plus a name of
# ~50-200 and extra fields of ~30-60): the index of an archive at the member limit, not a padded one.
INDEX_BYTES_PER_MEMBER = 1024
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX on Linux): longer ones fail with ENAMETOOLONG
MAX_MEMBER_PATH_BYTES = 1024  # a member's path inside the archive (the OS limit, 4096, includes the cache folder)
MAX_TAR_HEADER_BYTES = 1 << 20  # a GNU long-name or pax header; tarfile reads each one whole into memory
MAX_LISTED_SKIPPED = 100  # skipped files a dataset record lists (all of them are counted, by reason)
MAX_SKIP_REASONS = 20  # distinct reasons counted; the rest are counted as "other"
MAX_LISTED_CHARS = 300  # a listed path or reason is cut to this many characters


@dataclass
class ArchiveLimits:
    max_members: int = 200_000
    max_bytes: int = 8 * 2**30
    max_ratio: float = 200.0
    max_index_bytes: int | None = None  # zip central directory; None: max_members * INDEX_BYTES_PER_MEMBER

    @property
    def index_bytes(self) -> int:
        if self.max_index_bytes is not None:
            return self.max_index_bytes
        return self.max_members * INDEX_BYTES_PER_MEMBER


_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def utf8_safe(text: str) -> str:
    """``text`` with every lone surrogate (tar's stand-in for name bytes that are not UTF-8, or a JSON
    ``\\udcxx`` escape) replaced by U+FFFD: a string that JSON responses can always encode."""
    return text if is_utf8(text) else _SURROGATE.sub("\ufffd", text)


def _clip(text: str) -> str:
    """``text`` as a record may store it: valid UTF-8 (lone surrogates, as tar gives for names that are not
    UTF-8, become U+FFFD) and at most MAX_LISTED_CHARS characters."""
    text = utf8_safe(text)
    return text if len(text) <= MAX_LISTED_CHARS else text[: MAX_LISTED_CHARS - 3] + "..."


def skip_kind(reason: str) -> str:
    """The kind of a skip reason, without what names the file (line numbers, names, sizes): the key under
    which skipped files are counted. ``manifest.csv line 7: file not found`` -> ``file not found``."""
    reason = re.sub(r"^\S+ line \d+: ", "", reason)
    if reason.startswith("mask of "):
        return "mask unusable, image kept without mask"
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or "other"


@dataclass
class SkipSummary:
    """Skipped files as a record keeps them: every one counted (``n_skipped``, ``skipped_by_reason``), the
    first MAX_LISTED_SKIPPED listed, so that a dataset record stays small however much an upload skips."""

    n_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < MAX_LISTED_SKIPPED:
            self.skipped.append({"path": _clip(path), "reason": _clip(reason)})
        kind = _clip(skip_kind(reason))
        if kind not in self.skipped_by_reason and len(self.skipped_by_reason) >= MAX_SKIP_REASONS:
            kind = "other"
        self.skipped_by_reason[kind] = self.skipped_by_reason.get(kind, 0) + 1

    @classmethod
    def of(cls, entries: list[dict[str, str]]) -> SkipSummary:
        out = cls()
        for e in entries:
            out.add(e["path"], e["reason"])
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"n_skipped": self.n_skipped, "skipped": self.skipped, "skipped_by_reason": self.skipped_by_reason}


@dataclass
class Extraction:
    format: str
    members: int
    files: int
    bytes: int
    skips: SkipSummary = field(default_factory=SkipSummary)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """The first MAX_LISTED_SKIPPED members not extracted (``skips`` counts all of them)."""
        return self.skips.skipped


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar member header that refuses a GNU long-name/long-link or pax header of more than
    MAX_TAR_HEADER_BYTES: tarfile reads such a header whole into memory, so a few kilobytes of gzip could
    otherwise claim (and cost) gigabytes before the first member is even listed."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        kinds = (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        )
        if self.type in kinds and self.size > MAX_TAR_HEADER_BYTES:
            raise UploadTooLarge(
                f"the archive has a tar long-name or pax header of {self.size} bytes, more than "
                f"{MAX_TAR_HEADER_BYTES}; such headers hold a member's name and attributes, never its data. "
                "Re-create the archive with a standard tool (e.g. `tar czf`)"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _open_tar(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo)


def archive_format(path: Path) -> str:
    """``zip`` or ``tar`` from the bytes; UnsupportedMedia otherwise (UploadTooLarge: a tar header bomb)."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with _open_tar(path):
            return "tar"
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError):
        pass
    raise UnsupportedMedia(
        "the dataset upload is neither a zip nor a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz); "
        "pack the dataset folder, e.g. `cd mydata && zip -r ../mydata.zip .`"
    )


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_ZIP_MAX_VERSION = 63  # zipfile's MAX_EXTRACT_VERSION: a newer entry makes it raise NotImplementedError


def _zip_end_record(f: Any, size: int) -> tuple[int, int, int]:
    """``(declared entries, central directory size, central directory start)`` of a zip, found as
    ``zipfile`` finds them (the same end record, zip64 included), so that what is checked here is what
    ``zipfile.ZipFile`` would read."""
    if size < _EOCD.size:
        raise DatasetError("the archive is damaged or truncated: no zip end-of-central-directory record")
    f.seek(size - _EOCD.size)
    data = f.read(_EOCD.size)
    if data[:4] == b"PK\x05\x06" and data[-2:] == b"\0\0":
        at = size - _EOCD.size
    else:  # an archive comment (up to 64 KiB) follows the record
        low = max(size - (1 << 16) - _EOCD.size, 0)
        f.seek(low)
        tail = f.read()
        start = tail.rfind(b"PK\x05\x06")
        if start < 0 or len(tail) - start < _EOCD.size:
            raise DatasetError("the archive is damaged or truncated: no zip end-of-central-directory record")
        at = low + start
        data = tail[start : start + _EOCD.size]
    _, _, _, this_disk, total, cd_size, _, _ = _EOCD.unpack(data)
    entries = max(this_disk, total)
    z64 = 0
    if at >= _EOCD64_LOCATOR.size:
        f.seek(at - _EOCD64_LOCATOR.size)
        sig, disk, _, disks = _EOCD64_LOCATOR.unpack(f.read(_EOCD64_LOCATOR.size))
        if sig == b"PK\x06\x07":
            if disk != 0 or disks > 1:
                raise DatasetError("the archive spans several disks (a split zip); join it into one .zip first")
            if at >= _EOCD64_LOCATOR.size + _EOCD64.size:
                f.seek(at - _EOCD64_LOCATOR.size - _EOCD64.size)
                rec = _EOCD64.unpack(f.read(_EOCD64.size))
                if rec[0] == b"PK\x06\x06":
                    entries, cd_size = max(rec[6], rec[7]), rec[8]
                    z64 = _EOCD64.size + _EOCD64_LOCATOR.size
    start = at - cd_size - z64  # as zipfile: data prepended to the archive shifts every offset
    if start < 0:
        raise DatasetError("the archive is damaged or truncated: bad offset for the zip central directory")
    return entries, cd_size, start


def check_zip_index(path: Path, limits: ArchiveLimits) -> int:
    """Check a zip's central directory against ``limits`` before ``zipfile`` reads it; the entry count.

    ``zipfile.ZipFile`` reads the whole central directory into memory and makes an object per entry on
    open, so the member limit applied afterwards came too late (2 million entries cost ~1 GB). This reads
    the end record (and the zip64 one) and refuses a declared entry count above ``limits.max_members`` or
    a directory larger than ``limits.index_bytes``, then walks the directory entry by entry (constant
    memory) and stops at the first entry over the limit, whatever the end record declared. Names marked
    UTF-8 that are not (on which zipfile's open fails) and entries of a zip version zipfile cannot read
    refuse the archive here, with the entry named.

    Raises:
        UploadTooLarge: too many entries, or too large a central directory.
        DatasetError: a damaged directory, a bad UTF-8 name, an unsupported zip version.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        declared, cd_size, start = _zip_end_record(f, size)
        if declared > limits.max_members:
            raise UploadTooLarge(
                f"the archive has more than {limits.max_members} entries (ETM_MAX_ARCHIVE_MEMBERS): its zip "
                f"directory declares {declared}; split the dataset"
            )
        if cd_size > limits.index_bytes:
            raise UploadTooLarge(
                f"the archive's zip central directory is {cd_size} bytes, more than {limits.index_bytes} "
                f"({INDEX_BYTES_PER_MEMBER} bytes for each of the ETM_MAX_ARCHIVE_MEMBERS={limits.max_members} "
                "entries allowed); split the dataset"
            )
        f.seek(start)
        count = done = 0
        while done < cd_size:
            head = f.read(_CENTRAL_ENTRY.size)
            if len(head) != _CENTRAL_ENTRY.size or head[:4] != b"PK\x01\x02":
                raise DatasetError("the archive is damaged or truncated: bad zip central directory entry")
            entry = _CENTRAL_ENTRY.unpack(head)
            version, flags, n_name, n_extra, n_comment = entry[3], entry[5], entry[12], entry[13], entry[14]
            count += 1
            if count > limits.max_members:
                raise UploadTooLarge(
                    f"the archive has more than {limits.max_members} entries (ETM_MAX_ARCHIVE_MEMBERS); "
                    "split the dataset"
                )
            name = f.read(n_name)
            if flags & 0x800:
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(
                        f"archive member {name!r} is marked as having a UTF-8 name, but the name is not valid "
                        "UTF-8; re-create the archive (e.g. `zip -r`), or rename the file"
                    ) from exc
            if version > _ZIP_MAX_VERSION:
                raise DatasetError(
                    f"archive member {name.decode('cp437')!r} needs zip version {version / 10:.1f}, newer than "
                    "this service reads; re-create the archive with a standard zip tool"
                )
            f.seek(n_extra + n_comment, os.SEEK_CUR)
            done += _CENTRAL_ENTRY.size + n_name + n_extra + n_comment
    return count


def _member_parts(raw: str) -> list[str]:
    """The safe relative parts of an archive member name, or BadInput naming the member."""
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise DatasetError(f"archive member {raw!r} has a NUL byte in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(f"archive member {raw!r} has an absolute path; members must be relative to the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(f"archive member {raw!r} leaves the archive ('..' in its path); refusing the archive")
    return parts


def _skip_reason(parts: list[str], is_dir: bool = False) -> str | None:
    """Why a member is not extracted: names no dataset record or file system can hold, metadata of other
    tools and files that cannot be dataset images."""
    from etm.datasets.images import is_obviously_not_image

    name = "/".join(parts)
    if not is_utf8(name):
        return "name is not valid UTF-8 (pack the archive where file names are UTF-8, or rename the file)"
    longest = max((len(p.encode()) for p in parts), default=0)
    if longest > MAX_NAME_BYTES:
        return f"name too long ({longest} bytes in one file or folder name; at most {MAX_NAME_BYTES})"
    if len(name.encode()) > MAX_MEMBER_PATH_BYTES:
        return f"path too long ({len(name.encode())} bytes; at most {MAX_MEMBER_PATH_BYTES})"
    if parts and parts[0] == "__MACOSX":
        return "macOS resource fork (__MACOSX)"
    hidden = next((p for p in parts if p.startswith(".")), None)
    if hidden is not None:
        return f"hidden file or folder ({hidden}), e.g. .DS_Store; not part of a dataset"
    if parts and not is_dir and parts[-1] != MANIFEST_NAME and is_obviously_not_image(Path(parts[-1])):
        return f"not an image ({Path(parts[-1]).suffix.lower()}); only {MANIFEST_NAME} and images are extracted"
    return None


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits) -> Extraction:
    """Extract a zip or tar archive into ``dest`` without trusting it.

    Regular files and folders only: absolute paths, ``..``, links and device files refuse the
    whole archive (nothing outside ``dest`` is ever written); the member count, the number of
    bytes actually written and the compression ratio (per zip member and over the whole archive,
    counted on the bytes actually inflated) are bounded. Hidden files, ``__MACOSX`` and files that are
    obviously not images (``.txt``, ``.py``...; ``manifest.csv`` is kept) are not extracted, and neither
    are members whose name is not valid UTF-8 (tar), has a part over MAX_NAME_BYTES or a path over
    MAX_MEMBER_PATH_BYTES; they are counted in ``skips`` with the reason (the first ones listed). A zip's
    central directory is checked (``check_zip_index``) before ``zipfile`` reads it, and tar members are
    read one at a time, so the member limit bounds memory too.

    Raises:
        UnsupportedMedia: not a zip or tar archive.
        DatasetError: an unsafe or duplicate member, a member that is both a file and a folder, an
            encrypted member, a damaged archive.
        UploadTooLarge: too many members (or too large a zip directory or tar header), too many bytes once
            extracted, or a compression ratio above ``limits.max_ratio`` (a zip bomb).
    """
    fmt = archive_format(archive)
    if fmt == "zip":
        check_zip_index(archive, limits)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    info = Extraction(format=fmt, members=0, files=0, bytes=0)
    archive_size = max(archive.stat().st_size, 1)

    def count_member() -> None:
        info.members += 1
        if info.members > limits.max_members:
            raise UploadTooLarge(
                f"the archive has more than {limits.max_members} entries (ETM_MAX_ARCHIVE_MEMBERS); split the dataset"
            )

    def target_for(parts: list[str], raw: str) -> Path:
        target = root.joinpath(*parts)
        if not target.resolve().is_relative_to(root):
            raise DatasetError(f"archive member {raw!r} would be written outside the dataset folder")
        return target

    def check_ratio(raw: str, written: int, compressed: int | None) -> None:
        if compressed is not None and written > RATIO_FLOOR and written > limits.max_ratio * max(compressed, 1):
            raise UploadTooLarge(_bomb(raw, f"inflates from {compressed} to more than {written} bytes", limits))
        if info.bytes > RATIO_FLOOR and info.bytes > limits.max_ratio * archive_size:
            raise UploadTooLarge(
                _bomb(raw, f"takes the archive ({archive_size} bytes) past {info.bytes} bytes extracted", limits)
            )

    def make_dir(folder: Path, raw: str) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:  # a file of the archive is in the way
            raise DatasetError(f"archive member {raw!r} is inside a folder that is also a file of the archive") from exc

    def write(parts: list[str], raw: str, declared: int, src: Any, compressed: int | None = None) -> None:
        if info.bytes + declared > limits.max_bytes:
            raise UploadTooLarge(_too_big(limits))
        check_ratio(raw, declared, compressed)  # the declared sizes may lie; the loop below counts real bytes
        target = target_for(parts, raw)
        make_dir(target.parent, raw)
        try:
            out = open(target, "xb")  # noqa: SIM115 - closed by the with below, after the checks
        except FileExistsError as exc:
            raise DatasetError(f"archive member {raw!r} appears twice (or as a file and a folder)") from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise DatasetError(f"archive member {raw!r} is both a file and a folder") from exc
        written = 0
        with out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                info.bytes += len(chunk)
                written += len(chunk)
                if info.bytes > limits.max_bytes:
                    raise UploadTooLarge(_too_big(limits))
                check_ratio(raw, written, compressed)
                out.write(chunk)
        info.files += 1

    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                for zi in zf.infolist():
                    count_member()
                    parts = _member_parts(zi.filename)
                    mode = zi.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise DatasetError(
                            f"archive member {zi.filename!r} is a symbolic link; archives may hold regular "
                            "files and folders only"
                        )
                    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix type recorded
                        raise DatasetError(f"archive member {zi.filename!r} is not a regular file or folder")
                    reason = _skip_reason(parts, zi.is_dir())
                    if reason or not parts:
                        if reason and not zi.is_dir():
                            info.skips.add(zi.filename, reason)
                        continue
                    if zi.is_dir():
                        make_dir(target_for(parts, zi.filename), zi.filename)
                        continue
                    if zi.flag_bits & 0x1:
                        raise DatasetError(
                            f"archive member {zi.filename!r} is encrypted; upload an archive without a password"
                        )
                    with zf.open(zi) as src:
                        write(parts, zi.filename, zi.file_size, src, zi.compress_size)
        else:
            with _open_tar(archive) as tf:
                for ti in tf:
                    count_member()
                    parts = _member_parts(ti.name)
                    if ti.issym() or ti.islnk():
                        kind = "symbolic" if ti.issym() else "hard"
                        raise DatasetError(
                            f"archive member {ti.name!r} is a {kind} link; archives may hold regular files and "
                            "folders only"
                        )
                    if not (ti.isfile() or ti.isdir()):
                        raise DatasetError(f"archive member {ti.name!r} is not a regular file or folder")
                    reason = _skip_reason(parts, ti.isdir())
                    if reason or not parts:
                        if reason and ti.isfile():
                            info.skips.add(ti.name, reason)
                        continue
                    if ti.isdir():
                        make_dir(target_for(parts, ti.name), ti.name)
                        continue
                    src = tf.extractfile(ti)
                    if src is None:  # pragma: no cover - isfile() members always have data
                        continue
                    with src:
                        write(parts, ti.name, ti.size, src)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        EOFError,
        zipfile.LargeZipFile,
        zlib.error,
        lzma.LZMAError,
        gzip.BadGzipFile,
        UnicodeDecodeError,
    ) as exc:
        raise DatasetError(f"the archive is damaged or truncated: {exc}") from exc
    except NotImplementedError as exc:  # zipfile: a compression method it lacks (e.g. AES, PPMd)
        raise DatasetError(
            f"the archive uses a zip feature this service cannot read ({exc}); re-create it with "
            "standard deflate compression, e.g. `zip -r`"
        ) from exc
    return info


def _bomb(raw: str, what: str, limits: ArchiveLimits) -> str:
    return (
        f"archive member {raw!r} {what}: a compression ratio above {limits.max_ratio:g} "
        "(ETM_MAX_COMPRESSION_RATIO), as in a zip bomb; upload the dataset without such a member, or raise the limit"
    )


def _too_big(limits: ArchiveLimits) -> str:
    return (
        f"the archive extracts to more than {limits.max_bytes} bytes (ETM_MAX_EXTRACTED_BYTES); "
        "upload a smaller dataset or raise the limit"
    )


def dataset_root(extracted: Path) -> Path:
    """The dataset folder inside an extraction: a lone wrapper folder (``mydata/...``) is descended."""
    from etm.datasets.loading import MANIFEST, MASKS_DIR, SPLIT_NAMES

    here = extracted
    for _ in range(3):
        entries = [p for p in here.iterdir() if not p.name.startswith(".")]
        if (here / MANIFEST).is_file() or len(entries) != 1 or not entries[0].is_dir():
            break
        only = entries[0]
        if only.name == MASKS_DIR or only.name.lower() in SPLIT_NAMES:
            break
        if not any(p.is_dir() for p in only.iterdir() if not p.name.startswith(".")):
            break  # a single class folder of images: keep it as a class
        here = only
    return here


MAX_SPLITS = 16  # splits of one dataset: each is validated in full, and a manifest may name any


def split_names(root: Path) -> list[str]:
    """The splits of a dataset folder, as ``load_dataset`` sees them (empty: no splits); no more than
    MAX_SPLITS + 1 of them (reading stops there: ``describe_folder`` refuses that many)."""
    from etm.datasets.loading import MANIFEST, MASKS_DIR, SPLIT_NAMES

    manifest = root / MANIFEST
    if manifest.is_file():
        import csv

        try:
            with manifest.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [h.strip().lower() for h in next(reader, [])]
                if "split" not in header:
                    return []
                i = header.index("split")
                found: set[str] = set()
                for row in reader:
                    if len(row) > i and row[i].strip():
                        found.add(row[i].strip())
                        if len(found) > MAX_SPLITS:
                            break
                return sorted(found)
        except (OSError, UnicodeDecodeError, csv.Error):
            return []  # load_dataset reports the problem with its own message
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != MASKS_DIR]
    if dirs and all(d.name.lower() in SPLIT_NAMES for d in dirs):
        return sorted(d.name for d in dirs)
    return []


def default_split(splits: list[str]) -> str | None:
    """What ``load_dataset(split=None)`` picks: ``test`` (case-folded when unique), else nothing."""
    if "test" in splits:
        return "test"
    folded = [s for s in splits if s.lower() == "test"]
    return folded[0] if len(folded) == 1 else None


def describe_folder(root: Path) -> dict[str, Any]:
    """Validate every split of a dataset folder; the part of a dataset record that depends on content.

    Skipped files are summarised (``SkipSummary``): all counted, by reason, the first ones listed.

    Raises:
        DatasetError: what ``load_dataset`` raises for a split (no usable image, bad manifest...), more
            than MAX_SPLITS splits.
    """
    from etm.datasets import load_dataset

    names = split_names(root)
    if len(names) > MAX_SPLITS:
        raise DatasetError(
            f"{MANIFEST_NAME} names more than {MAX_SPLITS} splits (e.g. {', '.join(map(repr, names[:3]))}); a "
            "dataset has a few, such as train, val and test: check the manifest's split column"
        )
    loaded = [(s, load_dataset(root, split=s)) for s in names] if names else [(None, load_dataset(root))]
    splits = []
    counts: dict[str, int] = {}
    skipped = SkipSummary()  # over all splits: a file skipped in two splits counts once
    seen: set[tuple[str, str]] = set()
    n_mask = 0
    for name, ds in loaded:
        d = ds.describe()
        splits.append(
            {
                "split": name,
                "sha256": ds.sha256,
                "n_images": d["n_images"],
                "counts": d["counts"],
                "annotations": d["annotations"],
                **SkipSummary.of(d["skipped"]).as_dict(),
            }
        )
        for c, n in ds.counts.items():
            counts[c] = counts.get(c, 0) + n
        n_mask += ds.n_with_mask
        for s in d["skipped"]:
            if (s["path"], s["reason"]) not in seen:
                seen.add((s["path"], s["reason"]))
                skipped.add(s["path"], s["reason"])
    if names:
        h = hashlib.sha256(f"{DATASET_HASH_VERSION}\n".encode())
        for s in splits:
            h.update(f"{s['split']}\t{s['sha256']}\n".encode())
        sha = h.hexdigest()
    else:
        sha = splits[0]["sha256"]
    n_images = sum(s["n_images"] for s in splits)
    first = loaded[0][1]
    return {
        "sha256": sha,
        "layout": first.layout,
        "has_splits": bool(names),
        "default_split": default_split(names),
        "splits": splits,
        "classes": sorted(counts),
        "n_images": n_images,
        "counts": dict(sorted(counts.items())),
        "split_counts": first.split_counts,
        "annotations": {
            "masks_folder": first.has_masks_folder,
            "n_with_mask": n_mask,
            "n_without_mask": n_images - n_mask,
        },
        **skipped.as_dict(),
    }


# -- the registry --------------------------------------------------------------------------------


def _blob_of(kind: str, record: dict[str, Any]) -> str | None:
    """The blob a record stores its bytes in (a model file, a dataset archive)."""
    if kind == "models":
        return record.get("sha256")
    return (record.get("archive") or {}).get("sha256")


TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


Describe = Callable[[Path, str, Any], dict[str, Any]]


def describe_locally(path: Path, sha: str, metadata: Any) -> dict[str, Any]:
    """A model's description (format, metadata, capabilities), inspected in this host's sandbox."""
    from etm.sandbox import limits_for
    from etm.sandbox.calls import inspect_model
    from etm.settings import get_settings

    settings = get_settings()
    meta = metadata.model_dump(mode="json") if metadata is not None else None
    return inspect_model(path, meta, settings, limits_for(settings, "inspect"))


def _utf8_record(obj: Any) -> Any:
    """``obj`` (JSON data) with every string made valid UTF-8 (``utf8_safe``)."""
    if isinstance(obj, str):
        return utf8_safe(obj)
    if isinstance(obj, dict):
        return {_utf8_record(k): _utf8_record(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_utf8_record(v) for v in obj]
    return obj


def _non_utf8_at(obj: Any, where: str) -> str | None:
    """The place (``a.b[2]``) of the first string in JSON data ``obj`` that is not valid UTF-8, or None."""
    if isinstance(obj, str):
        return None if is_utf8(obj) else where or "the top level"
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{where}.{utf8_safe(str(k))}" if where else utf8_safe(str(k))
            if isinstance(k, str) and not is_utf8(k):
                return here  # the key itself
            if (found := _non_utf8_at(v, here)) is not None:
                return found
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if (found := _non_utf8_at(v, f"{where}[{i}]")) is not None:
                return found
    return None


def check_utf8(obj: Any, what: str) -> None:
    """BadInput when JSON data ``obj`` holds a string that is not valid UTF-8 (a lone surrogate, as a JSON
    ``\\udcff`` escape or a tar name gives): stored, no response could ever show it (every listing would
    answer 500)."""
    where = _non_utf8_at(obj, "")
    if where is not None:
        raise BadInput(
            f"{what} has text that is not valid UTF-8 at {where} (a lone surrogate such as "
            "\\udcff); send names and parameters as UTF-8 text"
        )


def check_tenant(tenant: str) -> str:
    """A tenant name safe in store paths and Redis keys, or ValueError saying what is allowed."""
    if not TENANT_RE.match(tenant):
        raise ValueError(
            f"bad tenant name {tenant!r}: use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return tenant


def _is_builtin_id(ident: str) -> bool:
    return ident.startswith("builtin:")


def model_id_for(sha: str) -> str:
    return f"m-{sha[:16]}"


def dataset_id_for(sha: str) -> str:
    return f"d-{sha[:16]}"


@dataclass
class CheckedSpec:
    """A job spec checked against the registry: the records it references, and its cache key."""

    spec: EvaluationSpec
    models: dict[str, dict[str, Any]]
    dataset: dict[str, Any]
    ood_dataset: dict[str, Any] | None
    n_images: int
    cache_key: str
    tenant: str | None = None


class Registry:
    """Model and dataset records in the store, and the conversions workers need.

    ``tenant`` scopes the view: a tenant's uploads live under ``registry/tenants/<tenant>/`` (the same
    bytes uploaded by two tenants are two records, so neither learns what the other has; the blobs
    are shared by content), built-ins (``builtin:*``) under ``registry/`` are seen by every tenant.
    ``tenant=None`` is the unscoped view of ``registry/`` itself (built-in registration, the CLI).
    """

    def __init__(self, store: ArtifactStore, tenant: str | None = None) -> None:
        self.store = store
        self.tenant = check_tenant(tenant) if tenant is not None else None

    def for_tenant(self, tenant: str | None) -> Registry:
        return self if tenant == self.tenant else Registry(self.store, tenant)

    # -- records -------------------------------------------------------------------------------
    def _base(self, ident: str | None = None) -> str:
        if self.tenant is None or (ident is not None and _is_builtin_id(ident)):
            return "registry"
        return f"registry/tenants/{self.tenant}"

    def _record_key(self, kind: str, ident: str) -> str:
        return f"{self._base(ident)}/{kind}/{quote(ident, safe='')}.json"

    def _read(self, key: str) -> Any:
        """A stored record. One stored before names were checked may hold a lone surrogate (a JSON
        ``\\udcxx`` escape) that no response can encode: such text is read as U+FFFD, so that one bad
        record cannot make every listing of its tenant fail."""
        raw = self.store.read_bytes(key)
        rec = json.loads(raw)
        if b"\\ud" in raw.lower():  # cheap test first: valid pairs (emoji) are escaped alike
            rec = _utf8_record(rec)
        return rec

    def _get(self, kind: str, ident: str) -> dict[str, Any] | None:
        if len(quote(ident, safe="")) > MAX_ID_CHARS:  # no id is that long; the OS would refuse the name (a 500)
            return None
        try:
            return self._read(self._record_key(kind, ident))
        except (NotFound, ValueError):
            return None

    def _list_under(self, base: str, kind: str) -> list[dict[str, Any]]:
        out = []
        for name in self.store.list(f"{base}/{kind}"):
            if name.endswith(".json"):
                try:
                    out.append(self._read(f"{base}/{kind}/{name}"))
                except (NotFound, ValueError):
                    continue  # deleted meanwhile
        return out

    def _list(self, kind: str) -> list[dict[str, Any]]:
        out = self._list_under("registry", kind)
        if self.tenant is not None:
            out = [r for r in out if r.get("builtin")] + self._list_under(self._base(), kind)
        return sorted(out, key=lambda r: (not r.get("builtin", False), r["id"]))

    def _by_sha(self, kind: str, sha: str, base: str | None = None) -> dict[str, Any] | None:
        base = base or self._base()
        try:
            ident = self.store.read_bytes(f"{base}/{kind}-by-sha/{sha}").decode()
        except NotFound:
            return None
        try:
            return self._read(f"{base}/{kind}/{quote(ident, safe='')}.json")
        except (NotFound, ValueError):
            return None

    def _put(self, kind: str, record: dict[str, Any]) -> None:
        """Store a record (BadInput, storing nothing, when it holds text that is not valid UTF-8)."""
        check_utf8(record, f"the {kind[:-1]}")
        base = self._base(record["id"])
        self.store.write_json(self._record_key(kind, record["id"]), record)
        self.store.write_bytes(f"{base}/{kind}-by-sha/{record['sha256']}", record["id"].encode())

    def _delete(self, kind: str, record: dict[str, Any]) -> None:
        base = self._base(record["id"])
        self.store.delete(self._record_key(kind, record["id"]))
        try:
            if self.store.read_bytes(f"{base}/{kind}-by-sha/{record['sha256']}").decode() == record["id"]:
                self.store.delete(f"{base}/{kind}-by-sha/{record['sha256']}")
        except NotFound:
            pass

    def _blob_in_use(self, kind: str, content_sha: str, blob: str) -> bool:
        """Whether any record (built-ins, the unscoped registry, any tenant) still needs ``blob``."""
        bases = ["registry"] + [f"registry/tenants/{t}" for t in self.store.list("registry/tenants")]
        for base in bases:
            rec = self._by_sha(kind, content_sha, base)
            if rec is not None and _blob_of(kind, rec) == blob:
                return True
        return False

    def get_model(self, ident: str) -> dict[str, Any] | None:
        return self._get("models", ident)

    def get_dataset(self, ident: str) -> dict[str, Any] | None:
        return self._get("datasets", ident)

    def list_models(self) -> list[dict[str, Any]]:
        return self._list("models")

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._list("datasets")

    def delete_model(self, ident: str) -> dict[str, Any]:
        rec = self.get_model(ident)
        if rec is None:
            raise NotFound(ident)
        if rec.get("builtin"):
            raise Conflict(f"{ident} is a built-in model and cannot be deleted")
        self._delete("models", rec)
        if not self._blob_in_use("models", rec["sha256"], rec["sha256"]):
            self.store.delete(ArtifactStore.blob_key(rec["sha256"]))
        return rec

    def delete_dataset(self, ident: str) -> dict[str, Any]:
        rec = self.get_dataset(ident)
        if rec is None:
            raise NotFound(ident)
        if rec.get("builtin"):
            raise Conflict(f"{ident} is a built-in dataset and cannot be deleted")
        self._delete("datasets", rec)
        blob = _blob_of("datasets", rec)
        if blob and not self._blob_in_use("datasets", rec["sha256"], blob):
            self.store.delete(ArtifactStore.blob_key(blob))
        return rec

    # -- ingestion -----------------------------------------------------------------------------
    def ingest_model(
        self,
        path: Path,
        filename: str,
        metadata: Any = None,
        ident: str | None = None,
        builtin: bool = False,
        extra: dict[str, Any] | None = None,
        describe: Describe | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Validate a model file and register it; ``(record, created)``.

        The same bytes are one model: a second upload returns the existing record (``created``
        False) unless it asks for different metadata, which is a Conflict. The file is never loaded
        in this process: ``describe(path, sha, metadata)`` inspects it in a sandbox (the API sends it to
        a worker, local callers run ``etm.sandbox`` themselves; the default).

        Raises:
            ModelRefused: the loader's reason (unsafe, malformed, bad metadata).
            Conflict: the bytes are registered with other metadata.
        """
        sha = sha256_file(path)
        existing = self._by_sha("models", sha)
        if existing is not None and not (builtin and existing["id"] != ident):
            if metadata is not None:
                try:
                    wanted = metadata.resolved(existing["num_outputs"]).model_dump(mode="json")
                except ValueError:
                    wanted = None
                if wanted != existing["metadata"]:
                    raise Conflict(
                        f"these bytes are already registered as model {existing['id']} with other metadata "
                        f"({canonical_json(existing['metadata'])}); delete it first or upload without metadata"
                    )
            return existing, False
        if metadata is not None:  # before a worker is asked: text no response could show is refused at once
            check_utf8(metadata.model_dump(mode="json"), "the model's metadata")
        desc = (describe or describe_locally)(path, sha, metadata)
        record = {
            "id": ident or model_id_for(sha),
            "sha256": sha,
            "format": desc["format"],
            "filename": filename,
            "bytes": path.stat().st_size,
            "metadata": desc["metadata"],
            "num_outputs": desc["num_outputs"],
            "capabilities": desc["capabilities"],
            "warnings": desc.get("warnings", []),  # likely metadata mistakes (etm.models.checks)
            "builtin": builtin,
            "created_at": iso(now()),
            **(extra or {}),
        }
        try:
            check_utf8(record, "the model")
        except BadInput:
            self.discard_blob(sha)  # the describer may have staged it: a refused upload keeps nothing
            raise
        self.store.put_blob(path, sha)
        self._put("models", record)
        self.store.put_blob(path, sha)  # again: another tenant's delete may have removed it meanwhile
        return record, True

    def discard_blob(self, sha: str) -> None:
        """Remove a staged upload's blob when no model record (of any tenant) uses it."""
        if not self._blob_in_use("models", sha, sha):
            self.store.delete(self.store.blob_key(sha))

    def ingest_dataset(
        self, archive: Path, filename: str, limits: ArchiveLimits, work_dir: Path, keep_in: Path | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Extract an uploaded archive safely, validate the dataset and register it; ``(record, created)``.

        ``keep_in``: a cache folder where the extracted tree is kept for local workers.

        Raises:
            UnsupportedMedia, DatasetError, UploadTooLarge: see ``safe_extract`` and ``describe_folder``.
        """
        archive_sha = sha256_file(archive)
        dest = Path(tempfile.mkdtemp(prefix="etm-ds-", dir=work_dir))
        try:
            extraction = safe_extract(archive, dest, limits)
            root = dataset_root(dest)
            desc = describe_folder(root)
            existing = self._by_sha("datasets", desc["sha256"])
            if existing is not None:
                return existing, False
            record = {
                "id": dataset_id_for(desc["sha256"]),
                "name": filename,
                "builtin": False,
                "created_at": iso(now()),
                **desc,
                "archive": {
                    "sha256": archive_sha,
                    "bytes": archive.stat().st_size,
                    "format": extraction.format,
                    "members": extraction.members,
                    "files": extraction.files,
                    "extracted_bytes": extraction.bytes,
                    "root": root.relative_to(dest).as_posix(),
                    **extraction.skips.as_dict(),
                },
            }
            self.store.put_blob(archive, archive_sha)
            self._put("datasets", record)
            self.store.put_blob(archive, archive_sha)  # again: another tenant's delete may have removed it
            if keep_in is not None:
                target = keep_in / "datasets" / archive_sha
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # Another filesystem or a concurrent copy: workers then extract it themselves.
                    with contextlib.suppress(OSError):
                        os.replace(dest, target)
            return record, True
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def register_builtin_dataset(self, ident: str, folder_name: str, root: Path, stamp: str) -> dict[str, Any]:
        """Register a built-in dataset folder (workers find it under their own benchmark folder).

        ``stamp`` identifies the generated content (e.g. the hash of ``benchmark.json``); an existing
        record with the same stamp is kept without re-validating thousands of images.
        """
        rec = self.get_dataset(ident)
        if rec is not None and rec.get("stamp") == stamp:
            return rec
        desc = describe_folder(root)
        record = {
            "id": ident,
            "name": folder_name,
            "builtin": True,
            "builtin_folder": folder_name,
            "stamp": stamp,
            "created_at": iso(now()),
            **desc,
            "archive": None,
        }
        self._put("datasets", record)
        return record

    # -- jobs ----------------------------------------------------------------------------------
    def check_spec(self, spec: EvaluationSpec) -> CheckedSpec:
        """Check an API job spec (ids, not paths) against the registry.

        Raises:
            UnknownReference: model or dataset ids that are not registered (all named).
            MethodUnavailable: the method is unavailable for a model (the capability table's reason).
            BadInput: a split that does not exist, mixed input sizes, bad measure or method parameters,
                an unknown target class, text that is not valid UTF-8.
        """
        from etm.measures import MEASURES, needs_salience
        from etm.salience.registry import check_method_params

        check_utf8(spec.canonical(), "the job")  # a job record no response can encode would break GET /v1/jobs

        ids = list(dict.fromkeys(m for c in spec.candidates for m in c.models))
        models = {i: self.get_model(i) for i in ids}
        missing_models = [i for i, r in models.items() if r is None]
        dataset = self.get_dataset(spec.dataset)
        ood = self.get_dataset(spec.ood_dataset) if spec.ood_dataset is not None else None
        missing_ds = [spec.dataset] if dataset is None else []
        if spec.ood_dataset is not None and ood is None:
            missing_ds.append(spec.ood_dataset)
        if missing_models or missing_ds:
            parts = []
            if missing_models:
                parts.append(f"unknown model id(s) {missing_models} (see GET /v1/models)")
            if missing_ds:
                parts.append(f"unknown dataset id(s) {missing_ds} (see GET /v1/datasets)")
            raise UnknownReference("; ".join(parts))
        assert dataset is not None
        recs: dict[str, dict[str, Any]] = {i: r for i, r in models.items() if r is not None}

        uses_method = needs_salience(spec.measures)  # an accuracy-only job runs no salience method
        for cand in spec.candidates:
            for mid in cand.models if uses_method else ():
                cap = recs[mid]["capabilities"].get(spec.method)
                if cap is None or not cap["available"]:
                    reason = cap["reason"] if cap else f"{spec.method} is not available"
                    raise MethodUnavailable(f"candidate {cand.name!r}, model {mid}: {reason}")
            sizes = sorted({tuple(recs[m]["metadata"]["input_size"]) for m in cand.models})
            if len(sizes) > 1:
                raise BadInput(
                    f"candidate {cand.name!r} mixes input sizes {sizes}; runs of one family must share the "
                    "input size so their maps can be compared"
                )
            if spec.target != "predicted":
                names = recs[cand.models[0]]["metadata"]["class_names"]
                t = spec.target
                if isinstance(t, str) and not t.lstrip("-").isdigit() and t not in names:
                    raise BadInput(f"target class {t!r} is not one of candidate {cand.name!r}'s classes {names}")
                if (isinstance(t, int) or t.lstrip("-").isdigit()) and not 0 <= int(t) < len(names):
                    raise BadInput(f"target class index {t} is out of range for {len(names)} classes")

        check_method_params(spec.method, spec.method_params)  # names, types and ranges, as declared per method
        for name in spec.measure_params:
            if name not in spec.measures:
                raise BadInput(f"measure_params names {name!r}, which is not among the measures {spec.measures}")
        for name in spec.measures:
            try:
                MEASURES[name]({"bootstrap_resamples": spec.bootstrap_resamples, **spec.measure_params.get(name, {})})
            except (TypeError, ValueError) as exc:
                raise BadInput(f"bad parameters for measure {name!r}: {exc}") from exc

        split = self._split(dataset, spec.split, "split")
        if ood is not None:
            self._split(ood, spec.ood_split, "ood_split")
        elif spec.ood_split is not None:
            raise BadInput("ood_split is given but ood_dataset is not")
        n_images = next(s["n_images"] for s in dataset["splits"] if s["split"] == split)
        if spec.max_images is not None:
            n_images = min(n_images, spec.max_images)
        return CheckedSpec(
            spec, recs, dataset, ood, n_images, self.cache_key(spec, recs, dataset, ood), tenant=self.tenant
        )

    @staticmethod
    def _split(record: dict[str, Any], split: str | None, field_name: str) -> str | None:
        names = [s["split"] for s in record["splits"]]
        if not record["has_splits"]:
            if split is not None:
                raise BadInput(f"dataset {record['id']} has no splits; leave {field_name} unset to use all images")
            return None
        if split is None:
            if record["default_split"] is None:
                raise BadInput(f"dataset {record['id']} has splits {names} and none is called 'test'; set {field_name}")
            return record["default_split"]
        if split in names:
            return split
        folded = [s for s in names if s.lower() == split.lower()]
        if len(folded) == 1:
            return folded[0]
        raise BadInput(f"unknown {field_name} {split!r} for dataset {record['id']}; available: {names}")

    @staticmethod
    def cache_key(
        spec: EvaluationSpec,
        models: dict[str, dict[str, Any]],
        dataset: dict[str, Any],
        ood: dict[str, Any] | None,
    ) -> str:
        """sha256 of what determines the report: model bytes and effective metadata, dataset content,
        the canonical config and the measures' version."""
        from etm.measures import MEASURES_VERSION

        payload = {
            "v": CACHE_KEY_VERSION,
            "models": {
                c.name: [[models[m]["sha256"], models[m]["metadata"]] for m in c.models] for c in spec.candidates
            },
            "dataset": dataset["sha256"],
            "ood_dataset": ood["sha256"] if ood is not None else None,
            "config": spec.canonical(),
            "measures_version": MEASURES_VERSION,
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    # -- materialisation (workers) -------------------------------------------------------------
    def model_path(self, ident: str, cache_dir: Path) -> Path:
        """A local file for model ``ident``, with its effective metadata as the JSON sidecar."""
        rec = self.get_model(ident)
        if rec is None:
            raise UnknownReference(f"model {ident} is no longer registered (deleted after the job was submitted?)")
        # By bytes *and* metadata: two tenants may register the same bytes with different metadata.
        meta_sha = hashlib.sha256(canonical_json(rec["metadata"]).encode()).hexdigest()[:12]
        folder = cache_dir / "models" / f"{rec['sha256']}-{meta_sha}"
        path = folder / f"model.{rec['format'] or 'onnx'}"
        if path.is_file() and (folder / f"{path.name}.json").is_file():
            return path
        tmp = cache_dir / "models" / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            self.store.fetch_blob(rec["sha256"], tmp / path.name)
            (tmp / f"{path.name}.json").write_text(json.dumps(rec["metadata"]))
            try:
                os.replace(tmp, folder)
            except OSError:
                if not path.is_file():  # pragma: no cover - a concurrent materialisation won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def dataset_path(self, ident: str, cache_dir: Path, builtin_root: Path) -> Path:
        """A local folder for dataset ``ident`` (extracted from its archive, or the built-in folder)."""
        rec = self.get_dataset(ident)
        if rec is None:
            raise UnknownReference(f"dataset {ident} is no longer registered (deleted after the job was submitted?)")
        if rec.get("builtin"):
            folder = builtin_root / rec["builtin_folder"]
            if not folder.is_dir():
                raise DatasetError(
                    f"built-in dataset {ident} is missing on this worker ({folder}); run "
                    f"`python -m benchdata.generate --out {builtin_root}` here"
                )
            return folder
        arch = rec["archive"]
        target = cache_dir / "datasets" / arch["sha256"]
        if not target.is_dir():
            work = cache_dir / "datasets" / f".tmp-{uuid.uuid4().hex}"
            work.mkdir(parents=True)
            try:
                blob = self.store.fetch_blob(arch["sha256"], work / "archive")
                safe_extract(blob, work / "tree", ArchiveLimits(10**9, 2**62))
                try:
                    os.replace(work / "tree", target)
                except OSError:
                    if not target.is_dir():  # pragma: no cover
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return target / arch["root"] if arch["root"] not in ("", ".") else target
