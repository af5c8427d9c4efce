"""Figure 10: the cost of the opt-in ``strategies`` family (SpRAy, #20).

1. In a job: one candidate (figure 2's model and data, ``bench.evaluation.default_inputs``), N images,
   ``entropy`` alone vs ``entropy`` + ``strategies``. The model passes per image come from the report's
   ``passes_per_image`` (``strategies`` adds none: it reads the clean pass's maps); the seconds it adds are
   the difference of the two evaluations' wall times (best of 3 or more each, after a warm-up run).
2. Clustering alone: ``StrategiesMeasure.summarize`` on 10,000 maps of one predicted class at 7x7 (ResNet-50's
   native map at 224 px) and at 56x56 (its layer-1 resolution), default parameters. The maps are smooth blobs
   at four planted places plus noise, so the check is that the clustering recovers them (adjusted Rand index
   >= 0.9, ``sklearn.metrics.adjusted_rand_score``). At 56x56 the exact k-NN search (3,136 dimensions) is
   most of the time.

``--quick``: 16 images in the job and 300 maps.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from bench.common import Report, best, set_threads

CENTRES = ((0.2, 0.2), (0.2, 0.8), (0.8, 0.5), (0.5, 0.5))  # planted strategies, as fractions of the side


def planted_maps(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` maps [n, side, side] float32 (a Gaussian bump at one of ``CENTRES`` plus noise) and their group."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, len(CENTRES), n)
    yy, xx = np.mgrid[0:side, 0:side] / max(1, side - 1)
    maps = np.empty((n, side, side), np.float32)
    for g, (cy, cx) in enumerate(CENTRES):
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.12**2))
        idx = np.nonzero(group == g)[0]
        maps[idx] = bump + 0.15 * rng.random((len(idx), side, side))
    return maps, group


def clustering_row(rep: Report, n: int, side: int, reps: int) -> None:
    from sklearn.metrics import adjusted_rand_score

    from etm.measures.strategies import StrategiesMeasure, downsample

    raw, group = planted_maps(n, side)
    measure = StrategiesMeasure({"grid": side, "max_members": n})
    maps, empty = downsample(torch.from_numpy(raw), side, "sum")
    cols = {"maps": maps[:, None], "empty": empty[:, None], "predicted": np.zeros((n, 1), np.int64),
            "key": np.array([f"m{i:06d}" for i in range(n)])}
    times, res = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        (res,) = measure.summarize(cols, None, 0)
        times.append(time.perf_counter() - t0)
    assert res is not None
    cls = res.details["classes"]["0"]
    labels = np.empty(n, np.int64)
    for cl in cls["clusters"]:
        labels[[int(k[1:]) for k in cl["members"]["key"]]] = cl["cluster"]
    ari = float(adjusted_rand_score(group, labels))
    rep.check(f"{n:,} maps at {side}x{side}: the planted groups are recovered", ari >= 0.9,
              f"ARI {ari:.3f}, {cls['n_clusters']} clusters for {len(CENTRES)} planted")
    rep.row(f"cluster {n:,} maps at {side}x{side}", best(times), "s",
            note=f"{1e3 * best(times) / n:.2f} ms/map; k-NN graph, eigengap, spectral embedding, k-means")


def job_rows(rep: Report, n_images: int, reps: int, quick: bool) -> None:
    from bench.evaluation import default_inputs
    from etm.evaluation import Resolver, evaluate
    from etm.spec import EvaluationSpec

    inp: dict[str, Any] = default_inputs(quick)
    rep.setup["job"] = f"{inp.get('what', 'model')}; {n_images} images, batch 64"

    def spec(measures: list[str]) -> EvaluationSpec:
        return EvaluationSpec(candidates=[{"name": "m", "models": [str(inp["model"])]}], dataset=str(inp["dataset"]),
                              split=inp.get("split"), measures=measures, max_images=n_images,
                              bootstrap_resamples=100, overlays=0, batch_size=64)

    walls: dict[str, list[float]] = {"entropy": [], "entropy+strategies": []}
    report = None
    evaluate(spec(["entropy", "strategies"]), Resolver(threads=1))  # untimed warm-up: imports, model load, caches
    for _ in range(max(reps, 3)):  # the difference of two walls: best of 3 at least, or noise swamps it
        for name, ms in (("entropy", ["entropy"]), ("entropy+strategies", ["entropy", "strategies"])):
            t0 = time.perf_counter()
            out = evaluate(spec(ms), Resolver(threads=1)).report
            walls[name].append(time.perf_counter() - t0)
            report = out if name != "entropy" else report
    assert report is not None
    passes = report["candidates"][0]["passes_per_image"]
    added = sum(passes["strategies"].values())
    rep.check("strategies adds no model pass (it reads the clean pass's maps)", added == 0, f"{passes['strategies']}")
    rep.row("strategies: model passes per image beyond the clean pass", float(added), "passes", "0", added == 0)
    extra = best(walls["entropy+strategies"]) - best(walls["entropy"])
    rep.row(f"strategies: seconds added to a {n_images}-image job", extra, "s",
            note=f"{1e3 * extra / n_images:.2f} ms/image; entropy alone {best(walls['entropy']):.2f} s")


def run(n_images: int = 1000, n_maps: int = 10_000, sides: tuple[int, ...] = (7, 56), reps: int = 1,
        threads: int = 1, quick: bool = False) -> Report:
    thread_note = set_threads(threads)
    rep = Report("10", "strategies (SpRAy): passes and seconds in a job, clustering 10,000 maps")
    rep.setup = {"threads": thread_note, "reps": reps, "timing": "best of reps", "maps": n_maps}
    job_rows(rep, n_images, reps, quick)
    for side in sides:
        clustering_row(rep, n_maps, side, reps)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images in the job")
    ap.add_argument("--maps", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    from bench.run import print_reports

    rep = run(16, 300, reps=1, quick=True) if a.quick else run(a.n, a.maps, reps=a.reps)
    return print_reports([rep])


if __name__ == "__main__":
    raise SystemExit(main())
