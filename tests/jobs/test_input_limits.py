"""Input-handling holes of the security review, each answered with problem+json instead of a 500 or of
memory: zip central-directory bombs and tar header bombs (bounded API memory), manifests naming far more
files than the upload holds (bounded records and listings), member names that are not UTF-8 or too long,
oversized list cursors, and salience ``method_params`` of the wrong type or out of range (checked at job
admission). Unit tests of the functions first, then the same inputs through the real service."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from etm.datasets.archives import (
    MAX_LISTED_SKIPPED,
    MAX_TAR_HEADER_BYTES,
    ArchiveLimits,
    check_zip_index,
    safe_extract,
    skip_kind,
)
from etm.errors import BadInput, DatasetError, UploadTooLarge
from etm.salience.registry import check_method_params, method_defaults, method_names, method_params
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)
PROBLEM = "application/problem+json"


# -- building hostile archives cheaply -----------------------------------------------------------


def central_directory_zip(n: int, declared: int | None = None, name: str = "{:07d}.png", zip64: bool = True) -> bytes:
    """A zip that is only a central directory of ``n`` empty entries (47-54 bytes each: what zipfile parses
    on open, without any member data), its end record declaring ``declared`` entries (default ``n``)."""
    cd = bytearray()
    for i in range(n):
        raw = name.format(i).encode()
        fields = (20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(raw), 0, 0, 0, 0, 0, 0)
        cd += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", *fields) + raw
    total = n if declared is None else declared
    out = bytes(cd)
    if zip64:
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, len(cd), 0)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, len(cd), 1)
        return out + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return out + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(total, 0xFFFF), min(total, 0xFFFF), len(cd), 0, 0)


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def long_name_tgz(name_bytes: int) -> bytes:
    """A .tar.gz whose first header is a GNU long-name record claiming ``name_bytes`` bytes of name (zeros
    compress ~1000:1: 64 MiB of "name" is ~65 KB of upload)."""
    head = tarfile.TarInfo("././@LongLink")
    head.type, head.size = tarfile.GNUTYPE_LONGNAME, name_bytes
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(head.tobuf(format=tarfile.GNU_FORMAT))
        block = b"a" * (1 << 20)
        for start in range(0, name_bytes, len(block)):
            gz.write(block[: min(len(block), name_bytes - start)])
        gz.write(b"\0" * ((-name_bytes) % 512))
        gz.write(tarfile.TarInfo("real/x.png").tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    return out.getvalue()


def flag_utf8(data: bytes, needle: bytes) -> bytes:
    """Mark the zip entries whose name contains ``needle`` as having UTF-8 names (general-purpose bit 11)."""
    raw = bytearray(data)
    for sig, flags_at, len_at, name_at in ((b"PK\x01\x02", 8, 28, 46), (b"PK\x03\x04", 6, 26, 30)):
        pos = raw.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", raw, pos + len_at)[0]
            if needle in raw[pos + name_at : pos + name_at + n]:
                struct.pack_into("<H", raw, pos + flags_at, 0x800)
            pos = raw.find(sig, pos + 4)
    return bytes(raw)


def png(seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def images(n: int = 3, seed: int = 0) -> dict[str, bytes]:
    """``n`` real and ``n`` fake 8x8 PNGs; another ``seed``, other bytes (another dataset)."""
    real = {f"real/r{i}.png": png(seed + i) for i in range(n)}
    return real | {f"fake/f{i}.png": png(seed + 100 + i) for i in range(n)}


# -- units: the zip central directory --------------------------------------------------------------


def test_zip_index_is_read_as_zipfile_reads_it(tmp_path: Path) -> None:
    plain = zip_of({f"a/{i}.png": b"x" * i for i in range(5)})
    buf = io.BytesIO(plain)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.comment = b"a comment that mentions PK\x05 but is no record"
    cases = {
        "plain": plain,
        "comment": buf.getvalue(),
        "prepended": b"#!/bin/sh\nexit 0\n" * 50 + plain,  # a self-extractor stub: offsets shift
        "zip64": central_directory_zip(70_000),
        "no-zip64": central_directory_zip(3000, zip64=False),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.zip"
        path.write_bytes(data)
        with zipfile.ZipFile(path) as zf:
            assert check_zip_index(path, ArchiveLimits()) == len(zf.infolist()), name


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (central_directory_zip(10, declared=2_000_000), ArchiveLimits(),
         "the archive has more than 200000 entries (ETM_MAX_ARCHIVE_MEMBERS): its zip directory declares 2000000; "
         "split the dataset"),
        (central_directory_zip(5000, declared=10), ArchiveLimits(max_members=1000),  # the end record lies
         "the archive has more than 1000 entries (ETM_MAX_ARCHIVE_MEMBERS); split the dataset"),
        (central_directory_zip(50, declared=1, name="{:01000d}.png"), ArchiveLimits(max_members=40),
         "the archive's zip central directory is 52500 bytes, more than 40960 (1024 bytes for each of the "
         "ETM_MAX_ARCHIVE_MEMBERS=40 entries allowed); split the dataset"),
    ],
    ids=["declared-count", "walked-count", "directory-bytes"],
)
def test_zip_index_over_the_limits_is_refused_before_zipfile_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, limits: ArchiveLimits, message: str
) -> None:
    path = tmp_path / "bomb.zip"
    path.write_bytes(data)

    def never(*a: Any, **kw: Any) -> None:
        raise AssertionError("zipfile.ZipFile opened an archive whose index is over the limits")

    monkeypatch.setattr(zipfile, "ZipFile", never)
    with pytest.raises(UploadTooLarge) as err:
        safe_extract(path, tmp_path / "out", limits)
    assert str(err.value) == message


def test_zip_entries_zipfile_would_fail_on_refuse_the_archive_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad-utf8.zip"
    bad.write_bytes(flag_utf8(zip_of({"real/a.png": png(), "real/cafXX.png": png(1)}).replace(b"cafXX", b"caf\xff\xfe"),
                              b"caf\xff"))
    with pytest.raises(DatasetError, match=r"archive member b'real/caf\\xff\\xfe.png' is marked as having a UTF-8 "
                                           r"name, but the name is not valid UTF-8"):
        safe_extract(bad, tmp_path / "o1", ArchiveLimits())
    newer = bytearray(zip_of({"real/a.png": png()}))
    cd = newer.find(b"PK\x01\x02")
    struct.pack_into("<H", newer, cd + 6, 99)  # "needs version 9.9": zipfile raises NotImplementedError on open
    (tmp_path / "v99.zip").write_bytes(bytes(newer))
    with pytest.raises(DatasetError, match=r"archive member 'real/a.png' needs zip version 9.9"):
        safe_extract(tmp_path / "v99.zip", tmp_path / "o2", ArchiveLimits())


# -- units: tar ------------------------------------------------------------------------------------


def test_tar_long_name_header_bomb_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "names.tar.gz"
    path.write_bytes(long_name_tgz(64 << 20))
    assert path.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(UploadTooLarge) as err:
        safe_extract(path, tmp_path / "out", ArchiveLimits())
    assert time.perf_counter() - t0 < 2  # refused from the header, not after inflating 64 MiB
    assert str(err.value).startswith(
        f"the archive has a tar long-name or pax header of {64 << 20} bytes, more than {MAX_TAR_HEADER_BYTES}"
    )


def test_tar_members_are_read_one_at_a_time(tmp_path: Path) -> None:
    """Guard (tarfile already iterates lazily): the member limit applies before the rest is read, so a tar
    cut off (or padded with junk) after the limit is refused for its size, not for the damage."""
    good = tar_of({f"real/{i:04d}.png": b"" for i in range(150)})
    path = tmp_path / "many.tar"
    path.write_bytes(good[: 512 * 130] + b"\xff" * 4096)
    with pytest.raises(UploadTooLarge, match="more than 100 entries"):
        safe_extract(path, tmp_path / "out", ArchiveLimits(max_members=100))


# -- units: names and skipped files ----------------------------------------------------------------


def test_bad_and_long_names_are_skipped_with_a_reason(tmp_path: Path) -> None:
    deep = "real/" + "/".join(["d" * 200] * 21) + "/x.png"  # 4,2xx characters
    path = tmp_path / "names.tar"
    path.write_bytes(tar_of({**images(), "real/caf\udce9.png": png(7), "real/" + "a" * 300 + ".png": png(8),
                             deep: png(9)}))
    info = safe_extract(path, tmp_path / "out", ArchiveLimits())
    assert info.files == 6
    assert {s["reason"] for s in info.skipped} == {
        "name is not valid UTF-8 (pack the archive where file names are UTF-8, or rename the file)",
        "name too long (304 bytes in one file or folder name; at most 255)",
        f"path too long ({len(deep)} bytes; at most 1024)",
    }
    assert "real/caf\ufffd.png" in {s["path"] for s in info.skipped}  # stored as valid UTF-8
    json.dumps(info.skips.as_dict(), ensure_ascii=False).encode("utf-8")
    assert all(len(s["path"]) <= 300 for s in info.skipped)


def test_a_member_that_is_both_file_and_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.zip"
    path.write_bytes(zip_of({"real/a.png": png(), "real/a.png/b.png": png(1)}))
    with pytest.raises(DatasetError, match=r"archive member 'real/a.png/b.png' is inside a folder that is also a "
                                           r"file of the archive"):
        safe_extract(path, tmp_path / "out", ArchiveLimits())


def test_skipped_files_are_counted_all_and_listed_first(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    path.write_bytes(zip_of({**images(), **{f"notes/{i:05d}.txt": b"" for i in range(1500)}}))
    info = safe_extract(path, tmp_path / "out", ArchiveLimits())
    assert info.skips.n_skipped == 1500 and len(info.skipped) == MAX_LISTED_SKIPPED
    assert info.skips.skipped_by_reason == {"not an image": 1500}
    assert skip_kind("manifest.csv line 7: file not found") == "file not found"
    assert skip_kind("manifest.csv line 9: duplicate entry (first on line 3)") == "duplicate entry"


# -- units: method parameters -----------------------------------------------------------------------


def test_every_method_declares_its_params_and_its_defaults_pass() -> None:
    for name in method_names():
        assert check_method_params(name, {}) == method_defaults(name)
        assert check_method_params(name, method_defaults(name)) == method_defaults(name)
        for param, spec in method_params(name).items():
            bad_values: list[Any] = [[1], True, {"v": 1}] + ([] if spec.nullable else [None])
            if spec.kind is str:
                bad_values += [3, "other"]
            else:
                bad_values += ["1", float("nan"), float("inf"), spec.lo - 1, spec.hi + 1, 10**30]
                bad_values += [spec.lo] if spec.lo_open else []
                bad_values += [spec.default + 0.5] if spec.kind is int else []
            for bad in bad_values:
                with pytest.raises(BadInput, match=re.escape(f"bad method_params for {name}: {param} must be ")):
                    check_method_params(name, {param: bad})


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("rise", {"batch": 0}, "bad method_params for rise: batch must be an integer >= 1 and <= 4096, got 0"),
        ("rise", {"p": 0}, "bad method_params for rise: p must be a number > 0 and <= 1, got 0"),
        ("rise", {"p": 1.5, "grid": 2.0}, "bad method_params for rise: grid must be an integer >= 1 and <= 128, "
         "got 2.0; p must be a number > 0 and <= 1, got 1.5"),
        ("integrated_gradients", {"steps": 1}, "bad method_params for integrated_gradients: steps must be an "
         "integer >= 2 and <= 1024, got 1"),
        ("integrated_gradients", {"baseline": "white"}, "bad method_params for integrated_gradients: baseline "
         "must be one of 'black', 'grey', got 'white'"),
        ("smoothgrad", {"noise": -0.1}, "bad method_params for smoothgrad: noise must be a number >= 0 and <= 1, "
         "got -0.1"),
        ("gradcam", {"steps": 3}, "unknown method_params ['steps'] for gradcam; known: ['chunk']"),
    ],
)
def test_bad_method_params_name_the_param_its_range_and_the_value(method: str, params: dict, message: str) -> None:
    with pytest.raises(BadInput) as err:
        check_method_params(method, params)
    assert str(err.value) == message


# -- through the service -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ServiceKit(tmp_path_factory.mktemp("inputs"), n_workers=1) as k:
        yield k


def _problem(r: Any, status: int, starts: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and "Traceback" not in r.text
    if starts is not None:
        assert body["detail"].startswith(starts), body["detail"]
    return body


def _upload(kit: ServiceKit, name: str, data: bytes) -> Any:
    return kit.client.post("/v1/datasets", files={"file": (name, data, "application/octet-stream")})


def _stored(kit: ServiceKit) -> tuple[list[str], list[str]]:
    store = kit.workdir / "store"
    records = sorted(p.name for p in store.glob("registry/**/datasets/*.json"))
    blobs = sorted(p.name for p in store.glob("blobs/sha256/*/*"))
    return records, blobs


def _rss_mib(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}


def _peak_growth(kit: ServiceKit, send: Any) -> tuple[Any, int]:
    """``send()``'s response and how far the API's peak RSS rose above its RSS before (MiB)."""
    pid = kit.procs["api"].pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_mib(pid)["VmRSS"]
    r = send()
    return r, _rss_mib(pid)["VmHWM"] - before


@pytest.fixture(scope="module")
def ids(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path) -> dict[str, str]:
    model = family_onnx[0]
    r = kit.upload_model(model, metadata=model.with_name(model.name + ".json").read_text())
    assert r.status_code == 201, r.text
    d = kit.upload_dataset(dataset_dir, "tiny.zip")
    assert d.status_code == 201, d.text
    return {"model": r.json()["id"], "dataset": d.json()["id"]}


def test_zip_central_directory_bomb_is_refused_in_bounded_memory(kit: ServiceKit) -> None:
    """300,000 entries (20 MB of central directory): zipfile's open alone cost the API ~190 MiB before. The
    entries are macOS metadata, which extraction skips unread, so that only the index costs memory."""
    before = _stored(kit)
    data = central_directory_zip(300_000, name="__MACOSX/{:07d}.png")
    r, grew = _peak_growth(kit, lambda: _upload(kit, "bomb.zip", data))
    body = _problem(r, 413)
    assert grew < 40, f"the API's peak RSS grew by {grew} MiB"
    assert body["detail"] == (
        "the archive has more than 200000 entries (ETM_MAX_ARCHIVE_MEMBERS): its zip directory declares 300000; "
        "split the dataset"
    )
    # The end record lies: the walk counts the entries, in constant memory.
    lying = central_directory_zip(300_000, declared=3, name="__MACOSX/{:07d}.png")
    r, grew = _peak_growth(kit, lambda: _upload(kit, "lying.zip", lying))
    _problem(r, 413, "the archive has more than 200000 entries (ETM_MAX_ARCHIVE_MEMBERS)")
    assert grew < 40, f"the API's peak RSS grew by {grew} MiB"
    assert _stored(kit) == before


def test_tar_header_bomb_is_refused_in_bounded_memory(kit: ServiceKit) -> None:
    data = long_name_tgz(256 << 20)  # ~260 KB that claim a 256 MiB member name
    r, grew = _peak_growth(kit, lambda: _upload(kit, "names.tar.gz", data))
    _problem(r, 413, f"the archive has a tar long-name or pax header of {256 << 20} bytes")
    assert grew < 40, f"the API's peak RSS grew by {grew} MiB"


def test_manifest_naming_far_more_files_than_uploaded_is_refused(kit: ServiceKit) -> None:
    before = _stored(kit)
    rows = [f"test,real,real/r{i}.png" for i in range(3)] + [f"test,real,gone/{i:06d}.png" for i in range(300_000)]
    data = zip_of({**images(), "manifest.csv": "split,label,path\n" + "\n".join(rows) + "\n"})
    t0 = time.perf_counter()
    body = _problem(_upload(kit, "manifest.zip", data), 422, "manifest.csv has more than 1012 rows, but the dataset "
                    "folder holds only 6 file(s) besides it; each row names one image file")
    assert time.perf_counter() - t0 < 15 and "Upload the images it lists" in body["detail"]
    assert _stored(kit) == before  # bad input loses nothing and keeps nothing


def test_manifest_with_too_many_splits_is_refused(kit: ServiceKit) -> None:
    """Every split is validated in full: a manifest naming thousands of them multiplied the work."""
    rows = [f"s{i:02d},real,real/r{i % 3}.png" for i in range(40)]
    data = zip_of({**images(seed=2000), "manifest.csv": "split,label,path\n" + "\n".join(rows) + "\n"})
    _problem(_upload(kit, "splits.zip", data), 422, "manifest.csv names more than 16 splits (e.g. 's00', 's01', 's02')")


def test_skipped_files_are_summarised_and_the_list_stays_small(kit: ServiceKit) -> None:
    rows = [f"test,{c},{c}/{p}{i}.png" for c, p in (("real", "r"), ("fake", "f")) for i in range(3)]
    rows += [f"test,real,gone/{i:06d}.png" for i in range(900)]
    notes = {f"notes/{i:05d}.txt": b"" for i in range(1500)}
    data = zip_of({**images(), **notes, "manifest.csv": "split,label,path\n" + "\n".join(rows) + "\n"})
    r = _upload(kit, "skips.zip", data)
    assert r.status_code == 201, r.text[:2000]
    rec = r.json()
    assert rec["n_images"] == 6
    assert rec["n_skipped"] == 900 and len(rec["skipped"]) == MAX_LISTED_SKIPPED
    assert rec["skipped_by_reason"] == {"file not found": 900}
    assert rec["skipped"][0] == {"path": "gone/000000.png", "reason": "manifest.csv line 8: file not found"}
    split = rec["splits"][0]
    assert split["n_skipped"] == 900 and len(split["skipped"]) == MAX_LISTED_SKIPPED
    arch = rec["archive"]
    assert arch["n_skipped"] == 1500 and len(arch["skipped"]) == MAX_LISTED_SKIPPED
    assert arch["skipped_by_reason"] == {"not an image": 1500}
    listing = kit.client.get("/v1/datasets")
    assert listing.status_code == 200 and len(listing.content) < 150_000, len(listing.content)
    stored = next((kit.workdir / "store").glob(f"registry/**/datasets/{rec['id']}.json"))
    assert stored.stat().st_size < 100_000


def test_member_names_that_are_not_utf8_never_reach_a_record(kit: ServiceKit) -> None:
    r = _upload(kit, "latin1.tar", tar_of({**images(), "real/caf\udce9.png": png(7), "caf\udce9.txt": b"x"}))
    assert r.status_code == 201, r.text[:2000]
    rec = r.json()
    assert {"path": "real/caf\ufffd.png", "reason": "name is not valid UTF-8 (pack the archive where file names are "
            "UTF-8, or rename the file)"} in rec["archive"]["skipped"]
    assert rec["n_images"] == 6
    assert kit.client.get("/v1/datasets").status_code == 200

    before = _stored(kit)
    bad = flag_utf8(zip_of({**images(), "real/cafXX.png": png(8)}).replace(b"cafXX", b"caf\xff\xfe"), b"caf\xff")
    _problem(_upload(kit, "flagged.zip", bad), 422, "archive member b'real/caf\\xff\\xfe.png' is marked as having a "
             "UTF-8 name, but the name is not valid UTF-8")
    assert _stored(kit) == before


def test_a_record_stored_with_a_lone_surrogate_no_longer_breaks_the_listing(kit: ServiceKit) -> None:
    """Records stored before names were checked: the listing reads their text as U+FFFD."""
    r = _upload(kit, "old.zip", zip_of({**images(2), "real/old.png": png(42)}))
    assert r.status_code == 201, r.text[:2000]
    rec = r.json()
    path = next((kit.workdir / "store").glob(f"registry/**/datasets/{rec['id']}.json"))
    rec["archive"]["skipped"] = [{"path": "caf\udce9.txt", "reason": "not an image (.txt)"}]
    path.write_text(json.dumps(rec))  # as the old code stored it: "\udce9" escaped in the JSON
    listing = kit.client.get("/v1/datasets")
    assert listing.status_code == 200, listing.text[:500]
    got = next(d for d in listing.json()["items"] if d["id"] == rec["id"])
    assert got["archive"]["skipped"] == [{"path": "caf\ufffd.txt", "reason": "not an image (.txt)"}]
    assert kit.client.get(f"/v1/datasets/{rec['id']}").status_code == 200


def test_overlong_member_names_are_skipped_not_a_500(kit: ServiceKit) -> None:
    deep = "real/" + "/".join(["d" * 200] * 21) + "/x.png"
    r = _upload(kit, "long.zip", zip_of({**images(seed=1000), "real/" + "a" * 300 + ".png": png(9), deep: png(10)}))
    assert r.status_code == 201, r.text[:2000]
    reasons = {s["reason"] for s in r.json()["archive"]["skipped"]}
    assert reasons == {"name too long (304 bytes in one file or folder name; at most 255)",
                       f"path too long ({len(deep)} bytes; at most 1024)"}
    before = _stored(kit)
    both = zip_of({**images(), "real/r0.png/x.png": png(11)})
    _problem(_upload(kit, "both.zip", both), 422, "archive member 'real/r0.png/x.png' is inside a folder that is also")
    assert _stored(kit) == before


def test_oversized_cursor_is_a_problem(kit: ServiceKit) -> None:
    body = _problem(kit.client.get("/v1/jobs", params={"cursor": "9" * 5000}), 422)
    assert body["errors"][0]["loc"] == ["query", "cursor"] and "cursor" in body["detail"]
    assert kit.client.get("/v1/jobs", params={"cursor": "9" * 19}).status_code == 200


def test_method_params_are_checked_at_admission(kit: ServiceKit, ids: dict[str, str]) -> None:
    base = {"candidates": [{"name": "a", "models": [ids["model"]]}], "dataset": ids["dataset"],
            "measures": ["entropy"], "bootstrap_resamples": 100, "max_images": 2, "overlays": 0, "method": "rise"}
    jobs_before = kit.client.get("/v1/jobs").json()["items"]
    for params, detail in [
        ({"batch": 0}, "bad method_params for rise: batch must be an integer >= 1 and <= 4096, got 0"),
        ({"p": 0}, "bad method_params for rise: p must be a number > 0 and <= 1, got 0"),
        ({"p": "x"}, "bad method_params for rise: p must be a number > 0 and <= 1, got 'x'"),
        ({"grid": 0}, "bad method_params for rise: grid must be an integer >= 1 and <= 128, got 0"),
        ({"n_masks": True}, "bad method_params for rise: n_masks must be an integer >= 1 and <= 10000, got True"),
        ({"n_masks": 10**9}, "bad method_params for rise: n_masks must be an integer >= 1 and <= 10000, got 10000"
         "00000"),
        ({"masks": 5}, "unknown method_params ['masks'] for rise; known: ['batch', 'grid', 'n_masks', 'p', 'seed']"),
    ]:
        body = _problem(kit.submit({**base, "method_params": params}), 422)
        assert body["detail"] == detail
    body = _problem(kit.submit({**base, "method": "scorecam", "method_params": {"batch": 0}}), 422)
    assert body["detail"] == "bad method_params for scorecam: batch must be an integer >= 1 and <= 4096, got 0"
    assert kit.client.get("/v1/jobs").json()["items"] == jobs_before  # nothing was queued

    ok = kit.submit({**base, "method_params": {"n_masks": 40, "p": 0.5, "batch": 16}})
    assert ok.status_code == 202, ok.text
    job = kit.wait(ok.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job


def test_text_that_is_not_utf8_is_refused_before_anything_is_stored(
    kit: ServiceKit, ids: dict[str, str], family_onnx: list[Path]
) -> None:
    """A JSON ``\\udcxx`` escape is a lone surrogate once parsed: a job or model record holding one was stored,
    and then no response could encode it (the job's POST answered 500 after queueing it)."""
    jobs_before = kit.client.get("/v1/jobs").json()["items"]
    base = {"candidates": [{"name": "a", "models": [ids["model"]]}], "dataset": ids["dataset"],
            "measures": ["entropy"], "bootstrap_resamples": 100, "max_images": 2, "overlays": 0}
    for extra, where in (
        ({"layer": "x\udce9"}, "layer"),
        ({"method_params": {"chunk": "\udce9"}}, "method_params.chunk"),
    ):
        r = kit.client.post("/v1/jobs", content=json.dumps({**base, **extra}),
                            headers={"content-type": "application/json"})
        _problem(r, 422, f"the job has text that is not valid UTF-8 at {where} (a lone surrogate such as \\udcff)")
    assert kit.client.get("/v1/jobs").json()["items"] == jobs_before

    model = family_onnx[1]
    meta = json.loads(model.with_name(model.name + ".json").read_text())
    meta["class_names"] = ["real\udce9", "synthetic"]
    blobs = _stored(kit)[1]
    _problem(kit.upload_model(model, metadata=json.dumps(meta)), 422,
             "the model's metadata has text that is not valid UTF-8 at class_names[0]")
    assert _stored(kit)[1] == blobs and kit.client.get("/v1/models").status_code == 200
