"""``etm``: the local subcommands (``salience``, ``score``, ``merge``; no server) plus the remote ones that
drive an Explain-to-Me service:

```
etm models push FILE [--metadata JSON|FILE]         etm datasets push DIR|ARCHIVE
etm jobs submit --candidate NAME=ID[,ID...] ... --dataset ID [--ood ID] [--measures ...] [--wait]
etm jobs status|wait|report|cancel|artifacts JOB    etm jobs list
etm compare JOB                                     etm leaderboard DATASET
etm gate JOB --require 'stability.ssim>=0.6' [--require ...] [--candidate NAME]
etm mlflow-log JOB --tracking-uri URI [--experiment NAME]
```

The service is ``--url`` or ``$ETM_API_URL`` (default http://127.0.0.1:8000); ``--api-key`` or ``$ETM_API_KEY``
is sent as a bearer token. Results go to stdout (a table, or JSON with ``--json``), progress and messages to
stderr, so ``JOB=$(etm jobs submit ...)`` captures the job id.

Exit codes: 0 ok; 1 a gate requirement failed, or a job failed or was canceled; 2 bad usage or input (the
message says what to fix; includes the service's 4xx answers); 3 the service could not be reached or failed
(5xx); 130 interrupted. The local subcommands keep their own codes (0, 2 bad input, 1 internal error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client.errors import ApiError, ConnectionFailed, EtmError, JobFailed, WaitTimeout
from client.gate import RequirementError, format_table, parse_requirements
from client.http import ENV_KEY, ENV_URL, Client, RetryEvent, RetryPolicy, job_body
from client.types import Job, Report

LOCAL_COMMANDS = ("salience", "score", "merge")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Bad arguments or input that argparse cannot see (exit 2)."""


# -- output helpers --------------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(f"etm: {msg}", file=sys.stderr)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(h) for h in header]] + [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def num(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def ci_text(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{num(ci[0])}, {num(ci[1])}]"
    return ""


# -- progress --------------------------------------------------------------------------------------


def _step_text(job: Job) -> str:
    """Inside one long salience call: its passes and the remaining time (``progress.step``)."""
    step = (job.raw.get("progress") or {}).get("step") if hasattr(job, "raw") else None
    if not isinstance(step, dict):
        return ""
    eta = step.get("eta_seconds")
    left = f", {eta:.0f} s left" if isinstance(eta, (int, float)) else ""
    return f" ({step.get('method')} {step.get('done')}/{step.get('total')} passes{left})"


def progress_printer(job_id: str, stream: Any = None) -> tuple[Callable[[Job], None], Callable[[], None]]:
    """A progress bar on stderr (tqdm on a terminal; one line per stage/10% step in logs)."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    state: dict[str, Any] = {"bar": None, "last": None}

    if tty:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency of the project
            tty = False

    def update(job: Job) -> None:
        p = job.progress
        pct = round(p.fraction * 100)
        if tty:
            bar = state["bar"]
            if bar is None:
                bar = state["bar"] = tqdm(total=100, file=stream, unit="%", desc=job_id, leave=True,
                                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
            bar.n = pct
            bar.set_postfix_str(f"{job.status} {p.stage} {p.done}/{p.total}{_step_text(job)}", refresh=False)
            bar.refresh()
            return
        key = (job.status, p.stage, pct // 10)
        if key != state["last"]:
            state["last"] = key
            where = job.status if p.stage in (job.status, "done") else f"{job.status} {p.stage} {p.done}/{p.total}"
            print(f"{job_id}: {where} ({pct}%)", file=stream, flush=True)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def _on_retry(ev: RetryEvent) -> None:
    what = f"answered {ev.status}" if ev.status else "could not be reached"
    _err(f"the service {what} ({ev.reason}); retrying in {ev.wait:.1f} s (try {ev.attempt + 1})")


# -- commands --------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    retry = RetryPolicy(attempts=max(1, args.retries))
    return Client(args.url, args.api_key, on_retry=_on_retry, timeout=args.timeout_http, retry=retry)


def cmd_models_push(args: argparse.Namespace) -> int:
    path = Path(args.file)
    meta: Any = None
    if args.metadata:
        text = args.metadata
        if not text.lstrip().startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--metadata is not valid JSON ({exc}); pass a JSON object or a JSON file") from exc
    elif not args.no_sidecar and path.with_name(path.name + ".json").is_file():
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        _err(f"using the metadata sidecar {path.name}.json")
    with _client(args) as c:
        model = c.push_model(path, meta)
    if args.json:
        _print_json(model.raw)
    else:
        _err(f"{'registered' if model.created else 'already registered'} {model.filename} ({model.format}, "
             f"{model.bytes} bytes) as {model.id}")
        _print_warnings(model.raw.get("warnings") or [])
        print(model.id)
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        models = c.models()
    if args.json:
        _print_json([m.raw for m in models])
        return EXIT_OK
    rows = [(m.id, m.format, m.filename, m.family or "", m.sha256[:12]) for m in models]
    print(table(rows, ("ID", "FORMAT", "FILE", "FAMILY", "SHA256")))
    return EXIT_OK


def cmd_datasets_push(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with _client(args) as c:
        _err(f"uploading {path}{' (zipped on the fly)' if path.is_dir() else ''}")
        ds = c.push_dataset(path)
    if args.json:
        _print_json(ds.raw)
    else:
        counts = ", ".join(f"{k}: {v}" for k, v in ds.counts.items())
        skipped = f"; {ds.n_skipped} files skipped (see --json)" if ds.n_skipped else ""
        _err(f"{'registered' if ds.created else 'already registered'} {ds.name}: {ds.n_images} images "
             f"({counts}){skipped} as {ds.id}")
        print(ds.id)
    return EXIT_OK


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        items = c.datasets()
    if args.json:
        _print_json([d.raw for d in items])
        return EXIT_OK
    rows = [(d.id, d.name, d.n_images, ",".join(d.classes), d.default_split or "") for d in items]
    print(table(rows, ("ID", "NAME", "IMAGES", "CLASSES", "DEFAULT SPLIT")))
    return EXIT_OK


def _candidates(args: argparse.Namespace, c: Client) -> dict[str, list[str]]:
    cands: dict[str, list[str]] = {}
    for text in args.candidate or []:
        if "=" not in text:
            raise UsageError(f"--candidate {text!r} must look like NAME=ID[,ID...] (model ids or model files)")
        name, refs = text.split("=", 1)
        ids = []
        for ref in (r.strip() for r in refs.split(",")):
            if not ref:
                continue
            if Path(ref).is_file():  # a local model file: push it first (content-addressed, so cheap twice)
                sidecar = Path(ref).with_name(Path(ref).name + ".json")
                meta = json.loads(sidecar.read_text()) if sidecar.is_file() else None
                model = c.push_model(ref, meta)
                _err(f"{ref} -> {model.id}")
                ids.append(model.id)
            else:
                ids.append(ref)
        if not ids:
            raise UsageError(f"--candidate {text!r} names no models")
        if name in cands:
            raise UsageError(f"candidate {name!r} is given twice")
        cands[name] = ids
    if args.family:
        fams = {f.name: f.models for f in c.families()}
        for text in args.family:
            name, fam = text.split("=", 1) if "=" in text else (text, text)
            if fam not in fams:
                raise UsageError(f"no built-in family {fam!r}; the service has {sorted(fams)}")
            cands[name] = fams[fam]
    if not cands:
        raise UsageError("give at least one --candidate NAME=ID[,ID...] (or --family NAME)")
    return cands


def _measures(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [m.strip() for v in values for m in v.split(",") if m.strip()]
    return ["all"] if out == ["all"] else out


def _target(t: str | None) -> Any:
    if t is None:
        return None
    return int(t) if t.lstrip("-").isdigit() else t


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        params = None
        if args.params:
            try:
                params = json.loads(Path(args.params).read_text() if Path(args.params).is_file() else args.params)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--params is neither a JSON file nor JSON ({exc})") from exc
        body = job_body(
            _candidates(args, c),
            args.dataset,
            split=args.split,
            ood_dataset=args.ood,
            ood_split=args.ood_split,
            measures=_measures(args.measures),
            measure_params=params,
            method=args.method,
            layer=args.layer,
            profile=args.profile,
            target=_target(args.target),
            seed=args.seed,
            batch_size=args.batch_size,
            bootstrap_resamples=args.bootstrap,
            max_images=args.max_images,
            overlays=args.overlays,
            callback_url=args.callback_url,
        )
        job = c.submit_spec(body, args.idempotency_key)
        _err(f"submitted {job.id} ({job.status}{', from the result cache' if job.cache_hit else ''})")
        if not args.wait:
            _print_job_or_id(args, job)
            return EXIT_OK
        return _wait_and_print(args, c, job.id)


def _print_job_or_id(args: argparse.Namespace, job: Job) -> None:
    if args.json:
        _print_json(job.raw)
    else:
        print(job.id)


def _wait_and_print(args: argparse.Namespace, c: Client, job_id: str) -> int:
    update, close = progress_printer(job_id)
    try:
        job = c.wait(job_id, timeout=args.timeout, on_progress=update, raise_on_failure=False)
    finally:
        close()
    _print_job_or_id(args, job)
    if not job.succeeded:
        err = job.error or {}
        _err(f"job {job.id} {job.status}" + (f": {err.get('title')}: {err.get('detail')}" if err else ""))
        return EXIT_FAILED
    _err(f"job {job.id} succeeded" + (f" in {job.duration_seconds:.1f} s" if job.duration_seconds else ""))
    return EXIT_OK


def cmd_jobs_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.job(args.job)
    if args.json:
        _print_json(job.raw)
        return EXIT_OK
    p = job.progress
    rows = [
        ("job", job.id),
        ("status", job.status + (" (cache hit)" if job.cache_hit else "")),
        ("progress", f"{p.stage} {p.done}/{p.total} ({p.fraction:.0%})"),
        ("images", job.n_images),
        ("created", job.created_at),
        ("finished", job.finished_at),
        ("duration", f"{job.duration_seconds:.1f} s" if job.duration_seconds else None),
    ]
    if job.error:
        rows.append(("error", f"{job.error.get('title')}: {job.error.get('detail')}"))
    for k, v in rows:
        if v is not None:
            print(f"{k:<9} {v}")
    return EXIT_OK


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _wait_and_print(args, c, args.job)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        jobs = c.jobs(args.status, args.limit)
    if args.json:
        _print_json([j.raw for j in jobs])
        return EXIT_OK
    rows = []
    for j in jobs:
        names = ",".join(cd["name"] for cd in (j.spec or {}).get("candidates", []))
        rows.append((j.id, j.status, f"{j.progress.fraction:.0%}", (j.spec or {}).get("dataset", ""), names,
                     j.created_at))
    print(table(rows, ("JOB", "STATUS", "DONE", "DATASET", "CANDIDATES", "CREATED")))
    return EXIT_OK


def cmd_jobs_report(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.format == "json":
            data = json.dumps(c.report(args.job).raw, indent=2) + "\n"
        elif args.format == "csv":
            data = c.report_csv(args.job)
        else:
            data = c.report_html(args.job)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(data, encoding="utf-8")
        _err(f"wrote {args.out}")
    else:
        sys.stdout.write(data)
    return EXIT_OK


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.cancel(args.job)
    _err(f"job {job.id}: {job.status}" + (" (stops at its next batch)" if job.status == "running" else ""))
    _print_job_or_id(args, job)
    return EXIT_OK


def cmd_jobs_artifacts(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if not args.out:
            arts = c.artifacts(args.job)
            print(table([(a.name, a.bytes, a.media_type) for a in arts], ("NAME", "BYTES", "TYPE")))
            return EXIT_OK
        paths = c.download_artifacts(args.job, args.out)
    _err(f"wrote {len(paths)} artifacts to {args.out}")
    return EXIT_OK


def _report_after_wait(args: argparse.Namespace, c: Client) -> Report:
    if getattr(args, "wait", False):
        update, close = progress_printer(args.job)
        try:
            c.wait(args.job, timeout=args.timeout, on_progress=update)
        finally:
            close()
    return c.report(args.job)


def comparison_table(report: Report, include_all: bool = False) -> str:
    """Measures x candidates: ``#rank value [CI]``; a ``*`` marks a first place (``etm.comparison.holds_first_place``:
    the rule the report page and the leaderboard use)."""
    # The one first-place rule; etm.comparison needs no numpy to import, so the client stays httpx-only.
    from etm.comparison import first_places, holds_first_place

    cmp_ = report.comparison
    names = report.candidates
    measures = [m for m in report.measure_names() if include_all or m in cmp_.measures]
    rows = []
    for m in measures:
        ranked = cmp_.measures.get(m)
        direction = ranked.direction if ranked else "-"
        ranks = [e.rank for e in ranked.ranking] if ranked else []
        cells = []
        for cand in names:
            md = report.measure(cand, m) or {}
            rank = cmp_.rank_of(cand, m)
            star = "*" if rank is not None and holds_first_place(rank, ranks) else " "
            prefix = f"{star}#{rank} " if rank is not None else ""
            cells.append(f"{prefix}{num(md.get('value'))} {ci_text(md.get('ci'))}".strip() if md else "-")
        rows.append((m, direction, *cells))
    out = table(rows, ("MEASURE", "BETTER", *names))
    wins = first_places(report.raw.get("comparison") or {})
    footer = [
        "",
        "#rank: 1 + candidates significantly better (paired bootstrap, 95%); equal ranks are ties; "
        "* = first place (rank 1, not tied with everyone)",
        "first places: " + ", ".join(f"{k} {v}" for k, v in wins.items()),
        "Pareto set: " + (", ".join(cmp_.pareto_set) or "(empty)"),
    ]
    return out + "\n" + "\n".join(footer)


def _print_warnings(warnings: Sequence[dict[str, Any]]) -> None:
    """Likely metadata mistakes on stderr, each with its fix (a model's or a report's ``warnings``)."""
    for w in warnings:
        where = f"candidate {w['candidate']!r} run {w['run']}: " if "candidate" in w else ""
        _err(f"warning: {where}{w.get('message', '')} [{w.get('code', '')}]\n    fix: {w.get('fix', '')}")


def cmd_compare(args: argparse.Namespace) -> int:
    with _client(args) as c:
        report = _report_after_wait(args, c)
    if args.json:
        _print_json(report.raw.get("comparison"))
    else:
        print(comparison_table(report, args.all))
        _print_warnings(report.raw.get("warnings") or [])
    return EXIT_OK


def cmd_gate(args: argparse.Namespace) -> int:
    from client.gate import evaluate

    requirements = parse_requirements(args.require or [])  # before any request: usage errors come first
    with _client(args) as c:
        report = _report_after_wait(args, c)
    result = evaluate(report.raw, requirements, args.candidate)
    if args.json:
        _print_json({"job": args.job, **result.as_dict()})
    else:
        print(format_table(result))
    for check in result.checks:
        if not check.passed:
            _err(f"requirement failed: {check.message}")
    n_fail = len(result.failures)
    _err(f"gate {'passed' if result.passed else 'FAILED'}: {len(result.checks) - n_fail} of {len(result.checks)} "
         "checks passed")
    return EXIT_OK if result.passed else EXIT_FAILED


def cmd_leaderboard(args: argparse.Namespace) -> int:
    with _client(args) as c:
        lb = c.leaderboard(args.dataset, args.measure)
    if args.json:
        _print_json(lb.raw)
        return EXIT_OK
    if not lb.boards:
        _err(f"no finished job on {args.dataset} yet")
        return EXIT_OK
    for b in lb.boards:
        cfg = b["config"]
        shown = ("split", "ood_dataset", "method", "target", "seed", "max_images", "bootstrap_resamples")
        settings = " ".join(f"{k}={cfg[k]}" for k in shown if cfg.get(k) is not None)
        print(f"configuration {b['config_key'][:12]} ({b['n_jobs']} jobs): {settings}")
        rows = []
        for mname, m in b["measures"].items():
            order = "  ".join(f"#{e['rank']} {e['candidate']} {num(e['value'])}" for e in m["ranking"])
            rows.append((mname, m["direction"], order))
        print(table(rows, ("MEASURE", "BETTER", "RANKING")))
        print()
    return EXIT_OK


def cmd_mlflow_log(args: argparse.Namespace) -> int:
    from client.mlflow_log import MlflowMissing, log_job

    with _client(args) as c:
        try:
            out = log_job(c, args.job, args.tracking_uri, args.experiment, args.run_name,
                          with_artifacts=not args.no_artifacts)
        except MlflowMissing as exc:
            raise UsageError(str(exc)) from exc
    if args.json:
        _print_json(out)
    else:
        _err(f"logged job {args.job} to {args.tracking_uri}: run {out['run_id']} with "
             f"{len(out['candidate_runs'])} candidate runs, {out['metrics']} metrics")
        print(out["run_id"])
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    # argparse offers no public accessor for an existing parser's subcommands; the local CLI made them.
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _remote_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("service")
    g.add_argument("--url", default=os.environ.get(ENV_URL), help=f"service URL (default ${ENV_URL}, else "
                   "http://127.0.0.1:8000)")
    g.add_argument("--api-key", default=os.environ.get(ENV_KEY), help=f"bearer token (default ${ENV_KEY})")
    g.add_argument("--http-timeout", dest="timeout_http", type=float, default=60.0, help="seconds per request")
    g.add_argument("--retries", type=int, default=5,
                   help="tries per request when the service is busy (429/503) or unreachable (default 5)")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _wait_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait for the job to end first (progress on stderr){what}")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")


def _local_parser() -> argparse.ArgumentParser:
    """The local CLI's parser (salience, score, merge); a bare one where the domain is not installed (a CI
    runner that only drives a service needs httpx, not torch)."""
    try:
        from etm.cli import build_parser as local_parser
    except ImportError:
        parser = argparse.ArgumentParser(prog="etm")
        parser.add_subparsers(dest="command", required=True)
        return parser
    return local_parser()


def build_parser() -> argparse.ArgumentParser:
    parser = _local_parser()
    parser.description = ("Explain-to-Me: salience-based model measures, locally (salience, score, merge) or on a "
                          "service (models, datasets, jobs, compare, gate, leaderboard, mlflow-log)")
    sub = _subparsers(parser)
    remote = _remote_options()

    models = sub.add_parser("models", help="upload and list models on the service")
    msub = models.add_subparsers(dest="action", required=True)
    p = msub.add_parser("push", parents=[remote], help="upload an .onnx or .pt2 model; prints its id")
    p.add_argument("file")
    p.add_argument("--metadata", help="JSON object or JSON file (default: the FILE.json sidecar when present)")
    p.add_argument("--no-sidecar", action="store_true", help="do not send FILE.json as the metadata")
    p.set_defaults(func=cmd_models_push)
    p = msub.add_parser("list", parents=[remote], help="list models")
    p.set_defaults(func=cmd_models_list)

    datasets = sub.add_parser("datasets", help="upload and list datasets on the service")
    dsub = datasets.add_subparsers(dest="action", required=True)
    p = dsub.add_parser("push", parents=[remote], help="upload a dataset folder (zipped on the fly) or archive")
    p.add_argument("path", metavar="DIR|ARCHIVE")
    p.set_defaults(func=cmd_datasets_push)
    p = dsub.add_parser("list", parents=[remote], help="list datasets")
    p.set_defaults(func=cmd_datasets_list)

    jobs = sub.add_parser("jobs", help="submit and follow evaluation jobs on the service")
    jsub = jobs.add_subparsers(dest="action", required=True)
    p = jsub.add_parser("submit", parents=[remote], help="submit a job; prints its id")
    p.add_argument("--candidate", action="append", metavar="NAME=ID[,ID...]",
                   help="a candidate and its models: ids, or local model files (pushed first); repeatable")
    p.add_argument("--family", action="append", metavar="NAME[=FAMILY]",
                   help="a built-in family as a candidate (GET /v1/families); repeatable")
    p.add_argument("--dataset", required=True, help="dataset id (etm datasets push prints it)")
    p.add_argument("--split", default=None)
    p.add_argument("--ood", default=None, help="out-of-set dataset id")
    p.add_argument("--ood-split", default=None)
    p.add_argument("--measures", nargs="+", default=None, metavar="MEASURE",
                   help="measure families (space or comma separated) or all (default: all)")
    p.add_argument("--params", default=None, help="per-measure parameters: JSON or a JSON file")
    p.add_argument("--method", default=None, help="salience method (default gradcam)")
    p.add_argument("--layer", default=None, help="target layer: auto, torchcam or a layer/node name")
    p.add_argument("--profile", choices=("default", "paper"), default=None,
                   help="paper: every choice of the authors' released code at once")
    p.add_argument("--target", default=None, help="predicted, a class index or a class name")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--overlays", type=int, default=None, help="overlay images per candidate in the artifacts")
    p.add_argument("--callback-url", default=None)
    p.add_argument("--idempotency-key", default=None, help="default: a fresh one (safe retries)")
    _wait_options(p, "; exit 1 when it fails")
    p.set_defaults(func=cmd_jobs_submit)
    for name, func, text in (
        ("status", cmd_jobs_status, "show a job's status and progress"),
        ("wait", cmd_jobs_wait, "wait for a job to end (progress on stderr); exit 1 unless it succeeded"),
        ("cancel", cmd_jobs_cancel, "cancel a job"),
    ):
        p = jsub.add_parser(name, parents=[remote], help=text)
        p.add_argument("job")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=None)
        p.set_defaults(func=func)
    p = jsub.add_parser("report", parents=[remote], help="fetch a job's report (json, csv or one HTML page)")
    p.add_argument("job")
    p.add_argument("--format", choices=("json", "csv", "html"), default="json")
    p.add_argument("--out", default=None, help="write to this file (default stdout)")
    p.set_defaults(func=cmd_jobs_report)
    p = jsub.add_parser("artifacts", parents=[remote], help="list a job's artifacts, or download them with --out")
    p.add_argument("job")
    p.add_argument("--out", default=None, help="folder to download every artifact into")
    p.set_defaults(func=cmd_jobs_artifacts)
    p = jsub.add_parser("list", parents=[remote], help="list jobs, newest first")
    p.add_argument("--status", default=None, choices=("queued", "running", "succeeded", "failed", "canceled"))
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs_list)

    p = sub.add_parser("compare", parents=[remote], help="a job's ranking: measures x candidates, Pareto set")
    p.add_argument("job")
    p.add_argument("--all", action="store_true", help="also measures without a preferred direction")
    _wait_options(p, "")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "gate",
        parents=[remote],
        help="check requirements on a job's report; exit 1 when one fails",
        description="Requirements: MEASURE[:STAT] OP TARGET with STAT value|ci_low|ci_high|rank, OP >= <= > <, "
        "TARGET a number or @CANDIDATE[+-MARGIN] (paired comparison with another candidate of the job: '>=' "
        "fails only when significantly worse). Examples: 'stability.ssim>=0.6', 'entropy.spatial<=0.5', "
        "'stability.ssim:ci_low>=0.55', 'degradation.deletion>=@baseline-0.01'.",
    )
    p.add_argument("job")
    p.add_argument("--require", action="append", metavar="REQUIREMENT", help="repeatable; all must hold")
    p.add_argument("--candidate", action="append", metavar="NAME", help="check only these (default: every one)")
    _wait_options(p, "")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("leaderboard", parents=[remote], help="rank every candidate scored on a dataset")
    p.add_argument("dataset")
    p.add_argument("--measure", default=None)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("mlflow-log", parents=[remote], help="log a job's measures and report to MLflow")
    p.add_argument("job")
    p.add_argument("--tracking-uri", required=True, help="e.g. file:///tmp/mlruns, sqlite:///mlflow.db, http://...")
    p.add_argument("--experiment", default=None, help="default explain-to-me")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-artifacts", action="store_true", help="metrics and report.json only")
    p.set_defaults(func=cmd_mlflow_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in LOCAL_COMMANDS:
        from etm.cli import main as local_main

        return local_main(argv)
    try:
        return int(args.func(args))
    except (UsageError, RequirementError, FileNotFoundError, IsADirectoryError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except ValueError as exc:  # bad local input, e.g. metadata that is not JSON
        _err(f"error: {exc}")
        return EXIT_USAGE
    except JobFailed as exc:
        _err(str(exc))
        return EXIT_FAILED
    except WaitTimeout as exc:
        _err(str(exc))
        return EXIT_FAILED
    except ApiError as exc:
        _err(f"the service answered {exc.status} {exc.title}: {exc.detail}")
        return EXIT_SERVICE if exc.status >= 500 else EXIT_USAGE
    except ConnectionFailed as exc:
        _err(f"{exc}; is the service running? (--url or ${ENV_URL})")
        return EXIT_SERVICE
    except EtmError as exc:
        _err(str(exc))
        return EXIT_SERVICE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
