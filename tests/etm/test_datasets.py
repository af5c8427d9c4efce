"""Datasets: layouts, validation, masks, the content hash, and background-decoded batches."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import etm.datasets.batches as batches_mod
from etm.datasets import Dataset, decode_batch, iter_batches, load_dataset
from etm.errors import DatasetError


def _rgb(seed: int, h: int = 16, w: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray | None = None, fmt: str = "PNG", seed: int = 0, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed) if arr is None else arr).save(path, format=fmt, **kw)
    return path


def _chw(arr: np.ndarray) -> torch.Tensor:
    """An 8-bit HWC array as the float CHW tensor a batch should hold."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _skip_reasons(ds: Dataset) -> dict[str, str]:
    return {s.path: s.reason for s in ds.skipped}


# -- layouts -------------------------------------------------------------------------------------

def test_class_folders(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "b.png", seed=1)
    _save(tmp_path / "cat" / "a.png", seed=2)
    _save(tmp_path / "dog" / "sub" / "c.png", seed=3)
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "x.png")
    _save(tmp_path / "cat" / ".DS_Store.png")

    ds = load_dataset(tmp_path)

    assert ds.layout == "classes" and ds.split is None and ds.splits == [] and ds.split_counts is None
    assert ds.classes == ["cat", "dog"]
    assert [it.key for it in ds.items] == ["cat/a.png", "dog/b.png", "dog/sub/c.png"]
    assert [it.label for it in ds.items] == ["cat", "dog", "dog"]
    assert ds.counts == {"cat": 1, "dog": 2}
    assert ds.items[0].path == (tmp_path / "cat" / "a.png").resolve()
    assert all(it.mask_path is None and len(it.sha256) == 64 for it in ds.items)
    assert ds.skipped == []
    assert len(ds) == 3


def test_split_folders_default_to_test(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "real" / "t1.png", seed=1)
    _save(tmp_path / "train" / "fake" / "t2.png", seed=2)
    _save(tmp_path / "train" / "fake" / "t3.png", seed=3)
    _save(tmp_path / "test" / "real" / "e1.png", seed=4)
    _save(tmp_path / "test" / "fake" / "e2.png", seed=5)
    _save(tmp_path / "masks" / "e1.png", np.full((8, 8), 255, np.uint8))

    ds = load_dataset(tmp_path)
    assert ds.layout == "splits" and ds.split == "test" and ds.splits == ["test", "train"]
    assert [it.key for it in ds.items] == ["test/fake/e2.png", "test/real/e1.png"]
    assert ds.split_counts == {"test": {"fake": 1, "real": 1}, "train": {"fake": 2, "real": 1}}
    assert ds.classes == ["fake", "real"]

    train = load_dataset(tmp_path, split="train")
    assert train.split == "train" and train.counts == {"fake": 2, "real": 1}

    with pytest.raises(DatasetError, match=r"unknown split 'dev'.*available splits: \['test', 'train'\]"):
        load_dataset(tmp_path, split="dev")


def test_split_folders_without_test_need_a_choice(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "1.png")
    _save(tmp_path / "validation" / "a" / "2.png")
    with pytest.raises(DatasetError, match=r"splits \['train', 'validation'\].*none is called 'test'"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, "validation").items[0].key == "validation/a/2.png"


def test_split_asked_of_a_dataset_without_splits(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "a.png")
    with pytest.raises(DatasetError, match="has no splits"):
        load_dataset(tmp_path, split="test")


def test_manifest_layout(tmp_path: Path) -> None:
    _save(tmp_path / "imgs" / "a.png", seed=1)
    _save(tmp_path / "imgs" / "b.png", seed=2)
    _save(tmp_path / "imgs" / "c.png", seed=3)
    _save(tmp_path.parent / "outside.png", seed=4)
    (tmp_path / "manifest.csv").write_text(
        "split,label,path,source\n"
        "test,real,imgs/a.png,ffhq\n"
        "test,fake,./imgs/b.png,sg2\n"
        "train,fake,imgs/c.png,sg2\n"
        "test,fake,imgs/missing.png,sg2\n"
        "test,fake,../outside.png,x\n"
        f"test,fake,{tmp_path.parent / 'outside.png'},x\n"
        "test,real,imgs/a.png,dup\n"
        "\n"
    )

    ds = load_dataset(tmp_path)
    assert ds.layout == "manifest" and ds.split == "test" and ds.splits == ["test", "train"]
    assert [(it.key, it.label) for it in ds.items] == [("imgs/a.png", "real"), ("imgs/b.png", "fake")]
    reasons = _skip_reasons(ds)
    assert "file not found" in reasons["imgs/missing.png"]
    assert "line 5" in reasons["imgs/missing.png"]
    assert "'..' not allowed" in reasons["../outside.png"]
    assert "absolute path not allowed" in reasons[str(tmp_path.parent / "outside.png")]
    assert "duplicate entry (first on line 2)" in reasons["imgs/a.png"]
    assert ds.split_counts == {"test": {"fake": 4, "real": 2}, "train": {"fake": 1}}

    train = load_dataset(tmp_path, "train")
    assert [it.key for it in train.items] == ["imgs/c.png"] and train.skipped == []


def test_manifest_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _save(root / "ok.png", seed=1)
    _save(tmp_path / "secret.png", seed=2)
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "manifest.csv").write_text("split,label,path\n,a,ok.png\n,a,link.png\n")
    ds = load_dataset(root)
    assert ds.split is None and [it.key for it in ds.items] == ["ok.png"]
    assert "symlink" in _skip_reasons(ds)["link.png"]


def test_manifest_header_must_have_the_columns(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("label,file\nreal,a.png\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['split', 'path'\]"):
        load_dataset(tmp_path)


# -- masks ---------------------------------------------------------------------------------------

def test_masks_matched_by_stem(tmp_path: Path) -> None:
    _save(tmp_path / "real" / "a.jpg", fmt="JPEG", seed=1)
    _save(tmp_path / "fake" / "b.png", seed=2)
    _save(tmp_path / "fake" / "c.png", seed=3)
    mask = np.zeros((8, 10), np.uint8)
    mask[:, 5:] = 255
    _save(tmp_path / "masks" / "a.png", mask)
    _save(tmp_path / "masks" / "sub" / "b.webp", np.full((8, 10), 51, np.uint8), fmt="WEBP", lossless=True)
    _save(tmp_path / "masks" / "zzz.png", mask)  # matches no image: ignored
    (tmp_path / "masks" / "notes.txt").write_text("drawn by annotator 3")

    ds = load_dataset(tmp_path)
    assert ds.classes == ["fake", "real"]  # masks/ is never a class
    by_key = {it.key: it for it in ds.items}
    assert by_key["real/a.jpg"].mask_path == (tmp_path / "masks" / "a.png").resolve()
    assert by_key["fake/b.png"].mask_path == (tmp_path / "masks" / "sub" / "b.webp").resolve()
    assert by_key["fake/c.png"].mask_path is None and by_key["fake/c.png"].mask_sha256 is None
    assert ds.describe()["annotations"] == {"masks_folder": True, "n_with_mask": 2, "n_without_mask": 1}

    (batch,) = iter_batches(ds, range(len(ds)), batch_size=8, size=(8, 10))
    assert batch.keys == ["fake/b.png", "fake/c.png", "real/a.jpg"]
    assert batch.has_mask.tolist() == [True, False, True]
    assert torch.allclose(batch.masks[0], torch.full((8, 10), 0.2))
    assert batch.masks[1].abs().sum() == 0
    assert batch.masks[2, :, :5].max() == 0 and batch.masks[2, :, 5:].min() == 1


def test_duplicate_stems_with_masks_are_an_error(tmp_path: Path) -> None:
    _save(tmp_path / "real" / "x.png", seed=1)
    _save(tmp_path / "fake" / "x.jpg", fmt="JPEG", seed=2)
    _save(tmp_path / "fake" / "y.png", seed=3)
    assert len(load_dataset(tmp_path)) == 3  # without masks, equal stems are fine

    _save(tmp_path / "masks" / "y.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"stems name more than one image: 'x' \(fake/x.jpg, real/x.png\)"):
        load_dataset(tmp_path)


def test_two_masks_for_one_image_are_an_error(tmp_path: Path) -> None:
    _save(tmp_path / "real" / "x.png")
    _save(tmp_path / "masks" / "x.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "masks" / "x.webp", np.zeros((4, 4), np.uint8), fmt="WEBP")
    with pytest.raises(DatasetError,
                       match=r"more than one mask file matches an image: masks/x.png, masks/x.webp"):
        load_dataset(tmp_path)


def test_corrupt_mask_keeps_the_image(tmp_path: Path) -> None:
    _save(tmp_path / "real" / "x.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    ds = load_dataset(tmp_path)
    assert ds.items[0].mask_path is None
    assert "image kept without mask" in _skip_reasons(ds)["masks/x.png"]


# -- image formats and bad files -----------------------------------------------------------------

def test_colour_modes_and_formats(tmp_path: Path) -> None:
    h, w = 12, 14
    rgb = _rgb(7, h, w)
    grey = rgb[..., 0]
    alpha = np.random.default_rng(8).integers(0, 256, (h, w), dtype=np.uint8)
    c = tmp_path / "c"
    _save(c / "rgb.png", rgb)
    _save(c / "grey.png", grey)
    _save(c / "rgba.png", np.dstack([rgb, alpha]))
    Image.fromarray(rgb).quantize(16).save(c / "pal.png")
    pal_t = Image.fromarray(rgb).quantize(16)
    pal_t.info["transparency"] = 0
    pal_t.save(c / "palt.png", transparency=0)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.dstack([yy * 10, xx * 9, yy * 5 + xx * 5]).astype(np.uint8)
    _save(c / "jpeg.jpg", smooth, fmt="JPEG", quality=95)
    _save(c / "webp.webp", rgb, fmt="WEBP", lossless=True)
    Image.fromarray(grey.astype(np.uint16) * 257).save(c / "grey16.png")
    _save(c / "pngnamedjpg.jpg", rgb)  # sniffed by content, not extension
    Image.fromarray(rgb).save(c / "gif.gif")

    ds = load_dataset(tmp_path)
    assert _skip_reasons(ds) == {"c/gif.gif": "unsupported image format GIF (accepted: PNG, JPEG, WebP)"}
    (batch,) = iter_batches(ds, range(len(ds)), batch_size=16, size=(h, w))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (len(ds), 3, h, w)
    got = {k: batch.images[i] for i, k in enumerate(batch.keys)}
    ref = _chw(rgb)

    assert torch.equal(got["c/rgb.png"], ref)
    assert torch.equal(got["c/pngnamedjpg.jpg"], ref)
    assert torch.equal(got["c/webp.webp"], ref)
    assert torch.equal(got["c/grey.png"], ref[0].expand(3, h, w))
    assert torch.allclose(got["c/grey16.png"], ref[0].expand(3, h, w), atol=1e-6)
    composited = ((rgb.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)  # on black
    assert torch.equal(got["c/rgba.png"], _chw(composited))
    assert torch.equal(got["c/pal.png"], _chw(np.asarray(Image.open(c / "pal.png").convert("RGB"))))
    pal_idx = np.asarray(Image.open(c / "palt.png"))
    assert (got["c/palt.png"][:, torch.from_numpy(pal_idx == 0)] == 0).all()  # transparent -> black
    assert (got["c/jpeg.jpg"] - _chw(smooth)).abs().max() < 0.05  # lossy, but the same picture


def test_corrupt_and_non_image_files_are_skipped(tmp_path: Path) -> None:
    good = _save(tmp_path / "real" / "good.png", _rgb(1, 64, 64))
    (tmp_path / "real" / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "real" / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "real" / "readme.txt").write_text("not an image")
    (tmp_path / "real" / "empty.jpg").write_bytes(b"")
    (tmp_path / "labels.json").write_text("{}")
    _save(tmp_path / "loose.png")

    ds = load_dataset(tmp_path)
    assert [it.key for it in ds.items] == ["real/good.png"]
    reasons = _skip_reasons(ds)
    assert reasons["real/readme.txt"] == "not an image"
    assert reasons["labels.json"] == "not an image"
    assert reasons["loose.png"] == "not inside a class folder"
    assert reasons["real/truncated.png"].startswith("corrupt image")
    assert reasons["real/noise.png"].startswith("not a readable image")
    assert reasons["real/empty.jpg"].startswith("not a readable image")
    described = json.loads(json.dumps(ds.describe()))
    assert described["n_skipped"] == 6
    assert {"path": "real/readme.txt", "reason": "not an image"} in described["skipped"]


def test_empty_dataset_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no usable images .*manifest.csv, class folders.*has no folders"):
        load_dataset(tmp_path)

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "bad.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"PNG, JPEG or WebP files in class folders.*Skipped 1 file\(s\): "
                                           r"real/bad.png: not a readable image"):
        load_dataset(tmp_path)

    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_empty_manifest_split_message(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("split,label,path\ntest,real,gone.png\n")
    with pytest.raises(DatasetError,
                       match=r"files listed in split 'test' of manifest.csv.*gone.png.*file not found"):
        load_dataset(tmp_path)


# -- content hash --------------------------------------------------------------------------------

def test_content_hash(tmp_path: Path) -> None:
    root = tmp_path / "a"
    _save(root / "real" / "1.png", seed=1)
    _save(root / "fake" / "2.png", seed=2)
    _save(root / "masks" / "2.png", np.zeros((4, 4), np.uint8))
    first = load_dataset(root).sha256
    assert load_dataset(root).sha256 == first
    assert len(first) == 64 and load_dataset(root).describe()["sha256"] == first

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, copy)
    assert load_dataset(copy).sha256 == first

    (copy / "notes.txt").write_text("skipped files do not change the content")
    (copy / "fake" / "junk.png").write_bytes(b"junk")
    assert load_dataset(copy).sha256 == first

    relabelled = tmp_path / "relabelled"
    shutil.copytree(root, relabelled)
    (relabelled / "real" / "1.png").rename(relabelled / "fake" / "1.png")
    assert load_dataset(relabelled).sha256 != first

    _save(copy / "real" / "1.png", np.where(_rgb(1) == 0, 1, _rgb(1)).astype(np.uint8))
    assert load_dataset(copy).sha256 != first

    _save(root / "masks" / "2.png", np.ones((4, 4), np.uint8))
    assert load_dataset(root).sha256 != first


def test_manifest_label_change_changes_hash(tmp_path: Path) -> None:
    _save(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text("split,label,path\ntest,real,a.png\n")
    before = load_dataset(tmp_path).sha256
    (tmp_path / "manifest.csv").write_text("split,label,path,extra\ntest,fake,a.png,1\n")
    assert load_dataset(tmp_path).sha256 != before


# -- batches -------------------------------------------------------------------------------------

@pytest.fixture
def five(tmp_path: Path) -> Dataset:
    for i in range(5):
        _save(tmp_path / ("real" if i % 2 else "fake") / f"{i}.png", _rgb(i, 20, 30))
    return load_dataset(tmp_path)


def test_batches_shapes_order_and_values(five: Dataset) -> None:
    order = [4, 0, 2, 1, 3]
    batches = list(iter_batches(five, order, batch_size=2, size=(10, 12)))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [i for b in batches for i in b.indices] == order
    assert [k for b in batches for k in b.keys] == [five.items[i].key for i in order]
    assert [x for b in batches for x in b.labels] == [five.items[i].label for i in order]
    b = batches[0]
    assert b.images.shape == (2, 3, 10, 12) and b.images.dtype == torch.float32
    assert b.masks.shape == (2, 10, 12) and b.masks.dtype == torch.float32
    assert b.has_mask.dtype == torch.bool and not b.has_mask.any()
    assert float(b.images.min()) >= 0 and float(b.images.max()) <= 1

    # Reference: PIL bilinear (antialiased) resize of the 8-bit image, then / 255.
    ref = Image.open(five.items[4].path).convert("RGB").resize((12, 10), Image.Resampling.BILINEAR)
    assert torch.equal(b.images[0], _chw(np.asarray(ref)))

    again = list(iter_batches(five, range(5), batch_size=5, size=(10, 12)))
    assert len(again) == 1 and again[0].keys == [it.key for it in five.items]
    assert list(iter_batches(five, [], batch_size=4, size=(8, 8))) == []


def test_batches_bad_arguments(five: Dataset) -> None:
    with pytest.raises(ValueError, match="out of range"):
        iter_batches(five, [0, 5], 2, (8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches(five, range(5), 0, (8, 8))
    with pytest.raises(ValueError, match="size"):
        iter_batches(five, range(5), 2, (0, 8))


def test_batches_prefetch_is_bounded(five: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    lock = threading.Lock()
    real = batches_mod.decode_image

    def counting(path: Path, size: tuple[int, int]) -> np.ndarray:
        with lock:
            decoded.append(path.name)
        return real(path, size)

    monkeypatch.setattr(batches_mod, "decode_image", counting)
    it = iter_batches(five, list(range(5)) * 4, batch_size=1, size=(8, 8), prefetch=2)
    assert decoded == []  # nothing is decoded before the first next()
    next(it)
    time.sleep(0.3)  # give the background threads every chance to run ahead
    assert len(decoded) <= 3  # the batch held + 2 prefetched
    rest = list(it)
    assert len(rest) == 19 and len(decoded) == 20


def test_batches_closed_early_stop_their_threads(five: Dataset) -> None:
    for batch in iter_batches(five, list(range(5)) * 10, batch_size=2, size=(8, 8)):
        assert len(batch) == 2
        break
    # The for-loop dropped the generator; CPython closes it at once, shutting the pool down.
    deadline = time.monotonic() + 5
    while any(t.name.startswith("etm-decode") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("etm-decode") for t in threading.enumerate())


def test_file_changed_after_load_names_it(five: Dataset) -> None:
    (five.root / "real" / "3.png").write_bytes(b"no longer an image")
    batches = iter_batches(five, range(5), batch_size=2, size=(8, 8))
    next(batches)
    with pytest.raises(DatasetError, match=r"image .*3\.png \(item real/3\.png\) could not be decoded"):
        list(batches)


def test_decode_batch_matches_the_stream(five: Dataset) -> None:
    direct = decode_batch(five, [3, 1], (9, 7))
    (streamed,) = iter_batches(five, [3, 1], batch_size=2, size=(9, 7), workers=1)
    assert direct.keys == streamed.keys and torch.equal(direct.images, streamed.images)
