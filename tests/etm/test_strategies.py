"""strategies (SpRAy, #20): the eigengap finds planted groups of maps, a sharded job (its partials saved and
loaded as workers do) gives the same clusters as an unsharded one, and too few images are refused or reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from etm.errors import BadInput
from etm.evaluation import Partial, Resolver, evaluate, finish, run_inset
from etm.measures import MEASURES, default_measure_names
from etm.measures.strategies import StrategiesMeasure, downsample, spray
from etm.spec import EvaluationSpec

SMALL = {"n_neighbors": 4, "max_clusters": 3, "grid": 4}


def _blobs(n_per: int, centres: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """Normalised 8x8 maps, each a noisy bump at one of ``centres``: [n_per * len(centres), 64]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:8, 0:8]
    out = []
    for cy, cx in centres:
        for _ in range(n_per):
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0) + 0.05 * rng.random((8, 8))
            out.append((m / m.sum()).ravel())
    return np.array(out)


def test_eigengap_finds_the_planted_groups_and_one_group_stays_one() -> None:
    three = _blobs(30, [(1, 1), (1, 6), (6, 3)])
    got = spray(three, n_neighbors=8, max_clusters=6, seed=0)
    assert got["n_clusters"] == 3
    truth = np.repeat(np.arange(3), 30)
    # each planted group is exactly one cluster (labels are a permutation of the truth)
    assert len({(t, int(lab)) for t, lab in zip(truth, got["labels"], strict=True)}) == 3
    assert np.argmax(got["gaps"]) == 2 and len(got["eigenvalues"]) == 7
    one = _blobs(60, [(3, 3)])
    assert spray(one, n_neighbors=8, max_clusters=6, seed=0)["n_clusters"] == 1


def test_downsample_is_per_map_and_normalised() -> None:
    native = torch.rand(5, 8, 8)
    native[2] = 0.0  # an empty map
    maps, empty = downsample(native, 4, "sum")
    assert maps.shape == (5, 4, 4) and empty.tolist() == [False, False, True, False, False]
    assert np.allclose(np.nansum(maps[[0, 1, 3, 4]], axis=(1, 2)), 1.0) and np.isnan(maps[2]).all()
    alone, _ = downsample(native[3:4], 4, "sum")  # the same bits whatever batch a map is in
    assert np.array_equal(alone[0], maps[3])
    l2, _ = downsample(native, 4, "l2")
    assert np.allclose(np.sqrt((l2[0] ** 2).sum()), 1.0)


def test_opt_in_and_parameters_are_checked() -> None:
    assert MEASURES["strategies"] is StrategiesMeasure and "strategies" not in default_measure_names()
    with pytest.raises(ValueError, match="n_neighbors"):
        StrategiesMeasure({"n_neighbors": 1})
    with pytest.raises(ValueError, match="normalise"):
        StrategiesMeasure({"normalise": "max"})
    with pytest.raises(BadInput, match="at least 11 images"):
        StrategiesMeasure().check_images(10)


def _spec(family_onnx: list[Path], dataset_dir: Path, **over: object) -> EvaluationSpec:
    return EvaluationSpec(
        candidates=[{"name": "fam", "models": [str(p) for p in family_onnx]}],
        dataset=str(dataset_dir),
        measures=["strategies"],
        measure_params={"strategies": SMALL},
        batch_size=8,
        bootstrap_resamples=100,
        seed=7,
        **over,
    )


def test_sharded_job_gives_the_same_clusters(family_onnx: list[Path], dataset_dir: Path, tmp_path: Path) -> None:
    spec = _spec(family_onnx, dataset_dir)
    parts = []
    for i in range(3):  # saved and loaded, as a worker hands its shard on
        run_inset(spec, Resolver(), shard=(i, 3)).save(tmp_path / f"p{i}.npz")
        parts.append(Partial.load(tmp_path / f"p{i}.npz"))
    merged = finish(spec, parts, Resolver())
    whole = evaluate(spec)
    strip = lambda r: {k: v for k, v in json.loads(json.dumps(r)).items() if k != "provenance"}  # noqa: E731
    assert strip(merged.report) == strip(whole.report)
    res = whole.report["candidates"][0]["measures"]["strategies.clusters"]
    assert res["direction"] is None and res["value"] >= 1
    classes = res["details"]["classes"]
    assert any("clusters" in c for c in classes.values())
    for c in classes.values():
        if "clusters" not in c:
            assert "not clustered" in c["message"]
            continue
        assert sum(cl["size"] for cl in c["clusters"]) == c["n_points"]
        assert [cl["size"] for cl in c["clusters"]] == sorted((cl["size"] for cl in c["clusters"]), reverse=True)
        for cl in c["clusters"]:
            assert len(cl["representatives"]) == min(3, cl["size"])
            assert len(cl["mean_map"]) == 4 and abs(sum(map(sum, cl["mean_map"])) - 1) < 1e-4
            assert len(cl["share_per_run"]) == len(family_onnx)
        assert len(c["eigengaps"]) == SMALL["max_clusters"] and len(c["embedding"]["x"]) == c["n_points"]
    # the same seed twice: the same report
    assert strip(evaluate(spec).report) == strip(whole.report)


def test_too_few_images_is_bad_input_in_the_library(family_onnx: list[Path], dataset_dir: Path) -> None:
    spec = _spec(family_onnx, dataset_dir, max_images=4)  # fewer than n_neighbors + 1 = 5
    with pytest.raises(BadInput, match="strategies needs at least 5 images"):
        evaluate(spec)


def _cols(maps: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    n = len(maps)
    grid = maps.reshape(n, 1, 8, 8).astype(np.float32)
    empty = np.isnan(grid).all(axis=(2, 3))
    keys = np.array([f"i{j:03d}" for j in range(n)])
    return {"maps": grid, "empty": empty, "predicted": pred.reshape(n, 1), "key": keys}


def test_a_class_with_too_few_maps_is_reported_not_clustered() -> None:
    maps = _blobs(20, [(1, 1), (6, 6)])
    pred = np.zeros(len(maps), dtype=np.int64)
    pred[:3] = 1  # three maps predicted class 1: fewer than n_neighbors + 1
    (res,) = StrategiesMeasure({"n_neighbors": 5, "max_clusters": 4}).summarize(_cols(maps, pred), None, 0)
    one = res.details["classes"]["1"]
    assert "clusters" not in one and "3 maps predicted this class" in one["message"]
    assert "n_neighbors=5" in one["message"]
    zero = res.details["classes"]["0"]
    assert zero["n_clusters"] == 2 and [c["size"] for c in zero["clusters"]] == [20, 17]
    assert res.value == 2.0 and res.n == 37 and res.ci is None
    # representatives are the members closest to their cluster's mean map, nearest first
    d = [r["distance"] for r in zero["clusters"][0]["representatives"]]
    assert d == sorted(d)


def test_all_empty_maps_make_the_variant_unavailable() -> None:
    maps = np.full((12, 64), np.nan)
    (res,) = StrategiesMeasure({"n_neighbors": 5, "max_clusters": 4}).summarize(
        _cols(maps, np.zeros(12, dtype=np.int64)), None, 0
    )
    assert res.value is None and res.n_empty == 12 and "every map is empty" in res.details["message"]
