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
    """The map plus a tiny offset decreasing with the pixel index: the same order as the service's stable sort
    (ties to the lower index), and no ties left for Quantus's unstable ``np.argsort(-a)`` to break otherwise."""
    n = maps.shape[0]
    p = maps[0].numel()
    ramp = torch.arange(p, 0, -1, dtype=torch.float64).view(1, *maps.shape[1:]) / p * 1e-6
    return (maps.double() + ramp).float().expand(n, *maps.shape[1:]).contiguous()


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
