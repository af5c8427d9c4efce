"""Figure 3: deletion curves (``degradation.deletion``) against Quantus and pytorch-grad-cam.

Same model (ours: the ONNX file through ONNX Runtime; anchors: the same network's ``.pt2`` program
run eagerly in PyTorch), same images, same maps, same steps, same baseline, same threads.

- Quantus ``PixelFlipping`` (MoRF, constant baseline 0.5 = our ``mean`` baseline with mid-grey):
  16 steps of 1/16 of the pixels (``features_in_step`` = 3 channels x H*W/16). Its order is
  ``np.argsort(-a)`` (not stable), ours a stable sort with ties broken by pixel index, so both get a
  tie-free map (the clean upsampled map replaced by its rank, ties by pixel index): then the
  definitions coincide and the curves must agree (|diff| <= 1e-4, float32 ORT vs eager PyTorch).
- Quantus ``RegionPerturbation`` (MoRF, 8x8 patches, baseline 0.5): coincides with pixel deletion
  when the map is constant on the patch grid with distinct patch values, i.e. the 8x8 native map
  (ranked) upsampled by nearest neighbour; its values are ``score(x) - score(x after r patches)``.
- pytorch-grad-cam ``ROADMostRelevantFirst`` at 10..90 % removed: its noisy linear imputation is
  not one of the deletion baselines, so only speed is compared, plus the parts that coincide: the set
  of pixels it removes must be our MoRF order's first pixels, and its imputation (noise off) must be
  ``etm.ops.road``'s, the one ``degradation.road`` uses (tests/etm/test_quantus_faithfulness.py
  compares the whole ROAD measure).

The anchors compute one MoRF curve, so ours is timed computing that one too (``orders: ["morf"]``,
one forward pass per step, as theirs). The default three-order run (MoRF, LeRF and the random order:
three forward passes per step, what the headline ``AUC(LeRF) - AUC(MoRF)`` needs) is a report row
against PixelFlipping. Its MoRF curve must equal the MoRF-only run's bit for bit: both forward
chunks of 256 composites, and the MoRF-only run's last chunk holds fewer of them than the three-order
run's, so the check also shows that the model's scores do not depend on what else is in the batch.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import Report, best, have, interleaved, set_threads

TOL = 1e-4


def _inputs(n_images: int, quick: bool) -> dict[str, Any]:
    from bench.evaluation import default_inputs
    from etm.datasets import iter_batches, load_dataset
    from etm.models.loader import load_model

    inp = default_inputs(quick)
    model = load_model(inp["model"], threads=1)
    ds = load_dataset(inp["dataset"], split=inp["split"])
    size = tuple(model.metadata.input_size)
    batch = next(iter(iter_batches(ds, range(min(n_images, len(ds))), n_images, size)))
    if inp["build"] is None:  # the trained family: its .pt2 twin, run eagerly
        from etm.models.pt2_model import load_exported_program

        pt2 = inp["model"].with_suffix(".pt2")
        net, src = load_exported_program(pt2).module(), f"{pt2.name} (torch.export program, eager)"
    else:  # the module we exported ourselves, rebuilt with the same seed
        net, src = inp["build"](), "the exported module, eager"
    return {"model": model, "batch": batch, "net": net, "net_src": src, "what": inp["what"]}


class Eager(torch.nn.Module):
    """Normalisation + the network, as the anchors call it. The network is held outside the module
    tree: an exported program's ``.module()`` refuses ``train()``/``eval()``, which the anchors call."""

    def __init__(self, net: Any, mean: list[float], std: list[float]) -> None:
        super().__init__()
        object.__setattr__(self, "net", net)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def pack(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, 3W], channels side by side."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(n, 1, h, c * w)


class Packed(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, xp: torch.Tensor) -> torch.Tensor:
        n, _, h, cw = xp.shape
        return self.net(xp.reshape(n, h, 3, cw // 3).permute(0, 2, 1, 3).contiguous())


def ranked(maps: torch.Tensor) -> torch.Tensor:
    """Replace each map [N, H, W] by its descending rank (ties by pixel index) scaled to (0, 1]: the
    same order as our MoRF, and no ties left for an unstable sort to break differently."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    p = flat.shape[1]
    vals = torch.empty_like(flat, dtype=torch.float64)
    vals.scatter_(1, order, torch.arange(p, 0, -1, dtype=torch.float64).expand_as(flat).contiguous() / p)
    return vals.view_as(maps).float()


def _context(model, batch, clean):
    from etm.evaluation import image_seeds
    from etm.measures.base import BatchContext

    return BatchContext(
        keys=list(batch.keys), images=batch.images, labels=torch.full((len(batch.keys),), -1),
        masks=None, has_mask=torch.zeros(len(batch.keys), dtype=torch.bool),
        image_seeds=image_seeds(0, batch.keys), clean=[clean],
        salience_fn=lambda r, x: None, logits_fn=lambda r, x: model.logits(x),
        probabilities_fn=lambda r, lg: model.probabilities(lg),
    )


def _ours(model, batch, clean, steps: list[float], orders: tuple[str, ...] = ("morf",)):
    from etm.measures.degradation import DegradationMeasure

    m = DegradationMeasure({"variants": ["degradation.deletion"], "baseline": "mean", "orders": list(orders),
                            "mean_color": [0.5, 0.5, 0.5], "steps": steps, "chunk_size": 256})
    ctx = _context(model, batch, clean)
    return lambda: m.per_image(ctx)


def run(n_images: int = 64, road_images: int = 8, reps: int = 2, threads: int = 1, quick: bool = False) -> Report:
    from dataclasses import replace

    from etm.measures.degradation import deletion_ranks
    from etm.salience.registry import compute_salience

    thread_note = set_threads(threads)
    inp = _inputs(n_images, quick)
    model, batch = inp["model"], inp["batch"]
    images = batch.images
    n, _, h, w = images.shape
    rep = Report("3", f"deletion curves vs Quantus / pytorch-grad-cam ({inp['what']})")
    rep.setup = {"N": n, "N_road": min(road_images, n), "size": f"{h}x{w}", "threads": thread_note,
                 "reps": reps, "timing": "best of reps",
                 "ours": "ONNX via ORT, MoRF only (orders ['morf']) vs each anchor; all 3 orders as a report row",
                 "anchors": inp["net_src"]}
    eager = Eager(inp["net"], model.metadata.mean, model.metadata.std).eval()
    res = compute_salience(model, images, "gradcam")
    with torch.no_grad():
        d = float((eager(images) - res.logits).abs().max())
    rep.check("ONNX model = eager program (logits)", d < 1e-3, f"max |diff| = {d:.2e}")
    targets = res.targets.numpy()
    fns: dict[str, Any] = {}
    ratios: list[tuple[str, str]] = []
    x_np = images.numpy().astype(np.float32)

    # -- PixelFlipping: 16 steps on the tie-free upsampled map ---------------------------------
    k16 = 16
    steps16 = [100.0 * i / k16 for i in range(k16 + 1)]
    clean_px = replace(res, upsampled=ranked(res.upsampled))
    fns["ours: 16 steps"] = _ours(model, batch, clean_px, steps16)
    ours_morf16 = fns["ours: 16 steps"]()["deletion_morf"][:, 0, :]
    fns["ours 3 orders: 16 steps"] = _ours(model, batch, clean_px, steps16, ("morf", "lerf", "random"))
    three = fns["ours 3 orders: 16 steps"]()
    same = np.array_equal(three["deletion_morf"][:, 0, :], ours_morf16)
    rep.check("MoRF-only curve = MoRF curve of the 3-order run", same,
              f"{'bit for bit' if same else 'differ'} over {n} images x {k16 + 1} steps "
              f"({(k16 - 1) * n} composites per order, chunks of 256)")
    if have("quantus"):
        import quantus

        # Quantus checks that ``features_in_step`` divides H*W (not 3*H*W) yet deletes features of the
        # channel-broadcast map, so a step of whole pixels (3 features each) cannot divide a 2^k image.
        # So it gets the image with channels side by side, [N, 1, H, 3W] (unpacked again before the
        # network), and a map whose 3 copies of a pixel differ by a tiny offset (contiguous in its
        # order): each step then deletes exactly H*W/16 whole pixels, as ours does.
        pf = quantus.PixelFlipping(features_in_step=3 * h * w // k16, perturb_baseline=0.5, normalise=True,
                                   disable_warnings=True, display_progressbar=False)
        packed_model = Packed(eager).eval()
        xp = pack(images).numpy()
        rank = clean_px.upsampled.double()  # in (0, 1], steps of 1 / (H*W)
        a_px = pack(torch.stack([rank + c / (8.0 * h * w) for c in (2, 1, 0)], dim=1)).numpy()

        def quantus_pf():
            return np.asarray(pf(model=packed_model, x_batch=xp, y_batch=targets, a_batch=a_px, device="cpu",
                                 softmax=True, batch_size=n))

        q = quantus_pf()
        diff = float(np.abs(q - ours_morf16[:, 1:]).max())
        rep.check("MoRF curve = Quantus PixelFlipping", diff <= TOL, f"max |diff| = {diff:.2e} over {n} images x "
                  f"{k16} steps (tol {TOL})")
        fns["quantus PixelFlipping: 16 steps"] = quantus_pf
        ratios.append(("quantus PixelFlipping: 16 steps", "ours: 16 steps"))
        ratios.append(("quantus PixelFlipping: 16 steps", "ours 3 orders: 16 steps"))
    else:
        rep.skipped.append("quantus not installed (bench extra): PixelFlipping / RegionPerturbation")

    # -- RegionPerturbation: 8x8 patches on the ranked native map, nearest-upsampled --------------
    patch = max(1, h // res.native.shape[-2]) if res.native.shape[-2] <= h else 1
    n_regions = min(16, (h // patch) * (w // patch))
    block = F.interpolate(ranked(res.native)[:, None], size=(h, w), mode="nearest")[:, 0]
    steps_r = [100.0 * i * patch * patch / (h * w) for i in range(n_regions + 1)]
    clean_blk = replace(res, upsampled=block)
    fns["ours: region steps"] = _ours(model, batch, clean_blk, steps_r)
    ours_morf_r = fns["ours: region steps"]()["deletion_morf"][:, 0, :]
    if have("quantus"):
        import quantus

        rp = quantus.RegionPerturbation(patch_size=patch, order="morf", regions_evaluation=n_regions,
                                        perturb_baseline=0.5, disable_warnings=True, display_progressbar=False)
        a_blk = block.numpy()[:, None]

        def quantus_rp():
            return np.asarray(rp(model=eager, x_batch=x_np, y_batch=targets, a_batch=a_blk, device="cpu",
                                 softmax=True, batch_size=n))

        q = quantus_rp()
        drop = ours_morf_r[:, :1] - ours_morf_r[:, 1:]
        diff = float(np.abs(q - drop).max())
        rep.check("MoRF score drops = Quantus RegionPerturbation", diff <= TOL,
                  f"max |diff| = {diff:.2e} over {n} images x {n_regions} regions of {patch}x{patch} (tol {TOL})")
        fns[f"quantus RegionPerturbation: {n_regions} regions"] = quantus_rp
        ratios.append((f"quantus RegionPerturbation: {n_regions} regions", "ours: region steps"))

    # -- ROAD (MoRF) at 10..90 %: speed, and the removed pixels follow our order -----------------
    m_road = min(road_images, n)
    if have("pytorch_grad_cam"):
        from pytorch_grad_cam.metrics.road import RemoveMostRelevantFirst, ROADMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pcts = list(range(10, 100, 10))
        cams = clean_px.upsampled[:m_road].numpy()
        road_targets = [ClassifierOutputTarget(int(t)) for t in targets[:m_road]]
        road_x = images[:m_road]
        metrics = [ROADMostRelevantFirst(percentile=100 - k) for k in pcts]

        def road():
            return [mt(road_x, cams, road_targets, eager) for mt in metrics]

        ranks = deletion_ranks(clean_px.upsampled[:m_road], torch.zeros(m_road, dtype=torch.long))[0]
        bad = 0
        for k in pcts:
            keep = RemoveMostRelevantFirst(100 - k, imputer=lambda img, msk: msk)
            for i in range(m_road):
                removed = ~keep(images[i], torch.from_numpy(cams[i])).bool().flatten()
                bad += not torch.equal(removed, ranks[i] < int(removed.sum()))
        rep.check("ROAD removes our MoRF order's first pixels", bad == 0,
                  f"{bad} of {len(pcts) * m_road} (image, step) pixel sets differ")
        # degradation.road's imputation (etm/ops/road.py) against pytorch-grad-cam's, noise off on both sides.
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer

        from etm.ops.road import noisy_linear_imputation

        worst = 0.0
        for k in (10, 50, 90):
            for i in range(m_road):
                gone = ranks[i].view(h, w) < int(round(k / 100 * h * w))
                theirs = NoisyLinearImputer(noise=0.0)(images[i], (~gone).float())
                worst = max(worst, float((noisy_linear_imputation(images[i], gone, 0.0, None) - theirs).abs().max()))
        rep.check("ROAD imputation = pytorch-grad-cam NoisyLinearImputer", worst <= 1e-5,
                  f"max |diff| = {worst:.2e} over {3 * m_road} (image, step) imputations (noise 0, tol 1e-5)")
        sub = replace(clean_px, native=res.native[:m_road], upsampled=clean_px.upsampled[:m_road],
                      logits=res.logits[:m_road], targets=res.targets[:m_road], scores=res.scores[:m_road],
                      predicted=res.predicted[:m_road])
        from etm.datasets.batches import Batch

        small = Batch(indices=batch.indices[:m_road], keys=batch.keys[:m_road], images=images[:m_road],
                      labels=batch.labels[:m_road], masks=batch.masks[:m_road], has_mask=batch.has_mask[:m_road])
        fns["ours: 0..100 by 10, ROAD images"] = _ours(model, small, sub, [float(s) for s in range(0, 101, 10)])
        fns["pytorch-grad-cam ROAD MoRF: 9 steps"] = road
        ratios.append(("pytorch-grad-cam ROAD MoRF: 9 steps", "ours: 0..100 by 10, ROAD images"))
    else:
        rep.skipped.append("pytorch-grad-cam not installed (bench extra): ROAD")

    times = interleaved(fns, reps=reps, warmup=0)
    rep.timings = times
    t = {k: best(v) for k, v in times.items()}
    for k, v in t.items():
        rep.row(f"time: {k}", v, "s")
    for anchor, ours in ratios:
        r = t[anchor] / t[ours]
        if ours.startswith("ours 3 orders"):  # not like with like: three curves against one
            rep.row(f"ours, 3 orders (MoRF, LeRF, random) vs {anchor.split(':')[0]}", r, "x",
                    note=f"report only; per curve {3 * r:.1f}x")
        else:  # one MoRF curve each
            rep.row(f"ours vs {anchor.split(':')[0]}", r, "x", ">= 10", r >= 10, note="MoRF only, both")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--road", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    from bench.run import print_reports

    return print_reports([run(a.n, a.road, a.reps, quick=a.quick)])


if __name__ == "__main__":
    raise SystemExit(main())
