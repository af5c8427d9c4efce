"""Where a job's results live in the artifact store; every key of them is spelled here and nowhere else.

```
results/<cache key>/report.json          the report; written last, so its presence marks a complete result
results/<cache key>/per_image.csv        one row per candidate, run and image
results/<cache key>/artifacts.json       the artifacts' manifest: name, bytes, media type
results/<cache key>/artifacts/<name>     overlay PNGs, overlays.json, curves.json
partials/<job id>/<i>-of-<n>.npz         shard results until the job's finish step merges them
```

The folder of a cache key *is* the result cache: same key, same numbers (``jobs.admission``'s cache key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.storage import ArtifactStore, NotFound

RESULTS = "results"
PARTIALS = "partials"


def media_type(name: str) -> str:
    if name.endswith(".png"):
        return "image/png"
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".csv"):
        return "text/csv"
    return "application/octet-stream"


class ResultStore:
    """Reports, per-image CSVs, artifacts and shard partials in one artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    # -- keys ----------------------------------------------------------------------------------
    @staticmethod
    def _key(cache_key: str, name: str) -> str:
        return f"{RESULTS}/{cache_key}/{name}"

    @staticmethod
    def partial_key(job_id: str, index: int, count: int) -> str:
        return f"{PARTIALS}/{job_id}/{index}-of-{count}.npz"

    # -- complete results ----------------------------------------------------------------------
    def complete(self, cache_key: str) -> bool:
        """Whether the result of ``cache_key`` is stored whole (its report is written last)."""
        return self.store.exists(self._key(cache_key, "report.json"))

    def publish(self, cache_key: str, report: bytes, per_image_csv: bytes, artifacts: dict[str, bytes]) -> None:
        """Store a result: the CSV, the artifacts and their manifest, then the report, last."""
        self.store.write_bytes(self._key(cache_key, "per_image.csv"), per_image_csv)
        listing = []
        for name, data in sorted(artifacts.items()):
            self.store.write_bytes(self._key(cache_key, f"artifacts/{name}"), data)
            listing.append({"name": name, "bytes": len(data), "media_type": media_type(name)})
        self.store.write_json(self._key(cache_key, "artifacts.json"), listing)
        self.store.write_bytes(self._key(cache_key, "report.json"), report)  # last: it marks a complete result

    def report(self, cache_key: str) -> bytes | None:
        try:
            return self.store.read_bytes(self._key(cache_key, "report.json"))
        except NotFound:
            return None

    def per_image_csv(self, cache_key: str) -> bytes:
        """Raises NotFound when the CSV is no longer stored."""
        return self.store.read_bytes(self._key(cache_key, "per_image.csv"))

    def artifacts(self, cache_key: str) -> list[dict[str, Any]]:
        """The manifest (``name``, ``bytes``, ``media_type`` per artifact); empty when there is none."""
        try:
            return self.store.read_json(self._key(cache_key, "artifacts.json"))
        except (NotFound, ValueError):
            return []

    def artifact(self, cache_key: str, name: str) -> bytes:
        """Raises NotFound when the artifact is no longer stored."""
        return self.store.read_bytes(self._key(cache_key, f"artifacts/{name}"))

    # -- shard partials ------------------------------------------------------------------------
    def has_partial(self, job_id: str, index: int, count: int) -> bool:
        return self.store.exists(self.partial_key(job_id, index, count))

    def put_partial(self, job_id: str, index: int, count: int, data: bytes) -> None:
        self.store.write_bytes(self.partial_key(job_id, index, count), data)

    def fetch_partial(self, job_id: str, index: int, count: int, dest: Path) -> Path:
        """Copy a partial to ``dest``; raises NotFound when it is missing."""
        return self.store.get_file(self.partial_key(job_id, index, count), dest)

    def drop_partials(self, job_id: str) -> None:
        self.store.delete_prefix(f"{PARTIALS}/{job_id}")
