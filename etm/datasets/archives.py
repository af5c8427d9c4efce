"""Safe extraction of uploaded dataset archives (zip, tar, tar.gz/bz2/xz, recognised by content).

``safe_extract`` writes regular files and folders only, inside the destination: absolute paths, ``..``,
links and device files refuse the whole archive; the member count, the bytes actually written and the
compression ratio are bounded (a zip's central directory before ``zipfile`` reads it, tar headers one
at a time), so a zip bomb cannot lie its way past the limits. Members that cannot be dataset files
(hidden files, ``__MACOSX``, obvious non-images, names that are not UTF-8 or too long) are skipped and
counted (``SkipSummary``), never raised.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etm.datasets.images import is_obviously_not_image
from etm.datasets.loading import MANIFEST
from etm.errors import DatasetError, UnsupportedMedia, UploadTooLarge
from etm.text import is_utf8, utf8_safe

CHUNK = 1 << 20

# The compression-ratio limit applies once a member (or the archive) has inflated past this many bytes:
# small files of repetitive bytes legitimately compress far beyond any sane zip-bomb ratio.
RATIO_FLOOR = 1 << 20


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
    if parts and not is_dir and parts[-1] != MANIFEST and is_obviously_not_image(Path(parts[-1])):
        return f"not an image ({Path(parts[-1]).suffix.lower()}); only {MANIFEST} and images are extracted"
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
