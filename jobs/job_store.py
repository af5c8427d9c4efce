"""Job records in Redis: creation, atomic state transitions, progress, cancellation, listing,
idempotency keys, the Redis copy of reports and the counters behind ``/metrics``.

Shared by the API (which creates and reads jobs) and the workers (which run them). Records are
``jobs.records.JobRecord``; fields are written through ``encode_fields``, so every write is typed.

Keys (``P`` = ``ETM_KEY_PREFIX``, default ``etm:``):

```
P job:<id>            hash, one JSON value per field (status, spec, progress, error, ...)
P job:<id>:shards     hash shard index -> images done (in-set progress of sharded jobs)
P job:<id>:lease:<part>  the live delivery working on a part of the job (workers.lease)
P jobs:<tenant>       sorted set of a tenant's job ids by creation sequence (listing, newest first)
P seq                 creation sequence counter
P idem:<sha256(tenant, key)>  {"job_id", "body_sha256"} for a tenant's Idempotency-Key
P report:<cache key>  the report JSON (the store keeps the original)
P stats:state         state -> number of jobs in it
P stats:duration      histogram buckets, sum and count of job durations (seconds)
P stats:images        images processed, compute seconds, last job's images per second
```

Every job carries its ``tenant`` (the API key's tenant, ``local`` with auth off); the final record in
the store (``jobs/<id>.json``) keeps it, so a GET after Redis lost the job still answers only that
tenant. A record without one (written before tenants existed) belongs to ``local``.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from jobs.records import (
    DEFAULT_TENANT,
    DELIVERIES,
    JOB_ID_RE,
    STATES,
    TERMINAL,
    JobRecord,
    JobState,
    Progress,
    encode_fields,
)
from jobs.results import ResultStore
from jobs.storage import ArtifactStore, NotFound

DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
FINAL_RECORDS = "jobs"  # store folder of the final records: jobs/<job id>.json

# Sets the given fields and the status when the current status is one of ARGV[1] (a JSON list);
# keeps the per-state counters in step. Returns 1 when done, 0 when the state did not allow it,
# -1 when the job does not exist.
# The next creation sequence number and Redis's clock, read in one atomic step, so that jobs listed by
# sequence are also ordered by created_at, however many API processes create jobs at once.
_NEXT_SEQ = """
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
return {seq, t[1], t[2]}
"""

_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
cur = cjson.decode(cur)
local ok = false
for _, s in ipairs(cjson.decode(ARGV[1])) do if s == cur then ok = true end end
if not ok then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[2]))
if cur ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[2], cur, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return 1
"""

# running -> succeeded together with the duration/images counters behind /metrics, in one step: a
# worker dying between the two, or a call retried after a lost reply, cannot count a job twice or not
# at all. ARGV: seconds, images, images/s, bucket bounds ("1,2.5,..."), then field/value pairs.
_SUCCEED = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
if cjson.decode(cur) ~= 'running' then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', cjson.encode('succeeded'))
redis.call('HINCRBY', KEYS[2], 'running', -1)
redis.call('HINCRBY', KEYS[2], 'succeeded', 1)
local seconds = tonumber(ARGV[1])
for b in string.gmatch(ARGV[4], '[^,]+') do
  if seconds <= tonumber(b) then redis.call('HINCRBY', KEYS[3], 'le:' .. b, 1) end
end
redis.call('HINCRBY', KEYS[3], 'le:+Inf', 1)
redis.call('HINCRBYFLOAT', KEYS[3], 'sum', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'count', 1)
redis.call('HINCRBY', KEYS[4], 'images', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[4], 'seconds', ARGV[1])
redis.call('HSET', KEYS[4], 'last_images_per_second', ARGV[3])
return 1
"""

# Records one shard's in-set progress and writes the job's combined progress, atomically, so that
# concurrent shards never make the reported progress go backwards.
_SHARD_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
local sum = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do sum = sum + tonumber(v) end
local total = tonumber(ARGV[3])
local lo, hi = tonumber(ARGV[5]), tonumber(ARGV[6])
local frac = lo
if total > 0 then frac = lo + (hi - lo) * math.min(sum, total) / total end
redis.call('HSET', KEYS[1], 'progress', cjson.encode({stage = ARGV[4], done = sum, total = total,
  fraction = math.floor(frac * 10000 + 0.5) / 10000, updated_at = tonumber(ARGV[7])}))
return 1
"""


class JobStore:
    """Job records for one Redis and one artifact store."""

    def __init__(
        self,
        client: redis.Redis,
        store: ArtifactStore,
        prefix: str = "etm:",
        job_ttl: int = 30 * 86_400,
        report_ttl: int = 7 * 86_400,
    ) -> None:
        self.r = client
        self.store = store
        self.results = ResultStore(store)
        self.p = prefix
        self.job_ttl = job_ttl
        self.report_ttl = report_ttl
        self._transition = self.r.register_script(_TRANSITION)
        self._next_seq = self.r.register_script(_NEXT_SEQ)
        self._shard_progress = self.r.register_script(_SHARD_PROGRESS)
        self._succeed = self.r.register_script(_SUCCEED)

    # -- keys ----------------------------------------------------------------------------------
    def key(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def index_key(self, tenant: str) -> str:
        return f"{self.p}jobs:{tenant}"

    def lease_key(self, job_id: str, part: str) -> str:
        return f"{self.key(job_id)}:lease:{part}"

    def _shards_key(self, job_id: str) -> str:
        return f"{self.key(job_id)}:shards"

    @staticmethod
    def final_key(job_id: str) -> str:
        return f"{FINAL_RECORDS}/{job_id}.json"

    @property
    def stats_key(self) -> str:
        return f"{self.p}stats:state"

    # -- records -------------------------------------------------------------------------------
    def create(self, job: JobRecord) -> JobRecord:
        """Store a new job (its ``status`` is ``queued`` or, for cache hits, ``succeeded``); the stored record,
        with its creation sequence and times, is returned."""
        seq, sec, usec = self._next_seq(keys=[f"{self.p}seq"])
        t = int(sec) + int(usec) / 1e6
        # Creation times come from the same atomic step as the sequence (see _NEXT_SEQ).
        stamps: dict[str, Any] = {"seq": int(seq), "created_at": t, "updated_at": t}
        if job.finished_at is not None:  # a cache hit is finished when it is created
            stamps["finished_at"] = t
        job = job.model_copy(update=stamps)
        pipe = self.r.pipeline()
        pipe.hset(self.key(job.id), mapping=job.to_redis())
        pipe.expire(self.key(job.id), self.job_ttl)
        pipe.zadd(self.index_key(job.owner), {job.id: int(seq)})
        pipe.hincrby(self.stats_key, job.status, 1)
        pipe.execute()
        return job

    def get(self, job_id: str) -> JobRecord | None:
        """The job record from Redis, else the final snapshot in the store, else None."""
        if not JOB_ID_RE.fullmatch(job_id):  # not an id new_job_id makes; never a store path (a long one was a 500)
            return None
        raw = self.r.hgetall(self.key(job_id))
        if raw:
            return JobRecord.from_redis(raw)
        try:
            return JobRecord.model_validate(self.store.read_json(self.final_key(job_id)))
        except (NotFound, ValueError):
            return None

    def get_for(self, job_id: str, tenant: str) -> JobRecord | None:
        """The job when it belongs to ``tenant``; None otherwise (another tenant's job looks unknown)."""
        job = self.get(job_id)
        return job if job is not None and job.owner == tenant else None

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Set record fields (checked against ``JobRecord``'s types)."""
        if fields:
            self.r.hset(self.key(job_id), mapping=encode_fields(**fields))

    def transition(self, job_id: str, to: JobState, allowed: tuple[JobState, ...], **fields: Any) -> bool:
        """Move the job to state ``to`` when its state is one of ``allowed``; set ``fields`` with it."""
        args: list[Any] = [json.dumps(list(allowed)), to]
        for k, v in encode_fields(**fields).items():
            args += [k, v]
        return int(self._transition(keys=[self.key(job_id), self.stats_key], args=args)) == 1

    def snapshot(self, job_id: str) -> None:
        """Write the final record to the store (GET falls back to it when Redis lost the job)."""
        job = self.get(job_id)
        if job is not None and job.ended:
            self.store.write_json(self.final_key(job_id), job.flat())

    def drop_shard_progress(self, job_id: str) -> None:
        self.r.delete(self._shards_key(job_id))

    def incr_delivery(self, job_id: str, part: str) -> int:
        return int(self.r.hincrby(self.key(job_id), f"{DELIVERIES}{part}", 1))

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job should stop: cancel asked for, or already ended (e.g. another shard failed)."""
        vals = self.r.hmget(self.key(job_id), ["cancel_requested", "status"])
        if vals[1] is None:
            return True  # the record is gone: nobody waits for the result
        return bool(vals[0] and json.loads(vals[0])) or json.loads(vals[1]) in TERMINAL

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Ask a job to stop. A queued job is canceled at once; a running one at its next batch."""
        if not self.r.exists(self.key(job_id)):
            return self.get(job_id)
        self.set_fields(job_id, cancel_requested=True, updated_at=time.time())
        if self.transition(
            job_id, "canceled", ("queued",), finished_at=time.time(), error=None, updated_at=time.time()
        ):
            self.snapshot(job_id)
        return self.get(job_id)

    # -- progress ------------------------------------------------------------------------------
    def write_progress(self, job_id: str, stage: str, done: int, total: int, fraction: float) -> None:
        t = time.time()
        self.set_fields(job_id, progress=Progress.at(stage, done, total, round(fraction, 4), t), updated_at=t)

    def write_shard_progress(
        self, job_id: str, shard: int, done: int, total: int, stage: str, lo: float, hi: float
    ) -> None:
        t = time.time()
        self._shard_progress(
            keys=[self.key(job_id), self._shards_key(job_id)],
            args=[shard, done, total, stage, lo, hi, t, self.job_ttl],
        )
        self.set_fields(job_id, updated_at=t)

    # -- listing -------------------------------------------------------------------------------
    def list(
        self, status: str | None, limit: int, cursor: int | None, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[JobRecord], int | None]:
        """``tenant``'s jobs, newest first; ``cursor`` is the ``seq`` of the last job of the previous page
        (None: the newest).

        Returns the page and the next cursor (None when there is nothing after this page).
        """
        out: list[JobRecord] = []
        hi = f"({cursor}" if cursor is not None else "+inf"
        page = max(limit, 50)
        budget = 5000  # records looked at per call, so that a rare status cannot make one call unbounded
        last_seq: int | None = None
        while budget > 0:
            ids = self.r.zrevrangebyscore(self.index_key(tenant), hi, "-inf", start=0, num=page, withscores=True)
            if not ids:
                return out, None
            pipe = self.r.pipeline()
            for jid, _ in ids:
                pipe.hgetall(self.key(jid.decode()))
            gone = []
            full = False
            for (jid, score), raw in zip(ids, pipe.execute(), strict=True):
                budget -= 1
                last_seq = int(score)
                hi = f"({last_seq}"
                if not raw:  # expired record: drop it from the index
                    gone.append(jid)
                    continue
                job = JobRecord.from_redis(raw)
                if status is None or job.status == status:
                    out.append(job)
                    if len(out) == limit:
                        full = True
                        break
            if gone:
                self.r.zrem(self.index_key(tenant), *gone)
            if full:
                return out, last_seq
            if len(ids) < page:
                return out, None
        return out, last_seq

    # -- idempotency ---------------------------------------------------------------------------
    def _idem_key(self, key: str, tenant: str) -> str:
        # Per tenant: two tenants using the same key get two jobs, and neither learns of the other's.
        digest = hashlib.sha256(tenant.encode() + b"\0" + key.encode()).hexdigest()
        return f"{self.p}idem:{digest}"

    def idempotency_binding(self, key: str, tenant: str = DEFAULT_TENANT) -> dict[str, str] | None:
        raw = self.r.get(self._idem_key(key, tenant))
        return json.loads(raw) if raw else None

    def claim_idempotency_key(
        self, key: str, body_sha: str, job_id: str, ttl: int, tenant: str = DEFAULT_TENANT
    ) -> dict[str, str] | None:
        """Bind ``key`` to ``job_id``; returns the earlier binding when the key was used before."""
        k = self._idem_key(key, tenant)
        value = json.dumps({"job_id": job_id, "body_sha256": body_sha})
        if self.r.set(k, value, nx=True, ex=ttl):
            return None
        raw = self.r.get(k)
        return json.loads(raw) if raw else None

    # -- reports -------------------------------------------------------------------------------
    def put_report(self, cache_key: str, report_json: bytes) -> None:
        self.r.set(f"{self.p}report:{cache_key}", report_json, ex=self.report_ttl)

    def has_report_copy(self, cache_key: str) -> bool:
        """Whether Redis holds the report's copy (written only after the result is complete in the store)."""
        return bool(self.r.exists(f"{self.p}report:{cache_key}"))

    def get_report(self, cache_key: str) -> bytes | None:
        """The report JSON: Redis first, then the store (which survives Redis losing its memory)."""
        raw = self.r.get(f"{self.p}report:{cache_key}")
        if raw is not None:
            return raw
        return self.results.report(cache_key)

    # -- metrics -------------------------------------------------------------------------------
    def succeed(self, job_id: str, seconds: float, images: int, **fields: Any) -> bool:
        """running -> succeeded and the job counted in the duration/images metrics, atomically."""
        rate = images / seconds if seconds > 0 else 0
        args: list[Any] = [seconds, images, rate, ",".join(map(str, DURATION_BUCKETS))]
        for k, v in encode_fields(**fields).items():
            args += [k, v]
        keys = [self.key(job_id), self.stats_key, f"{self.p}stats:duration", f"{self.p}stats:images"]
        return int(self._succeed(keys=keys, args=args)) == 1

    def stats(self) -> dict[str, Any]:
        pipe = self.r.pipeline()
        pipe.hgetall(self.stats_key)
        pipe.hgetall(f"{self.p}stats:duration")
        pipe.hgetall(f"{self.p}stats:images")
        states, duration, images = pipe.execute()

        def dec(d: dict[bytes, bytes]) -> dict[str, float]:
            return {k.decode(): float(v) for k, v in d.items()}

        st = dec(states)
        return {
            "states": {s: max(0, int(st.get(s, 0))) for s in STATES},
            "duration": dec(duration),
            "images": dec(images),
        }


