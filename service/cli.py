"""``etm``: local scoring with no server (salience maps, full evaluation, shard merge).

Exit codes: 0 ok, 2 bad input (message on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from service.errors import BadInput


def _progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, leave=True)
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
    from service.spec import EvaluationSpec

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
    }
    if args.params:
        data["measure_params"] = json.loads(Path(args.params).read_text())
    return EvaluationSpec.model_validate(data)


def _target(t: str) -> str | int:
    return int(t) if t.lstrip("-").isdigit() else t


def cmd_salience(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from service.datasets import iter_batches, load_dataset
    from service.evaluation import image_seeds
    from service.models.loader import load_model
    from service.salience.registry import compute_salience

    model = load_model(args.model, threads=args.ort_threads)
    ds = load_dataset(args.images, split=args.split)
    maps, ups, targets, scores = [], [], [], []
    update, close = _progress_bar()
    done = 0
    for batch in iter_batches(ds, range(len(ds)), args.batch_size, tuple(model.metadata.input_size)):
        res = compute_salience(
            model,
            batch.images,
            args.method,
            _target(args.target),
            args.layer,
            seeds=image_seeds(args.seed, batch.keys),
        )
        maps.append(res.native.cpu())
        ups.append(res.upsampled.cpu())
        targets.append(res.targets.cpu())
        scores.append(res.scores.cpu())
        done += len(batch.keys)
        update("salience", done, len(ds))
    close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        files=np.array([it.key for it in ds.items]),
        maps=torch.cat(maps).numpy(),
        upsampled=torch.cat(ups).numpy(),
        targets=torch.cat(targets).numpy(),
        scores=torch.cat(scores).numpy(),
    )
    print(f"wrote {len(ds)} maps to {out}", file=sys.stderr)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from service.evaluation import Resolver, evaluate, run_inset

    spec = _spec_from_args(args)
    update, close = _progress_bar()
    out = Path(args.out)
    try:
        if args.shard:
            i, n = (int(x) for x in args.shard.split("/"))
            part = run_inset(spec, Resolver(threads=args.ort_threads), shard=(i, n), progress=update)
            out.mkdir(parents=True, exist_ok=True)
            part.save(out / "partial.npz")
            (out / "spec.json").write_text(json.dumps(spec.canonical(), indent=2))
            print(f"wrote shard {i}/{n} ({part.n_images} images) to {out}", file=sys.stderr)
            return 0
        result = evaluate(spec, Resolver(threads=args.ort_threads), progress=update)
    finally:
        close()
    result.write(out)
    print(f"wrote {out / 'report.json'} and {out / 'per_image.csv'}", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from service.evaluation import Partial, finish
    from service.spec import EvaluationSpec

    dirs = [Path(d) for d in args.shards]
    specs = [json.loads((d / "spec.json").read_text()) for d in dirs]
    if any(s != specs[0] for s in specs):
        raise BadInput("the shards were computed with different configurations")
    spec = EvaluationSpec.model_validate(specs[0])
    update, close = _progress_bar()
    try:
        result = finish(spec, [Partial.load(d / "partial.npz") for d in dirs], progress=update)
    finally:
        close()
    result.write(Path(args.out))
    print(f"wrote {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="gradcam", help="salience method (default gradcam)")
    p.add_argument("--layer", default="auto", help="target layer: auto or a layer/node name")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etm", description="Explain-to-Me: salience-based model measures")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("salience", help="compute salience maps of a folder of images")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, help="dataset folder (class sub-folders or manifest.csv)")
    p.add_argument("--out", required=True, help="output .npz")
    _add_common(p)
    p.set_defaults(func=cmd_salience)
    p = sub.add_parser("score", help="evaluate candidates with the measures; writes report.json + per_image.csv")
    p.add_argument("--candidate", action="append", required=True, help="NAME=M1[,M2,...] (repeatable)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--ood", default=None, help="out-of-set dataset folder")
    p.add_argument("--ood-split", default=None)
    p.add_argument("--measures", default="all", help="all or a comma list of measure families")
    p.add_argument("--params", default=None, help="JSON file of per-measure parameters")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--shard", default=None, help="I/N: compute only shard I of N (then `etm merge`)")
    p.add_argument("--out", required=True)
    _add_common(p)
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("merge", help="merge `etm score --shard` outputs into one report")
    p.add_argument("shards", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import torch

        if getattr(args, "torch_threads", 0) > 0:
            torch.set_num_threads(args.torch_threads)
        return int(args.func(args))
    except (BadInput, FileNotFoundError, ValidationError, json.JSONDecodeError) as exc:
        msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        print(f"etm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("etm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say so, keep the traceback for the bug report
        import traceback

        traceback.print_exc()
        print(f"etm: internal error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
