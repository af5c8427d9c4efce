"""Does the benchmark induce what Crum et al. saw? A quick, self-contained check.

Compares the committed ``cyborg`` family with the ``xent`` family on the test split with simple
re-implementations of the measures (not the service's; that is the point of an independent check):

* salience entropy (spatial, native 8x8 CAM of the predicted class) -- cyborg lower;
* agreement with the human masks (Pearson r of the upsampled CAM, share of CAM mass inside the
  annotated region) -- cyborg higher;
* stability across seeds (Pearson r of 8-bit native maps, every pair of runs) -- cyborg higher;
* accuracy on unseen generators -- cyborg higher;
* score drop under salience-guided blur (the paper's ``object`` vs ``background`` modes) --
  cyborg loses more when its salient region is blurred than when its background is;
* shortcut reliance, on a *probe* copy of the test split rendered with the training shortcut in
  half of each class (the test split itself carries no cue): accuracy where the cue contradicts the
  label, and the share of CAM mass on the cue -- xent worse.

Usage::

    python -m benchdata.check_directions [--data var/benchmark] [--models benchdata/models]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from benchdata import faces, paths
from benchdata.data import Split, load_faces_split, load_folder
from benchdata.generate import SPLIT_IDS
from benchdata.net import FaceNet, normalise


def load_family(models_dir: Path, recipe: str, n_runs: int) -> list[FaceNet]:
    """Rebuild each run as a ``FaceNet`` from its ``.pt2`` state (no pickled code involved)."""
    out = []
    for k in range(n_runs):
        ep = torch.export.load(models_dir / recipe / f"run{k}.pt2")
        state = ep.state_dict
        convs = [v for k, v in state.items() if k.startswith("features.") and v.ndim == 4]
        net = FaceNet(tuple(int(w.shape[0]) for w in convs))  # type: ignore[arg-type]
        net.load_state_dict(state)
        out.append(net.eval())
    return out


@torch.no_grad()
def cams(model: FaceNet, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ReLU'd native CAM of the predicted class [N, h, w], probabilities [N, 2])."""
    maps, probs = [], []
    for i in range(0, len(images_u8), 500):
        x = normalise(images_u8[i: i + 500].float() / 255)
        feats = model.forward_features(x)
        logits = model.head(feats)
        maps.append(model.cam(feats, logits.argmax(1)).relu())
        probs.append(logits.softmax(1))
    return torch.cat(maps), torch.cat(probs)


def spatial_entropy(m: torch.Tensor) -> np.ndarray:
    """Normalised spatial entropy per map; NaN for empty maps."""
    flat = m.flatten(1).double()
    s = flat.sum(1, keepdim=True)
    p = flat / s.clamp_min(1e-30)
    h = -(p * torch.log2(p.clamp_min(1e-30))).sum(1) / np.log2(flat.shape[1])
    return torch.where(s[:, 0] > 0, h, torch.nan).numpy()


def to_8bit(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    z = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(flat))
    return torch.round(z * 255).view_as(m)


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise Pearson r of two [N, ...] tensors; NaN where either row is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-30), torch.nan).numpy()


def upsample(m: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(m.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)


def mass_share(up: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    s = up.flatten(1).sum(1)
    inside = (up * region).flatten(1).sum(1)
    return torch.where(s > 0, inside / s.clamp_min(1e-30), torch.nan).numpy()


def salience_blur(images_u8: torch.Tensor, up: torch.Tensor, mode: str, sigma_scale: float = 1.0) -> torch.Tensor:
    """The paper's salience-dependent blur (``background`` or ``object``); returns uint8 images.

    The 8-bit upsampled map is smoothed (sigma 5), scaled to [0, 10] and rounded to 0.1; a pixel
    at level v is blurred with sigma (10 - v)^4 / 1000, times ``sigma_scale`` (the paper's
    sigmas are for 224 px; ``size / 224`` keeps the blur's reach relative to the face). Levels are
    coarsened to 0.5 here (the sigmas of neighbouring levels differ little) to keep it fast.
    """
    m8 = to_8bit(up).numpy()
    if mode == "object":
        m8 = 255 - m8
    sm = np.stack([gaussian_filter(x, 5) for x in m8])
    lo, hi = sm.min((1, 2), keepdims=True), sm.max((1, 2), keepdims=True)
    v = np.where(hi > lo, (sm - lo) / np.maximum(hi - lo, 1e-12) * 10, 10.0)
    v = np.round(v * 2) / 2
    img = images_u8.numpy().astype(np.float32)
    out = img.copy()
    for level in np.unique(v):
        sigma = (10 - level) ** 4 / 1000 * sigma_scale
        if sigma < 0.05:
            continue
        blurred = gaussian_filter(img, (0, 0, sigma, sigma), mode="nearest")
        sel = (v == level)[:, None, :, :]
        out = np.where(sel, blurred, out)
    return torch.from_numpy(np.clip(np.round(out), 0, 255).astype(np.uint8))


def _mean(x: np.ndarray) -> float:
    return float(np.nanmean(x))


def family_report(models: list[FaceNet], test: Split, unseen: Split, probe: Probe,
                  n_blur: int = 500) -> dict[str, float]:
    size = test.images.shape[-1]
    masks = test.masks.float() / 255
    rep: dict[str, list[float]] = {}
    natives = []
    for model in models:
        m, p = cams(model, test.images)
        natives.append(m)
        pred = p.argmax(1)
        up = upsample(m, size)
        correct = (pred == test.labels).float()
        mp, pp = cams(model, probe.images)
        correct_p = (pp.argmax(1) == test.labels).float()  # the probe's faces and labels are the test split's
        aligned = probe.shortcut == (test.labels == 1)
        up_p = upsample(mp, size)
        _, pu = cams(model, unseen.images)
        # Blur on the first n_blur test images (the blur is the slow part of this check).
        scores = p.gather(1, pred.view(-1, 1)).squeeze(1)[:n_blur]
        drops = {}
        for scale, suffix in ((1.0, ""), (size / 224, "_scaled")):
            for mode in ("background", "object"):
                _, pb = cams(model, salience_blur(test.images[:n_blur], up[:n_blur], mode, scale))
                kept = pb.gather(1, pred[:n_blur].view(-1, 1)).squeeze(1)
                drops[mode + suffix] = float((scores - kept).mean())
        gens = np.array(unseen.generators)
        correct_u = (pu.argmax(1) == unseen.labels).float()
        vals = {
            "acc_test": float(correct.mean()),
            "acc_cue_aligned": float(correct_p[aligned].mean()),
            "acc_cue_conflicting": float(correct_p[~aligned].mean()),
            "acc_unseen": float((pu.argmax(1) == unseen.labels).float().mean()),
            "entropy": _mean(spatial_entropy(m)),
            "human_pearson": _mean(pearson(up, masks)),
            "human_mass_inside": _mean(mass_share(up, (masks > 0.5).float())),
            "cue_mass": _mean(mass_share(up_p[probe.shortcut], (probe.cue[probe.shortcut] > 0.1).float())),
            "blur_drop_background": drops["background"],
            "blur_drop_object": drops["object"],
            "blur_drop_background_scaled": drops["background_scaled"],
            "blur_drop_object_scaled": drops["object_scaled"],
        }
        for g in sorted(set(unseen.generators)):
            vals[f"acc_unseen_{g or 'real'}"] = float(correct_u[torch.from_numpy(gens == g)].mean())
        for k, v in vals.items():
            rep.setdefault(k, []).append(v)
    out = {k: float(np.mean(v)) for k, v in rep.items()}
    for k in ("acc_test", "acc_unseen"):  # the spread over runs, for the headline accuracies
        out[f"{k}_min"], out[f"{k}_max"] = float(np.min(rep[k])), float(np.max(rep[k]))
    eight = [to_8bit(m) for m in natives]
    out["stability_pearson"] = float(np.mean([_mean(pearson(eight[i], eight[j]))
                                              for i, j in itertools.combinations(range(len(eight)), 2)]))
    return out


@dataclass(frozen=True)
class Probe:
    """The test split re-rendered with the training shortcut in half of each class."""

    images: torch.Tensor  # [N, 3, S, S] uint8
    cue: torch.Tensor  # [N, S, S] float in [0, 1]: where the cue was drawn
    shortcut: torch.Tensor  # [N] bool


def _render_test(cfg: dict, p_cue: float) -> faces.Rendered:
    """The test split of generation config ``cfg`` rendered with the cue in ``p_cue`` of each class."""
    return faces.render_faces([cfg["seed"], SPLIT_IDS["test"]], cfg["n_test"], cfg["size"], faces.SEEN_GENERATORS,
                              p_cue, p_cue)


def probe_split(data_dir: Path, test: Split) -> Probe:
    """Re-render the test split (deterministic): check it equals the files, then render the probe.

    The cue flags only switch drawing on or off, so the probe has the same faces, labels and
    generators as the test split, in the same (stem) order.
    """
    cfg = json.loads((data_dir / "benchmark.json").read_text(encoding="utf-8"))["config"]
    if not torch.equal(torch.from_numpy(_render_test(cfg, cfg["shortcut_eval"]).images).permute(0, 3, 1, 2),
                       test.images):
        raise SystemExit("re-rendered test split differs from the files on disk: regenerate the data")
    r = _render_test(cfg, 0.5)
    return Probe(torch.from_numpy(r.images).permute(0, 3, 1, 2).contiguous(),
                 torch.from_numpy(r.cue.astype(np.float32) / 255), torch.from_numpy(r.shortcut))


EXPECTED = {  # metric -> which family should be higher
    "entropy": "xent", "human_pearson": "cyborg", "human_mass_inside": "cyborg",
    "stability_pearson": "cyborg", "acc_unseen": "cyborg", "acc_cue_conflicting": "cyborg",
    "cue_mass": "xent",
}
# Within each family: blurring the salient region must cost more score than blurring the rest.
WITHIN_POSITIVE = ("blur_gap", "blur_gap_scaled")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchdata.check_directions")
    ap.add_argument("--data", type=Path, default=paths.DATA_DIR)
    ap.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    ap.add_argument("--runs", type=int, default=paths.N_RUNS)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    test = load_faces_split(args.data / "faces", "test")
    unseen = load_folder(args.data / "unseen_generators")
    # the test split is stored in canonical (stem) order, which is the render order
    probe = probe_split(args.data, test)
    reports = {}
    for recipe in paths.RECIPES:
        rep = family_report(load_family(args.models, recipe, args.runs), test, unseen, probe)
        rep["blur_gap"] = rep["blur_drop_object"] - rep["blur_drop_background"]
        rep["blur_gap_scaled"] = rep["blur_drop_object_scaled"] - rep["blur_drop_background_scaled"]
        reports[recipe] = rep
    ok = True
    print(f"{'metric':30s} {'xent':>8s} {'cyborg':>8s}  expected")
    for k in reports["xent"]:
        x, c = reports["xent"][k], reports["cyborg"][k]
        exp = EXPECTED.get(k)
        flag = ""
        if exp is not None:
            good = (c > x) if exp == "cyborg" else (x > c)
            ok &= good
            flag = f"{exp:8s} {'ok' if good else 'FAILS'}"
        if k in WITHIN_POSITIVE:
            good = x > 0 and c > 0
            ok &= good
            flag = f"both > 0 {'ok' if good else 'FAILS'}"
        print(f"{k:30s} {x:8.3f} {c:8.3f}  {flag}")
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
