"""Who is calling: the ``authenticate`` dependency of every /v1 route.

``ETM_AUTH=keys``: ``Authorization: Bearer etm_<id>_<secret>`` is required. argon2 is slow on purpose,
so a verified key is trusted for ``ETM_AUTH_CACHE_SECONDS`` in this process (keyed by the sha256 of the
key); after that its record is read again (revocation is seen then) and argon2 runs again only when
the record's hash changed. A revoked key therefore stops working within that many seconds on every
replica, and 100 polling clients cost one store read per key per interval, not 100 argon2 runs.

Failed verifications (unknown, wrong or revoked keys) are throttled per key id and per client address
(``ETM_AUTH_FAILURES_PER_KEY_PER_MINUTE``, ``ETM_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE``): past a bucket, 429
with Retry-After and no argon2 run. An unknown key id is verified against a dummy hash, so it takes as long as a
wrong secret. ``api.guard`` calls this before FastAPI reads the body: ``cached`` on the event loop (memory only),
``__call__`` on ``ETM_AUTH_VERIFY_THREADS`` threads of its own.

``ETM_AUTH=off``: every request acts for the tenant ``local``, and only loopback peers are served
(403 otherwise); keys sent anyway are ignored. ``/healthz``, ``/readyz``, ``/metrics``, ``/docs`` and
``/openapi.json`` do not use this dependency: they stay open in both modes.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from api.problems import ProblemError
from api.security.keys import KEY_RE, LOCAL_TENANT, KeyRefused, KeyStore, Principal, key_sha
from etm.settings import Settings

if TYPE_CHECKING:
    from api.security.ratelimit import FailureLimiter

log = logging.getLogger("etm.auth")
CACHE_MAX = 10_000  # verified keys remembered per process (a bound, not a working-set estimate)
_CHALLENGE = 'Bearer realm="explain-to-me"'

MISSING_DETAIL = (
    "this API needs an API key: send it as the header `Authorization: Bearer etm_<id>_<secret>` "
    "(the etm client reads it from ETM_API_KEY or --api-key; an operator makes keys with "
    "`etm-admin keys create --tenant <tenant>`)"
)
NOT_BEARER_DETAIL = (
    "the Authorization header must be `Bearer <API key>` (one space, then the key etm_<id>_<secret>)"
)
OFF_REMOTE_DETAIL = (
    "authentication is off (ETM_AUTH=off), so this service answers only on its loopback address; "
    "call it from the same machine, or have the operator set ETM_AUTH=keys and give you an API key"
)


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; None (a unix socket peer) counts as local."""
    if host is None:
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_auth_off(where: str) -> None:
    """The loud start-up warning of an unauthenticated service."""
    bar = "!" * 78
    log.warning(
        "\n%s\n!! AUTHENTICATION IS OFF (ETM_AUTH=off) in %s.\n!! Every request acts for the single "
        "tenant %r and only loopback peers are served.\n!! Set ETM_AUTH=keys and create keys with "
        "`etm-admin keys create` before exposing it.\n%s",
        bar, where, LOCAL_TENANT, bar,
    )


@dataclass
class _Verified:
    principal: Principal
    hash: str
    checked_at: float


class Authenticator:
    """Checks requests for one app; holds this process's cache of verified keys."""

    def __init__(self, settings: Settings, keys: KeyStore, failures: FailureLimiter | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.failures = failures
        self._cache: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    def cached(self, request: Request) -> Principal | None:
        """The principal when memory alone can tell (auth off, a key verified within the cache window), None when
        the store or argon2 is needed (call this object, on a thread). Raises the 401/403 that need neither."""
        if self.settings.auth == "off":
            return self._local(request)
        hit = self._fresh(key_sha(self._token(request)))
        return hit.principal if hit is not None else None

    def __call__(self, request: Request) -> Principal:
        """The principal of the request; may read the store and run argon2 (blocking: call it on a thread)."""
        if self.settings.auth == "off":
            return self._local(request)
        token = self._token(request)
        try:
            return self.principal(token, request.client.host if request.client else None)
        except KeyRefused as exc:
            slug = {"revoked": "revoked-api-key", "malformed": "malformed-api-key"}.get(exc.reason, "invalid-api-key")
            raise _unauthorized(exc.detail, slug, "invalid_token") from exc

    @staticmethod
    def _local(request: Request) -> Principal:
        peer = request.client.host if request.client else None
        if not is_loopback(peer):
            raise ProblemError(403, OFF_REMOTE_DETAIL, slug="auth-off-remote", title="Authentication is off")
        return Principal(LOCAL_TENANT)

    @staticmethod
    def _token(request: Request) -> str:
        header = request.headers.get("authorization")
        if not header:
            raise _unauthorized(MISSING_DETAIL, "missing-api-key", None)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(NOT_BEARER_DETAIL, "malformed-authorization", "invalid_request")
        return token.strip()

    def _fresh(self, sha: str) -> _Verified | None:
        with self._lock:
            hit = self._cache.get(sha)
        if hit is not None and time.monotonic() - hit.checked_at < self.settings.auth_cache_seconds:
            return hit
        return None

    def principal(self, presented: str, address: str | None = None) -> Principal:
        """The principal of a key, from the cache when it was verified recently. ``address``: the client's, for
        the failed-authentication limit.

        Raises:
            KeyRefused: malformed, unknown, wrong or revoked.
            ProblemError: 429, too many failed authentications for this key id or from this address.
        """
        sha = key_sha(presented)
        t = time.monotonic()
        with self._lock:
            hit = self._cache.get(sha)
        if hit is not None and t - hit.checked_at < self.settings.auth_cache_seconds:
            return hit.principal
        if hit is not None:  # re-check revocation; argon2 again only if the record's hash changed
            rec = self.keys.record(hit.principal.key_id or "")
            if rec is not None and rec.get("hash") == hit.hash:
                try:
                    KeyStore.check_not_revoked(rec)
                except KeyRefused:
                    self._forget(sha)
                    raise
                with self._lock:
                    hit.checked_at = t
                return hit.principal
            self._forget(sha)
        m = KEY_RE.match(presented)
        if m is None:  # refused without argon2, not counted: telling the format costs nothing
            return self.keys.verify(presented)[0]
        key_id = m.group(1)
        self._check_failures(key_id, address)
        try:
            principal, rec = self.keys.verify(presented)
        except KeyRefused:
            if self.failures is not None:
                self.failures.failed(key_id, address)
            raise
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[sha] = _Verified(principal, rec["hash"], t)
        return principal

    def _check_failures(self, key_id: str, address: str | None) -> None:
        if self.failures is None:
            return
        wait, which = self.failures.blocked(key_id, address)
        if which is None:
            return
        retry = max(1, math.ceil(wait))
        if which == "key":
            detail = (
                f"too many failed authentications with API key id {key_id} (at most "
                f"{self.settings.auth_failures_per_key_per_minute} per minute, ETM_AUTH_FAILURES_PER_KEY_PER_MINUTE); "
                f"retry in {retry} s with the right key (an attempt before then restarts the wait)"
            )
        else:
            detail = (
                f"too many failed authentications from {address} (at most "
                f"{self.settings.auth_failures_per_address_per_minute} per minute, "
                f"ETM_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE); retry in {retry} s with a valid key (an attempt before "
                "then restarts the wait)"
            )
        raise ProblemError(429, detail, slug="auth-rate-limited", title="Too many failed authentications",
                           headers={"Retry-After": str(retry)})

    def _forget(self, sha: str) -> None:
        with self._lock:
            self._cache.pop(sha, None)


def _unauthorized(detail: str, slug: str, error: str | None) -> ProblemError:
    challenge = _CHALLENGE + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug=slug, title="Unauthorized", headers={"WWW-Authenticate": challenge})


def authenticate(request: Request) -> Principal:
    """The dependency: the principal ``api.guard`` found before the body was read. Without one (an app used
    without the guard) it checks here (sync: FastAPI runs it in a thread, so argon2 never blocks the event loop)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = request.app.state.services.authenticator(request)
        request.state.principal = principal
    return principal

