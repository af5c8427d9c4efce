"""The artifact store, safe archive extraction and the registry (no Redis, no processes)."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from etm.datasets.archives import ArchiveLimits, safe_extract
from etm.datasets.folders import dataset_root
from etm.errors import BadInput, DatasetError, MethodUnavailable, ModelRefused, UnsupportedMedia, UploadTooLarge
from etm.spec import EvaluationSpec
from jobs.admission import check_spec
from jobs.registry import Registry, UnknownReference
from jobs.storage import ArtifactStore, NotFound
from tests.servicekit import REPO, zip_folder


def _with(spec: EvaluationSpec, **changes: object) -> EvaluationSpec:
    return EvaluationSpec.model_validate(spec.model_dump() | changes)


def _zip(tmp: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path = tmp / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(tmp: Path, build) -> Path:  # noqa: ANN001
    path = tmp / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("url", ["local", "memory://etm-test-store"])
def test_store_roundtrip(tmp_path: Path, url: str) -> None:
    store = ArtifactStore(str(tmp_path / "s") if url == "local" else url)
    store.write_json("a/b.json", {"x": 1})
    assert store.read_json("a/b.json") == {"x": 1} and store.exists("a/b.json")
    assert store.list("a") == ["b.json"]
    with pytest.raises(NotFound):
        store.read_bytes("a/missing")
    src = tmp_path / "blob.bin"
    src.write_bytes(b"hello")
    sha = store.put_blob(src)
    out = store.fetch_blob(sha, tmp_path / "copy.bin")
    assert out.read_bytes() == b"hello"
    store.delete_prefix("a")
    assert not store.exists("a/b.json")
    with pytest.raises(ValueError):
        store.path("../escape")


def test_safe_extract_writes_regular_files(tmp_path: Path) -> None:
    arch = _zip(tmp_path, {"wrap/real/a.png": b"1", "wrap/synthetic/b.png": b"22", "__MACOSX/wrap/._a.png": b"m"})
    info = safe_extract(arch, tmp_path / "out", ArchiveLimits())
    assert info.format == "zip" and info.files == 2 and info.bytes == 3
    assert info.skipped == [{"path": "__MACOSX/wrap/._a.png", "reason": "macOS resource fork (__MACOSX)"}]
    assert dataset_root(tmp_path / "out") == tmp_path / "out" / "wrap"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"../evil.png": b"x"}, "leaves the archive"),
        ({"/etc/evil.png": b"x"}, "absolute path"),
        ({"C:\\evil.png": b"x"}, "absolute path"),
        ({"a/../../evil.png": b"x"}, "leaves the archive"),
    ],
)
def test_safe_extract_refuses_traversal(tmp_path: Path, entries: dict[str, bytes], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        safe_extract(_zip(tmp_path, entries), tmp_path / "out", ArchiveLimits())
    assert not (tmp_path / "evil.png").exists()


def test_safe_extract_refuses_links(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="symbolic link"):
        safe_extract(_zip(tmp_path, {"a.png": b"x"}, links={"b.png": "/etc/passwd"}), tmp_path / "o1", ArchiveLimits())
    sym = _tar(tmp_path, lambda tf: _add(tf, "c/link.png", kind=tarfile.SYMTYPE, link="/etc/passwd"))
    with pytest.raises(DatasetError, match="symbolic link"):
        safe_extract(sym, tmp_path / "o2", ArchiveLimits())
    hard = _tar(tmp_path, lambda tf: (_add(tf, "c/a.png"), _add(tf, "c/b.png", kind=tarfile.LNKTYPE, link="c/a.png")))
    with pytest.raises(DatasetError, match="hard link"):
        safe_extract(hard, tmp_path / "o3", ArchiveLimits())
    dev = _tar(tmp_path, lambda tf: _add(tf, "c/dev", kind=tarfile.CHRTYPE))
    with pytest.raises(DatasetError, match="not a regular file"):
        safe_extract(dev, tmp_path / "o4", ArchiveLimits())


def test_safe_extract_limits(tmp_path: Path) -> None:
    arch = _zip(tmp_path, {f"c/{i}.png": b"x" * 100 for i in range(5)})
    with pytest.raises(UploadTooLarge, match="more than 3 entries"):
        safe_extract(arch, tmp_path / "o1", ArchiveLimits(max_members=3))
    with pytest.raises(UploadTooLarge, match="more than 250 bytes"):
        safe_extract(arch, tmp_path / "o2", ArchiveLimits(max_bytes=250))
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(UnsupportedMedia):
        safe_extract(tmp_path / "plain.txt", tmp_path / "o3", ArchiveLimits())
    dup = _tar(tmp_path, lambda tf: (_add(tf, "c/a.png"), _add(tf, "c/a.png")))
    with pytest.raises(DatasetError, match="appears twice"):
        safe_extract(dup, tmp_path / "o4", ArchiveLimits())


def test_registry_ingests_and_checks_specs(tmp_path: Path, family_onnx: list[Path], dataset_dir: Path) -> None:
    reg = Registry(ArtifactStore(str(tmp_path / "store")))
    meta = json.loads(family_onnx[0].with_name(family_onnx[0].name + ".json").read_text())
    from etm.models.metadata import ModelMetadata

    rec, created = reg.ingest_model(family_onnx[0], "run0.onnx", ModelMetadata.model_validate(meta))
    assert created and rec["id"].startswith("m-") and rec["metadata"]["positive_class"] == "synthetic"
    assert reg.ingest_model(family_onnx[0], "again.onnx")[1] is False

    archive = tmp_path / "tiny.zip"
    archive.write_bytes(zip_folder(dataset_dir.parent))  # wrapped in a 'tiny/' folder
    ds, created = reg.ingest_dataset(archive, "tiny.zip", ArchiveLimits(), tmp_path)
    assert created and ds["archive"]["root"] == "tiny" and ds["n_images"] == 24
    assert ds["sha256"] == ds["splits"][0]["sha256"]

    spec = EvaluationSpec(candidates=[{"name": "a", "models": [rec["id"]]}], dataset=ds["id"], max_images=10)
    checked = check_spec(reg, spec)
    assert checked.n_images == 10 and len(checked.cache_key) == 64
    assert check_spec(reg, spec).cache_key == checked.cache_key
    other = _with(spec, seed=1)
    assert check_spec(reg, other).cache_key != checked.cache_key

    with pytest.raises(UnknownReference, match="m-missing"):
        check_spec(reg, _with(spec, candidates=[{"name": "a", "models": ["m-missing"]}]))
    with pytest.raises(MethodUnavailable, match="autograd"):
        check_spec(reg, _with(spec, method="smoothgrad"))
    with pytest.raises(BadInput, match="no splits"):
        check_spec(reg, _with(spec, split="test"))
    with pytest.raises(BadInput, match="unknown method_params"):
        check_spec(reg, _with(spec, method_params={"steps": 3}))

    # Materialisation for workers: the model with its effective metadata, the dataset extracted.
    cache = tmp_path / "cache"
    path = reg.model_path(rec["id"], cache)
    assert path.read_bytes() == family_onnx[0].read_bytes()
    assert json.loads(path.with_name(path.name + ".json").read_text()) == rec["metadata"]
    root = reg.dataset_path(ds["id"], cache, tmp_path / "bench")
    assert sorted(p.name for p in root.iterdir()) == ["masks", "real", "synthetic"]

    reg.delete_model(rec["id"])
    assert reg.get_model(rec["id"]) is None


def test_refused_model_is_not_registered(tmp_path: Path) -> None:
    reg = Registry(ArtifactStore(str(tmp_path / "store")))
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    with pytest.raises(ModelRefused, match="pickle"):
        reg.ingest_model(bad, "ckpt.pt")
    assert reg.list_models() == []


def test_stale_capability_table_is_recomputed(tmp_path: Path, family_onnx: list[Path], dataset_dir: Path) -> None:
    """A record whose table was computed by other code (another version, a method added since) gets the
    current table on read and at admission, and is rewritten: a new method is offered for old models."""
    from etm.models.capabilities import capabilities_version

    reg = Registry(ArtifactStore(str(tmp_path / "store")))
    rec, _ = reg.ingest_model(family_onnx[0], "run0.onnx")
    assert rec["capabilities_version"] == capabilities_version() and rec["capabilities"]["rise"]["available"]
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(zip_folder(dataset_dir.parent))
    ds, _ = reg.ingest_dataset(archive, "tiny.zip", ArchiveLimits(), tmp_path)

    def write_stale() -> None:  # as an older release stored it: no "rise" yet, no version stamp
        stale = {k: v for k, v in rec.items() if k != "capabilities_version"}
        stale["capabilities"] = {m: c for m, c in rec["capabilities"].items() if m != "rise"}
        reg.store.write_json(f"registry/models/{rec['id']}.json", stale)

    write_stale()
    assert "rise" not in reg.get_model(rec["id"], refresh=False)["capabilities"]
    fresh = reg.get_model(rec["id"])
    assert fresh == rec  # everything else as registered
    assert reg.get_model(rec["id"], refresh=False) == rec  # rewritten: the next read does not inspect again

    write_stale()
    spec = EvaluationSpec(candidates=[{"name": "a", "models": [rec["id"]]}], dataset=ds["id"], method="rise")
    assert check_spec(reg, spec).models[rec["id"]]["capabilities"]["rise"]["available"]
    assert [m["capabilities_version"] for m in reg.list_models(refresh=False)] == [capabilities_version()]


def test_capability_version_and_method_order_do_not_depend_on_import_order() -> None:
    """The API, the workers and the sandboxed model process import the method families in different orders;
    a version that followed the order made every read of a record re-inspect its model (one sandbox start per
    model and listing), and a method list that followed it reordered the OpenAPI enum."""
    code = ("import {first}\nfrom etm.models.capabilities import capabilities_version\n"
            "from etm.salience.registry import method_names\nprint(capabilities_version(), method_names())")
    versions = {
        subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True,
                       check=True, cwd=REPO).stdout.strip()
        for first in ("etm.salience.activation", "etm.salience.gradient", "etm.salience.attention", "api.app")
    }
    assert len(versions) == 1, versions
