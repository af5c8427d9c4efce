"""The planted shortcut is found (#20): on the benchmark's shortcut probe (the test split re-rendered with the
training cue in half of each class, written by ``benchdata.probe``), ``strategies`` for a cross-entropy model
yields a cluster whose members are the cue images, whose mean map peaks on the cue (the sides of the
background); for the human-guided model trained with the same seed no such cluster exists.

Where the ARI applies: the cue was in 90% of the synthetic training faces, so a model that learnt it calls cue
images synthetic; the cue strategy is one of the class *synthetic* (predicted), and the adjusted Rand index is
computed there, between the clusters and the cue flags of the maps that predicted it. The models and the data
they were trained on are the committed ones (hashes checked); the figures for every run are in
docs/REPLICATION.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from benchdata import paths
from benchdata.probe import read_probe_meta, write_probe
from benchdata.replicate import ensure_data
from etm.evaluation import Resolver, evaluate
from etm.spec import EvaluationSpec

pytestmark = pytest.mark.timeout(600)
RUN = 4  # one run per recipe, the pair trained with the same seed (they differ only by the loss)
N_IMAGES = 500  # evenly spaced over the probe's 1000
SYNTHETIC = "1"  # model class index of "synthetic"
CUE_PURITY = 0.9  # a cluster of which at least this share carries the cue is a cue cluster


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_data()
    out = tmp_path_factory.mktemp("probe") / "probe"
    assert write_probe(out) == 1000
    return out


def test_probe_changes_only_the_cue_images_and_not_the_models(probe: Path) -> None:
    manifest = json.loads(paths.MODELS_MANIFEST.read_text())
    for recipe in paths.RECIPES:
        run = manifest["recipes"][recipe]["runs"][RUN]
        for rel, digest in run["files"].items():
            assert _sha256(paths.MODELS_DIR / rel) == digest, f"{rel} differs from MANIFEST.json"
    meta = read_probe_meta(probe)
    assert meta.shortcut.sum() == 500 and all(meta.shortcut[meta.labels == c].mean() == 0.5 for c in (0, 1))
    test_dir = paths.FACES_DIR / "test"
    for i in range(0, 1000, 37):  # a face without the cue is the test split's face, bit for bit
        lab = "synthetic" if meta.labels[i] else "real"
        mine = np.asarray(Image.open(probe / lab / f"probe_{i:06d}.png"))
        theirs = np.asarray(Image.open(test_dir / lab / f"test_{i:06d}.png"))
        assert np.array_equal(mine, theirs) != bool(meta.shortcut[i]), i


def _clusters(report: dict, cand: str) -> dict:
    m = report["candidates"][[c["name"] for c in report["candidates"]].index(cand)]["measures"]["strategies.clusters"]
    return m["details"]["classes"]


def _figures(cls: dict, flag: dict[str, bool], cue: dict[str, np.ndarray]) -> dict:
    """ARI against the cue flags, and the cue cluster (the purest in cue images) of one class's clustering."""
    points = [(k, cl["cluster"]) for cl in cls["clusters"] for k in cl["members"]["key"]]
    assert not any(cl["members_truncated"] for cl in cls["clusters"])
    y = [flag[Path(k).stem] for k, _ in points]
    out: dict = {"ari": adjusted_rand_score(y, [c for _, c in points]), "n": len(points), "n_cue": int(sum(y))}
    purity = [np.mean([flag[Path(k).stem] for k in cl["members"]["key"]]) for cl in cls["clusters"]]
    j = int(np.argmax(purity))
    best = cls["clusters"][j]
    members = [Path(k).stem for k in best["members"]["key"]]
    # where the members' cue was drawn, area-averaged to the map's grid
    masks = torch.from_numpy(np.stack([cue[s] for s in members]).astype(np.float64) / 255.0)
    grid = len(best["mean_map"])
    cue_grid = F.adaptive_avg_pool2d(masks.unsqueeze(1), grid).squeeze(1).mean(0).numpy()
    out.update(cue_cluster=best, purity=float(purity[j]), cue_grid=cue_grid, sizes=[c["size"] for c in cls["clusters"]])
    return out


def test_strategies_find_the_xent_shortcut_and_not_a_cyborg_one(probe: Path) -> None:
    meta = read_probe_meta(probe)
    flag = dict(zip(meta.stems, meta.shortcut.tolist(), strict=True))
    cue = dict(zip(meta.stems, meta.cue, strict=True))
    spec = EvaluationSpec(
        candidates=[
            {"name": r, "models": [str(paths.family_files(r)[RUN])]} for r in paths.RECIPES
        ],
        dataset=str(probe),
        measures=["strategies"],
        max_images=N_IMAGES,
        bootstrap_resamples=100,
        overlays=0,
    )
    report = evaluate(spec, Resolver(threads=2)).report
    xent = _figures(_clusters(report, "xent")[SYNTHETIC], flag, cue)
    cyborg = _figures(_clusters(report, "cyborg")[SYNTHETIC], flag, cue)
    for name, f in (("xent", xent), ("cyborg", cyborg)):
        print(
            f"{name} run{RUN}, predicted synthetic: {f['n']} maps ({f['n_cue']} with cue), clusters {f['sizes']}, "
            f"ARI {f['ari']:.3f}, purest cluster {f['cue_cluster']['size']} maps, cue share {f['purity']:.3f}, "
            f"peak {f['cue_cluster']['peak']}"
        )
    assert xent["ari"] >= 0.8
    best = xent["cue_cluster"]
    assert xent["purity"] >= CUE_PURITY
    row, col = best["peak"]
    grid = len(best["mean_map"])
    assert col in (0, 1, grid - 2, grid - 1), "the cue sits at the sides of the background"
    # the peak cell is among the cells where the members' cue was drawn most
    assert xent["cue_grid"][row, col] >= 0.5 * xent["cue_grid"].max()
    # cyborg: no cluster is (nearly) all cue images, and nothing it finds matches the cue as xent's does
    assert cyborg["purity"] < CUE_PURITY and cyborg["ari"] < 0.2
