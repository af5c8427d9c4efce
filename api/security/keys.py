"""API keys: made, listed and revoked by ``etm-admin``, checked by the API.

A key reads ``etm_<key id>_<secret>``: the key id (12 hex) names its record, the secret
(``secrets.token_urlsafe(32)``, 256 random bits) is shown once at creation and stored only as an
argon2id hash. Records live in the artifact store (``auth/keys/<key id>.json``), not in Redis, so
keys survive a Redis flush and every API replica sees the same ones.

No FastAPI here: the admin CLI uses this module on the server without the web stack.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from etm.timestamps import iso, now
from jobs.registry import check_tenant
from jobs.storage import ArtifactStore, NotFound

KEY_RE = re.compile(r"^etm_([0-9a-f]{12})_([A-Za-z0-9_-]{16,128})$")
LOCAL_TENANT = "local"
PUBLIC_FIELDS = ("key_id", "tenant", "name", "created_at", "revoked_at")

# OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): the secrets are random 256-bit strings, so the
# hash only has to make a leaked store useless, and a verification costs ~20 ms and 19 MiB, not 64.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


@functools.cache
def dummy_hash() -> str:
    """A hash no secret matches: verified for key ids without a record, so that an unknown id costs what a wrong
    secret costs and the answer's timing does not tell which key ids exist."""
    return _HASHER.hash(secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a tenant, and the key used (None when auth is off)."""

    tenant: str
    key_id: str | None = None


class KeyRefused(Exception):
    """A presented key is not valid; ``reason`` is ``malformed``, ``unknown`` or ``revoked``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def key_sha(presented: str) -> str:
    """What the verification cache is keyed by (never the key itself)."""
    return hashlib.sha256(presented.encode()).hexdigest()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in PUBLIC_FIELDS}


class KeyStore:
    """API key records in the artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @staticmethod
    def _key(key_id: str) -> str:
        return f"auth/keys/{key_id}.json"

    def record(self, key_id: str) -> dict[str, Any] | None:
        """The full record (with the hash) or None."""
        if not re.fullmatch(r"[0-9a-f]{12}", key_id):
            return None
        try:
            return self.store.read_json(self._key(key_id))
        except (NotFound, ValueError):
            return None

    def create(self, tenant: str, name: str | None = None) -> tuple[str, dict[str, Any]]:
        """A new key for ``tenant``: ``(the key, its public record)``. The key is not stored anywhere."""
        check_tenant(tenant)
        while True:
            key_id = secrets.token_hex(6)
            if self.record(key_id) is None:
                break
        secret = secrets.token_urlsafe(32)
        record = {
            "key_id": key_id,
            "tenant": tenant,
            "name": name or "",
            "created_at": iso(now()),
            "revoked_at": None,
            "hash": _HASHER.hash(secret),
        }
        self.store.write_json(self._key(key_id), record)
        return f"etm_{key_id}_{secret}", _public(record)

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Public records (no hash), oldest first; only ``tenant``'s when given."""
        out = []
        for name in self.store.list("auth/keys"):
            rec = self.record(name.removesuffix(".json")) if name.endswith(".json") else None
            if rec is not None and (tenant is None or rec["tenant"] == tenant):
                out.append(_public(rec))
        return sorted(out, key=lambda r: (r["created_at"] or "", r["key_id"]))

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Mark a key revoked (kept, so that its use can still be told apart from an unknown key).

        Raises:
            KeyError: no such key.
        """
        rec = self.record(key_id)
        if rec is None:
            raise KeyError(key_id)
        if rec["revoked_at"] is None:
            rec["revoked_at"] = iso(now())
            self.store.write_json(self._key(key_id), rec)
        return _public(rec)

    def verify(self, presented: str) -> tuple[Principal, dict[str, Any]]:
        """The principal of a presented key and the record it was checked against.

        Raises:
            KeyRefused: malformed, unknown (including a wrong secret) or revoked.
        """
        m = KEY_RE.match(presented)
        if m is None:
            raise KeyRefused(
                "malformed", "the bearer token is not an Explain-to-Me API key (they look like etm_<id>_<secret>)"
            )
        key_id, secret = m.groups()
        rec = self.record(key_id)
        try:  # the same argon2 run whether or not the id has a record
            _HASHER.verify(rec["hash"] if rec is not None else dummy_hash(), secret)
        except (VerificationError, InvalidHashError):
            rec = None
        if rec is None:
            raise KeyRefused("unknown", "this API key is not known to the service; check ETM_API_KEY or ask an "
                             "operator for a key (etm-admin keys create)")
        self.check_not_revoked(rec)
        return Principal(rec["tenant"], key_id), rec

    @staticmethod
    def check_not_revoked(rec: dict[str, Any]) -> None:
        if rec.get("revoked_at"):
            raise KeyRefused(
                "revoked",
                f"API key {rec['key_id']} was revoked at {rec['revoked_at']}; ask an operator for a new key",
            )
