"""The replication: score the ``xent`` and ``cyborg`` families with every measure and compare.

Usage::

    python -m benchmark.replicate [--n-test 400] [--out docs]

Writes ``docs/REPLICATION.md`` (a table of every measure for both families with CIs, the direction
Crum et al. report, and whether we see it), ``docs/replication/report.json`` and salience overlays
``docs/replication/overlays.png``. The same expectations are asserted by ``tests/test_replication.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmark import paths
from service.evaluation import evaluate
from service.spec import EvaluationSpec

# Measure -> the direction the paper reports for human-guided (cyborg) vs cross-entropy models.
# "higher"/"lower": cyborg's value should be higher/lower; None: no direction claimed.
EXPECTED: dict[str, str | None] = {
    "entropy.spatial": "lower",
    "entropy.histogram": "lower",
    "stability.ssim": "higher",
    "stability.pearson": "higher",
    "geometry.ssim": "higher",
    "geometry.pearson": "higher",
    "degradation.blur": "higher",
    "degradation.deletion": "higher",
    "agreement.human": "higher",
    "agreement.human.mass": "higher",
    "accuracy.ood": "higher",
    "oos.noise": "higher",
    "accuracy": None,
    "accuracy.balanced": None,
    "accuracy.auroc": None,
    "accuracy.ood.auroc": None,
    "accuracy.ood.balanced": None,
    "agreement.human.ssim": "higher",
    "oos.set": None,
}
# The paper's directions this benchmark shows with non-overlapping 95% CIs (docs/REPLICATION.md);
# tests/test_replication.py asserts them and the report-page test expects cyborg ranked first on them.
SEEN = ("entropy.spatial", "stability.ssim", "geometry.ssim", "agreement.human", "accuracy.ood", "oos.noise")
WHY = {
    "entropy.spatial": "paper: human-guided models have more focused salience",
    "entropy.histogram": "the paper's variant (see its known flaw in MEASURES.md)",
    "stability.ssim": "paper: CYBORG runs agree more with each other",
    "geometry.ssim": "paper: CYBORG salience follows flips, rotations and shifts better",
    "degradation.blur": "paper: blurring the salient region costs CYBORG more than blurring the background",
    "degradation.deletion": "faithfulness: deleting salient pixels first hurts more",
    "agreement.human": "CYBORG is trained towards human salience",
    "accuracy.ood": "paper: CYBORG generalises better to unseen generators",
    "oos.noise": "paper: CYBORG salience is more consistent under noise",
}


# Why a direction can fail on this benchmark; printed for each expected direction not seen.
ANALYSIS = {
    "degradation.blur": (
        "With the sigmas scaled to the 64-px input (docs/MEASURES.md) the direction is the paper's (cyborg's "
        "object-vs-background drop is larger) but the 95% CIs still overlap at this sample size; with the "
        "paper's 224-px sigmas used as plain pixels the whole 64-px face is blurred in both modes and the two "
        "families tie. Both families lose far more score when their salient region is blurred than when the "
        "background is, i.e. both sets of maps are faithful to what each model uses; `xent`'s salient region "
        "includes the shortcut it relies on."
    ),
}


def deletion_analysis(report: dict[str, Any]) -> str:
    """Why the deletion gap does not separate the families, with the numbers of this report."""
    d = {c["name"]: c["measures"]["degradation.deletion"]["details"] for c in report["candidates"]}

    def auc(fam: str, order: str) -> float:
        return d[fam]["auc"][order]["value"]

    def curve(fam: str, order: str) -> list[float]:
        return [p["value"] for p in d[fam]["curves"][order]]

    clean = {f: curve(f, "morf")[0] for f in d}
    at10 = {f: curve(f, "morf")[1] for f in d}
    lerf_peak = {f: max(curve(f, "lerf")) for f in d}
    lo = {f: d[f]["auc"]["morf"]["ci"] for f in d}
    overlap = lo["xent"][0] <= lo["cyborg"][1] and lo["cyborg"][0] <= lo["xent"][1]
    drop = {f: (clean[f] - at10[f]) / clean[f] for f in d}
    faster = "cyborg" if drop["cyborg"] > drop["xent"] else "xent"
    x, c = "xent", "cyborg"
    return (
        f"The MoRF areas {'have overlapping CIs' if overlap else 'differ'} (xent {auc(x, 'morf'):.3f}, "
        f"cyborg {auc(c, 'morf'):.3f}): both MoRF curves fall to the two-class chance level (about 0.5) "
        f"within the first 10-20% of pixels, {faster}'s faster (score at k = 10%: "
        f"xent {clean[x]:.3f} -> {at10[x]:.3f}, cyborg {clean[c]:.3f} -> {at10[c]:.3f}). "
        f"The gap is decided by LeRF (xent {auc(x, 'lerf'):.3f}, cyborg {auc(c, 'lerf'):.3f}): replacing "
        "xent's least salient pixels makes it *more* confident than on the clean image "
        f"(LeRF peak {lerf_peak[x]:.3f} vs clean {clean[x]:.3f}), while cyborg's LeRF stays near its clean "
        f"score (peak {lerf_peak[c]:.3f} vs {clean[c]:.3f}), which is what a model that ignores the background "
        "should do. The gap counts xent's rise as faithfulness, and cyborg's lower clean confidence lowers its "
        "whole LeRF curve. So, as specified (area under the raw score, 10% steps), the gap separates these "
        "families by confidence and by a reaction to background replacement, not by how fast deleting the "
        "salient region hurts; no measure bug is involved (the MoRF curve equals Quantus PixelFlipping, "
        "docs/BENCHMARKS.md figure 3). What would test the paper's claim here: steps finer than 10% at the "
        "start of MoRF, or curves relative to the clean score; the contract's headline is left as it is. "
        "`details.auc.random` is the random-order reference."
    )


FINE_STEPS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def degradation_only(n_test: int | None, params: dict[str, Any], resamples: int) -> dict[str, Any]:
    """The report of one ``degradation`` variant alone (``params``) on the test split, no out-of-set set."""
    spec = spec_for(n_test, resamples=resamples).model_copy(
        update={"measures": ["degradation"], "ood_dataset": None, "measure_params": {"degradation": params}}
    )
    return evaluate(spec).report


def fine_deletion(n_test: int, resamples: int = 200) -> dict[str, Any]:
    """Deletion curves with steps finer than 10% at the start, on the same test images: where the
    MoRF curves of the two families actually differ (an extra run, not the contract's default)."""
    return degradation_only(n_test, {"variants": ["degradation.deletion"], "steps": FINE_STEPS}, resamples)


def blur_whole_split(resamples: int = 1000) -> dict[str, Any]:
    """``degradation.blur`` alone on every test image: is the direction there with more images?"""
    return degradation_only(None, {"variants": ["degradation.blur"]}, resamples)


def blur_lines(report: dict[str, Any]) -> list[str]:
    vals = {c["name"]: c["measures"]["degradation.blur"] for c in report["candidates"]}
    pair = report["comparison"]["measures"]["degradation.blur"]["paired_differences"][0]
    n = report["dataset"]["n_images"]
    cells = ", ".join(f"{f} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" for f, m in vals.items())
    return [
        f"`degradation.blur` alone on all {n} test images, from the same command: {cells}; paired difference "
        f"{pair['a']} - {pair['b']} = {pair['mean_diff']:.3f} [{pair['ci'][0]:.3f}, {pair['ci'][1]:.3f}] "
        f"(better: {pair['better'] or 'tied'}). The paired comparison on the same images, which the service's "
        "ranking uses, is the sharper test; the acceptance criterion asks for separate CIs that do not overlap.",
    ]


def fine_deletion_lines(report: dict[str, Any]) -> list[str]:
    d = {c["name"]: c["measures"]["degradation.deletion"] for c in report["candidates"]}
    head = "| k (%) | " + " | ".join(f"{f} {o}" for o in ("MoRF", "LeRF") for f in d) + " |"
    lines = [head, "|---" * (1 + 2 * len(d)) + "|"]
    for i, k in enumerate(FINE_STEPS):
        cells = [f"{d[f]['details']['curves'][o][i]['value']:.3f}" for o in ("morf", "lerf") for f in d]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    gaps = ", ".join(f"{f} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" for f, m in d.items())
    return lines + ["", f"Gap AUC(LeRF) - AUC(MoRF) with these steps: {gaps}."]


def spec_for(n_test: int | None, fmt: str = "onnx", seed: int = 0, resamples: int = 1000) -> EvaluationSpec:
    cands = [{"name": r, "models": [str(p) for p in paths.family_files(r, fmt)]} for r in paths.RECIPES]
    return EvaluationSpec(
        candidates=cands,
        dataset=str(paths.FACES_DIR),
        split="test",
        ood_dataset=str(paths.UNSEEN_DIR),
        measures=["all"],
        seed=seed,
        batch_size=100,
        bootstrap_resamples=resamples,
        max_images=n_test,
    )


def ensure_data() -> None:
    if not (paths.FACES_DIR / "manifest.csv").is_file() or not paths.UNSEEN_DIR.is_dir():
        from benchmark.generate import GenerationConfig, generate

        generate(paths.DATA_DIR, GenerationConfig())


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measure: both families' value and CI, the expected direction and what we see."""
    by = {c["name"]: c["measures"] for c in report["candidates"]}
    rows = []
    for name in sorted(set(by["xent"]) & set(by["cyborg"]), key=lambda n: (n not in EXPECTED, n)):
        x, c = by["xent"][name], by["cyborg"][name]
        exp = EXPECTED.get(name)
        seen = None
        if exp and x["ci"] and c["ci"] and None not in (*x["ci"], *c["ci"]):
            if exp == "higher":
                seen = c["ci"][0] > x["ci"][1]
            else:
                seen = c["ci"][1] < x["ci"][0]
        rows.append({"measure": name, "xent": x, "cyborg": c, "expected": exp, "separated": seen})
    return rows


def _fmt(m: dict[str, Any]) -> str:
    if m["value"] is None:
        return "n/a"
    ci = m["ci"]
    return f"{m['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{m['value']:.3f}"


def overlay_grid(out: Path, n: int = 8) -> None:
    """Rows: image, xent run0 and cyborg run0 Grad-CAM overlays, on the same test images."""
    from service.datasets import decode_batch, load_dataset
    from service.models.loader import load_model
    from service.salience.registry import compute_salience

    ds = load_dataset(paths.FACES_DIR, split="test")
    idx = [int(i * len(ds) / n) for i in range(n)]
    models = {r: load_model(paths.family_files(r)[0]) for r in paths.RECIPES}
    size = tuple(models["xent"].metadata.input_size)
    batch = decode_batch(ds, idx, size)
    rows = [batch.images]
    for r in paths.RECIPES:
        sal = compute_salience(models[r], batch.images, "gradcam").upsampled
        lo = sal.amin(dim=(1, 2), keepdim=True)
        hi = sal.amax(dim=(1, 2), keepdim=True)
        m = ((sal - lo) / (hi - lo).clamp_min(1e-12))[:, None]
        heat = torch.cat([m, 4 * m * (1 - m), 1 - m], dim=1)  # red = salient, blue = not
        rows.append(0.45 * batch.images + 0.55 * heat)
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # [3, rows*H, n*W]
    arr = (grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).resize((arr.shape[1] * 3, arr.shape[0] * 3), Image.NEAREST).save(out)


def write_markdown(
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    out: Path,
    command: str,
    seconds: float,
    fine: dict[str, Any] | None = None,
    blur: dict[str, Any] | None = None,
) -> None:
    n = report["dataset"]["n_images"]
    n_ood = report["ood_dataset"]["n_images"] if report["ood_dataset"] else 0
    lines = [
        "# Replication: cross-entropy vs human-guided (CYBORG) synthetic-face detectors",
        "",
        "Crum et al. (2023) compared face-synthesis detectors trained with cross-entropy (`xent`) against",
        "detectors whose loss also pulls their class activation maps towards human salience (`cyborg`).",
        "We repeat the comparison on our synthetic-face benchmark (`benchmark/`, see its module docs):",
        f"5 training runs per recipe, {n} test images (evenly spaced over the test split), and {n_ood}",
        "images from generators held out of training as the out-of-set set. Salience: Grad-CAM on the",
        "predicted class (the paper's choice). Values are family means with 95% bootstrap CIs over images.",
        "",
        f"Reproduce: `{command}` (took {seconds:.0f} s on this 2-core machine).",
        "",
        "| measure | xent | cyborg | paper's direction for cyborg | seen (non-overlapping CIs) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        exp = {"higher": "higher", "lower": "lower", None: "—"}[r["expected"]]
        seen = {True: "yes", False: "**no**", None: "—"}[r["separated"]]
        lines.append(f"| `{r['measure']}` | {_fmt(r['xent'])} | {_fmt(r['cyborg'])} | {exp} | {seen} |")
    missing = [r for r in rows if r["expected"] and r["separated"] is False]
    if missing:
        lines += ["", "## Directions we do not see, and why", ""]
        for r in missing:
            why = deletion_analysis(report) if r["measure"] == "degradation.deletion" else ANALYSIS.get(r["measure"])
            lines += [f"- `{r['measure']}`: {why or 'not analysed yet.'}", ""]
        if blur is not None and any(r["measure"] == "degradation.blur" for r in missing):
            lines += [*blur_lines(blur), ""]
        if fine is not None and any(r["measure"] == "degradation.deletion" for r in missing):
            n_fine = fine["dataset"]["n_images"]
            lines += [
                f"Deletion curves with finer steps on {n_fine} of the same test images (mean score of the clean "
                "image's target class; family means), from the same command:",
                "",
                *fine_deletion_lines(fine),
                "",
            ]
    lines += ["", "Why each direction is expected:", ""]
    lines += [f"- `{k}`: {v}." for k, v in WHY.items()]
    lines += [
        "",
        "`entropy.histogram` is the paper's variant; it measures the spread of 8-bit values, not focus",
        "(a perfectly uniform map scores 0), so we report it but do not rely on it.",
        "",
        "## Salience on the same test images",
        "",
        "Top: the image; middle: `xent` run 0; bottom: `cyborg` run 0 (Grad-CAM, red = salient).",
        "",
        "![overlays](replication/overlays.png)",
        "",
    ]
    out.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.replicate", description=__doc__.split("\n")[0])
    ap.add_argument("--n-test", type=int, default=400, help="test images, evenly spaced (default 400)")
    ap.add_argument("--out", type=Path, default=paths.REPO_ROOT / "docs")
    ap.add_argument("--fine-n", type=int, default=120, help="images for the fine-step deletion run (0: skip)")
    ap.add_argument("--no-blur-split", action="store_true", help="skip the blur run on the whole test split")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ensure_data()
    t0 = time.perf_counter()
    result = evaluate(spec_for(args.n_test))
    seconds = time.perf_counter() - t0
    fine = fine_deletion(args.fine_n) if args.fine_n else None
    blur = None if args.no_blur_split else blur_whole_split()
    rows = verdicts(result.report)
    (args.out / "replication").mkdir(parents=True, exist_ok=True)
    (args.out / "replication" / "report.json").write_text(json.dumps(result.report, indent=1))
    overlay_grid(args.out / "replication" / "overlays.png")
    cmd = f"python -m benchmark.replicate --n-test {args.n_test}"
    write_markdown(result.report, rows, args.out / "REPLICATION.md", cmd, seconds, fine, blur)
    for r in rows:
        print(
            f"{r['measure']:24s} xent {_fmt(r['xent']):32s} cyborg {_fmt(r['cyborg']):32s} "
            f"expected {r['expected']} separated {r['separated']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
