"""Figure 6, service overhead: what the API adds around a result it already has.

With ``--clients`` concurrent clients on loopback (each its own connection and API key, ``--think``
seconds between requests), three phases run round-robin ``--rounds`` times, ``--phase-seconds`` each:

- anchor: GET /healthz, the floor of this HTTP stack (uvicorn + FastAPI, no Redis, no auth);
- status: GET /v1/jobs/{id} of a finished job (auth, Redis read, the public record);
- cache hit end to end: POST /v1/jobs of a body whose result is cached (202, ``succeeded``,
  ``cache_hit: true``) then GET /v1/jobs/{id}/report of that new job: submit to report.

Prints p50/p99 of each and their ratios to the anchor; the target is a cache-hit end-to-end p99 under
50 ms. Rate limits are off here (the limiter is not what is measured). Speed is reported, not asserted;
the answers are checked: every status read must say ``succeeded``, and every cache hit must answer 202
``succeeded`` with ``cache_hit: true`` and then serve exactly the bytes of the report the warm-up job
computed. A wrong answer fails the run (exit 1 here, a failed check in ``bench.run``, figure 6).

    .venv/bin/python -m bench.service_overhead                  # 50 clients, 3 rounds of 3 x 5 s
    .venv/bin/python -m bench.service_overhead --clients 10 --rounds 1 --phase-seconds 2
    .venv/bin/python -m bench.run --only 6                      # as figure 6 of make bench (2 rounds)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import BENCH_DIR, Report, machine, write_json
from bench.load import Target, job_body, local_service, percentile_ms, wait_succeeded

TARGET_E2E_P99_MS = 50.0
PHASES = ("anchor GET /healthz", "status GET /v1/jobs/{id}", "cache hit POST /v1/jobs + GET report")
NO_LIMITS = {"ETM_RATE_JOBS_PER_MINUTE": "0", "ETM_RATE_UPLOADS_PER_MINUTE": "0"}


@dataclass
class Answers:
    """Per phase: how many answers were what they must be, and the first few that were not."""

    ok: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    wrong: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    examples: list[str] = field(default_factory=list)

    def record(self, phase: str, problem: str | None) -> None:
        if problem is None:
            self.ok[phase] += 1
            return
        self.wrong[phase] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{phase}: {problem}")


async def one(c: httpx.AsyncClient, phase: str, target: Target, job_id: str, reference: bytes,
              answers: Answers) -> float:
    """One measured interaction, timed whatever the answer; a wrong answer is recorded in ``answers``."""
    t = time.perf_counter()
    problem: str | None = None
    if phase == PHASES[0]:
        r = await c.get("/healthz")
        problem = None if r.status_code == 200 else f"HTTP {r.status_code}"
    elif phase == PHASES[1]:
        r = await c.get(f"/v1/jobs/{job_id}")
        problem = (None if r.status_code == 200 and r.json().get("status") == "succeeded"
                   else f"HTTP {r.status_code}: {r.text[:200]}")
    else:
        r = await c.post("/v1/jobs", json=job_body(target, 0))
        job = r.json() if r.headers.get("content-type", "").endswith("json") else {}
        if not (r.status_code == 202 and job.get("status") == "succeeded" and job.get("cache_hit") is True):
            problem = (f"expected 202 succeeded cache_hit=true, got HTTP {r.status_code} {job.get('status')} "
                       f"cache_hit={job.get('cache_hit')}")
        else:
            r = await c.get(f"/v1/jobs/{job['id']}/report")
            if r.status_code != 200:
                problem = f"report: HTTP {r.status_code}"
            elif r.content != reference:
                problem = f"report of cache hit {job['id']} differs from the computed one"
    elapsed = time.perf_counter() - t
    answers.record(phase, problem)
    return elapsed


async def phase_run(phase: str, target: Target, job_id: str, clients: list[httpx.AsyncClient], seconds: float,
                    think: float, reference: bytes, answers: Answers) -> list[float]:
    out: list[float] = []
    end = time.monotonic() + seconds

    async def loop(i: int, c: httpx.AsyncClient) -> None:
        await asyncio.sleep(think * i / len(clients))  # spread the clients over one think period
        while time.monotonic() < end:
            out.append(await one(c, phase, target, job_id, reference, answers))
            await asyncio.sleep(think)

    await asyncio.gather(*(loop(i, c) for i, c in enumerate(clients)))
    return out


async def computed_report(c: httpx.AsyncClient, target: Target, timeout: float = 180) -> bytes:
    """Run the job of the measured body once (computed by the worker) and return its report's bytes:
    every later submission of that body is a cache hit and must serve exactly these."""
    r = await c.post("/v1/jobs", json=job_body(target, 0))
    r.raise_for_status()
    job_id = r.json()["id"]
    job = await wait_succeeded(c, job_id, time.monotonic() + timeout)
    if job.get("cache_hit"):
        raise RuntimeError(f"warm-up job {job_id} was a cache hit; expected a computed result on a fresh service")
    r = await c.get(f"/v1/jobs/{job_id}/report")
    r.raise_for_status()
    return r.content


async def run(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    clients = [httpx.AsyncClient(base_url=target.url, timeout=30, limits=httpx.Limits(max_connections=1),
                                 headers={"Authorization": f"Bearer {target.keys[i % len(target.keys)]}"})
               for i in range(args.clients)]
    answers = Answers()
    try:
        reference = await computed_report(clients[0], target)
        r = await clients[0].post("/v1/jobs", json=job_body(target, 0))
        r.raise_for_status()
        job_id = r.json()["id"]
        for phase in PHASES:  # one short untimed pass: connections open, keys verified (argon2) once
            await phase_run(phase, target, job_id, clients, 1.0, args.think, reference, answers)
        samples: dict[str, list[float]] = {p: [] for p in PHASES}
        for _ in range(args.rounds):
            for phase in PHASES:
                samples[phase] += await phase_run(phase, target, job_id, clients, args.phase_seconds, args.think,
                                                  reference, answers)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    rows = {p: {"n": len(v), "p50_ms": percentile_ms(v, 50), "p99_ms": percentile_ms(v, 99)}
            for p, v in samples.items()}
    anchor, status, e2e = (rows[p] for p in PHASES)
    return {
        "clients": args.clients, "think_s": args.think, "rounds": args.rounds, "phase_seconds": args.phase_seconds,
        "answers": {"ok": answers.ok, "wrong": answers.wrong, "examples": answers.examples,
                    "report_bytes": len(reference)},
        "rows": rows,
        "ratios": {
            "status_p50_vs_anchor": status["p50_ms"] / anchor["p50_ms"],
            "status_p99_vs_anchor": status["p99_ms"] / anchor["p99_ms"],
            "e2e_p50_vs_anchor": e2e["p50_ms"] / anchor["p50_ms"],
            "e2e_p99_vs_anchor": e2e["p99_ms"] / anchor["p99_ms"],
        },
        "target_e2e_p99_ms": TARGET_E2E_P99_MS,
        "met": e2e["p99_ms"] < TARGET_E2E_P99_MS,
    }


def print_result(res: dict[str, Any]) -> None:
    print(f"\n== Figure 6: service overhead, {res['clients']} clients on loopback, think {res['think_s']} s, "
          f"{res['rounds']} rounds x {res['phase_seconds']} s per phase")
    print(f"   {'':<42} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for p, r in res["rows"].items():
        print(f"   {p:<42} {r['n']:>6} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    q = res["ratios"]
    print(f"   status / anchor: p50 {q['status_p50_vs_anchor']:.2f}x, p99 {q['status_p99_vs_anchor']:.2f}x")
    print(f"   cache-hit end to end / anchor: p50 {q['e2e_p50_vs_anchor']:.2f}x, p99 {q['e2e_p99_vs_anchor']:.2f}x")
    e2e = res["rows"][PHASES[2]]["p99_ms"]
    print(f"   cache-hit end-to-end p99 {e2e:.1f} ms, target < {res['target_e2e_p99_ms']:.0f} ms: "
          f"{'met' if res['met'] else 'NOT met'}")
    a = res["answers"]
    for p in PHASES:
        print(f"   answers {p}: {a['ok'][p]} right, {a['wrong'][p]} wrong")
    for e in a["examples"]:
        print(f"   wrong answer: {e}")


def to_report(res: dict[str, Any]) -> Report:
    """The result as figure 6 of ``bench.run``: rows in its table, the answers as correctness checks."""
    rep = Report("6", "service overhead around a cached result (API on loopback, anchor /healthz)")
    rep.setup = {"clients": res["clients"], "think_s": res["think_s"],
                 "phases": f"{res['rounds']} rounds x {len(PHASES)} phases x {res['phase_seconds']} s, round-robin"}
    anchor, status, e2e = (res["rows"][p] for p in PHASES)
    q = res["ratios"]

    def note(r: dict[str, Any]) -> str:
        return f"p50 {r['p50_ms']:.1f} ms, n={r['n']}"

    rep.row("anchor GET /healthz p99", anchor["p99_ms"], "ms", note=note(anchor))
    rep.row("status GET /v1/jobs/{id} p99", status["p99_ms"], "ms", note=note(status))
    rep.row("cache hit POST /v1/jobs + GET report, end-to-end p99", e2e["p99_ms"], "ms",
            f"< {res['target_e2e_p99_ms']:.0f}", res["met"], note=note(e2e))
    rep.row("status / anchor, p99", q["status_p99_vs_anchor"], "x", note=f"p50 {q['status_p50_vs_anchor']:.2f}x")
    rep.row("cache-hit end to end / anchor, p99", q["e2e_p99_vs_anchor"], "x",
            note=f"p50 {q['e2e_p50_vs_anchor']:.2f}x")
    a = res["answers"]
    wrong = "; ".join(a["examples"])
    rep.check("cache hits: 202 succeeded cache_hit=true, report = the computed one", a["wrong"][PHASES[2]] == 0
              and a["ok"][PHASES[2]] > 0, f"{a['ok'][PHASES[2]]} right, {a['wrong'][PHASES[2]]} wrong "
              f"({a['report_bytes']} report bytes compared each time){': ' + wrong if wrong else ''}")
    rep.check("status reads and /healthz answered right", a["wrong"][PHASES[0]] + a["wrong"][PHASES[1]] == 0,
              f"{a['ok'][PHASES[0]] + a['ok'][PHASES[1]]} right, {a['wrong'][PHASES[0]] + a['wrong'][PHASES[1]]} wrong")
    return rep


def figure(clients: int = 50, rounds: int = 2, phase_seconds: float = 5.0, think: float = 1.0) -> Report:
    """Figure 6 for ``bench.run``: a fresh local service, measured, stopped."""
    args = argparse.Namespace(clients=clients, rounds=rounds, phase_seconds=phase_seconds, think=think)
    with local_service(clients, env=NO_LIMITS) as target:
        res = asyncio.run(run(target, args))
    return to_report(res)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    # 1 s: twice as eager as the Retry-After (2 s) the API tells clients to wait; 0.2 s saturates 2 cores.
    ap.add_argument("--think", type=float, default=1.0, help="seconds each client waits between interactions")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phase-seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "service_overhead.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"starting a service on loopback and {args.clients} API keys ...", flush=True)
    with local_service(args.clients, env=NO_LIMITS) as target:
        res = asyncio.run(run(target, args))
    res["machine"] = machine()
    print_result(res)
    write_json(args.out, res)
    print(f"   written to {args.out}")
    return 0 if all(c.ok for c in to_report(res).checks) else 1


if __name__ == "__main__":
    sys.exit(main())
