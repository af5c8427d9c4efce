"""``make load``: a bounded load run against the real service on loopback.

Starts the service (tests/servicekit.py: its own redis-server, the API under uvicorn, one Celery worker,
ETM_AUTH=keys) unless ``--url`` names a running one, then drives it from this second process with
``--clients`` asyncio clients (httpx, one connection and one API key each, same tenant) for ``--seconds``:
each loops over polling one of its jobs (GET /v1/jobs/{id}), listing (GET /v1/jobs) and submitting small
jobs, with ``--think`` seconds between requests. Most submissions repeat a few bodies whose results
are cached (answered ``succeeded`` at once); up to ``--fresh`` are new bodies the worker really computes.
The window opens once every client has made one untimed request (its key's argon2 verification;
``--cold`` times that too).

Prints requests/s, p50/p99 latency per operation, the status codes, errors and jobs lost:

- error: any answer outside 2xx except 429 (the per-key rate limit: counted and explained separately)
  and transport errors (timeouts, refused connections);
- lost: a job answered 202 that is not readable, or not ended, ``--drain`` seconds after the run (or a
  succeeded one whose report is not readable).

Exit status 1 when errors or lost jobs are not 0.

    .venv/bin/python -m bench.load                          # 100 clients, 60 s, a fresh service
    .venv/bin/python -m bench.load --clients 20 --seconds 10
    .venv/bin/python -m bench.load --url http://127.0.0.1:8000 --api-key etm_... --models builtin:xent/run0 \\
        --dataset builtin:faces
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import BENCH_DIR, machine, write_json

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Target:
    """Where the service is and what a job may name."""

    url: str
    keys: list[str]
    models: list[str]
    dataset: str
    split: str | None = None


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    accepted: set[str] = field(default_factory=set)
    cache_hits: int = 0

    def record(self, op: str, status: int, seconds: float) -> None:
        self.latencies[op].append(seconds)
        self.statuses[op][status] += 1


def job_body(target: Target, seed: int, max_images: int = 8) -> dict[str, Any]:
    """A small job: one candidate of the given models, two cheap measures, ``max_images`` images."""
    body: dict[str, Any] = {
        "candidates": [{"name": "load", "models": target.models}],
        "dataset": target.dataset,
        "max_images": max_images,
        "measures": ["entropy", "accuracy"],
        "bootstrap_resamples": 100,
        "batch_size": 8,
        "overlays": 0,
        "seed": seed,
    }
    if target.split:
        body["split"] = target.split
    return body


# -- the service ---------------------------------------------------------------------------------
@contextmanager
def local_service(n_keys: int, env: dict[str, str] | None = None) -> Iterator[Target]:
    """A fresh service on loopback with tiny models and a tiny dataset, and ``n_keys`` API keys of one tenant."""
    from api.security.keys import KeyStore
    from jobs.storage import ArtifactStore
    from tests.helpers.tiny import tiny_dataset, tiny_family
    from tests.servicekit import ServiceKit

    root = Path(tempfile.mkdtemp(prefix="etm-load-"))
    kit = ServiceKit(root / "kit", n_workers=1, env={"ETM_AUTH": "keys", **(env or {})})
    kit.start()
    try:
        keys = KeyStore(ArtifactStore(str(kit.workdir / "store")))
        presented = [keys.create("load", f"client{i}")[0] for i in range(n_keys)]
        kit.client.headers["Authorization"] = f"Bearer {presented[0]}"
        models = []
        for p in tiny_family(root / "models", k=2):
            r = kit.upload_model(p, metadata=p.with_name(p.name + ".json").read_text())
            r.raise_for_status()
            models.append(r.json()["id"])
        r = kit.upload_dataset(tiny_dataset(root / "ds", n_per_class=8), "tiny.zip")
        r.raise_for_status()
        yield Target(kit.base_url, presented, models, r.json()["id"])
    finally:
        codes = kit.stop()
        shutil.rmtree(root, ignore_errors=True)  # the service's store, models and dataset of this run
        if any(c not in (0, -15) for c in codes.values()):
            print(f"service processes exited with {codes}", file=sys.stderr)


async def wait_succeeded(c: httpx.AsyncClient, job_id: str, deadline: float) -> dict[str, Any]:
    """Poll a job until it ends (``deadline`` on ``time.monotonic``): its record; RuntimeError unless it
    succeeded."""
    while True:
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] == "succeeded":
            return job
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            raise RuntimeError(f"warm-up job {job_id} ended {job['status']}: {job.get('error')}")
        await asyncio.sleep(0.2)


async def warm_cache(target: Target, seeds: list[int], timeout: float = 180) -> None:
    """Run one job per body so that every later submission of these bodies is a cache hit."""
    headers = {"Authorization": f"Bearer {target.keys[0]}"}
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=30) as c:
        ids = []
        for s in seeds:
            r = await c.post("/v1/jobs", json=job_body(target, s))
            r.raise_for_status()
            ids.append(r.json()["id"])
        deadline = time.monotonic() + timeout
        for job_id in ids:
            await wait_succeeded(c, job_id, deadline)


# -- the clients ---------------------------------------------------------------------------------
class FreshBudget:
    """Seeds of bodies never submitted before (real computations), shared by all clients."""

    def __init__(self, n: int, first_seed: int) -> None:
        self.left, self.next = n, first_seed

    def take(self) -> int | None:
        if self.left <= 0:
            return None
        self.left -= 1
        self.next += 1
        return self.next


async def timed(stats: Stats, op: str, request: Any) -> httpx.Response | None:
    t = time.perf_counter()
    try:
        r = await request
    except httpx.HTTPError as exc:
        stats.transport_errors[f"{op}: {type(exc).__name__}"] += 1
        return None
    stats.record(op, r.status_code, time.perf_counter() - t)
    return r


class Start:
    """The timed window opens when every client is connected (and warmed), for all at once."""

    def __init__(self, clients: int, seconds: float) -> None:
        self.waiting, self.seconds, self.event = clients, seconds, asyncio.Event()
        self.t0 = self.end = 0.0

    async def ready(self) -> float:
        self.waiting -= 1
        if self.waiting == 0:
            self.t0 = time.monotonic()
            self.end = self.t0 + self.seconds
            self.event.set()
        await self.event.wait()
        return self.end


async def client_loop(i: int, target: Target, stats: Stats, args: argparse.Namespace, cached: list[int],
                      fresh: FreshBudget, start: Start) -> None:
    rng = random.Random(args.seed * 1000 + i)
    headers = {"Authorization": f"Bearer {target.keys[i % len(target.keys)]}"}
    mine: list[str] = []
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=args.timeout,
                                 limits=httpx.Limits(max_connections=1)) as c:
        if args.warm:  # untimed: the first use of each key costs an argon2 verification (a cold-start burst)
            await c.get("/v1/jobs", params={"limit": 1})
        end = await start.ready()
        await asyncio.sleep(rng.random() * args.think)  # clients do not start in lockstep
        while time.monotonic() < end:
            u = rng.random()
            if u < args.p_submit or not mine:
                seed = fresh.take() if rng.random() < args.p_fresh else None
                op = "POST /v1/jobs (new)" if seed is not None else "POST /v1/jobs (cached)"
                body = job_body(target, seed if seed is not None else rng.choice(cached))
                r = await timed(stats, op, c.post("/v1/jobs", json=body))
                if r is not None and r.status_code == 202:
                    job = r.json()
                    stats.accepted.add(job["id"])
                    stats.cache_hits += bool(job["cache_hit"])
                    mine.append(job["id"])
            elif u < args.p_submit + args.p_list:
                await timed(stats, "GET /v1/jobs", c.get("/v1/jobs", params={"limit": 20}))
            else:
                await timed(stats, "GET /v1/jobs/{id}", c.get(f"/v1/jobs/{rng.choice(mine[-5:])}"))
            await asyncio.sleep(args.think)


async def drain(target: Target, stats: Stats, timeout: float) -> dict[str, Any]:
    """Wait for every accepted job to end; then read each one and each succeeded job's report."""
    headers = {"Authorization": f"Bearer {target.keys[0]}"}
    pending, ended, unreadable = set(stats.accepted), {}, []
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=30) as c:
        sem = asyncio.Semaphore(16)

        async def status(job_id: str) -> tuple[str, int, str | None]:
            async with sem:
                r = await c.get(f"/v1/jobs/{job_id}")
                return job_id, r.status_code, r.json().get("status") if r.status_code == 200 else None

        while pending and time.monotonic() < deadline:
            for job_id, code, state in await asyncio.gather(*(status(j) for j in pending)):
                if code == 200 and state in TERMINAL:
                    ended[job_id] = state
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.5)

        async def report(job_id: str) -> tuple[str, int]:
            async with sem:
                return job_id, (await c.get(f"/v1/jobs/{job_id}/report")).status_code

        succeeded = [j for j, s in ended.items() if s == "succeeded"]
        unreadable = [j for j, code in await asyncio.gather(*(report(j) for j in succeeded)) if code != 200]
    return {"accepted": len(stats.accepted), "ended": Counter(ended.values()), "not_ended": sorted(pending),
            "report_unreadable": unreadable, "lost": len(pending) + len(unreadable)}


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


async def run(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    cached = list(range(args.cached_bodies))
    await warm_cache(target, cached)
    stats, fresh = Stats(), FreshBudget(args.fresh, first_seed=10_000 + args.seed * 1_000_000)
    start = Start(args.clients, args.seconds)
    await asyncio.gather(*(client_loop(i, target, stats, args, cached, fresh, start) for i in range(args.clients)))
    elapsed = time.monotonic() - start.t0
    jobs = await drain(target, stats, args.drain)
    n = sum(len(v) for v in stats.latencies.values())
    errors = {op: {code: k for code, k in codes.items() if not (200 <= code < 300 or code == 429)}
              for op, codes in stats.statuses.items()}
    n_errors = sum(sum(v.values()) for v in errors.values()) + sum(stats.transport_errors.values())
    return {
        "clients": args.clients, "seconds": round(elapsed, 1), "think_s": args.think,
        "requests": n, "requests_per_s": round(n / elapsed, 1),
        "operations": {
            op: {"n": len(v), "p50_ms": round(percentile_ms(v, 50), 1), "p99_ms": round(percentile_ms(v, 99), 1),
                 "statuses": dict(sorted(stats.statuses[op].items()))}
            for op, v in sorted(stats.latencies.items())
        },
        "rate_limited_429": sum(c[429] for c in stats.statuses.values()),
        "errors": n_errors, "error_detail": {op: e for op, e in errors.items() if e},
        "transport_errors": dict(stats.transport_errors),
        "cache_hits": stats.cache_hits, "fresh_jobs": args.fresh - fresh.left,
        "jobs": {**jobs, "ended": dict(jobs["ended"])},
    }


def print_result(res: dict[str, Any]) -> None:
    print(f"\n{res['clients']} clients for {res['seconds']} s (think {res['think_s']} s): "
          f"{res['requests']} requests, {res['requests_per_s']} requests/s")
    print(f"   {'operation':<26} {'n':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for op, o in res["operations"].items():
        print(f"   {op:<26} {o['n']:>7} {o['p50_ms']:>8} {o['p99_ms']:>8}  {o['statuses']}")
    j = res["jobs"]
    print(f"   accepted jobs: {j['accepted']} ({res['cache_hits']} cache hits, {res['fresh_jobs']} computed); "
          f"ended: {j['ended']}")
    print(f"   rate-limited (429, the per-key job limit; retried by real clients): {res['rate_limited_429']}")
    print(f"   errors: {res['errors']} {res['error_detail'] or ''}{res['transport_errors'] or ''}")
    print(f"   jobs lost: {j['lost']} (not ended: {j['not_ended'][:5]}, "
          f"report unreadable: {j['report_unreadable'][:5]})")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--think", type=float, default=0.1, help="seconds each client waits between requests")
    ap.add_argument("--p-submit", type=float, default=0.15, help="share of requests that submit a job")
    ap.add_argument("--p-list", type=float, default=0.15, help="share of requests that list jobs")
    ap.add_argument("--p-fresh", type=float, default=0.1, help="share of submissions with a new body")
    ap.add_argument("--fresh", type=int, default=30, help="most new (computed) jobs over the run")
    ap.add_argument("--cached-bodies", type=int, default=4, help="bodies computed first, then repeated")
    ap.add_argument("--drain", type=float, default=300, help="seconds to wait for accepted jobs to end")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per request")
    ap.add_argument("--cold", dest="warm", action="store_false",
                    help="time each client's first request too (its key's argon2 verification)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", help="a running service (default: start one)")
    ap.add_argument("--api-key", action="append", default=[], help="with --url (repeat for several)")
    ap.add_argument("--models", help="with --url: comma-separated model ids of the job's candidate")
    ap.add_argument("--dataset", help="with --url: dataset id")
    ap.add_argument("--split", help="with --url: split (e.g. test)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "load.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.url:
        if not (args.models and args.dataset):
            print("with --url, name --models and --dataset (e.g. builtin:xent/run0 and builtin:faces)", file=sys.stderr)
            return 2
        target = Target(args.url, args.api_key or [""], args.models.split(","), args.dataset, args.split)
        res = asyncio.run(run(target, args))
    else:
        print(f"starting a service on loopback and {args.clients} API keys ...", flush=True)
        with local_service(args.clients) as target:
            res = asyncio.run(run(target, args))
    res["machine"] = machine()
    print_result(res)
    write_json(args.out, res)
    print(f"   written to {args.out}")
    return 1 if res["errors"] or res["jobs"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
