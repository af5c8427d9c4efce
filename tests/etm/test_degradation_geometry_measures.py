"""Noise, geometry and degradation measures on tiny real torch models with closed-form answers.

The models are plain ``nn.Module``s whose score and salience are known analytically:

- ``RegionModel``: probabilities ``[1 - m, m]`` where ``m`` is the mean intensity of a known region
  R (a linear layer); its gradient x input salience for class 1 is the pixel's channel mean on R and
  0 elsewhere, so deletion curves can be computed by sorting the region's pixels.
- intensity salience: the map is the image's own channel-mean intensity, so it commutes with every
  flip, rotation and edge-replicate shift and geometric similarity is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from etm.errors import BadInput
from etm.measures.base import BatchContext
from etm.measures.degradation import RANDOM_STREAM, DegradationMeasure, deleted_counts, deletion_ranks
from etm.measures.geometry import GeometryMeasure
from etm.measures.noise import NoiseMeasure, noise_stream
from etm.ops.blur import gaussian_blur
from etm.ops.noise import salt_and_pepper
from etm.ops.paper import (
    paper_blur,
    paper_blur_levels,
    quantise_like_skimage,
    skimage_float,
    to_images8,
    to_uint8_truncated,
    upscale_bicubic,
)
from etm.ops.random import keyed_permutation
from etm.salience.base import SalienceResult

H = W = 16
P = H * W


class RegionModel(nn.Module):
    """Outputs ``[1 - m, m]``, m = mean intensity (all channels) of the region ``region`` [H, W]."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        w = region.float().expand(3, -1, -1) / (3 * region.sum())
        self.lin = nn.Linear(3 * region.numel(), 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.stack([-w.flatten(), w.flatten()]))
            self.lin.bias.copy_(torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


SalienceKind = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def grad_x_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ReLU'd gradient x input of the argmax class, summed over channels: [N, H, W]."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    sel = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(sel, x)
    return torch.relu((g * x).sum(1)).detach()


def intensity(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.mean(1)


def salience_result(model: nn.Module, x: torch.Tensor, kind: SalienceKind, pool: int) -> SalienceResult:
    with torch.no_grad():
        logits = model(x)
    up = kind(model, x)
    targets = logits.argmax(1)
    native = F.avg_pool2d(up.unsqueeze(1), pool).squeeze(1) if pool > 1 else up
    return SalienceResult(native=native, upsampled=up, logits=logits, targets=targets,
                          scores=logits.gather(1, targets.view(-1, 1)).squeeze(1), predicted=targets,
                          native_is_input_size=pool == 1)


def make_ctx(images: torch.Tensor, models: list[nn.Module], kind: SalienceKind, pool: int = 1,
             seeds: torch.Tensor | None = None) -> BatchContext:
    n = images.shape[0]

    def salience_fn(run: int, x: torch.Tensor) -> SalienceResult:
        return salience_result(models[run], x, kind, pool)

    def logits_fn(run: int, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return models[run](x)

    return BatchContext(
        keys=[f"img{i}.png" for i in range(n)], images=images, labels=torch.full((n,), -1),
        masks=None, has_mask=torch.zeros(n, dtype=torch.bool),
        image_seeds=seeds if seeds is not None else torch.arange(100, 100 + n, dtype=torch.int64),
        clean=[salience_fn(r, images) for r in range(len(models))],
        salience_fn=salience_fn, logits_fn=logits_fn,
        probabilities_fn=lambda run, logits: logits,  # the model already outputs probabilities
    )


def top_rows(rows: int) -> torch.Tensor:
    region = torch.zeros(H, W, dtype=torch.bool)
    region[:rows] = True
    return region


def region_images(n: int, region: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Images bright (0.6..1) on ``region`` so that class 1 is predicted, anything elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, H, W, generator=g)
    return torch.where(region, 0.6 + 0.4 * x, x)


# ----------------------------------------------------------------------------------------------
# deletion


def _expected_deletion(images: torch.Tensor, region: torch.Tensor, counts: list[int],
                       perm: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves by hand for a zero baseline: the score is the mean over R of the kept pixel means."""
    pix = images.mean(1).flatten(1).double().numpy()  # [N, P] pixel means = salience order on R
    r = region.flatten().numpy()
    n_r = r.sum()
    morf, lerf, rand = (np.zeros((len(images), len(counts))) for _ in range(3))
    for i in range(len(images)):
        vals = pix[i][r]
        desc = np.sort(vals)[::-1]
        total = vals.sum()
        kept_random = np.ones(P, bool)
        for j, m in enumerate(counts):
            morf[i, j] = (total - desc[:min(m, n_r)].sum()) / n_r
            lerf[i, j] = (total - desc[::-1][:max(0, m - (P - n_r))].sum()) / n_r
            kept_random[:] = True
            kept_random[perm[i, :m].numpy()] = False
            rand[i, j] = pix[i][r & kept_random].sum() / n_r
    return morf, lerf, rand


def test_deletion_curves_match_closed_form() -> None:
    region = top_rows(6)
    images = region_images(5, region)
    ctx = make_ctx(images, [RegionModel(region)], grad_x_input)
    m = DegradationMeasure({"variants": ["degradation.deletion"], "baseline": "mean",
                            "mean_color": [0, 0, 0], "chunk_size": 7})
    cols = m.per_image(ctx)
    counts = deleted_counts([s / 100 for s in range(0, 101, 10)], P)
    assert counts == [0, 26, 51, 77, 102, 128, 154, 179, 205, 230, 256]
    perm = keyed_permutation(ctx.image_seeds, RANDOM_STREAM, P)
    morf, lerf, rand = _expected_deletion(images, region, counts, perm)
    np.testing.assert_allclose(cols["deletion_morf"][:, 0], morf, atol=1e-6)
    np.testing.assert_allclose(cols["deletion_lerf"][:, 0], lerf, atol=1e-6)
    np.testing.assert_allclose(cols["deletion_random"][:, 0], rand, atol=1e-6)
    # Shared ends: the clean score at k = 0, the (black) baseline's score 0 at k = 100.
    for o in ("morf", "lerf", "random"):
        np.testing.assert_allclose(cols[f"deletion_{o}"][:, 0, 0], ctx.clean[0].scores.numpy(), atol=1e-7)
        np.testing.assert_allclose(cols[f"deletion_{o}"][:, 0, -1], 0.0, atol=1e-7)
    # Chunking changes no number beyond the model's own batch-size-dependent float32 rounding.
    big = DegradationMeasure({**m.params, "chunk_size": 1000}).per_image(ctx)
    for key, v in cols.items():
        np.testing.assert_allclose(v, big[key], atol=1e-6)

    res = m.summarize(cols, None, rng_seed=0)
    assert [r.name for r in res] == ["degradation.deletion"]
    x = np.linspace(0, 1, 11)
    gap = np.trapezoid(lerf, x, axis=1) - np.trapezoid(morf, x, axis=1)
    assert res[0].value == pytest.approx(gap.mean(), abs=1e-6)
    assert res[0].value > 0 and res[0].direction == "higher" and res[0].variant == "default"
    lo, hi = res[0].ci
    assert lo <= res[0].value <= hi
    d = res[0].details
    assert d["auc"]["morf"]["value"] < d["auc"]["random"]["value"] < d["auc"]["lerf"]["value"]
    assert len(d["curves"]["morf"]) == 11 and d["curves"]["morf"][0]["k"] == 0.0


def test_deletion_blur_baseline_and_empty_maps() -> None:
    region = top_rows(4)
    images = region_images(3, region, seed=1)
    model = RegionModel(region)
    ctx = make_ctx(images, [model], grad_x_input)
    # Image 2 predicts class 0 (dark region) -> its class-0 gradient x input is negative -> empty map.
    images[2, :, :4] = 0.1
    ctx = make_ctx(images, [model], grad_x_input)
    assert ctx.clean[0].upsampled[2].sum() == 0
    # reference_size None: the paper's sigmas as plain pixels (scaling is tested below).
    cols = DegradationMeasure({"variants": ["degradation.deletion"], "reference_size": None}).per_image(ctx)
    with torch.no_grad():
        blurred = gaussian_blur(images, 10.0)
        expected_end = model(blurred).gather(1, ctx.clean[0].targets.view(-1, 1)).squeeze(1)
    np.testing.assert_allclose(cols["deletion_random"][:, 0, -1], expected_end.numpy(), atol=1e-6)
    assert np.isnan(cols["deletion_morf"][2]).all() and np.isnan(cols["deletion_lerf"][2]).all()
    assert np.isfinite(cols["deletion_random"][2]).all()
    res = DegradationMeasure({"variants": ["degradation.deletion"]}).summarize(cols, None, 0)[0]
    assert res.n == 2 and res.n_empty == 1


def test_deletion_is_batch_independent_and_multi_run() -> None:
    regions = [top_rows(5), torch.zeros(H, W, dtype=torch.bool)]
    regions[1][:, :6] = True
    images = region_images(4, regions[0] | regions[1], seed=2)
    models = [RegionModel(r) for r in regions]
    ctx = make_ctx(images, models, grad_x_input)
    m = DegradationMeasure({"variants": ["degradation.deletion"], "chunk_size": 5})
    cols = m.per_image(ctx)
    assert cols["deletion_morf"].shape == (4, 2, 11)
    order = [3, 1]
    sub = m.per_image(make_ctx(images[order], models, grad_x_input, seeds=ctx.image_seeds[order]))
    for key in ("deletion_morf", "deletion_lerf", "deletion_random"):
        np.testing.assert_allclose(sub[key], cols[key][order], atol=1e-6)
    res = m.summarize(cols, None, 3)[0]
    assert len(res.per_run) == 2
    assert m.passes_per_image(2) == {"salience": 0, "forward": 2 * (3 * 9 + 1)}


def _deletion_by_gathering(m: DegradationMeasure, ctx: BatchContext) -> dict[str, np.ndarray]:
    """The deletion columns as the version before ``orders`` built them: all three orders in one flat
    (order, step, image) list, each chunk's composites gathered from full copies (``base[img]``)."""
    n, (_, _, h, w) = len(ctx.keys), ctx.images.shape
    counts = deleted_counts([s / 100 for s in m.params["steps"]], h * w)
    mid = [i for i, c in enumerate(counts) if 0 < c < h * w]
    counts_t = torch.tensor([counts[i] for i in mid])
    base, chunk = m.baseline(ctx.images), int(m.params["chunk_size"])
    curves = np.full((3, n, ctx.n_runs, len(counts)), np.nan)
    for r, clean in enumerate(ctx.clean):
        ranks = deletion_ranks(clean.upsampled, ctx.image_seeds)
        for i, c in enumerate(counts):
            if c == 0:
                curves[:, :, r, i] = clean.scores.double().numpy()
            elif c == h * w:
                curves[:, :, r, i] = ctx.scores(r, base, clean.targets).double().numpy()
        total = 3 * len(mid) * n
        flat = np.empty(total)
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(total, start + chunk))
            o, s, img = idx // (len(mid) * n), (idx // n) % len(mid), idx % n
            gone = (ranks[o, img] < counts_t[s].view(-1, 1)).view(-1, 1, h, w)
            composite = torch.where(gone, base[img], ctx.images[img])
            flat[start : start + idx.numel()] = ctx.scores(r, composite, clean.targets[img]).double().numpy()
        curves[:, :, r, mid] = flat.reshape(3, len(mid), n).transpose(0, 2, 1)
        curves[:2, (clean.upsampled.flatten(1) <= 0).all(1).numpy(), r, :] = np.nan
    return {f"deletion_{o}": curves[i] for i, o in enumerate(("morf", "lerf", "random"))}


@pytest.mark.parametrize("chunk", [7, 1000])
def test_deletion_default_is_the_three_order_computation_bit_for_bit(chunk: int) -> None:
    # Composites written from slices of the batch instead of gathered copies, and the flat layout
    # kept for the default orders: the same batches reach the model, so the same bits come back.
    regions = [top_rows(5), torch.zeros(H, W, dtype=torch.bool)]
    regions[1][:, :6] = True
    images = region_images(6, regions[0] | regions[1], seed=3)
    images[5, :, :, :6] = 0.05  # run 1 predicts class 0 on image 5: an empty map there
    ctx = make_ctx(images, [RegionModel(r) for r in regions], grad_x_input)
    for baseline in ("blur", "mean"):
        m = DegradationMeasure({"variants": ["degradation.deletion"], "chunk_size": chunk, "baseline": baseline})
        assert m.params["orders"] == ["morf", "lerf", "random"]
        cols, ref = m.per_image(ctx), _deletion_by_gathering(m, ctx)
        assert set(cols) == {"native_is_input_size", *ref}
        for key, v in ref.items():
            assert np.array_equal(cols[key], v, equal_nan=True), key
    assert np.isnan(cols["deletion_morf"][5, 1]).all() and np.isfinite(cols["deletion_random"]).all()


def test_deletion_orders_compute_only_the_curves_asked_for() -> None:
    region = top_rows(6)
    images = region_images(5, region)
    images[2, :, :6] = 0.1  # predicts class 0: an empty map
    ctx = make_ctx(images, [RegionModel(region)], grad_x_input)
    # 9 steps strictly inside (0, 100) x 5 images = 45 composites per order. A chunk size that divides
    # 45 sends the same batches to the model whichever orders are asked for, so the curves are equal
    # by construction; otherwise only up to the model's batch-size-dependent rounding (none for the
    # benchmark CNN under ONNX Runtime: bench/degradation.py checks it with a chunk that does not divide).
    for chunk in (15, 45):
        base = {"variants": ["degradation.deletion"], "baseline": "mean", "mean_color": [0, 0, 0], "chunk_size": chunk}
        three = DegradationMeasure(base).per_image(ctx)
        for orders in (["morf"], ["lerf"], ["random"], ["lerf", "morf"], ["random", "morf"]):
            m = DegradationMeasure({**base, "orders": orders})
            assert m.params["orders"] == [o for o in ("morf", "lerf", "random") if o in orders]  # canonical order
            cols = m.per_image(ctx)
            assert set(cols) == {"native_is_input_size", *(f"deletion_{o}" for o in orders)}
            for o in orders:
                assert np.array_equal(cols[f"deletion_{o}"], three[f"deletion_{o}"], equal_nan=True), (chunk, o)
    # A chunk that does not divide 45: the same curves up to the model's float32 batch rounding.
    odd = DegradationMeasure({**base, "chunk_size": 7, "orders": ["lerf"]}).per_image(ctx)
    np.testing.assert_allclose(odd["deletion_lerf"], three["deletion_lerf"], atol=1e-6)

    full = DegradationMeasure(base).summarize(three, None, 0)[0]
    morf_only = DegradationMeasure({**base, "orders": ["morf"]})
    res = morf_only.summarize({k: three[k] for k in ("native_is_input_size", "deletion_morf")}, None, 0)[0]
    assert res.value is None and res.ci is None and res.per_image is None
    assert "'morf' and 'lerf'" in res.details["message"] and res.n_empty == 1
    assert list(res.details["curves"]) == list(res.details["auc"]) == ["morf"]
    assert res.details["auc"]["morf"] == full.details["auc"]["morf"]
    assert res.details["curves"]["morf"] == full.details["curves"]["morf"]
    assert "gap_random_minus_morf" not in res.details and res.parameters["orders"] == ["morf"]
    # Both salience orders: the same headline as the default, without the random reference.
    two = DegradationMeasure({**base, "orders": ["morf", "lerf"]})
    res2 = two.summarize({k: v for k, v in three.items() if k != "deletion_random"}, None, 0)[0]
    assert (res2.value, res2.ci, res2.n, res2.n_empty) == (full.value, full.ci, full.n, full.n_empty)
    assert np.array_equal(res2.per_image, full.per_image, equal_nan=True)
    assert "gap_random_minus_morf" not in res2.details and "message" not in res2.details
    assert "gap_random_minus_morf" in full.details and full.parameters["orders"] == ["morf", "lerf", "random"]
    rnd = DegradationMeasure({**base, "orders": ["random", "morf"]})
    res3 = rnd.summarize({k: v for k, v in three.items() if k != "deletion_lerf"}, None, 0)[0]
    assert res3.value is None and res3.details["gap_random_minus_morf"] == full.details["gap_random_minus_morf"]
    # Forward passes follow the orders: K x (orders x 9 inner steps + 1 all-pixels step).
    assert morf_only.passes_per_image(2) == {"salience": 0, "forward": 2 * (9 + 1)}
    assert two.passes_per_image(1) == {"salience": 0, "forward": 2 * 9 + 1}
    assert DegradationMeasure(base).passes_per_image(1) == {"salience": 0, "forward": 3 * 9 + 1}


# ----------------------------------------------------------------------------------------------
# salience-guided blur


def test_blur_variant_matches_direct_computation() -> None:
    region = torch.zeros(H, W, dtype=torch.bool)
    region[4:12, 4:12] = True
    g = torch.Generator().manual_seed(4)
    images = torch.where(region, 0.85 + 0.15 * torch.rand(3, 3, H, W, generator=g),
                         0.3 * torch.rand(3, 3, H, W, generator=g))
    model = RegionModel(region)
    ctx = make_ctx(images, [model], grad_x_input, pool=2)
    m = DegradationMeasure({"variants": ["degradation.blur"], "reference_size": None})
    cols = m.per_image(ctx)
    # The authors' pipeline: truncated 8-bit native map, PIL bicubic upscale, uint8 blur of the 8-bit image.
    up8 = upscale_bicubic(to_uint8_truncated(ctx.clean[0].native), (H, W))
    clean8 = up8.numpy()
    images8 = to_images8(images)
    for mode in ("background", "object"):
        deg = paper_blur(images8, paper_blur_levels(up8, mode)).float() / 255.0
        with torch.no_grad():
            after = model(deg)[:, 1].numpy()
        np.testing.assert_allclose(cols[f"blur_after_{mode}"][:, 0], after, atol=1e-6)
        native = salience_result(model, deg, grad_x_input, 2).native
        nat8 = upscale_bicubic(to_uint8_truncated(native), (H, W)).numpy()
        ref = [structural_similarity(nat8[i], clean8[i], data_range=255) for i in range(3)]
        # A decision flipped to class 0 has an empty gradient x input map: excluded, not compared as zeros.
        empty = (native.flatten(1) <= 0).all(1).numpy()
        assert not empty.any() if mode == "background" else True
        ref = np.where(empty, np.nan, ref)
        np.testing.assert_allclose(cols[f"blur_ssim_{mode}"][:, 0], ref, atol=1e-4)
    np.testing.assert_allclose(cols["blur_before"][:, 0], ctx.clean[0].scores.numpy())
    res = m.summarize(cols, None, 0)
    assert [r.name for r in res] == ["degradation.blur"] and res[0].variant == "paper"
    head = (cols["blur_after_background"] - cols["blur_after_object"]).mean()
    # On 16x16 maps the authors' sigma-5 smoothing leaves almost one level, so both modes blur alike here;
    # the direction on real models is tests/benchdata/test_replication.py's.
    assert res[0].value == pytest.approx(head)
    modes = res[0].details["modes"]
    assert modes["object"]["score_drop"]["value"] >= modes["background"]["score_drop"]["value"]
    assert m.passes_per_image(3) == {"salience": 6, "forward": 0}


def test_degradation_rejects_bad_params() -> None:
    for bad in ({"variants": ["degradation.nope"]}, {"steps": [0, 50, 40]}, {"baseline": "zero"},
                {"mean_color": [0.5, 0.5]}):
        with pytest.raises(BadInput):
            DegradationMeasure(bad)
    for orders in ([], ["morf", "sideways"], "morf", [1], None, ["MoRF"]):
        with pytest.raises(BadInput, match=r"orders must be a non-empty list drawn from \['morf', 'lerf', 'random'\]"):
            DegradationMeasure({"orders": orders})


# ----------------------------------------------------------------------------------------------
# geometry


class LeftHalfModel(nn.Module):
    """Outputs ``[0.5, mean intensity of the left half]``: class 1 iff the left half is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([torch.full_like(m, 0.5), m], dim=1)


def test_geometry_intensity_salience_follows_exactly() -> None:
    g = torch.Generator().manual_seed(5)
    images = 0.05 + 0.9 * torch.rand(6, 3, H, W, generator=g)
    images[:3, :, :, : W // 2] += 0.3  # some bright left halves
    images = images.clamp(0, 1)
    ctx = make_ctx(images, [LeftHalfModel()], intensity, pool=4)
    m = GeometryMeasure()
    cols = m.per_image(ctx)
    assert cols["ssim"].shape == (6, 1, 12)
    np.testing.assert_allclose(cols["ssim"], 1.0, atol=1e-9)
    np.testing.assert_allclose(cols["pearson"], 1.0, atol=1e-9)
    # Flip rates by hand: the decision reads the left half of T(x).
    half = lambda t: t.mean((1, 2, 3)) > 0.5  # noqa: E731
    left, right = half(images[..., : W // 2]), half(images[..., W // 2:])
    top, bottom = half(images[..., : H // 2, :]), half(images[..., H // 2:, :])
    expected = {"flip_lr": left != right, "flip_ud": torch.zeros(6, dtype=torch.bool),
                "rot90_cw": left != bottom, "rot90_ccw": left != top}
    names = m.transform_names(square=True)
    for name, flips in expected.items():
        np.testing.assert_array_equal(cols["flip"][:, 0, names.index(name)], flips.numpy())
    res = {r.name: r for r in m.summarize(cols, None, 0)}
    assert res["geometry.ssim"].value == pytest.approx(1.0)
    assert res["geometry.pearson"].variant == "extra"
    per = res["geometry.ssim"].details["per_transform"]
    assert list(per) == names
    assert per["flip_lr"]["flip_rate"]["value"] == pytest.approx(expected["flip_lr"].float().mean().item())
    assert m.passes_per_image(2) == {"salience": 24, "forward": 0}


def test_geometry_fixed_map_does_not_follow() -> None:
    ramp = torch.arange(W, dtype=torch.float32).expand(H, W) + 1.0  # grows to the right, > 0

    def fixed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return ramp.expand(x.shape[0], H, W).clone()

    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(6))
    m = GeometryMeasure({"transforms": ["flip_lr", "flip_ud", "rot90_cw", "shift_e"],
                         "extra_transforms": ["rot_90"]})
    cols = m.per_image(make_ctx(images, [LeftHalfModel()], fixed))
    np.testing.assert_allclose(cols["pearson"][:, 0, :3], [[-1, 1, 0]] * 2, atol=1e-9)
    # A shift of a ramp is still the same ramp on the valid region (min-max over it): r = 1.
    np.testing.assert_allclose(cols["pearson"][:, 0, 3], 1.0, atol=1e-9)
    np.testing.assert_allclose(cols["pearson"][:, 0, 4], 0.0, atol=1e-5)
    assert (cols["ssim"][:, 0, 0] < 0.5).all()
    np.testing.assert_allclose(cols["ssim"][:, 0, 1], 1.0, atol=1e-9)


def test_geometry_non_square_skips_rot90() -> None:
    images = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(7))
    m = GeometryMeasure()
    cols = m.per_image(make_ctx(images, [LeftHalfModel()], intensity))
    assert cols["ssim"].shape == (2, 1, 10) and not cols["square"].any()
    np.testing.assert_allclose(cols["ssim"], 1.0, atol=1e-9)
    res = m.summarize(cols, None, 0)[0]
    assert "rot90_cw" not in res.details["per_transform"] and len(res.details["notes"]) == 2
    with pytest.raises(BadInput):
        GeometryMeasure({"extra_transforms": ["shear_3"]})


# ----------------------------------------------------------------------------------------------
# noise


def test_noise_measure_matches_references() -> None:
    images = 0.05 + 0.9 * torch.rand(4, 3, H, W, generator=torch.Generator().manual_seed(8))
    ctx = make_ctx(images, [LeftHalfModel()], intensity, pool=2)  # 8x8 native maps
    amounts = [0.0, 0.05, 0.5, 1.0]
    m = NoiseMeasure({"amounts": amounts})
    cols = m.per_image(ctx)
    assert cols["ssim"].shape == (4, 1, 4)
    clean = ctx.clean[0]
    clean8 = to_uint8_truncated(clean.native).numpy()
    base = skimage_float(to_images8(images))  # the authors' round trip: x * 1/255, noise, * 255 truncated
    for j, a in enumerate(amounts):
        noisy = salt_and_pepper(base, a, ctx.image_seeds, noise_stream(a)) if a > 0 else base
        noisy = quantise_like_skimage(noisy).float() / 255.0
        res = salience_result(LeftHalfModel(), noisy, intensity, 2)
        nat8 = to_uint8_truncated(res.native).numpy()
        ref = [structural_similarity(nat8[i], clean8[i], data_range=255) for i in range(4)]
        np.testing.assert_allclose(cols["ssim"][:, 0, j], ref, atol=1e-4)
        p = res.native.flatten(1).double().numpy()
        p = p / p.sum(1, keepdims=True)
        ent = -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0)).sum(1) / np.log2(64)
        np.testing.assert_allclose(cols["entropy"][:, 0, j], ent, atol=1e-12)
        # The score is the clean target class's probability on the noisy image.
        expected = res.logits.gather(1, clean.targets.view(-1, 1)).squeeze(1).numpy()
        np.testing.assert_allclose(cols["score"][:, 0, j], expected)
    # Batch independence: a reordered sub-batch with the same seeds gives the same rows.
    order = [2, 0]
    sub = m.per_image(make_ctx(images[order], [LeftHalfModel()], intensity, 2, ctx.image_seeds[order]))
    for c in ("score", "entropy", "ssim"):
        np.testing.assert_array_equal(sub[c], cols[c][order])
    res = m.summarize(cols, None, 0)[0]
    assert res.name == "oos.noise" and res.variant == "paper" and res.direction == "higher"
    auc = np.trapezoid(cols["ssim"][:, 0], amounts, axis=1).mean()
    assert res.value == pytest.approx(auc)
    assert [c["amount"] for c in res.details["curves"]["ssim"]] == amounts
    assert m.passes_per_image(2) == {"salience": 8, "forward": 0}  # amount 0 is a pass (8-bit round trip)
    with pytest.raises(BadInput):
        NoiseMeasure({"amounts": [0.0, 0.5, 0.2]})


def test_pixel_lengths_scale_with_the_input_size() -> None:
    """The paper's sigmas are for 224 px; a 64-px image gets them scaled by 64 / 224."""
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = DegradationMeasure()
    assert m.scale(images) == pytest.approx(64 / 224)
    torch.testing.assert_close(m.baseline(images), gaussian_blur(images, 10.0 * 64 / 224))
    assert DegradationMeasure().scale(torch.rand(1, 3, 224, 224)) == 1.0
    assert DegradationMeasure({"reference_size": None}).scale(images) == 1.0


def test_deletion_chunks_are_bounded_in_pixels() -> None:
    """``chunk_pixels`` caps a deletion forward pass at that many pixels (large inputs run slower per
    image in huge batches); the chunk is then the one ``chunk_size`` would give, with the same numbers."""
    region = top_rows(6)
    images = region_images(5, region)
    ctx = make_ctx(images, [RegionModel(region)], grad_x_input)
    sizes: list[int] = []
    logits = ctx.logits_fn

    def counting(run: int, x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return logits(run, x)

    ctx.logits_fn = counting
    params = {"variants": ["degradation.deletion"], "baseline": "mean", "mean_color": [0, 0, 0]}
    by_pixels = DegradationMeasure({**params, "chunk_pixels": 3 * P + 5}).per_image(ctx)
    deletion_sizes = [s for s in sizes if s != len(images)]  # the clean and all-deleted passes are whole batches
    assert deletion_sizes and max(deletion_sizes) == 3
    by_count = DegradationMeasure({**params, "chunk_size": 3}).per_image(ctx)
    for key, v in by_pixels.items():
        np.testing.assert_array_equal(v, by_count[key])
    # The default leaves 64-px inputs at 256 composites per pass.
    d = DegradationMeasure({}).params
    assert d["chunk_pixels"] // (64 * 64) == d["chunk_size"] == 256
    with pytest.raises(BadInput, match="chunk_pixels"):
        DegradationMeasure({"chunk_pixels": 0})
