"""The replication: score the ``xent`` and ``cyborg`` families with every measure and compare.

Usage::

    python -m benchdata.replicate [--n-test 400] [--out docs] [--profile both|default|paper]

Writes ``docs/REPLICATION.md`` (a table of every measure for both families with CIs, the direction
Crum et al. report, and whether we see it), ``docs/replication/report.json`` and salience overlays
``docs/replication/overlays.png``. The same expectations are asserted by ``tests/benchdata/test_replication.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchdata import paths
from benchdata.net import CLASS_NAMES
from etm.evaluation import evaluate
from etm.report import EvaluationResult
from etm.spec import EvaluationSpec

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
# The paper's directions this benchmark shows with non-overlapping 95% CIs on a subset of the test
# split (docs/REPLICATION.md); tests/benchdata/test_replication.py asserts them and the report-page test expects
# cyborg ranked first on them.
SEEN = ("entropy.spatial", "stability.ssim", "geometry.ssim", "agreement.human", "accuracy.ood", "oos.noise")
# Directions whose effect is smaller: they separate on the whole test split (the degradation run).
SEEN_WHOLE_SPLIT = ("degradation.deletion",)
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


def degradation_whole_split(resamples: int = 1000, variants: Sequence[str] | None = None) -> EvaluationResult:
    """``degradation`` (both variants, or ``variants``) and ``accuracy`` on every test image, no out-of-set set.

    ``accuracy`` costs no pass (it reads the clean pass) and gives the per-image labels and
    predictions that the blur breakdown needs.
    """
    params: dict[str, Any] = {} if variants is None else {"variants": list(variants)}
    spec = spec_for(None, resamples=resamples).model_copy(
        update={"measures": ["degradation", "accuracy"], "ood_dataset": None, "measure_params": {"degradation": params}}
    )
    return evaluate(spec)


def _blur_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """Per image and run: family, key, true and predicted class, clean score, scores after each blur."""
    out = []
    for r in csv.DictReader(io.StringIO(result.per_image_csv())):
        out.append({
            "family": r["candidate"], "key": r["key"],
            "label": CLASS_NAMES[int(float(r["accuracy.label"]))],
            "predicted": CLASS_NAMES[int(float(r["accuracy.predicted"]))],
            "clean": float(r["degradation.blur_before"]),
            "background": float(r["degradation.blur_after_background"]),
            "object": float(r["degradation.blur_after_object"]),
        })
    return out


def _score_summary(v: np.ndarray) -> dict[str, float]:
    """Means of [N, 3] scores (clean, background blurred, salient region blurred) and the headline."""
    return {"n": len(v), "clean": float(v[:, 0].mean()), "background": float(v[:, 1].mean()),
            "object": float(v[:, 2].mean()), "headline": float((v[:, 1] - v[:, 2]).mean())}


def _blur_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    v = np.array([(r["clean"], r["background"], r["object"]) for r in rows], dtype=np.float64)
    return _score_summary(v.reshape(-1, 3))


def _table(data: dict[str, dict[str, dict[str, float]]], cols: list[str]) -> list[str]:
    """Markdown rows ``| family | class | cols... |`` (``share x headline`` is computed)."""
    def cell(v: dict[str, float], c: str) -> str:
        return f"{v['share'] * v['headline']:.3f}" if c == "share x headline" else f"{v[c]:.3f}"
    return [f"| {fam} | {cls} | " + " | ".join(cell(v, c) for c in cols) + " |"
            for fam, classes in data.items() for cls, v in classes.items()]


def blur_by_prediction(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Family -> predicted class -> share of (image, run) pairs (``_blur_rows``), mean scores (clean,
    after each blur) and headline. The score is the predicted class's, as in the measure."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for fam in paths.RECIPES:
        mine = [r for r in rows if r["family"] == fam]
        out[fam] = {}
        for cls in CLASS_NAMES:
            sel = [r for r in mine if r["predicted"] == cls]
            out[fam][cls] = {**_blur_summary(sel), "share": len(sel) / max(len(mine), 1)}
    return out


def blur_on_shared_decisions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The blur headline of each family on the images that every run of both families predicts
    synthetic (``_blur_rows``): the same decisions, so only the maps and the models' reactions differ."""
    calls: dict[str, set[str]] = {}
    for r in rows:
        calls.setdefault(r["key"], set()).add(r["predicted"])
    keys = {k for k, c in calls.items() if c == {"synthetic"}}
    return {"n_images": len(keys),
            **{fam: _blur_summary([r for r in rows if r["family"] == fam and r["key"] in keys])
               for fam in paths.RECIPES}}


@torch.no_grad()
def blur_with_human_masks() -> dict[str, dict[str, dict[str, float]]]:
    """Control: the paper's blur with each test image's *human* mask as the map, so both families
    score the same degraded pixels. Family -> true class -> mean predicted-class score (clean,
    after each blur) and headline, over images and runs. Lengths scaled like the measure's."""
    from benchdata.check_directions import load_family
    from benchdata.data import load_faces_split
    from benchdata.net import normalise
    from etm.measures.degradation import DegradationMeasure
    from etm.ops.paper import paper_blur, paper_blur_levels

    split = load_faces_split(paths.FACES_DIR, "test")
    x = split.images.to(torch.float32) / 255
    measure = DegradationMeasure()
    s = measure.scale(x)
    smooth = float(measure.params["smooth_sigma"]) * s
    masks8 = split.masks.to(torch.uint8)  # the 8-bit annotations, at the input size like an upscaled map
    degraded = {
        m: paper_blur(split.images.to(torch.uint8), paper_blur_levels(masks8, m, smooth), s).float() / 255
        for m in ("background", "object")
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for fam in paths.RECIPES:
        runs = []  # per run: [N, 3] scores (clean, background blurred, mask region blurred)
        for net in load_family(paths.MODELS_DIR, fam, len(paths.family_files(fam))):
            clean = net(normalise(x)).softmax(1)
            target = clean.argmax(1, keepdim=True)
            scores = [clean] + [net(normalise(degraded[m])).softmax(1) for m in ("background", "object")]
            runs.append(torch.stack([p.gather(1, target)[:, 0] for p in scores], 1))
        v = torch.cat(runs).to(torch.float64).numpy()
        labels = split.labels.repeat(len(runs)).numpy()
        out[fam] = {cls: _score_summary(v[labels == i]) for i, cls in enumerate(CLASS_NAMES)}
    return out


def blur_analysis(whole: EvaluationResult, control: dict[str, dict[str, dict[str, float]]] | None = None) -> list[str]:
    """Why the blur headline does not separate the families, with this run's numbers."""
    rows = _blur_rows(whole)
    by = blur_by_prediction(rows)
    shared = blur_on_shared_decisions(rows)
    blur = next(r for r in verdicts(whole.report) if r["measure"] == "degradation.blur")
    pair = whole.report["comparison"]["measures"]["degradation.blur"]["paired_differences"][0]
    n = whole.report["dataset"]["n_images"]
    lines = [
        f"`degradation.blur` on all {n} test images: xent {_fmt(blur['xent'])}, "
        f"cyborg {_fmt(blur['cyborg'])}; paired difference {pair['a']} - {pair['b']} = {pair['mean_diff']:.3f} "
        f"[{pair['ci'][0]:.3f}, {pair['ci'][1]:.3f}] (better: {pair['better'] or 'tied'}). The paired comparison "
        "on the same images is what the service's ranking uses; the acceptance check asks for the two "
        "families' own CIs not to overlap.",
        "",
        "By the class each run *predicts* (mean over image-run pairs; scores are the predicted class's, "
        "as in the measure; headline = score with the background blurred - score with the salient region blurred):",
        "",
        "| family | predicted | share of pairs | clean score | background blurred | salient region blurred | headline "
        "| share x headline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += _table(by, ["share", "clean", "background", "object", "headline", "share x headline"])
    syn = {f: by[f]["synthetic"] for f in by}
    sx, sc = shared["xent"], shared["cyborg"]
    lines += [
        "",
        "The headline is large only where a run calls the face synthetic: blurring the salient region "
        "wipes the fingerprint there, and the score falls towards what the model says of a face without "
        "evidence. Where a run calls the face real, the evidence is an absence, so neither blur changes "
        f"much (headlines near 0). The family means are therefore about *share x headline* of the "
        f"synthetic calls: cyborg calls more faces synthetic ({syn['cyborg']['share']:.3f} of pairs vs "
        f"{syn['xent']['share']:.3f}: xent misses fakes without the training shortcut), while per synthetic "
        f"call xent's headline is the larger ({syn['xent']['headline']:.3f} vs {syn['cyborg']['headline']:.3f}). "
        f"On the {shared['n_images']} images that every run of both families calls synthetic, the same "
        f"decisions, xent's headline is again the larger: {sx['headline']:.3f} vs cyborg {sc['headline']:.3f} "
        f"(scores after blurring the salient region {sx['object']:.3f} vs {sc['object']:.3f}). Per decision, "
        "blurring xent's salient region costs xent *more*, the opposite of the paper's direction, and the "
        "family gap that does favour cyborg comes from how often each family decides 'synthetic', not from "
        "where its maps point.",
    ]
    if control is not None:
        cx, cc = control["xent"], control["cyborg"]
        mean = {f: sum(v["n"] * v["headline"] for v in control[f].values()) / sum(v["n"] for v in control[f].values())
                for f in control}
        lines += [
            "",
            "Control, same pixels for both: the blur with each image's human mask as the map (the "
            "fingerprint regions of a fake, all inspected regions of a real face), scored by the predicted class:",
            "",
            "| family | true class | clean score | background blurred | mask region blurred | headline |",
            "|---|---|---|---|---|---|",
        ]
        lines += _table(control, ["clean", "background", "object", "headline"])
        own = {f: blur[f]["value"] for f in control}

        def moves(f: str) -> str:
            return f"{'rises' if own[f] > mean[f] else 'falls'} from {mean[f]:.3f} to {own[f]:.3f}"

        lines += [
            "",
            f"With the same degraded pixels the family means are xent {mean['xent']:.3f}, cyborg "
            f"{mean['cyborg']:.3f}. Blurring a real face's inspected regions costs cyborg "
            f"{cc['real']['clean'] - cc['real']['object']:.3f} of its score and xent "
            f"{cx['real']['clean'] - cx['real']['object']:.3f}: cyborg's evidence for 'real' sits in those "
            "regions, xent's does not. With each family's own maps, as the measure is defined, xent's mean "
            f"{moves('xent')} and cyborg's {moves('cyborg')}. So the paper's direction shows when the "
            "*human*-salient regions are blurred, a property of the models; judged by their own salience it "
            "shrinks to the paired difference above, because xent's Grad-CAM points at xent's own evidence "
            "at least as well as cyborg's does at cyborg's. Both are the exact spatial decomposition of "
            "the logit (global-average-pool + linear head).",
        ]
    lines += [
        "",
        "Benchmark changes tried, none kept: real faces with evidence of their own (fine strands in the inspected "
        "regions, reproduced at 0-60% by the generators; regenerated and retrained, 2026-12-02): all 1000 test "
        "images xent 0.132 [0.124, 0.141], cyborg 0.144 [0.135, 0.154], and on real faces xent's headline "
        "became the larger (0.110 vs 0.069) because its maps found the strands too. A background-grain "
        "shortcut instead of bokeh: both families fell to about 0.6 accuracy. What would induce the direction "
        "is evidence that xent uses and its salient region misses, i.e. label-bearing traces outside the "
        "inspected regions in the test split; the issue rules that out (fingerprints confined to the "
        "inspected regions, the shortcut in the training split only), so we leave the choice to the issue's "
        "owner rather than bend the data towards the test.",
    ]
    return lines


def spec_for(
    n_test: int | None, fmt: str = "onnx", seed: int = 0, resamples: int = 1000, profile: str = "default"
) -> EvaluationSpec:
    """The replication's job. ``profile="paper"``: the paper's measures and choices (docs/MEASURES.md)."""
    cands = [{"name": r, "models": [str(p) for p in paths.family_files(r, fmt)]} for r in paths.RECIPES]
    fields: dict[str, Any] = {"profile": "paper"} if profile == "paper" else {"measures": ["all"]}
    return EvaluationSpec(
        candidates=cands,
        dataset=str(paths.FACES_DIR),
        split="test",
        ood_dataset=str(paths.UNSEEN_DIR),
        seed=seed,
        batch_size=100,
        bootstrap_resamples=resamples,
        max_images=n_test,
        **fields,
    )


def ensure_data() -> None:
    if not (paths.FACES_DIR / "manifest.csv").is_file() or not paths.UNSEEN_DIR.is_dir():
        from benchdata.generate import GenerationConfig, generate

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
    from etm.datasets import decode_batch, load_dataset
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

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


def paper_profile_lines(report: dict[str, Any], rows: list[dict[str, Any]], seconds: float) -> list[str]:
    """The ``profile: paper`` table: the paper's variants with every choice of the authors' code."""
    n = report["dataset"]["n_images"]
    lines = [
        "## The paper profile",
        "",
        "The same models and images with `\"profile\": \"paper\"`: the paper's variants only, computed as the",
        "authors' released code computes them, with the PAScore (`sigmoid(logits)[:, 1]`), TorchCAM's default",
        "target layer, the literal blur sigmas (not scaled to our 64-px input) and the `5.614` entropy",
        f"normaliser (docs/MEASURES.md, \"Reproduce the paper\"). {n} test images; took {seconds:.0f} s.",
        "",
        f"| measure | xent | cyborg | paper's direction for cyborg | seen (non-overlapping CIs, {n} images) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        exp = {"higher": "higher", "lower": "lower", None: "—"}[r["expected"]]
        cell = {True: "yes", False: "**no**", None: "—"}[r["separated"]]
        lines.append(f"| `{r['measure']}` | {_fmt(r['xent'])} | {_fmt(r['cyborg'])} | {exp} | {cell} |")
    return [*lines, ""]


def write_markdown(
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    out: Path,
    command: str,
    seconds: float,
    whole: EvaluationResult | None = None,
    control: dict[str, dict[str, dict[str, float]]] | None = None,
    paper: list[str] | None = None,
) -> None:
    n = report["dataset"]["n_images"]
    n_ood = report["ood_dataset"]["n_images"] if report["ood_dataset"] else 0
    whole_rows = {r["measure"]: r for r in verdicts(whole.report)} if whole is not None else {}
    n_whole = whole.report["dataset"]["n_images"] if whole is not None else 0
    lines = [
        "# Replication: cross-entropy vs human-guided (CYBORG) synthetic-face detectors",
        "",
        "Crum et al. (2023) compared face-synthesis detectors trained with cross-entropy (`xent`) against",
        "detectors whose loss also pulls their class activation maps towards human salience (`cyborg`).",
        "We repeat the comparison on our synthetic-face benchmark (`benchdata/`, see its module docs):",
        f"5 training runs per recipe, {n} test images (evenly spaced over the test split), and {n_ood}",
        "images from generators held out of training as the out-of-set set. Salience: Grad-CAM on the",
        "predicted class (the paper's choice). Values are family means with 95% bootstrap CIs over images.",
        f"The two degradation measures are also run on all {n_whole} test images (second table). The",
        "training shortcut is in the training split only; benchdata/README.md says why the first version, with",
        "the cue in half of the test images, reversed the deletion gap.",
        "",
        f"Reproduce: `{command}` (took {seconds:.0f} s on this 2-core machine).",
        "",
        f"| measure | xent | cyborg | paper's direction for cyborg | seen (non-overlapping CIs, {n} images) |",
        "|---|---|---|---|---|",
    ]

    def seen_cell(r: dict[str, Any]) -> str:
        return {True: "yes", False: "**no**", None: "—"}[r["separated"]]

    for r in rows:
        exp = {"higher": "higher", "lower": "lower", None: "—"}[r["expected"]]
        cell = seen_cell(r)
        if r["measure"] in whole_rows and r["separated"] is False:
            cell += f"; {n_whole} images: {seen_cell(whole_rows[r['measure']])}"
        lines.append(f"| `{r['measure']}` | {_fmt(r['xent'])} | {_fmt(r['cyborg'])} | {exp} | {cell} |")
    if whole is not None:
        lines += [
            "",
            f"## Degradation on all {n_whole} test images",
            "",
            "Smaller effects need more images: `python -m benchdata.replicate` also runs `degradation` (and",
            "`accuracy`, which costs no pass) alone on the whole test split, with the same models and defaults.",
            "",
            "| measure | xent | cyborg | paper's direction for cyborg | seen (non-overlapping CIs) |",
            "|---|---|---|---|---|",
        ]
        for name in ("degradation.deletion", "degradation.blur"):
            r = whole_rows[name]
            lines.append(f"| `{name}` | {_fmt(r['xent'])} | {_fmt(r['cyborg'])} | {r['expected']} | {seen_cell(r)} |")
        lines += [""]
        if whole_rows["degradation.blur"]["separated"] is False:
            why = blur_analysis(whole, control)
            lines += ["### Why `degradation.blur` does not separate the families", "", *why, ""]
    if paper:
        lines += ["", *paper]
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
    ap = argparse.ArgumentParser(prog="python -m benchdata.replicate", description=__doc__.split("\n")[0])
    ap.add_argument("--n-test", type=int, default=400, help="test images, evenly spaced (default 400)")
    ap.add_argument("--out", type=Path, default=paths.REPO_ROOT / "docs")
    ap.add_argument("--no-whole-split", action="store_true", help="skip the degradation run on the whole test split")
    ap.add_argument(
        "--profile",
        choices=("both", "default", "paper"),
        default="both",
        help="both (default): the default table and the paper-profile table; or only one of them",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ensure_data()
    paper_lines: list[str] = []
    paper_rows: list[dict[str, Any]] = []
    if args.profile in ("both", "paper"):
        t0 = time.perf_counter()
        paper_result = evaluate(spec_for(args.n_test, profile="paper"))
        paper_rows = verdicts(paper_result.report)
        paper_lines = paper_profile_lines(paper_result.report, paper_rows, time.perf_counter() - t0)
        (args.out / "replication").mkdir(parents=True, exist_ok=True)
        (args.out / "replication" / "report-paper.json").write_text(json.dumps(paper_result.report, indent=1))
    rows: list[dict[str, Any]] = []
    whole = None
    if args.profile in ("both", "default"):
        t0 = time.perf_counter()
        result = evaluate(spec_for(args.n_test))
        whole = None if args.no_whole_split else degradation_whole_split()
        control = None if whole is None else blur_with_human_masks()
        seconds = time.perf_counter() - t0
        rows = verdicts(result.report)
        (args.out / "replication").mkdir(parents=True, exist_ok=True)
        (args.out / "replication" / "report.json").write_text(json.dumps(result.report, indent=1))
        overlay_grid(args.out / "replication" / "overlays.png")
        cmd = f"python -m benchdata.replicate --n-test {args.n_test}"
        write_markdown(result.report, rows, args.out / "REPLICATION.md", cmd, seconds, whole, control, paper_lines)
    else:
        (args.out / "REPLICATION-paper.md").write_text("\n".join(["# Replication, paper profile", "", *paper_lines]))
    for r in [*rows, *(verdicts(whole.report) if whole is not None else []), *paper_rows]:
        print(
            f"{r['measure']:24s} xent {_fmt(r['xent']):32s} cyborg {_fmt(r['cyborg']):32s} "
            f"expected {r['expected']} separated {r['separated']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
