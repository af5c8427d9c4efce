"""``etm``: the local subcommands (``salience``, ``score``, ``merge``: scoring on this machine, no server; they
need the full package, the domain) plus the remote ones that drive an Explain-to-Me service:

```
etm salience --model FILE --images DIR --out MAPS.npz
etm score --candidate NAME=FILE[,FILE...] ... --dataset DIR [--ood DIR] [--shard I/N] --out DIR
etm merge SHARD_DIR... --out DIR
etm models push FILE [--metadata JSON|FILE]         etm datasets push DIR|ARCHIVE
etm jobs submit --candidate NAME=ID[,ID...] ... --dataset ID [--ood ID] [--measures ...] [--wait]
etm jobs status|wait|report|cancel|artifacts JOB    etm jobs list
etm compare JOB                                     etm leaderboard DATASET
etm gate JOB --require 'stability.ssim>=0.6' [--require ...] [--candidate NAME]
etm mlflow-log JOB [--tracking-uri URI] [--run-id ID | --parent-run-id ID] [--experiment NAME]
```

The service is ``--url`` or ``$ETM_API_URL`` (default http://127.0.0.1:8000); ``--api-key`` or ``$ETM_API_KEY``
is sent as a bearer token. Results go to stdout (a table, or JSON with ``--json``), progress and messages to
stderr, so ``JOB=$(etm jobs submit ...)`` captures the job id.

One parser (``build_parser``) holds every subcommand and is parsed once; every subcommand exits with a code
of one table, ``client.exit_codes.ExitCode``: 0 ok; 1 a gate requirement failed, or a waited-for job failed
or was canceled; 2 bad usage or input (the message says what to fix; includes the service's 4xx answers);
3 the service could not be reached or failed (5xx); 4 an internal error (a bug: traceback on stderr);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client import builtin_names
from client.endpoints import job_body
from client.exit_codes import ExitCode, UsageError, exit_code_for
from client.gate import format_table, parse_requirements
from client.http import ENV_KEY, ENV_URL, Client
from client.output import ci_text, err, num, print_json, print_warnings, progress_printer, table
from client.retry import RetryEvent, RetryPolicy
from client.types import Job, Report

# -- remote commands -------------------------------------------------------------------------------


def _on_retry(ev: RetryEvent) -> None:
    what = f"answered {ev.status}" if ev.status else "could not be reached"
    err(f"the service {what} ({ev.reason}); retrying in {ev.wait:.1f} s (try {ev.attempt + 1})")


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
        err(f"using the metadata sidecar {path.name}.json")
    with _client(args) as c:
        model = c.push_model(path, meta)
    if args.json:
        print_json(model.raw)
    else:
        err(f"{'registered' if model.created else 'already registered'} {model.filename} ({model.format}, "
            f"{model.bytes} bytes) as {model.id}")
        print_warnings(model.raw.get("warnings") or [])
        print(model.id)
    return ExitCode.OK


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        models = c.models()
    if args.json:
        print_json([m.raw for m in models])
        return ExitCode.OK
    rows = [(m.id, m.format, m.filename, m.family or "", m.sha256[:12]) for m in models]
    print(table(rows, ("ID", "FORMAT", "FILE", "FAMILY", "SHA256")))
    return ExitCode.OK


def cmd_datasets_push(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with _client(args) as c:
        err(f"uploading {path}{' (zipped on the fly)' if path.is_dir() else ''}")
        ds = c.push_dataset(path)
    if args.json:
        print_json(ds.raw)
    else:
        counts = ", ".join(f"{k}: {v}" for k, v in ds.counts.items())
        skipped = f"; {ds.n_skipped} files skipped (see --json)" if ds.n_skipped else ""
        err(f"{'registered' if ds.created else 'already registered'} {ds.name}: {ds.n_images} images "
            f"({counts}){skipped} as {ds.id}")
        print(ds.id)
    return ExitCode.OK


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        items = c.datasets()
    if args.json:
        print_json([d.raw for d in items])
        return ExitCode.OK
    rows = [(d.id, d.name, d.n_images, ",".join(d.classes), d.default_split or "") for d in items]
    print(table(rows, ("ID", "NAME", "IMAGES", "CLASSES", "DEFAULT SPLIT")))
    return ExitCode.OK


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
                err(f"{ref} -> {model.id}")
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
        err(f"submitted {job.id} ({job.status}{', from the result cache' if job.cache_hit else ''})")
        if not args.wait:
            _print_job_or_id(args, job)
            return ExitCode.OK
        return _wait_and_print(args, c, job.id)


def _print_job_or_id(args: argparse.Namespace, job: Job) -> None:
    if args.json:
        print_json(job.raw)
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
        problem = job.error or {}
        err(f"job {job.id} {job.status}" + (f": {problem.get('title')}: {problem.get('detail')}" if problem else ""))
        return ExitCode.FAILED
    err(f"job {job.id} succeeded" + (f" in {job.duration_seconds:.1f} s" if job.duration_seconds else ""))
    return ExitCode.OK


def cmd_jobs_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.job(args.job)
    if args.json:
        print_json(job.raw)
        return ExitCode.OK
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
    return ExitCode.OK


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _wait_and_print(args, c, args.job)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        jobs = c.jobs(args.status, args.limit)
    if args.json:
        print_json([j.raw for j in jobs])
        return ExitCode.OK
    rows = []
    for j in jobs:
        names = ",".join(cd["name"] for cd in (j.spec or {}).get("candidates", []))
        rows.append((j.id, j.status, f"{j.progress.fraction:.0%}", (j.spec or {}).get("dataset", ""), names,
                     j.created_at))
    print(table(rows, ("JOB", "STATUS", "DONE", "DATASET", "CANDIDATES", "CREATED")))
    return ExitCode.OK


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
        err(f"wrote {args.out}")
    else:
        sys.stdout.write(data)
    return ExitCode.OK


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.cancel(args.job)
    err(f"job {job.id}: {job.status}" + (" (stops at its next batch)" if job.status == "running" else ""))
    _print_job_or_id(args, job)
    return ExitCode.OK


def cmd_jobs_artifacts(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if not args.out:
            arts = c.artifacts(args.job)
            print(table([(a.name, a.bytes, a.media_type) for a in arts], ("NAME", "BYTES", "TYPE")))
            return ExitCode.OK
        paths = c.download_artifacts(args.job, args.out)
    err(f"wrote {len(paths)} artifacts to {args.out}")
    return ExitCode.OK


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
        untrusted = {e.candidate for e in ranked.ranking if not e.trusted} if ranked else set()
        cells = []
        for cand in names:
            md = report.measure(cand, m) or {}
            rank = cmp_.rank_of(cand, m)
            star = "!" if cand in untrusted else "*" if rank is not None and holds_first_place(rank, ranks) else " "
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
    if cmp_.sanity is not None:
        failed = cmp_.sanity.untrusted
        footer.append(
            "sanity check: " + (f"NOT TRUSTWORTHY: {', '.join(failed)} ({cmp_.sanity.rule}); ! = salience-based "
                                "measure of a candidate that failed, ranked but holding no first place"
                                if failed else f"every candidate passed ({cmp_.sanity.rule})")
        )
    return out + "\n" + "\n".join(footer)


def cmd_compare(args: argparse.Namespace) -> int:
    with _client(args) as c:
        report = _report_after_wait(args, c)
    if args.json:
        print_json(report.raw.get("comparison"))
    else:
        print(comparison_table(report, args.all))
        print_warnings(report.raw.get("warnings") or [])
    return ExitCode.OK


def cmd_gate(args: argparse.Namespace) -> int:
    from client.gate import evaluate

    requirements = parse_requirements(args.require or [])  # before any request: usage errors come first
    with _client(args) as c:
        report = _report_after_wait(args, c)
    result = evaluate(report.raw, requirements, args.candidate)
    if args.json:
        print_json({"job": args.job, **result.as_dict()})
    else:
        print(format_table(result))
    for check in result.checks:
        if not check.passed:
            err(f"requirement failed: {check.message}")
    n_fail = len(result.failures)
    err(f"gate {'passed' if result.passed else 'FAILED'}: {len(result.checks) - n_fail} of {len(result.checks)} "
        "checks passed")
    return ExitCode.OK if result.passed else ExitCode.FAILED


def cmd_leaderboard(args: argparse.Namespace) -> int:
    with _client(args) as c:
        lb = c.leaderboard(args.dataset, args.measure)
    if args.json:
        print_json(lb.raw)
        return ExitCode.OK
    if not lb.boards:
        err(f"no finished job on {args.dataset} yet")
        return ExitCode.OK
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
    return ExitCode.OK


def cmd_mlflow_log(args: argparse.Namespace) -> int:
    from client.mlflow_log import MlflowMissing, log_job

    with _client(args) as c:
        try:
            out = log_job(c, args.job, args.tracking_uri, args.experiment, args.run_name,
                          with_artifacts=not args.no_artifacts, run_id=args.run_id, parent_run_id=args.parent_run_id)
        except (MlflowMissing, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    if args.json:
        print_json(out)
    else:
        what = ("was logged there already; nothing added" if out["already_logged"] else
                f"{len(out['candidate_runs'])} candidate runs, {out['metrics']} metrics")
        err(f"job {args.job} -> MLflow {out['tracking_uri']}, run {out['run_id']}: {what}")
        print(out["run_id"])
    return ExitCode.OK


# -- the parser ------------------------------------------------------------------------------------


_REMOTE_DEFAULTS = {"url": None, "api_key": None, "timeout_http": 60.0, "retries": 5, "json": False}


def _add_remote_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The service options. They go on the top parser (with the real defaults, ``$ETM_API_URL`` and
    ``$ETM_API_KEY`` read then) and on every remote subcommand with ``SUPPRESS`` defaults, so that
    ``etm --url X jobs list`` and ``etm jobs list --url X`` both work and a subcommand never resets a value
    given before it."""

    def default(name: str) -> object:
        if suppress:
            return argparse.SUPPRESS
        env = {"url": ENV_URL, "api_key": ENV_KEY}.get(name)
        return os.environ.get(env) if env else _REMOTE_DEFAULTS[name]

    g = p.add_argument_group("service (also accepted before the subcommand)")
    g.add_argument("--url", default=default("url"), help=f"service URL (default ${ENV_URL}, else "
                   "http://127.0.0.1:8000)")
    g.add_argument("--api-key", default=default("api_key"), help=f"bearer token (default ${ENV_KEY})")
    g.add_argument("--http-timeout", dest="timeout_http", type=float, default=default("timeout_http"),
                   help="seconds per request (default 60)")
    g.add_argument("--retries", type=int, default=default("retries"),
                   help="tries per request when the service is busy (429/503) or unreachable (default 5)")
    g.add_argument("--json", action="store_true", default=default("json"), help="print JSON instead of a table")


def _remote_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    _add_remote_options(p, suppress=True)
    return p


def _wait_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait for the job to end first (progress on stderr){what}")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")


def _cmd_local(args: argparse.Namespace) -> int:
    """``salience``, ``score``, ``merge``: carried out by the domain (``etm.cli``), imported only now so that
    the remote commands run where only httpx is installed (a CI runner driving a GPU service)."""
    try:
        from etm.cli import run_local
    except ImportError as exc:
        raise UsageError(f"`etm {args.command}` scores on this machine and needs the full explain-to-me package "
                         f"(the domain: torch, onnxruntime...), not just the client ({exc})") from exc
    return run_local(args)


def _local_options(p: argparse.ArgumentParser) -> None:
    """Options of ``salience`` and ``score``, with the domain's defaults (``jobs submit`` has the same names but
    leaves what is not given to the service)."""
    p.add_argument("--method", default="gradcam",
                   help="salience method (default gradcam): " + ", ".join(builtin_names.METHODS))
    p.add_argument("--layer", default="auto", help="target layer: auto, torchcam or a layer/node name")
    p.add_argument(
        "--profile",
        choices=("default", "paper"),
        default="default",
        help="paper: every choice of the authors' released code at once (see docs/MEASURES.md)",
    )
    p.add_argument("--target", default="predicted", help="predicted, a class index or a class name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split", default=None, help="dataset split (default: test when the dataset has splits)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch threads (default 1: on few cores OpenMP barriers slow the small measure ops)",
    )
    p.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")


def _add_local_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("salience", help="compute salience maps of a folder of images (locally)")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, help="dataset folder (class sub-folders or manifest.csv)")
    p.add_argument("--out", required=True, help="output .npz")
    _local_options(p)
    p = sub.add_parser("score", help="evaluate candidates locally; writes report.json + per_image.csv")
    p.add_argument("--candidate", action="append", required=True, help="NAME=M1[,M2,...] (repeatable)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--ood", default=None, help="out-of-set dataset folder")
    p.add_argument("--ood-split", default=None)
    p.add_argument("--measures", default="all",
                   help="a comma list of " + ", ".join(builtin_names.MEASURES) + "; or all (the default): every one "
                   "but the opt-in " + ", ".join(builtin_names.OPT_IN))
    p.add_argument("--params", default=None, help="JSON file of per-measure parameters")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--shard", default=None, help="I/N: compute only shard I of N (then `etm merge`)")
    p.add_argument("--out", required=True)
    _local_options(p)
    p = sub.add_parser("merge", help="merge `etm score --shard` outputs into one report")
    p.add_argument("shards", nargs="+")
    p.add_argument("--out", required=True)
    for name in ("salience", "score", "merge"):
        sub.choices[name].set_defaults(func=_cmd_local)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{version('explain-to-me')} (explain-to-me)"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (explain-to-me, not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The one parser of ``etm``: every subcommand, local and remote."""
    parser = argparse.ArgumentParser(
        prog="etm",
        description="Explain-to-Me: salience-based model measures, locally (salience, score, merge) or on a "
        "service (models, datasets, jobs, compare, gate, leaderboard, mlflow-log)",
        epilog="exit codes: " + ", ".join(f"{int(c)} {c.name.lower()}" for c in ExitCode) + " (docs/CLIENT.md)",
    )
    parser.add_argument("--version", action="version", version=f"etm {_version()}")
    _add_remote_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_local_commands(sub)
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
                   help="measure families, space or comma separated: " + ", ".join(builtin_names.MEASURES)
                   + "; or all (the default): every one but the opt-in " + ", ".join(builtin_names.OPT_IN))
    p.add_argument("--params", default=None, help="per-measure parameters: JSON or a JSON file")
    p.add_argument("--method", default=None,
                   help="salience method (default gradcam): " + ", ".join(builtin_names.METHODS))
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
    p.add_argument("--tracking-uri", default=None,
                   help="e.g. http://mlflow:5000, sqlite:///mlflow.db (default: MLFLOW_TRACKING_URI, else ./mlruns)")
    into = p.add_mutually_exclusive_group()
    into.add_argument("--run-id", default=None, help="log into this existing run (e.g. the model's training run)")
    into.add_argument("--parent-run-id", default=None, help="make the job's run a child of this existing run")
    p.add_argument("--experiment", default=None, help="default explain-to-me")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-artifacts", action="store_true", help="metrics and report.json only")
    p.set_defaults(func=cmd_mlflow_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure gets its code from one table
        code, message = exit_code_for(exc)
        if code is ExitCode.INTERNAL:
            traceback.print_exc()  # for the bug report
        err(message)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
