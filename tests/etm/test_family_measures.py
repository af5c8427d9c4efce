"""Stability, human agreement, accuracy and out-of-set measures on hand-built batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from etm.measures.accuracy import AccuracyMeasure
from etm.measures.agreement import AgreementMeasure
from etm.measures.base import BatchContext
from etm.measures.oos_set import OosSetMeasure
from etm.measures.stability import StabilityMeasure, run_pairs
from etm.ops.paper import to_uint8_truncated
from etm.salience.base import SalienceResult

SIZE = 28


def _result(native: torch.Tensor, logits: torch.Tensor | None = None) -> SalienceResult:
    n = native.shape[0]
    logits = torch.zeros(n, 2) if logits is None else logits
    probs = torch.softmax(logits, dim=1)
    pred = logits.argmax(dim=1)
    up = F.interpolate(native[:, None], size=(SIZE, SIZE), mode="bilinear")[:, 0]
    return SalienceResult(native=native, upsampled=up, logits=logits, targets=pred,
                          scores=probs.gather(1, pred[:, None])[:, 0], predicted=pred)


def _ctx(results: list[SalienceResult], labels: list[int] | None = None,
         masks: torch.Tensor | None = None, has_mask: list[bool] | None = None,
         inset: dict | None = None) -> BatchContext:
    n = results[0].native.shape[0]
    return BatchContext(
        keys=[f"img{i}.png" for i in range(n)], images=torch.zeros(n, 3, SIZE, SIZE),
        labels=torch.tensor(labels if labels is not None else [-1] * n), masks=masks,
        has_mask=torch.tensor(has_mask if has_mask is not None else [False] * n),
        image_seeds=torch.arange(n), clean=results,
        salience_fn=lambda r, x: results[r], logits_fn=lambda r, x: results[r].logits,
        probabilities_fn=lambda r, lg: torch.softmax(lg, dim=1), inset=inset or {},
    )


def _maps(seed: int, n: int = 6, side: int = 7) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, side, side))).float()


# -- stability ---------------------------------------------------------------------------------


def test_identical_runs_are_perfectly_stable() -> None:
    maps = _maps(0)
    m = StabilityMeasure({"bootstrap_resamples": 100})
    cols = m.per_image(_ctx([_result(maps.clone()) for _ in range(3)]))
    assert cols["ssim_pairs"].shape == (6, 3) and cols["ssim_to_mean"].shape == (6, 3)
    res = {r.name: r for r in m.summarize(cols, None, 0)}
    for name in ("stability.ssim", "stability.pearson"):
        r = res[name]
        assert r.value == 1.0 and r.ci == (1.0, 1.0) and r.n == 6
        assert r.details["matrix"] == [[1.0] * 3] * 3
        for run in r.per_run:
            assert run["similarity_to_family_mean"]["value"] == pytest.approx(1.0, abs=1e-3)
    assert res["stability.ssim"].variant == "paper" and res["stability.ssim"].direction == "higher"


def test_pairs_match_skimage_and_outlier_is_found() -> None:
    base = _maps(1)
    runs = [base, base + 0.05 * _maps(2), _maps(3)]  # run 2 is unrelated
    m = StabilityMeasure({"bootstrap_resamples": 100})
    cols = m.per_image(_ctx([_result(x) for x in runs]))
    maps8 = [to_uint8_truncated(x).numpy() for x in runs]  # the authors' 8-bit maps
    for p, (i, j) in enumerate(run_pairs(3)):
        want = [structural_similarity(a, b) for a, b in zip(maps8[i], maps8[j], strict=True)]
        np.testing.assert_allclose(cols["ssim_pairs"][:, p], want, rtol=0, atol=1e-10)
        want_r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps8[i], maps8[j], strict=True)]
        np.testing.assert_allclose(cols["pearson_pairs"][:, p], want_r, rtol=0, atol=1e-12)
    res = {r.name: r for r in m.summarize(cols, None, 0)}
    r = res["stability.ssim"]
    assert r.value == pytest.approx(cols["ssim_pairs"].mean())
    assert r.details["outlier_run"] == 2
    assert r.details["matrix"][0][1] == pytest.approx(cols["ssim_pairs"][:, 0].mean())
    assert r.details["matrix"][1][0] == r.details["matrix"][0][1]


def test_single_run_has_no_stability() -> None:
    m = StabilityMeasure({"bootstrap_resamples": 100})
    res = m.summarize(m.per_image(_ctx([_result(_maps(0))])), None, 0)
    assert [r.value for r in res] == [None, None]
    assert all(r.details["message"] == "stability needs a family of >= 2 runs" for r in res)


def test_pairs_with_empty_maps_are_excluded_and_counted() -> None:
    runs = [_maps(0), _maps(1), _maps(2)]
    runs[1][0] = 0.0
    m = StabilityMeasure({"bootstrap_resamples": 100})
    cols = m.per_image(_ctx([_result(x) for x in runs]))
    assert np.isnan(cols["ssim_pairs"][0, [0, 2]]).all() and np.isfinite(cols["ssim_pairs"][0, 1])
    assert np.isnan(cols["ssim_to_mean"][0, 1])
    r = m.summarize(cols, None, 0)[0]
    assert r.n_empty == 1 and r.details["excluded_pairs"] == 2 and r.n == 6
    assert r.per_run[1]["similarity_to_family_mean"]["n"] == 5


# -- agreement ---------------------------------------------------------------------------------


def test_agreement_with_human_masks() -> None:
    native = _maps(4, n=3)
    res = _result(native)
    masks = torch.zeros(3, SIZE, SIZE)
    masks[0] = res.upsampled[0]  # the human agrees exactly (same map)
    masks[1, :14] = 1.0  # top half annotated
    has = [True, True, False]
    m = AgreementMeasure({"bootstrap_resamples": 100})
    cols = m.per_image(_ctx([res], masks=masks, has_mask=has))
    assert cols["pearson"][0, 0] == pytest.approx(1.0) and cols["ssim"][0, 0] == pytest.approx(1.0)
    up = res.upsampled[1].double().numpy()
    assert cols["mass"][1, 0] == pytest.approx(up[:14].sum() / up.sum())
    region = masks[0].numpy() >= 0.5
    up0 = res.upsampled[0].double().numpy()
    assert cols["mass"][0, 0] == pytest.approx(up0[region].sum() / up0.sum())
    assert np.isnan(cols["pearson"][2, 0])
    out = {r.name: r for r in m.summarize(cols, None, 0)}
    assert set(out) == {"agreement.human", "agreement.human.ssim", "agreement.human.mass"}
    assert out["agreement.human"].n == 2
    assert out["agreement.human.mass"].value == pytest.approx(np.nanmean(cols["mass"]))


def test_agreement_without_masks_says_so() -> None:
    m = AgreementMeasure()
    res = m.summarize(m.per_image(_ctx([_result(_maps(5))])), None, 0)
    assert all(r.value is None and "no image carries" in r.details["message"] for r in res)


# -- accuracy ----------------------------------------------------------------------------------


def _logits_for(p1: list[float]) -> torch.Tensor:
    """2-class logits whose softmax gives P(class 1) = p1."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def test_accuracy_balanced_accuracy_and_auroc_by_hand() -> None:
    labels = [1, 1, 1, 0, 0, -1]
    p_run0 = [0.9, 0.6, 0.4, 0.3, 0.7, 0.5]  # predictions 1 1 0 0 1
    p_run1 = [0.8, 0.2, 0.7, 0.1, 0.3, 0.5]  # predictions 1 0 1 0 0
    results = [_result(_maps(6), _logits_for(p)) for p in (p_run0, p_run1)]
    m = AccuracyMeasure({"bootstrap_resamples": 300})
    cols = m.per_image(_ctx(results, labels))
    out = {r.name: r for r in m.summarize(cols, None, 0)}
    # run 0: correct 1 1 0 1 0 -> 3/5; recall(1) = 2/3, recall(0) = 1/2
    # run 1: correct 1 0 1 1 1 -> 4/5; recall(1) = 2/3, recall(0) = 1
    assert out["accuracy"].value == pytest.approx((3 / 5 + 4 / 5) / 2)
    assert out["accuracy.balanced"].value == pytest.approx(((2 / 3 + 1 / 2) / 2 + (2 / 3 + 1) / 2) / 2)
    # AUROC run 0: positives .9 .6 .4 vs negatives .3 .7 -> pairs won: 2 + 1 + 1 = 4 of 6
    # AUROC run 1: positives .8 .2 .7 vs negatives .1 .3 -> 2 + 1 + 2 = 5 of 6
    assert out["accuracy.auroc"].value == pytest.approx((4 / 6 + 5 / 6) / 2)
    assert [r["value"] for r in out["accuracy.auroc"].per_run] == [pytest.approx(4 / 6), pytest.approx(5 / 6)]
    assert out["accuracy"].n == 5 and out["accuracy"].details["unlabelled"] == 1
    lo, hi = out["accuracy"].ci
    assert lo <= out["accuracy"].value <= hi
    assert "accuracy.ood" not in out

    m.positive_index = 0  # the engine sets this from the metadata; 2-class AUROC is symmetric
    cols0 = m.per_image(_ctx(results, labels))
    assert cols0["positive_index"][0] == 0
    auroc0 = {r.name: r for r in m.summarize(cols0, None, 0)}["accuracy.auroc"].value
    assert auroc0 == pytest.approx(out["accuracy.auroc"].value)


def test_accuracy_on_the_out_of_set_dataset() -> None:
    m = AccuracyMeasure({"bootstrap_resamples": 100})
    cols = m.per_image(_ctx([_result(_maps(7, n=4), _logits_for([0.9, 0.2, 0.8, 0.1]))], [1, 0, 1, 0]))
    ood = m.per_image_oos(_ctx([_result(_maps(8, n=4), _logits_for([0.9, 0.9, 0.2, 0.2]))], [1, 0, 1, 0]))
    out = {r.name: r for r in m.summarize(cols, ood, 0)}
    assert out["accuracy"].value == 1.0 and out["accuracy.auroc"].value == 1.0
    assert out["accuracy.ood"].value == 0.5 and out["accuracy.ood.auroc"].value == 0.5
    unlabelled = m.per_image_oos(_ctx([_result(_maps(8, n=4))]))
    out = {r.name: r for r in m.summarize(cols, unlabelled, 0)}
    assert out["accuracy.ood"].value is None
    assert out["accuracy.ood"].details["message"] == "no labelled images"


# -- out-of-set --------------------------------------------------------------------------------


def test_oos_set_on_two_known_distributions() -> None:
    n_in, n_out = 8, 6
    inset = torch.zeros(n_in, 7, 7)
    cells = list(itertools.product(range(7), range(7)))[:n_in]
    for i, (r, c) in enumerate(cells):
        inset[i, r, c] = 1.0 + i  # one-hot maps: entropy 0
    inset_logits = _logits_for([0.97] * n_in)
    ood = torch.ones(n_out, 7, 7)  # uniform maps: entropy 1
    ood_logits = _logits_for([0.62] * n_out)
    m = OosSetMeasure({"bootstrap_resamples": 200})

    in_ctx = _ctx([_result(inset, inset_logits)])
    sums = m.inset_state(in_ctx)
    assert sums is not None and sums["counts"].tolist() == [n_in] and sums["sums"].dtype == np.int64
    state = m.finish_inset(sums)
    mean8 = state["mean_map8"][0]
    expected = np.zeros((7, 7), dtype=np.uint8)
    for r, c in cells:
        expected[r, c] = 32  # round(255 / 8) = round(31.875)
    np.testing.assert_array_equal(mean8.numpy(), expected)

    cols = m.per_image(in_ctx)
    oos_cols = m.per_image_oos(_ctx([_result(ood, ood_logits)], inset=state))
    want_ssim = structural_similarity(np.zeros((7, 7), np.uint8), expected)  # uniform map -> all zeros
    np.testing.assert_allclose(oos_cols["ssim_to_inset_mean"][:, 0], want_ssim, rtol=0, atol=1e-10)

    (r,) = m.summarize(cols, oos_cols, 0)
    assert r.name == "oos.set" and r.direction is None and r.variant == "default"
    assert r.value == pytest.approx(1.0) and r.ci == pytest.approx((1.0, 1.0))
    assert r.details["wasserstein1"] == pytest.approx(1.0)
    assert r.details["ssim_to_inset_mean"]["value"] == pytest.approx(want_ssim)
    scores = r.details["scores"]
    assert scores["inset"]["value"] == pytest.approx(0.97) and scores["ood"]["value"] == pytest.approx(0.62)
    assert scores["inset"]["histogram"]["counts"][19] == n_in
    assert scores["ood"]["histogram"]["counts"][12] == n_out
    assert r.details["n_inset"] == n_in and r.details["n_ood"] == n_out


def test_oos_set_wasserstein_between_shifted_samples() -> None:
    rng = np.random.default_rng(9)
    m = OosSetMeasure({"bootstrap_resamples": 200})
    h_in = rng.uniform(0.2, 0.4, size=(50, 1))
    h_out = h_in[:40] + 0.3
    cols = {"entropy": h_in, "score": np.full((50, 1), 0.9), "empty": np.zeros((50, 1), bool),
            "native_is_input_size": np.zeros(50, bool)}
    ood = {"entropy": h_out, "score": np.full((40, 1), 0.5), "empty": np.zeros((40, 1), bool),
           "native_is_input_size": np.zeros(40, bool), "ssim_to_inset_mean": np.full((40, 1), 0.5),
           "has_inset_mean": np.ones(40, bool)}
    (r,) = m.summarize(cols, ood, 0)
    assert r.value == pytest.approx(h_out.mean() - h_in.mean())
    lo, hi = r.ci
    assert lo < r.value < hi and lo > 0.2
    from scipy.stats import wasserstein_distance

    assert r.details["wasserstein1"] == pytest.approx(wasserstein_distance(h_out[:, 0], h_in[:, 0]))


def test_oos_set_without_ood_dataset() -> None:
    m = OosSetMeasure()
    (r,) = m.summarize(m.per_image(_ctx([_result(_maps(0))])), None, 0)
    assert r.value is None and "no out-of-set dataset" in r.details["message"]
