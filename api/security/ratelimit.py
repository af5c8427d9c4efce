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
