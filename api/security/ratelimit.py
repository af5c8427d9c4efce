"""Per-key rate limits on uploads and job submissions: a token bucket per (kind, key) in Redis.

The bucket holds up to N tokens (N = the per-minute limit, so a burst of N is allowed) and refills at
N per minute. One Lua script reads, refills and takes a token atomically with Redis's own clock, so
every API replica shares the same budget and concurrent requests cannot overdraw it.

When Redis cannot be reached the limit is not enforced (logged): uploads do not otherwise need Redis,
and a job submission then fails with its own 503 anyway.
"""

from __future__ import annotations

import logging
import math

import redis
from fastapi import Depends, Request

from api.problems import ProblemError
from api.security.auth import authenticate
from api.security.keys import Principal

log = logging.getLogger("etm.auth")

# KEYS[1] bucket hash; ARGV capacity, refill per second, ttl. Returns {1, 0} when a token was taken,
# else {0, seconds until one is available} (as a string: Lua numbers are truncated to integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if ok == 1 then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""

KINDS = {
    "uploads": ("rate_uploads_per_minute", "uploads (POST /v1/models, POST /v1/datasets)"),
    "jobs": ("rate_jobs_per_minute", "job submissions (POST /v1/jobs)"),
}


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._take = client.register_script(_TAKE)

    def take(self, kind: str, subject: str, per_minute: int) -> float:
        """0 when allowed, else the seconds to wait before the next request may pass."""
        ok, wait = self._take(keys=[f"{self.prefix}rate:{kind}:{subject}"], args=[per_minute, per_minute / 60.0, 120])
        return 0.0 if int(ok) == 1 else float(wait)


def limit(kind: str):  # noqa: ANN201 - returns a FastAPI dependency
    """A dependency that takes one token of ``kind`` for the caller's key (the tenant with auth off)."""
    setting, what = KINDS[kind]

    def dependency(request: Request, principal: Principal = Depends(authenticate)) -> None:
        services = request.app.state.services
        per_minute = int(getattr(services.settings, setting))
        if per_minute <= 0:
            return
        subject = f"key:{principal.key_id}" if principal.key_id else f"tenant:{principal.tenant}"
        try:
            wait = services.limiter.take(kind, subject, per_minute)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("rate limit of %s not checked, Redis unreachable: %s", kind, exc)
            return
        if wait > 0:
            retry = max(1, math.ceil(wait))
            who = "API key" if principal.key_id else "tenant"
            raise ProblemError(
                429,
                f"rate limit reached: at most {per_minute} {what} per minute per {who} "
                f"(ETM_{setting.upper()}); retry in {retry} s",
                slug="rate-limited",
                headers={"Retry-After": str(retry)},
            )

    dependency.__name__ = f"rate_limit_{kind}"
    return dependency


# Failed authentications: one bucket per key id and one per client address, each holding a minute's worth.
# BLOCKED (KEYS the buckets, ARGV their capacities): the seconds until every bucket holds a token and the 1-based
# index of the bucket that waits longest (0 when none is empty). An empty bucket asked again is emptied
# completely (tokens 0 from now): an attempt while throttled restarts the wait of one token's refill, so only a
# client that waits out Retry-After gets another try. FAILED takes a token from each bucket.
_BLOCKED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait, which = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[i])
  local rate = cap / 60.0
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or cap
  local ts = tonumber(b[2]) or now
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  if tokens < 1 then
    redis.call('HSET', KEYS[i], 'tokens', '0', 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[i], 120)
    if 1 / rate > wait then wait, which = 1 / rate, i end
  end
end
return {tostring(wait), which}
"""
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  local cap = tonumber(ARGV[i])
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or cap
  local ts = tonumber(b[2]) or now
  tokens = math.max(0, math.min(cap, tokens + math.max(0, now - ts) * cap / 60.0) - 1)
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], 120)
end
return 1
"""


class FailureLimiter:
    """Failed authentications per key id and per client address (token buckets in Redis, shared by replicas).

    ``blocked`` is asked right before a key would be verified (argon2) and ``failed`` after a verification
    failed, so successful verifications never spend tokens; concurrent verifications in flight can overshoot a
    bucket by at most their number (ETM_AUTH_VERIFY_THREADS per API process). Asking while blocked restarts the
    wait (Retry-After: one token's refill), so a client hammering on gets no verification at all. With Redis
    unreachable nothing is throttled (logged), as with the other limits.
    """

    def __init__(self, client: redis.Redis, prefix: str, per_key: int, per_address: int) -> None:
        self.prefix = prefix
        self.per_key, self.per_address = per_key, per_address
        self._blocked = client.register_script(_BLOCKED)
        self._failed = client.register_script(_FAILED)

    def _buckets(self, key_id: str, address: str | None) -> list[tuple[str, int, str]]:
        out = []
        if self.per_key > 0:
            out.append((f"{self.prefix}authfail:key:{key_id}", self.per_key, "key"))
        if self.per_address > 0 and address:
            out.append((f"{self.prefix}authfail:addr:{address}", self.per_address, "address"))
        return out

    def blocked(self, key_id: str, address: str | None) -> tuple[float, str | None]:
        """``(seconds to wait, "key" or "address")`` when a bucket is empty, else ``(0, None)``."""
        buckets = self._buckets(key_id, address)
        if not buckets:
            return 0.0, None
        try:
            wait, which = self._blocked(keys=[b[0] for b in buckets], args=[b[1] for b in buckets])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("failed-authentication limit not checked, Redis unreachable: %s", exc)
            return 0.0, None
        return (float(wait), buckets[int(which) - 1][2]) if int(which) else (0.0, None)

    def failed(self, key_id: str, address: str | None) -> None:
        buckets = self._buckets(key_id, address)
        if not buckets:
            return
        try:
            self._failed(keys=[b[0] for b in buckets], args=[b[1] for b in buckets])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("failed authentication not counted, Redis unreachable: %s", exc)
