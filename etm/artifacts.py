"""Artifacts of a finished evaluation: salience overlay PNGs and the curve data behind the report.

Overlays show the *same* images for every candidate (evenly spaced over the evaluated images in
canonical order, so both ends of a sorted class layout appear), each the family mean of the runs'
maps with every run's map scaled to [0, 1] first, so that one run with large raw values does not
dominate. Maps are computed with the job's method, target rule, layer and per-image seeds: they are
the maps the measures saw. PNGs carry no time stamps, so equal inputs give equal bytes.

Names: ``overlay_<candidate>_<nn>.png``, ``overlays.json`` (which image each ``nn`` is, with the
predictions) and ``curves.json`` (every measure's curves from the report, per candidate).

With ``strategies`` in the job, each cluster's representative images (from the report) get an overlay too:
``strategy_<candidate>_c<class>_k<cluster>_<i>.png``, listed in ``overlays.json`` under ``"strategies"``. These
show the map of the run the representative point belongs to (clusters are of (image, run) points), scaled
to [0, 1], whatever ``overlays`` says (they are part of the measure's result, not the overlay sample).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from etm.datasets import iter_batches
from etm.errors import Canceled
from etm.spec import EvaluationSpec

MIN_SIDE = 192  # overlays are upscaled to at least this many pixels so that small inputs stay visible


def overlay_indices(n_images: int, n_overlays: int) -> list[int]:
    """``n_overlays`` distinct indices spread evenly over ``range(n_images)``."""
    k = min(n_images, n_overlays)
    if k <= 0:
        return []
    if k == 1:
        return [0]
    return sorted({round(i * (n_images - 1) / (k - 1)) for i in range(k)})


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, a jet-like map (blue = low, red = high)."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def overlay_png(image: np.ndarray, salience: np.ndarray, alpha: float = 0.5) -> bytes:
    """Blend ``image`` (float [3, H, W] in [0, 1]) with ``salience`` ([H, W] in [0, 1]); PNG bytes."""
    rgb = (np.transpose(image, (1, 2, 0)) * 255).round().astype(np.float32)
    heat = colormap(salience).astype(np.float32)
    blend = ((1 - alpha) * rgb + alpha * heat).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(blend)
    h, w = blend.shape[:2]
    scale = max(1, -(-MIN_SIDE // max(1, min(h, w))))
    if scale > 1:
        img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def curves(report: dict[str, Any]) -> dict[str, Any]:
    """Every measure's curves from a report: ``{candidate: {measure: curves}}``."""
    out: dict[str, Any] = {}
    for cand in report.get("candidates", []):
        per: dict[str, Any] = {}
        for name, m in cand.get("measures", {}).items():
            c = (m.get("details") or {}).get("curves")
            if c:
                per[name] = c
        out[cand["name"]] = per
    return out


def compute_artifacts(
    spec: EvaluationSpec,
    report: dict[str, Any],
    resolver: Any,
    progress: Callable[[str, int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, bytes]:
    """The artifacts of a finished job, name -> bytes.

    Args:
        spec: The job's spec (the same one the report was computed from).
        report: The job's report (``EvaluationResult.report``), for the curves.
        resolver: The ``etm.evaluation.Resolver`` the evaluation used.
        progress: ``(stage, done, total)`` with stage ``"artifacts"``, per candidate.
        should_cancel: checked between candidates; raises ``Canceled``.

    Returns:
        ``overlay_<candidate>_<nn>.png`` for each candidate and overlay image, ``overlays.json``
        and ``curves.json``.
    """
    from etm.evaluation import _dataset, image_seeds, load_families
    from etm.salience.registry import compute_salience

    out: dict[str, bytes] = {"curves.json": json.dumps(curves(report), indent=1, sort_keys=True).encode()}
    # The evaluation's own choice of images (split, max_images subset), so overlays show evaluated images.
    from etm.measures import needs_salience

    ds = _dataset(spec, resolver)
    # A job of salience-free measures (accuracy) computed no map and may use a method the model cannot run.
    idx = overlay_indices(len(ds), spec.overlays) if needs_salience(spec.measures) else []
    index: dict[str, Any] = {
        "method": spec.method,
        "layer": spec.layer,
        "target": spec.target,
        "note": "family mean of the runs' maps, each run's map scaled to [0, 1]; colours: blue low, red high",
        "images": [{"nn": n, "key": ds.items[i].key, "label": ds.items[i].label} for n, i in enumerate(idx)],
        "overlays": {},
    }
    families = load_families(spec, resolver) if idx else []
    for done, fam in enumerate(families):
        if should_cancel and should_cancel():
            raise Canceled("canceled while rendering artifacts")
        names: list[dict[str, Any]] = []
        for batch in iter_batches(ds, idx, max(1, len(idx)), fam.input_size):
            seeds = image_seeds(spec.seed, batch.keys)
            maps, scores, preds = [], [], []
            for model in fam.models:
                res = compute_salience(
                    model, batch.images, spec.method, spec.target, spec.layer, spec.method_params, seeds=seeds
                )
                up = res.upsampled.detach().float().cpu()
                peak = up.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
                maps.append(torch.where(peak > 1e-12, up / peak, torch.zeros_like(up)))
                scores.append(res.scores.detach().float().cpu())
                preds.append(res.predicted.detach().cpu())
            mean = torch.stack(maps).mean(dim=0).numpy()
            class_names = fam.models[0].metadata.class_names or []
            for j, key in enumerate(batch.keys):
                nn = len(names)
                name = f"overlay_{fam.name}_{nn:02d}.png"
                out[name] = overlay_png(batch.images[j].cpu().numpy(), mean[j])
                votes = [int(p[j]) for p in preds]
                names.append(
                    {
                        "name": name,
                        "nn": nn,
                        "key": key,
                        "predicted": [class_names[v] if v < len(class_names) else v for v in votes],
                        "target_score_mean": float(np.mean([float(s[j]) for s in scores])),
                    }
                )
        index["overlays"][fam.name] = names
        if progress:
            progress("artifacts", done + 1, len(families))
    wanted = strategy_representatives(report)
    if wanted:
        families = families or load_families(spec, resolver)
        index["strategies"] = _strategy_overlays(spec, ds, families, wanted, out)
    out["overlays.json"] = json.dumps(index, indent=1, sort_keys=True).encode()
    return out


def strategy_representatives(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per candidate, the representatives of every ``strategies`` cluster: key, run, class, cluster, rank."""
    out: dict[str, list[dict[str, Any]]] = {}
    for cand in report.get("candidates", []):
        det = ((cand.get("measures") or {}).get("strategies.clusters") or {}).get("details") or {}
        for cls, c in (det.get("classes") or {}).items():
            for cl in c.get("clusters") or []:
                for rank, rep in enumerate(cl.get("representatives") or []):
                    entry = {"key": rep["key"], "run": int(rep["run"]), "class": cls, "cluster": cl["cluster"]}
                    out.setdefault(cand["name"], []).append({**entry, "rank": rank})
    return out


def _strategy_overlays(
    spec: EvaluationSpec, ds: Any, families: list[Any], wanted: dict[str, list[dict[str, Any]]], out: dict[str, bytes]
) -> dict[str, list[dict[str, Any]]]:
    """Render the representatives' overlays into ``out``; returns their index entries per candidate."""
    from etm.evaluation import image_seeds
    from etm.salience.registry import compute_salience

    where = {it.key: i for i, it in enumerate(ds.items)}
    index: dict[str, list[dict[str, Any]]] = {}
    for fam in families:
        reps = [r for r in wanted.get(fam.name, []) if r["key"] in where and r["run"] < len(fam.models)]
        idx = sorted({where[r["key"]] for r in reps})
        if not idx:
            continue
        row = {ds.items[i].key: j for j, i in enumerate(idx)}
        images, maps = None, {}
        for batch in iter_batches(ds, idx, len(idx), fam.input_size):  # one batch: a few images per cluster
            seeds = image_seeds(spec.seed, batch.keys)
            images = batch.images.cpu().numpy()
            for run in sorted({r["run"] for r in reps}):
                res = compute_salience(
                    fam.models[run], batch.images, spec.method, spec.target, spec.layer, spec.method_params,
                    seeds=seeds,
                )
                up = res.upsampled.detach().float().cpu()
                peak = up.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
                maps[run] = torch.where(peak > 1e-12, up / peak, torch.zeros_like(up)).numpy()
        entries = []
        for r in reps:
            name = f"strategy_{fam.name}_c{r['class']}_k{r['cluster']}_{r['rank']}.png"
            out[name] = overlay_png(images[row[r["key"]]], maps[r["run"]][row[r["key"]]])  # type: ignore[index]
            entries.append({"name": name, **r})
        index[fam.name] = entries
    return index
