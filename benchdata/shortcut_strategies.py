"""Does ``strategies`` (SpRAy, #20) find the planted shortcut? The figures of docs/REPLICATION.md.

Writes the probe (``benchdata.probe``) if needed, evaluates ``strategies`` with the service's evaluation for
every run of both families (each run its own candidate, and each family's runs pooled as one candidate), and
prints, for the maps predicted *synthetic* (the class the cue pushes towards): the clusters' sizes, the
adjusted Rand index between clusters and cue flags, the purest cluster in cue images (size, cue share, share of
the cue maps it holds) and its mean map's peak cell.

Usage::

    python -m benchdata.shortcut_strategies [--probe var/benchmark/probe] [--images 1000]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from benchdata import paths
from benchdata.probe import DEFAULT_OUT, read_probe_meta, write_probe
from etm.evaluation import Resolver, evaluate
from etm.spec import EvaluationSpec

SYNTHETIC = "1"


def figures(classes: dict, flag: dict[str, bool]) -> dict | None:
    """The figures of one candidate's class *synthetic*, or None when it was not clustered."""
    cls = classes.get(SYNTHETIC, {})
    if "clusters" not in cls:
        return None
    points = [(k, cl["cluster"]) for cl in cls["clusters"] for k in cl["members"]["key"]]
    y = np.array([flag[Path(k).stem] for k, _ in points])
    purity = [np.mean([flag[Path(k).stem] for k in cl["members"]["key"]]) for cl in cls["clusters"]]
    j = int(np.argmax(purity))
    best = cls["clusters"][j]
    return {
        "maps": len(points),
        "cue_maps": int(y.sum()),
        "sizes": [cl["size"] for cl in cls["clusters"]],
        "ari": float(adjusted_rand_score(y, [c for _, c in points])),
        "purest": best["size"],
        "purity": float(purity[j]),
        "recall": float(best["size"] * purity[j] / max(1, y.sum())),
        "peak": best["peak"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchdata.shortcut_strategies")
    ap.add_argument("--probe", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--images", type=int, default=1000, help="evenly spaced probe images (max_images)")
    args = ap.parse_args(argv)
    if not (args.probe / "meta.csv").is_file():
        write_probe(args.probe)
    meta = read_probe_meta(args.probe)
    flag = dict(zip(meta.stems, meta.shortcut.tolist(), strict=True))
    cands = [{"name": f"{r}_run{k}", "models": [str(p)]} for r in paths.RECIPES
             for k, p in enumerate(paths.family_files(r))]
    cands += [{"name": f"{r}_family", "models": [str(p) for p in paths.family_files(r)]} for r in paths.RECIPES]
    spec = EvaluationSpec(candidates=cands, dataset=str(args.probe), measures=["strategies"],
                          max_images=args.images, bootstrap_resamples=100, overlays=0,
                          measure_params={"strategies": {"max_members": 100_000}})
    report = evaluate(spec, Resolver(threads=2)).report
    print(f"{'candidate':16s} {'maps':>5s} {'cue':>4s} {'ARI':>6s}  {'purest':>6s} {'cue share':>9s} {'recall':>6s}"
          f"  peak    sizes")
    for cand in report["candidates"]:
        f = figures(cand["measures"]["strategies.clusters"]["details"]["classes"], flag)
        if f is None:
            print(f"{cand['name']:16s} not clustered")
            continue
        print(f"{cand['name']:16s} {f['maps']:5d} {f['cue_maps']:4d} {f['ari']:6.3f}  {f['purest']:6d} "
              f"{f['purity']:9.3f} {f['recall']:6.2f}  {str(f['peak']):7s} {f['sizes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
