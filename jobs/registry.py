"""The registry of models and datasets kept in the artifact store, as one tenant sees it.

``Registry`` ingests uploads (a model file is inspected in a sandbox, never loaded here; a dataset
archive is extracted safely and every split validated with ``load_dataset``), lists and deletes
records, and materialises models and datasets into a worker's local cache (``model_path``,
``dataset_path``).

A model record keeps the capability table the model's inspection computed, stamped with
``etm.models.capabilities.capabilities_version()``. A record read with another version (the code that
decides what runs on a model changed, or a method was added) is described afresh and rewritten, so a
table is never frozen at upload.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from etm.datasets.archives import ArchiveLimits, safe_extract
from etm.datasets.folders import dataset_root, describe_folder
from etm.errors import BadInput, DatasetError, ModelRefused
from etm.models.capabilities import capabilities_version
from etm.models.metadata import ModelMetadata
from etm.salience.registry import method_names
from etm.sandbox import limits_for
from etm.sandbox.calls import inspect_model
from etm.settings import get_settings
from etm.text import check_utf8, utf8_safe_json
from etm.timestamps import iso, now
from jobs.storage import ArtifactStore, NotFound, canonical_json, canonical_sha256, sha256_file

MAX_ID_CHARS = 200  # longest quoted model/dataset id looked up in the registry (file names stop at 255 bytes)


class Conflict(BadInput):
    """The request conflicts with what is registered (HTTP 409)."""

    title = "Conflict"
    status = 409


class UnknownReference(BadInput):
    """A job names models or datasets that are not registered (HTTP 422)."""

    title = "Unknown model or dataset"


def _blob_of(kind: str, record: dict[str, Any]) -> str | None:
    """The blob a record stores its bytes in (a model file, a dataset archive)."""
    if kind == "models":
        return record.get("sha256")
    return (record.get("archive") or {}).get("sha256")


TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


Describe = Callable[[Path, str, Any], dict[str, Any]]


def describe_locally(path: Path, sha: str, metadata: Any) -> dict[str, Any]:
    """A model's description (format, metadata, capabilities), inspected in this host's sandbox."""
    settings = get_settings()
    meta = metadata.model_dump(mode="json") if metadata is not None else None
    return inspect_model(path, meta, settings, limits_for(settings, "inspect"))


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


class Registry:
    """Model and dataset records in the store, and the conversions workers need.

    ``tenant`` scopes the view: a tenant's uploads live under ``registry/tenants/<tenant>/`` (the same
    bytes uploaded by two tenants are two records, so neither learns what the other has; the blobs
    are shared by content), built-ins (``builtin:*``) under ``registry/`` are seen by every tenant.
    ``tenant=None`` is the unscoped view of ``registry/`` itself (built-in registration, the CLI).

    ``describe`` inspects a model file (``describe_locally``, this host's sandbox, when None; the API
    passes one that asks a worker): for uploads, and for records whose capability table is stale.
    """

    def __init__(self, store: ArtifactStore, tenant: str | None = None, describe: Describe | None = None) -> None:
        self.store = store
        self.tenant = check_tenant(tenant) if tenant is not None else None
        self.describe = describe

    def for_tenant(self, tenant: str | None) -> Registry:
        return self if tenant == self.tenant else Registry(self.store, tenant, self.describe)

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
            rec = utf8_safe_json(rec)
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

    def get_model(self, ident: str, refresh: bool = True) -> dict[str, Any] | None:
        """The model's record, its capability table made current (``current_capabilities``) unless
        ``refresh`` is False (the record as stored)."""
        rec = self._get("models", ident)
        return self.current_capabilities(rec) if rec is not None and refresh else rec

    def get_dataset(self, ident: str) -> dict[str, Any] | None:
        return self._get("datasets", ident)

    def list_models(self, refresh: bool = True) -> list[dict[str, Any]]:
        """Every model record this view sees; ``refresh``: as ``get_model``."""
        return [self.current_capabilities(rec) if refresh else rec for rec in self._list("models")]

    # -- capability tables -----------------------------------------------------------------------
    def current_capabilities(self, record: dict[str, Any], description: dict[str, Any] | None = None) -> dict[str, Any]:
        """``record`` with a capability table computed by this code's version; a stale one is recomputed
        (from ``description``, or by describing the model afresh) and the record rewritten.

        A model the current loader refuses keeps its record, every method unavailable for the reason.
        """
        if description is None and record.get("capabilities_version") == capabilities_version():
            return record
        if description is None:
            try:
                description = self._describe_stored(record)
            except ModelRefused as exc:
                reason = f"the model no longer loads: {exc}"
                caps = {m: {"method": m, "available": False, "reason": reason} for m in method_names()}
                description = {"capabilities": caps, "capabilities_version": capabilities_version()}
        fresh = {
            **record,
            "capabilities": description["capabilities"],
            "capabilities_version": description.get("capabilities_version"),
        }
        if fresh != record:
            self._put("models", fresh)
        return fresh

    def _describe_stored(self, record: dict[str, Any]) -> dict[str, Any]:
        """A registered model described afresh, with its effective metadata (so nothing else changes)."""
        describe = self.describe or describe_locally
        with tempfile.TemporaryDirectory(prefix="etm-redescribe-") as tmp:
            path = self.store.fetch_blob(record["sha256"], Path(tmp) / f"model.{record['format'] or 'onnx'}")
            return describe(path, record["sha256"], ModelMetadata.model_validate(record["metadata"]))

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._list("datasets")

    def delete_model(self, ident: str) -> dict[str, Any]:
        rec = self.get_model(ident, refresh=False)
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
            return self.current_capabilities(existing), False
        if metadata is not None:  # before a worker is asked: text no response could show is refused at once
            check_utf8(metadata.model_dump(mode="json"), "the model's metadata")
        desc = (describe or self.describe or describe_locally)(path, sha, metadata)
        record = {
            "id": ident or model_id_for(sha),
            "sha256": sha,
            "format": desc["format"],
            "filename": filename,
            "bytes": path.stat().st_size,
            "metadata": desc["metadata"],
            "num_outputs": desc["num_outputs"],
            "capabilities": desc["capabilities"],
            "capabilities_version": desc.get("capabilities_version"),
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

    # -- materialisation (workers) -------------------------------------------------------------
    def model_path(self, ident: str, cache_dir: Path) -> Path:
        """A local file for model ``ident``, with its effective metadata as the JSON sidecar."""
        rec = self.get_model(ident, refresh=False)  # bytes and metadata are what a worker needs
        if rec is None:
            raise UnknownReference(f"model {ident} is no longer registered (deleted after the job was submitted?)")
        # By bytes *and* metadata: two tenants may register the same bytes with different metadata.
        meta_sha = canonical_sha256(rec["metadata"])[:12]
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
