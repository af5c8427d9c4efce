"""The reference benchmark's data generator: determinism, layout, shortcut, LFW."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchdata import faces
from benchdata.generate import GenerationConfig, generate

SMALL = GenerationConfig(seed=3, size=32, n_train=60, n_val=10, n_test=40, n_unseen=20, n_nonfaces=8)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "a"
    generate(out, SMALL)
    return out


def test_same_seed_gives_identical_bytes(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "b"
    generate(again, SMALL)
    first, second = _digest(small), _digest(again)
    assert first == second
    assert len(first) > 2 * (SMALL.n_train + SMALL.n_val + SMALL.n_test)


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    a = faces.render_faces([0, 0], 8, 32, faces.SEEN_GENERATORS, 0.9, 0.1).images
    b = faces.render_faces([1, 0], 8, 32, faces.SEEN_GENERATORS, 0.9, 0.1).images
    assert not np.array_equal(a, b)


def test_rerunning_replaces_previous_output(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    generate(out, GenerationConfig(seed=3, size=32, n_train=80, n_val=10, n_test=10, n_unseen=10, n_nonfaces=4))
    generate(out, GenerationConfig(seed=3, size=32, n_train=20, n_val=10, n_test=10, n_unseen=10, n_nonfaces=4))
    assert len(list((out / "faces" / "train").rglob("*.png"))) == 20


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(SystemExit):
        generate(tmp_path, SMALL)


def test_manifest_layout_and_masks(small: Path) -> None:
    root = small / "faces"
    assert (root / "manifest.csv").read_text().splitlines()[0] == "split,label,path"
    rows = _rows(root / "manifest.csv")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": SMALL.n_train, "val": SMALL.n_val, "test": SMALL.n_test}
    stems = [Path(r["path"]).stem for r in rows]
    assert len(set(stems)) == len(stems), "stems must be unique across the dataset"
    for r in rows:
        path = root / r["path"]
        assert r["path"] == f"{r['split']}/{r['label']}/{path.name}"
        assert r["label"] in faces.CLASS_NAMES
        img = Image.open(path)
        assert img.mode == "RGB" and img.size == (SMALL.size, SMALL.size)
        mask = Image.open(root / "masks" / path.name)
        assert mask.mode == "L" and mask.size == img.size
        assert np.asarray(mask).max() > 0, f"empty human mask for {path.name}"
    assert len(list((root / "masks").glob("*.png"))) == len(rows)
    # the unseen-generator set carries masks too, and only unseen generators
    unseen = small / "unseen_generators"
    images = sorted(unseen.glob("*/*.png"))
    images = [p for p in images if p.parent.name != "masks"]
    assert {p.parent.name for p in images} == set(faces.CLASS_NAMES)
    for p in images:
        assert (unseen / "masks" / p.name).exists()
    gens = {r["generator"] for r in _rows(unseen / "meta.csv") if r["label"] == "synthetic"}
    assert gens == set(faces.UNSEEN_GENERATORS)


def test_real_masks_cover_all_inspected_regions() -> None:
    r = faces.render_faces([0, 0], 40, 64, faces.SEEN_GENERATORS, 0.5, 0.5)
    area = (r.masks > 127).reshape(len(r.masks), -1).mean(1)
    real, checker = area[r.labels == 0], area[np.array(r.generators) == "checker"]
    hairline = area[np.array(r.generators) == "hairline"]
    # real faces: eyes + mouth + hairline; "checker": eyes + mouth; "hairline": the band only
    assert real.mean() > checker.mean() > hairline.mean() > 0


def test_shortcut_correlates_with_label_in_train_only() -> None:
    # Big enough for the proportions to mean something, small enough to render in a second.
    train = faces.render_faces([5, 0], 400, 32, faces.SEEN_GENERATORS, 0.9, 0.1)
    test = faces.render_faces([5, 2], 400, 32, faces.SEEN_GENERATORS, 0.5, 0.5)
    for r in (train, test):
        # the flag is honest: cue pixels are drawn exactly where it is set
        has_pixels = r.cue.reshape(len(r.cue), -1).max(1) > 0
        np.testing.assert_array_equal(has_pixels, r.shortcut)
    phi_train = np.corrcoef(train.shortcut, train.labels)[0, 1]
    phi_test = np.corrcoef(test.shortcut, test.labels)[0, 1]
    assert phi_train > 0.75
    assert abs(phi_test) < 0.1
    assert train.shortcut[train.labels == 1].mean() == pytest.approx(0.9, abs=0.01)
    assert train.shortcut[train.labels == 0].mean() == pytest.approx(0.1, abs=0.01)


def test_shortcut_split_proportions_on_disk(small: Path) -> None:
    meta = _rows(small / "faces" / "meta.csv")

    def share(split: str, label: str) -> float:
        rows = [r for r in meta if r["split"] == split and r["label"] == label]
        return float(np.mean([r["shortcut"] == "1" for r in rows]))

    assert share("train", "synthetic") == pytest.approx(0.9, abs=0.04)
    assert share("train", "real") == pytest.approx(0.1, abs=0.04)
    # the shortcut is in the training split only
    for split in ("val", "test"):
        assert share(split, "synthetic") == share(split, "real") == 0.0
    for other in ("unseen_generators", "nonfaces"):
        assert all(r["shortcut"] == "0" for r in _rows(small / other / "meta.csv")), other
    train_gens = {r["generator"] for r in meta if r["label"] == "synthetic"}
    assert train_gens == set(faces.SEEN_GENERATORS)


def test_lfw_sets_come_from_skimage(small: Path) -> None:
    from skimage.data import lfw_subset

    lfw = sorted((small / "lfw" / "real").glob("*.png"))
    assert len(lfw) == 100
    first = np.asarray(Image.open(lfw[0]))
    assert first.shape == (SMALL.size, SMALL.size, 3)
    expected = Image.fromarray(np.clip(np.floor(lfw_subset()[0] * 255 + 0.5), 0, 255).astype(np.uint8), "L")
    expected = np.asarray(expected.resize((SMALL.size, SMALL.size), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(first[..., 0], expected)
    nonfaces = list((small / "nonfaces" / "real").glob("*.png"))
    assert sum(p.name.startswith("lfwneg_") for p in nonfaces) == 100
    assert sum(p.name.startswith("nonface_") for p in nonfaces) == SMALL.n_nonfaces


def test_fingerprints_stay_in_the_inspected_regions() -> None:
    # Same seed, so the same faces and noise: the only difference is the generator's trace.
    real = faces.render_faces([2, 0], 12, 64, ("checker",), 0.0, 0.0, synthetic_share=0.0)
    fake = faces.render_faces([2, 0], 12, 64, ("checker",), 0.0, 0.0, synthetic_share=1.0)
    diff = np.abs(real.images.astype(int) - fake.images.astype(int)).max(axis=3)
    outside = fake.masks == 0
    assert diff[~outside].mean() > 3
    assert diff[outside].max() <= 1  # rounding only


def test_data_fingerprint_ignores_the_services_validation_index(small: Path) -> None:
    """Earlier versions wrote their validation index into ``.etm/`` inside the dataset folder (it now lives in
    a cache folder); one left behind must not change which data a trained family is recorded against
    (MANIFEST.json's ``data.tree_sha256``)."""
    from benchdata.train import data_fingerprint

    before = data_fingerprint(small)
    index = small / "faces" / ".etm" / "index-test.json"
    index.parent.mkdir()
    try:
        index.write_text("{}")
        assert data_fingerprint(small) == before
        (small / "faces" / "extra.png").write_bytes(b"x")  # a generated-looking file does count
        assert data_fingerprint(small) != before
    finally:
        index.unlink()
        index.parent.rmdir()
        (small / "faces" / "extra.png").unlink(missing_ok=True)
