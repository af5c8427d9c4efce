"""Choose between two model families with an Explain-to-Me service: push both, score them on the same
images, compare, pick.

    python examples/select_model.py --family xent=runs/xent --family cyborg=runs/cyborg --dataset data/faces
    python examples/select_model.py --builtin            # the service's built-in xent and cyborg on builtin:faces

A family folder holds the training runs of one recipe (``run0.onnx``, ``run1.onnx``, ... each with an optional
``.json`` metadata sidecar). The service is ``--url`` or ``$ETM_API_URL`` (default http://127.0.0.1:8000).

How it picks: only candidates in the Pareto set qualify (no other candidate is significantly better on one
measure without being significantly worse on another); among them, the one holding first place on the most
of the ``--priority`` measures wins, then on the most measures overall; a remaining tie goes to the first
priority measure's value. First place is the rule of ``etm.comparison.holds_first_place`` (rank 1, not a tie
of everyone), the one the report page, ``etm compare`` and the leaderboard use. It prints the comparison and
why, and saves the report page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client import Client, Comparison, Job, Report
from etm.comparison import first_places

PRIORITY = ("stability.ssim", "entropy.spatial", "degradation.deletion", "geometry.ssim", "agreement.human")


def push_family(etm: Client, folder: Path) -> list[str]:
    runs = sorted(folder.glob("run*.onnx")) or sorted(folder.glob("run*.pt2"))
    if not runs:
        sys.exit(f"{folder}: no run*.onnx or run*.pt2 files")
    ids = []
    for path in runs:
        sidecar = path.with_name(path.name + ".json")
        model = etm.push_model(path, sidecar if sidecar.is_file() else None)
        print(f"  {path} -> {model.id}{'' if model.created else ' (already there)'}")
        ids.append(model.id)
    return ids


def pick(report: Report, priority: tuple[str, ...]) -> tuple[str, list[str]]:
    """The chosen candidate and the reasons, in words."""
    cmp_: Comparison = report.comparison
    raw = report.raw.get("comparison") or {}
    # First places as the report page, `etm compare` and the leaderboard count them (etm.comparison).
    wins_all = first_places(raw)
    wanted = [m for m in priority if m in cmp_.measures]
    wins_prio = first_places({**raw, "measures": {m: raw["measures"][m] for m in wanted}})
    pool = cmp_.pareto_set or cmp_.candidates

    def key(c: str) -> tuple[float, ...]:
        first = wanted[0] if wanted else None
        value = report.value(c, first) if first else None
        sign = 1 if first and cmp_.measures[first].direction == "higher" else -1
        return (wins_prio[c], wins_all[c], sign * value if value is not None else float("-inf"))

    best = max(pool, key=key)
    why = [f"Pareto set: {', '.join(cmp_.pareto_set) or '(empty)'}"]
    why += [f"{c}: first on {wins_prio[c]} of {len(wanted)} priority measures, {wins_all[c]} of "
            f"{len(cmp_.measures)} in all" for c in cmp_.candidates]
    for m in wanted:
        ranking = cmp_.measures[m]
        order = ", ".join(f"#{e.rank} {e.candidate} {e.value:.3f}" for e in ranking.ranking if e.value is not None)
        why.append(f"{m} ({ranking.direction} is better): {order}")
    return best, why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="service URL (default $ETM_API_URL)")
    ap.add_argument("--family", action="append", default=[], metavar="NAME=FOLDER", help="a family of runs (x2+)")
    ap.add_argument("--dataset", help="dataset folder or archive (or an id such as builtin:faces)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--builtin", action="store_true", help="use the service's built-in xent and cyborg families")
    ap.add_argument("--max-images", type=int, default=128)
    ap.add_argument("--priority", nargs="+", default=list(PRIORITY), help="measures that decide, in order")
    ap.add_argument("--out", default="select_model_report.html", help="where to save the report page")
    args = ap.parse_args()

    with Client(args.url) as etm:
        if args.builtin:
            fams = {f.name: f.models for f in etm.families()}
            missing = {"xent", "cyborg"} - set(fams)
            if missing:
                sys.exit(f"the service has no built-in families {sorted(missing)} (it has {sorted(fams)})")
            candidates = {"xent": fams["xent"], "cyborg": fams["cyborg"]}
            dataset, split = args.dataset or "builtin:faces", args.split or "test"
        else:
            if len(args.family) < 2 or not args.dataset:
                ap.error("give two or more --family NAME=FOLDER and a --dataset (or use --builtin)")
            candidates = {}
            for spec in args.family:
                name, folder = spec.split("=", 1)
                print(f"pushing family {name}")
                candidates[name] = push_family(etm, Path(folder))
            split = args.split
            if Path(args.dataset).exists():
                print(f"pushing dataset {args.dataset}")
                dataset = etm.push_dataset(args.dataset).id
            else:
                dataset = args.dataset

        def show(job: Job) -> None:
            p = job.progress
            print(f"\r  {job.status:<9} {p.stage:<11} {p.fraction:6.1%}", end="", flush=True)

        print(f"scoring {', '.join(candidates)} on {dataset}")
        job, report = etm.evaluate(
            candidates, dataset, split=split, max_images=args.max_images, seed=0,
            measures=["entropy", "noise", "geometry", "stability", "degradation", "agreement", "accuracy"],
            on_progress=show,
        )
        print()
        chosen, why = pick(report, tuple(args.priority))
        Path(args.out).write_text(etm.report_html(job.id), encoding="utf-8")

    print(f"\njob {job.id}" + (" (from the result cache)" if job.cache_hit else ""))
    for line in why:
        print(f"  {line}")
    print(f"\nchosen: {chosen}\nreport page: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
