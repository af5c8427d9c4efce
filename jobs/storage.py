"""The artifact store: content-addressed bytes on any fsspec filesystem, the system of record for
everything that must outlive Redis.

``ArtifactStore`` is a thin layer over a local folder by default, ``s3://...`` or ``gs://...`` when API
and workers run on different machines. Its keys:

```
blobs/sha256/<ab>/<sha256>          model files and dataset archives, by content
registry/models/<id>.json           model records (effective metadata, capability table; jobs.registry)
registry/models-by-sha/<sha256>     -> model id (the same bytes are one model)
registry/datasets/<id>.json         dataset records (counts per split and class, skipped files)
registry/datasets-by-sha/<sha256>   -> dataset id (the same content is one dataset)
registry/tenants/<tenant>/...       a tenant's own uploads (models/, models-by-sha/, datasets/, ...)
auth/keys/<key id>.json             API keys (argon2 hashes; api.security.keys)
results/<cache key>/report.json     reports, per-image CSVs and artifacts, by result-cache key
jobs/<job id>.json                  final job records (GET falls back to them when Redis forgot)
partials/<job id>/<i>-of-<n>.npz    shard results until the job's finish step merges them
```

Content addressing lives here too: ``sha256_file`` for files, ``canonical_sha256`` for JSON data (cache
keys, idempotency keys, anything hashed by its meaning rather than its spelling).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from etm.errors import DatasetError

CHUNK = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class NotFound(KeyError):
    """A key, model or dataset that does not exist."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """One spelling of JSON data: sorted keys, no spaces, ASCII (so equal data hash equally)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_sha256(obj: Any) -> str:
    """The SHA-256 (hex) of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


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
