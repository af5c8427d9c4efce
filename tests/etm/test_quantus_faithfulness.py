"""Same numbers as the anchors (#20): the opt-in faithfulness, robustness, localisation and sparseness measures
against Quantus 0.6.0 (and ROAD also against pytorch-grad-cam 1.5.7) on the same model, images, maps and draws.

The service side runs a tiny CNN exported to ``.pt2`` and loaded with the project's loader (``load_model``), with
its own Grad-CAM; the anchors run the same network eagerly (rebuilt from the same seed) and are given the
service's maps (``a_batch``) or, where they compute maps themselves (the sensitivities), an ``explain_func`` that
returns the service's maps of the images they pass. Every convention that differs is set explicitly on the
anchor's side, and named where it is set. Tolerance: 1e-5 everywhere.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from etm.measures.base import BatchContext
from etm.models.loader import load_model
from etm.salience.base import SalienceResult
from etm.salience.registry import compute_salience
from tests.helpers.tiny import META, TinyNet, tiny_family

quantus = pytest.importorskip("quantus")

TOL = 1e-5
N, SIZE = 8, 32


class Eager(torch.nn.Module):
    """The tiny net with the sidecar's normalisation, as the anchors call it (inputs in [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # tiny_family's run0 is TinyNet() right after manual_seed(0)
        self.net = TinyNet().eval()
        self.register_buffer("mean", torch.tensor(META["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(META["std"]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _images_and_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Random textures, half with a bright square; soft masks (0.8 on the square, 0.3 on a halo around it)."""
    rng = np.random.default_rng(3)
    imgs = rng.random((N, 3, SIZE, SIZE)).astype(np.float32) * 0.5
    masks = np.zeros((N, SIZE, SIZE), np.float32)
    for i in range(N):
        y, x = rng.integers(2, SIZE - 12, 2)
        if i % 2:
            imgs[i, :, y : y + 10, x : x + 10] = 0.9
        masks[i, max(0, y - 2) : y + 12, max(0, x - 2) : x + 12] = 0.3
        masks[i, y : y + 10, x : x + 10] = 0.8
    return torch.from_numpy(imgs), torch.from_numpy(masks)


def tie_free(maps: torch.Tensor) -> torch.Tensor:
    """Each map replaced by its descending rank (ties to the lower pixel index, the service's stable order) scaled
    to (0, 1]: the same order as the service's, with values 1 / (H*W) apart, so no ties or float32 near-ties are
    left for Quantus's unstable ``np.argsort(-a)`` or pytorch-grad-cam's percentile threshold to cut otherwise."""
    flat = maps.flatten(1)
    p = flat.shape[1]
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    vals = torch.empty_like(flat, dtype=torch.float64)
    vals.scatter_(1, order, torch.arange(p, 0, -1, dtype=torch.float64).expand_as(flat).contiguous() / p)
    return vals.view_as(maps).float()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tiny_family(tmp_path_factory.mktemp("anchor_pt2"), k=1, fmt="pt2")[0]
    model = load_model(path, threads=1)
    images, masks = _images_and_masks()
    eager = Eager()
    clean = compute_salience(model, images, "gradcam")
    with torch.no_grad():
        assert float((eager(images) - clean.logits).abs().max()) < 1e-4  # the same network on both sides
    return {"model": model, "images": images, "masks": masks, "eager": eager, "clean": clean}


def make_ctx(setup: dict, clean: SalienceResult | None = None, masks: bool = True) -> BatchContext:
    from etm.evaluation import image_seeds

    model, images = setup["model"], setup["images"]
    keys = [f"img{i}.png" for i in range(N)]
    return BatchContext(
        keys=keys, images=images, labels=torch.full((N,), -1),
        masks=setup["masks"] if masks else None, has_mask=torch.full((N,), masks),
        image_seeds=image_seeds(0, keys), clean=[clean or setup["clean"]],
        salience_fn=lambda r, x: compute_salience(model, x, "gradcam"),
        logits_fn=lambda r, x: model.logits(x),
        probabilities_fn=lambda r, lg: model.probabilities(lg),
    )


def _close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), what
    ok = ~np.isnan(ours)
    diff = float(np.abs(ours[ok] - theirs[ok]).max()) if ok.any() else 0.0
    print(f"{what}: max |diff| = {diff:.2e} over {int(ok.sum())} values")
    assert diff <= TOL, f"{what}: max |diff| {diff:.2e} > {TOL}"


# -- sparseness ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["native", "upsampled"])
def test_sparseness_equals_quantus(setup: dict, which: str) -> None:
    from etm.measures.sparseness import SparsenessMeasure

    res = setup["clean"]
    ours = SparsenessMeasure({"map": which}).per_image(make_ctx(setup))["gini"][:, 0]
    a = getattr(res, which).numpy()[:, None].astype(np.float64)
    # Convention: Quantus normalises by the maximum over the whole batch (normalise_by_max, all axes); the
    # service by each map's own maximum (so a map's value does not depend on its batch): normalise per sample.
    q = quantus.Sparseness(normalise_func_kwargs={"normalise_axes": (1, 2, 3)}, disable_warnings=True)
    x = setup["images"].numpy() if which == "upsampled" else np.zeros((N, 3, *a.shape[-2:]), np.float32)
    theirs = q(model=setup["eager"], x_batch=x, y_batch=res.targets.numpy(), a_batch=a.copy(), device="cpu")
    _close(ours, np.asarray(theirs), f"Sparseness ({which} map)")
    # A signed map: Quantus's abs=True default is the service's |map|.
    signed = res.upsampled - res.upsampled.mean()
    ours_s = SparsenessMeasure({"map": "upsampled"}).per_image(make_ctx(setup, replace(res, upsampled=signed)))
    theirs_s = q(model=setup["eager"], x_batch=setup["images"].numpy(), y_batch=res.targets.numpy(),
                 a_batch=signed.numpy()[:, None].astype(np.float64), device="cpu")
    _close(ours_s["gini"][:, 0], np.asarray(theirs_s), "Sparseness (signed map, abs)")


def test_sparseness_empty_map_is_nan_where_quantus_says_zero(setup: dict) -> None:
    from etm.measures.sparseness import SparsenessMeasure

    res = setup["clean"]
    zero = res.native.clone()
    zero[0] = 0
    cols = SparsenessMeasure().per_image(make_ctx(setup, replace(res, native=zero)))
    was_zero = (res.native.flatten(1) == 0).all(dim=1).numpy()
    assert np.isnan(cols["gini"][0, 0])
    assert np.array_equal(np.isnan(cols["gini"][1:, 0]), was_zero[1:])
    # Quantus as called by default (one maximum for the whole batch) gives the all-zero map 1e-7 everywhere: 0.
    q = quantus.Sparseness(disable_warnings=True)
    theirs = q(model=setup["eager"], x_batch=np.zeros((N, 3, *zero.shape[-2:]), np.float32),
               y_batch=res.targets.numpy(), a_batch=zero.numpy()[:, None].astype(np.float64), device="cpu")
    assert abs(theirs[0]) < 1e-9


# -- localisation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_localisation_equals_quantus(setup: dict, threshold: float) -> None:
    from etm.measures.localisation import LocalisationMeasure

    res = setup["clean"]
    up = tie_free(res.upsampled)
    k = 100
    cols = LocalisationMeasure({"mask_threshold": threshold, "k": k}).per_image(
        make_ctx(setup, replace(res, upsampled=up))
    )
    # Convention: Quantus reads any non-zero mask value as inside (``s.astype(bool)``); the service binarises
    # at ``mask_threshold``, so Quantus is given the binarised mask.
    s = (setup["masks"].numpy() >= threshold)[:, None].astype(np.float32)
    a = up.numpy()[:, None]
    kw = {"model": setup["eager"], "x_batch": setup["images"].numpy(), "y_batch": res.targets.numpy(),
          "a_batch": a, "s_batch": s, "device": "cpu"}
    rra = quantus.RelevanceRankAccuracy(disable_warnings=True)(**{**kw, "a_batch": a.copy()})
    pg = quantus.PointingGame(disable_warnings=True)(**{**kw, "a_batch": a.copy()})
    tki = quantus.TopKIntersection(k=k, disable_warnings=True)(**{**kw, "a_batch": a.copy()})
    _close(cols["rank_accuracy"][:, 0], np.asarray(rra), f"RelevanceRankAccuracy (threshold {threshold})")
    _close(cols["pointing_game"][:, 0], np.asarray(pg, dtype=np.float64), f"PointingGame (threshold {threshold})")
    _close(cols["topk_intersection"][:, 0], np.asarray(tki), f"TopKIntersection (threshold {threshold})")
    assert np.array_equal(cols["has_mask"], np.ones(N, bool))


def test_localisation_without_masks_has_no_value(setup: dict) -> None:
    from etm.measures.localisation import LocalisationMeasure

    m = LocalisationMeasure({"bootstrap_resamples": 100})
    results = m.summarize(m.per_image(make_ctx(setup, masks=False)), None, 0)
    assert [r.value for r in results] == [None, None, None]
    assert all("mask" in r.details["message"] for r in results)


def test_road_keeps_one_pixel_and_refuses_an_all_removed_image() -> None:
    from etm.ops.road import linear_imputation, noisy_linear_imputation

    img = torch.rand(3, 4, 4)
    gone = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="at least one pixel"):
        linear_imputation(img.numpy(), gone)
    gone[0, 0] = False  # one known pixel: every removed pixel takes its value (a connected harmonic fill)
    out = noisy_linear_imputation(img, gone, 0.0, None)
    assert torch.allclose(out, img[:, :1, :1].expand(3, 4, 4), atol=1e-6)


def test_pointing_game_counts_every_tied_maximum(setup: dict) -> None:
    from etm.measures.localisation import LocalisationMeasure

    res = setup["clean"]
    flat = torch.zeros(N, SIZE, SIZE)
    flat[:, 0, 0] = 1.0
    flat[:, 20, 20] = 1.0  # a second maximum; image 0's region must contain (20, 20) to count
    masks = torch.zeros(N, SIZE, SIZE)
    masks[0, 18:23, 18:23] = 1.0
    ctx = make_ctx({**setup, "masks": masks}, replace(res, upsampled=flat))
    cols = LocalisationMeasure({"k": 1}).per_image(ctx)
    assert cols["pointing_game"][0, 0] == 1.0
    assert np.isnan(cols["pointing_game"][1:, 0]).all()  # empty regions have no value
    assert cols["topk_intersection"][0, 0] == 0.0  # the single top pixel is (0, 0): the lower index


# -- robustness ---------------------------------------------------------------------------------------------
class SameDraws:
    """A Quantus ``perturb_func`` that adds, at its i-th call, the service's i-th draw (``perturbed``): Quantus's
    own ``uniform_noise`` draws from numpy's global generator, the service from keyed per-image streams."""

    def __init__(self, images: torch.Tensor, seeds: torch.Tensor, radius: float) -> None:
        self.images, self.seeds, self.radius, self.calls = images, seeds, radius, 0

    def __call__(self, arr: np.ndarray, indices: np.ndarray, **kwargs) -> np.ndarray:
        from etm.measures.robustness import perturbed

        x = perturbed(self.images, self.seeds, self.calls, self.radius).numpy().reshape(arr.shape)
        self.calls += 1
        return x


def test_sensitivities_equal_quantus(setup: dict) -> None:
    from etm.measures.robustness import RobustnessMeasure

    res, images = setup["clean"], setup["images"]
    n_samples, radius, which = 4, 0.2, "upsampled"  # Quantus compares input-size maps
    m = RobustnessMeasure({"n_samples": n_samples, "radius": radius, "map": which, "bootstrap_resamples": 100})
    ctx = make_ctx(setup)
    cols = m.per_image(ctx)
    by_name = {r.name: r for r in m.summarize(cols, None, 0)}

    def explain(model: object, inputs: np.ndarray, targets: np.ndarray, **kwargs) -> np.ndarray:
        # The service's maps of the images Quantus passes (the job's rule: the target re-decided on them).
        return getattr(compute_salience(setup["model"], torch.from_numpy(np.asarray(inputs, np.float32)), "gradcam"),
                       which).numpy()[:, None]

    x = images.numpy()
    a = getattr(res, which).numpy()[:, None]
    for cls, variant in ((quantus.MaxSensitivity, "robustness.max_sensitivity"),
                         (quantus.AvgSensitivity, "robustness.avg_sensitivity")):
        # Quantus defaults kept: abs=False, normalise=False, difference + Frobenius norms, lower_bound = radius.
        q = cls(nr_samples=n_samples, lower_bound=radius, perturb_func=SameDraws(images, ctx.image_seeds, radius),
                disable_warnings=True)
        theirs = q(model=setup["eager"], x_batch=x, y_batch=res.targets.numpy(), a_batch=a, explain_func=explain,
                   device="cpu", batch_size=N)
        # Convention: an all-zero clean map divides by a zero norm: inf in Quantus, no value (NaN, counted) here.
        theirs = np.asarray(theirs, np.float64)
        assert np.array_equal(np.isinf(theirs), (a.reshape(N, -1) == 0).all(axis=1))
        _close(by_name[variant].per_image, np.where(np.isinf(theirs), np.nan, theirs), f"{cls.__name__} ({which} map)")


def test_sensitivity_draws_are_per_image_and_batch_independent(setup: dict) -> None:
    from etm.measures.robustness import perturbed, sensitivity_noise

    seeds = make_ctx(setup).image_seeds
    whole = perturbed(setup["images"], seeds, 3, 0.2)
    part = perturbed(setup["images"][2:5], seeds[2:5], 3, 0.2)
    assert torch.equal(whole[2:5], part)
    noise = sensitivity_noise(seeds, 0, (3, SIZE, SIZE), 0.2)
    assert float(noise.abs().max()) <= 0.2 and not torch.equal(noise[0], noise[1])


# -- ROAD ---------------------------------------------------------------------------------------------------
# At 32x32, removing 25, 50 and 75 % is the same pixel count under both rules: the service's (and Quantus's)
# int(H * W * k / 100) and pytorch-grad-cam's "value >= np.percentile(map, 100 - k)" (on a tie-free map).
ROAD_PCTS = [25.0, 50.0, 75.0]


def _road_cols(setup: dict, images: torch.Tensor, pcts: list[float], noise: float) -> tuple[dict, SalienceResult]:
    from etm.measures.faithfulness import FaithfulnessMeasure

    clean = compute_salience(setup["model"], images, "gradcam")
    clean = replace(clean, upsampled=tie_free(clean.upsampled))
    ctx = replace(make_ctx(setup, clean), images=images)
    m = FaithfulnessMeasure({"variants": ["degradation.road"], "percentages": pcts, "noise": noise})
    return m.per_image(ctx), clean


def test_road_equals_pytorch_grad_cam_road_combined(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytorch_grad_cam.metrics.road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from etm.measures.faithfulness import FaithfulnessMeasure, road_draws

    images = setup["images"]
    cols, clean = _road_cols(setup, images, ROAD_PCTS, 0.01)
    seeds = make_ctx(setup).image_seeds
    count_to_pct = {int(SIZE * SIZE * p / 100): p for p in ROAD_PCTS}
    original = pgc_road.NoisyLinearImputer

    class SameDrawsImputer(original):
        """pytorch-grad-cam's imputer with its ``torch.randn_like`` times 0, plus the service's draws for that
        image and percentage (the linear system is pytorch-grad-cam's own)."""

        def __init__(self, noise: float = 0.01, **kwargs: object) -> None:
            super().__init__(noise=0.0)
            self.std = noise

        def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = super().__call__(img, mask)
            i = next(j for j in range(N) if torch.equal(img, images[j]))
            gone = (mask.reshape(-1) == 0).nonzero().flatten()
            z = road_draws(seeds[i : i + 1], count_to_pct[gone.numel()], tuple(img.shape))[0].float()
            flat = out.reshape(img.shape[0], -1)
            flat[:, gone] = flat[:, gone] + self.std * z.reshape(img.shape[0], -1)[:, gone]
            return flat.reshape_as(img)

    monkeypatch.setattr(pgc_road, "NoisyLinearImputer", SameDrawsImputer)
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in clean.targets]
    cams = clean.upsampled.numpy()
    pct_args = [100 - int(p) for p in ROAD_PCTS]  # pytorch-grad-cam's percentile: the share kept
    theirs = pgc_road.ROADCombined(percentiles=pct_args)(images, cams, targets, setup["eager"])
    m = FaithfulnessMeasure({"variants": ["degradation.road"], "percentages": ROAD_PCTS, "bootstrap_resamples": 100})
    ours = m.summarize(cols, None, 0)[0].per_image
    _close(ours, np.asarray(theirs, np.float64), "ROAD combined vs pytorch-grad-cam ROADCombined")
    clean_scores = clean.scores.numpy().astype(np.float64)
    for j, p in enumerate(ROAD_PCTS):  # and each curve point: score after removal - clean score
        morf = pgc_road.ROADMostRelevantFirst(percentile=100 - int(p))(images, cams, targets, setup["eager"])
        lerf = pgc_road.ROADLeastRelevantFirst(percentile=100 - int(p))(images, cams, targets, setup["eager"])
        _close(cols["road_morf"][:, 0, j] - clean_scores, morf, f"ROAD MoRF {p:g}% vs pytorch-grad-cam")
        _close(cols["road_lerf"][:, 0, j] - clean_scores, lerf, f"ROAD LeRF {p:g}% vs pytorch-grad-cam")


def test_road_imputation_equals_quantus_and_pytorch_grad_cam(setup: dict) -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    from etm.ops.road import noisy_linear_imputation

    rng = np.random.default_rng(5)
    for i in range(3):
        img = setup["images"][i]
        gone = rng.random((SIZE, SIZE)) < (0.2, 0.5, 0.9)[i]
        ours = noisy_linear_imputation(img, gone, 0.0, None)
        pgc = NoisyLinearImputer(noise=0.0)(img, torch.from_numpy((~gone).astype(np.float32)))
        q = quantus_imputation(img.numpy(), indices=np.flatnonzero(gone), noise=0.0)
        _close(ours.numpy(), pgc.numpy(), f"imputation of {gone.mean():.0%} vs pytorch-grad-cam")
        _close(ours.numpy(), q, f"imputation of {gone.mean():.0%} vs Quantus")


def _pack(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, 3W], the channels side by side (bench/degradation.py's layout for Quantus)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(n, 1, h, c * w)


def test_road_prediction_kept_equals_quantus_road() -> None:
    """Quantus 0.6.0's ROAD (MoRF only) returns, per percentage, the share of images whose predicted class is
    still ``y_batch``. Its top-k indexes the channel-broadcast map with pixel indices, which raises IndexError on
    3-channel images. So, as bench/degradation.py does for PixelFlipping, it gets the image with its channels side
    by side ([N, 1, H, 3W], unpacked before the network) and a map whose 3 copies of a pixel differ by a tiny
    offset (contiguous in its order): its top ``int(3HW * k%)`` features are then the 3 channels of the service's
    top ``k% * HW`` pixels, and its perturb function is its own ``noisy_linear_imputation`` applied to the unpacked
    image at those pixels. Its imputation noise comes from numpy's global generator: both sides use 0. A trained
    benchmark model at 64x64, on both classes, so that decisions flip."""
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    from benchdata import paths
    from benchdata.replicate import ensure_data
    from etm.datasets import iter_batches, load_dataset
    from etm.evaluation import image_seeds
    from etm.measures.faithfulness import FaithfulnessMeasure
    from etm.models.pt2_model import load_exported_program

    ensure_data()
    pt2 = paths.family_files("xent", "pt2")[0]
    model = load_model(pt2, threads=1)
    ds = load_dataset(paths.FACES_DIR, split="test")
    spread = list(range(0, len(ds), max(1, len(ds) // 16)))[:16]  # both classes
    images = next(iter(iter_batches(ds, spread, 16, tuple(model.metadata.input_size)))).images
    n, c, h, w = images.shape
    net = load_exported_program(pt2).module()
    mean = torch.tensor(model.metadata.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.metadata.std).view(1, 3, 1, 1)

    class Packed(torch.nn.Module):
        def forward(self, xp: torch.Tensor) -> torch.Tensor:
            x = xp.reshape(xp.shape[0], h, c, w).permute(0, 2, 1, 3)
            return net((x - mean) / std)

    def perturb(arr: np.ndarray, indices: np.ndarray, **kwargs) -> np.ndarray:
        img = arr.reshape(h, c, w).transpose(1, 0, 2)  # unpack [1, H, 3W] -> [3, H, W]
        y, rest = np.divmod(np.asarray(indices), c * w)
        pixels = np.unique(y * w + rest % w)
        out = quantus_imputation(np.ascontiguousarray(img), indices=pixels, noise=0.0)
        return out.transpose(1, 0, 2).reshape(arr.shape)

    clean = compute_salience(model, images, "gradcam")
    rank = tie_free(clean.upsampled)
    clean = replace(clean, upsampled=rank)
    keys = [f"img{i}.png" for i in range(n)]
    ctx = BatchContext(
        keys=keys, images=images, labels=torch.full((n,), -1), masks=None, has_mask=torch.zeros(n, dtype=torch.bool),
        image_seeds=image_seeds(0, keys), clean=[clean], salience_fn=lambda r, x: compute_salience(model, x),
        logits_fn=lambda r, x: model.logits(x), probabilities_fn=lambda r, lg: model.probabilities(lg),
    )
    # 16, 64, 256, 512 and 2048 of the 4096 pixels: whole counts under every rule (the synthetic cue is small, so
    # the decisions flip within the first few percent).
    pcts = [100 * m / (h * w) for m in (16, 64, 256, 512, 2048)]
    cols = FaithfulnessMeasure({"variants": ["degradation.road"], "percentages": pcts, "noise": 0.0}).per_image(ctx)
    a_px = _pack(torch.stack([rank.double() + k / (8.0 * h * w) for k in (2, 1, 0)], dim=1)).numpy()
    q = quantus.ROAD(percentages=pcts, perturb_func=perturb, disable_warnings=True, display_progressbar=False)
    theirs = q(model=Packed().eval(), x_batch=_pack(images).numpy(), y_batch=clean.targets.numpy(), a_batch=a_px,
               device="cpu", batch_size=n)
    ours = np.nanmean(cols["road_kept_morf"][:, 0, :], axis=0)
    print("ROAD prediction kept (MoRF), per percentage:", ours.tolist())
    assert len(set(ours.tolist())) > 1  # the check has teeth: decisions flip as pixels go
    _close(ours, np.array([theirs[p] for p in pcts]), "ROAD prediction kept vs Quantus ROAD")


# -- insertion ----------------------------------------------------------------------------------------------
def test_insertion_is_the_petsiuk_game(setup: dict) -> None:
    """No reference library ships insertion in these versions: the curve is checked against its definition."""
    from etm.measures.faithfulness import FaithfulnessMeasure
    from etm.ops.blur import gaussian_blur

    res = setup["clean"]
    up = tie_free(res.upsampled)
    ctx = make_ctx(setup, replace(res, upsampled=up))
    steps = [0.0, 10.0, 50.0, 100.0]
    m = FaithfulnessMeasure({"variants": ["degradation.insertion"], "steps": steps, "reference_size": None,
                             "bootstrap_resamples": 100})
    cols = m.per_image(ctx)
    start = gaussian_blur(setup["images"], 5.0)
    order = torch.argsort(up.flatten(1), dim=1, descending=True)
    with torch.no_grad():
        for j, s in enumerate(steps):
            n_in = int(np.floor(s / 100 * SIZE * SIZE + 0.5))
            inserted = torch.zeros(N, SIZE * SIZE, dtype=torch.bool)
            inserted.scatter_(1, order[:, :n_in], True)
            x = torch.where(inserted.view(N, 1, SIZE, SIZE), setup["images"], start)
            want = torch.softmax(setup["eager"](x), 1).gather(1, res.targets.view(-1, 1))[:, 0].numpy()
            _close(cols["insertion"][:, 0, j], want, f"insertion at {s:g}%")
    r = m.summarize(cols, None, 0)[0]
    want_auc = np.trapezoid(cols["insertion"][:, 0, :], np.asarray(steps) / 100, axis=1)
    _close(r.per_image, want_auc, "insertion AUC")


def test_defaults_are_quantus_defaults() -> None:
    """The contract: these measures take Quantus 0.6.0's defaults where Quantus has them."""
    from etm.measures.faithfulness import FaithfulnessMeasure, road_counts
    from etm.measures.localisation import LocalisationMeasure
    from etm.measures.robustness import RobustnessMeasure

    rob = RobustnessMeasure().params
    for cls in (quantus.MaxSensitivity, quantus.AvgSensitivity):
        q = cls(disable_warnings=True)
        assert rob["n_samples"] == q.nr_samples
        assert rob["radius"] == q.perturb_func.keywords["lower_bound"]
    road = quantus.ROAD(disable_warnings=True)
    assert FaithfulnessMeasure().params["percentages"] == [float(p) for p in road.percentages]
    assert road_counts(road.percentages, 64 * 64) == [int(64 * 64 * p / 100) for p in road.percentages]
    assert LocalisationMeasure().params["k"] == quantus.TopKIntersection(disable_warnings=True).k
