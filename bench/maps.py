"""Figure 4: batched SSIM and histogram entropy on native-size maps against scikit-image loops.

100,000 pairs of 8-bit 8x8 maps (the benchmark CNN's native size; 7x7 window, data range 255, as
``stability.ssim`` uses them) and 100,000 8-bit maps for ``entropy.histogram``. Ours: one call each
(``etm.ops.ssim.ssim``, ``etm.measures.entropy.histogram_entropy``). Anchor: a Python loop
of ``skimage.metrics.structural_similarity`` / ``skimage.measure.shannon_entropy`` over the first
``n_anchor`` maps (the loop is linear in the count; its per-map time is scaled to all maps, which the
output says). Values must agree: SSIM to 1e-4, entropy (x log2(h*w)) to 1e-6.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import Report, best, interleaved, set_threads

SSIM_TOL = 1e-4
ENT_TOL = 1e-6


def make_maps(n: int, side: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated batches of 8-bit maps like Grad-CAM's: smooth blobs plus noise, ReLU'd."""
    from etm.ops.maps import to_uint8

    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=(side, side),
                                           mode="bilinear", align_corners=False)[:, 0]
    a = torch.relu(base + 0.3 * torch.randn(n, side, side, generator=g) - 0.2)
    b = torch.relu(base + 0.3 * torch.randn(n, side, side, generator=g) - 0.2)
    return to_uint8(a), to_uint8(b)


def run(n_maps: int = 100_000, n_anchor: int = 10_000, side: int = 8, reps: int = 3, threads: int = 1) -> Report:
    from skimage.measure import shannon_entropy
    from skimage.metrics import structural_similarity

    from etm.measures.entropy import histogram_entropy
    from etm.ops.ssim import ssim

    thread_note = set_threads(threads)
    a, b = make_maps(n_maps, side)
    m = min(n_anchor, n_maps)
    a_np, b_np = a[:m].numpy(), b[:m].numpy()
    rep = Report("4", f"SSIM and histogram entropy on {n_maps:,} native {side}x{side} maps vs scikit-image")
    rep.setup = {"maps": n_maps, "anchor loop over": m, "threads": thread_note, "reps": reps,
                 "ssim": "7x7 window, data range 255, uint8 maps", "timing": "best of reps"}

    def sk_ssim() -> np.ndarray:
        return np.array([structural_similarity(x, y, data_range=255) for x, y in zip(a_np, b_np, strict=True)])

    def sk_ent() -> np.ndarray:
        return np.array([shannon_entropy(x) for x in a_np])

    ours_ssim = ssim(a, b, 255.0).numpy()
    ours_ent = histogram_entropy(a).numpy() * np.log2(side * side)
    t0 = time.perf_counter()
    ref_ssim, ref_ent = sk_ssim(), sk_ent()
    rep.setup["first anchor pass s"] = round(time.perf_counter() - t0, 2)
    d_ssim = float(np.abs(ours_ssim[:m] - ref_ssim).max())
    d_ent = float(np.abs(ours_ent[:m] - ref_ent).max())
    rep.check("SSIM = skimage.metrics.structural_similarity", d_ssim <= SSIM_TOL,
              f"max |diff| = {d_ssim:.1e} over {m:,} pairs (tol {SSIM_TOL})")
    rep.check("entropy = skimage.measure.shannon_entropy", d_ent <= ENT_TOL,
              f"max |diff| = {d_ent:.1e} over {m:,} maps (tol {ENT_TOL})")
    rep.check("8-bit SSIM fast path (float32 window sums) = float64 box_mean path, bit for bit",
              torch.equal(ssim(a, b, 255.0), ssim(a.double(), b.double(), 255.0)), "torch.equal on all maps")
    times = interleaved({
        "ours ssim": lambda: ssim(a, b, 255.0),
        "ours entropy": lambda: histogram_entropy(a),
        "skimage ssim loop": sk_ssim,
        "skimage entropy loop": sk_ent,
    }, reps=reps, warmup=0)
    rep.timings = times
    t = {k: best(v) for k, v in times.items()}
    scale = n_maps / m
    for what in ("ssim", "entropy"):
        ours, anchor = t[f"ours {what}"], t[f"skimage {what} loop"] * scale
        rep.row(f"ours {what}: {n_maps:,} maps", ours, "s", note=f"{1e6 * ours / n_maps:.2f} us/map")
        rep.row(f"skimage {what} loop: {n_maps:,} maps", anchor, "s",
                note=f"{1e6 * anchor / n_maps:.1f} us/map" + (f", looped over {m:,}" if m < n_maps else ""))
        rep.row(f"ours vs skimage ({what})", anchor / ours, "x", ">= 50", anchor / ours >= 50)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--anchor", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    from bench.run import print_reports

    return print_reports([run(a.n, a.anchor, reps=a.reps)])


if __name__ == "__main__":
    raise SystemExit(main())
