"""The local subcommands of ``etm`` (salience maps, full evaluation, shard merge: no server), carried out with
the domain. Their options are parsed by ``etm``'s one parser (``client.cli.build_parser``); ``run_local``
runs one, turning the domain's refusals into ``UsageError`` (exit 2 in ``client.exit_codes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from client.exit_codes import ExitCode, UsageError
from client.output import print_warnings
from etm.errors import BadInput, ModelRuntimeError


def _progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    from etm.salience.progress import STEP_PREFIX

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        step = stage.startswith(STEP_PREFIX)  # inside one long salience call (Score-CAM's masked passes)
        if bar is None:
            desc = f"  {stage[len(STEP_PREFIX):]} (this call)" if step else stage
            # smoothing=0: the rate is the average since the bar opened (the models load before the first
            # batch, so an instantaneous rate opened with a meaningless figure); elapsed and ETA follow from it.
            bar = bars[stage] = tqdm(
                total=total, desc=desc, unit="pass" if step else "img", file=sys.stderr, leave=not step, smoothing=0,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [elapsed {elapsed}, ETA {remaining}, "
                "{rate_fmt}]",
            )
        elif done < bar.n or total != bar.total:  # the next call: its own elapsed time and ETA
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _parse_candidate(text: str) -> dict[str, object]:
    if "=" not in text:
        raise BadInput(f"--candidate {text!r} must look like NAME=model1.onnx[,model2.onnx,...]")
    name, models = text.split("=", 1)
    files = [m for m in models.split(",") if m]
    for f in files:
        if not Path(f).is_file():
            raise BadInput(f"model file {f} of candidate {name!r} does not exist")
    return {"name": name, "models": files}


def _spec_from_args(args: argparse.Namespace):  # noqa: ANN202
    from etm.spec import EvaluationSpec

    measures = ["all"] if args.measures == "all" else [m.strip() for m in args.measures.split(",") if m.strip()]
    data = {
        "candidates": [_parse_candidate(c) for c in args.candidate],
        "dataset": args.dataset,
        "split": args.split,
        "ood_dataset": args.ood,
        "ood_split": args.ood_split,
        "measures": measures,
        "method": args.method,
        "layer": args.layer,
        "target": _target(args.target),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "bootstrap_resamples": args.bootstrap,
        "max_images": args.max_images,
        "profile": args.profile,
    }
    if args.profile == "paper" and args.measures == "all":
        del data["measures"]  # the profile's own list (the paper's five measures)
    if args.params:
        data["measure_params"] = json.loads(Path(args.params).read_text())
    return EvaluationSpec.model_validate(data)


def _target(t: str) -> str | int:
    return int(t) if t.lstrip("-").isdigit() else t


def _sandboxed(
    request_kind: str,
    spec: Any,
    progress: Callable[[str, int, int], None],
    threads: int,
    ort_threads: int,
    **kwargs: Any,
) -> Any:
    """Run an evaluation step in the model sandbox (models are programs, also on a laptop: docs/SECURITY.md)."""
    from etm.sandbox import calls as sandbox_calls
    from etm.sandbox import limits_for
    from etm.settings import get_settings

    settings = get_settings()
    refs = [m for c in spec.candidates for m in c.models]
    datasets = [spec.dataset] + ([spec.ood_dataset] if spec.ood_dataset is not None else [])
    for ref in refs:
        if not Path(ref).is_file():
            raise FileNotFoundError(f"model file {ref} does not exist")
    for ref in datasets:
        if not Path(ref).is_dir():
            raise BadInput(f"dataset folder {ref!r} does not exist or is not a folder")
    inputs = sandbox_calls.Inputs({r: Path(r) for r in refs}, {d: Path(d) for d in datasets})
    limits = replace(limits_for(settings, "job"), threads=max(1, threads))
    return sandbox_calls.evaluate(
        spec, inputs, settings, limits, mode=request_kind, progress=progress, ort_threads=ort_threads, **kwargs
    )


def cmd_salience(args: argparse.Namespace) -> int:
    from etm.sandbox import limits_for, run
    from etm.sandbox.calls import model_files
    from etm.sandbox.files import copy_out
    from etm.settings import get_settings

    model, images = Path(args.model), Path(args.images)
    if not model.is_file():
        raise FileNotFoundError(f"model file {model} does not exist")
    if not images.is_dir():
        raise BadInput(f"dataset folder {str(images)!r} does not exist or is not a folder")
    settings = get_settings()
    limits = replace(limits_for(settings, "job"), threads=max(1, args.torch_threads))
    request = {
        "op": "salience",
        "model": str(model.resolve()),
        "images": str(images.resolve()),
        "split": args.split,
        "method": args.method,
        "target": _target(args.target),
        "layer": args.layer,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "threads": limits.threads,
        "ort_threads": args.ort_threads,
    }
    update, close = _progress_bar()
    with tempfile.TemporaryDirectory(prefix="etm-salience-") as tmp:
        try:
            outcome = run(
                request, [*model_files(model), images], limits, scratch=Path(tmp), on_progress=update,
                isolation=settings.sandbox,
            )
        finally:
            close()
        out = copy_out(outcome.scratch / "out", "maps.npz", Path(args.out))
    print_warnings(outcome.result.get("warnings") or [])
    print(f"wrote {outcome.result.get('n_images')} maps to {out}", file=sys.stderr)
    return ExitCode.OK


def cmd_score(args: argparse.Namespace) -> int:
    from etm.sandbox.files import copy_out

    spec = _spec_from_args(args)
    update, close = _progress_bar()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="etm-score-") as tmp:
        try:
            threads = (args.torch_threads, args.ort_threads)
            if args.shard:
                i, n = (int(x) for x in args.shard.split("/"))
                outcome = _sandboxed("inset", spec, update, *threads, shard=(i, n), scratch=Path(tmp))
            else:
                outcome = _sandboxed("whole", spec, update, *threads, scratch=Path(tmp))
        finally:
            close()
        produced = outcome.scratch / "out"
        if args.shard:
            copy_out(produced, "partial.npz", out / "partial.npz")
            (out / "spec.json").write_text(json.dumps(spec.canonical(), indent=2))
            print(f"wrote shard {i}/{n} ({outcome.result.get('n_images')} images) to {out}", file=sys.stderr)
            return ExitCode.OK
        _write_result(produced, out)
    print(f"wrote {out / 'report.json'} and {out / 'per_image.csv'}", file=sys.stderr)
    return ExitCode.OK


def _write_result(produced: Path, out: Path) -> None:
    """report.json and per_image.csv from the sandbox's folder; the report appears last, when complete."""
    from etm.sandbox.files import copy_out

    report = json.loads(copy_out(produced, "report.json", out / "report.json.tmp").read_text())
    copy_out(produced, "per_image.csv", out / "per_image.csv")
    (out / "report.json.tmp").replace(out / "report.json")
    print_warnings(report.get("warnings") or [])


def cmd_merge(args: argparse.Namespace) -> int:
    from etm.spec import EvaluationSpec

    dirs = [Path(d) for d in args.shards]
    specs = [json.loads((d / "spec.json").read_text()) for d in dirs]
    if any(s != specs[0] for s in specs):
        raise BadInput("the shards were computed with different configurations")
    spec = EvaluationSpec.model_validate(specs[0])
    update, close = _progress_bar()
    with tempfile.TemporaryDirectory(prefix="etm-merge-") as tmp:
        try:
            outcome = _sandboxed(
                "finish", spec, update, 1, 0, partials=[d / "partial.npz" for d in dirs], scratch=Path(tmp)
            )
        finally:
            close()
        _write_result(outcome.scratch / "out", Path(args.out))
    print(f"wrote {Path(args.out) / 'report.json'}", file=sys.stderr)
    return ExitCode.OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "salience": cmd_salience,
    "score": cmd_score,
    "merge": cmd_merge,
}


def run_local(args: argparse.Namespace) -> int:
    """Run the local subcommand ``args.command``. A model the sandbox refused, killed or timed out on, and
    a configuration that does not validate, become ``UsageError`` with the message that says what to fix (the
    domain's ``BadInput`` is a ``ValueError``, which ``client.exit_codes`` counts as bad input already)."""
    from etm.sandbox import SandboxCrashed, SandboxTimeout, SandboxUnavailable

    try:
        return COMMANDS[args.command](args)
    except ValidationError as exc:
        raise UsageError(exc.errors()[0]["msg"]) from exc
    except (SandboxTimeout, SandboxCrashed, SandboxUnavailable, ModelRuntimeError) as exc:
        raise UsageError(str(exc)) from exc
