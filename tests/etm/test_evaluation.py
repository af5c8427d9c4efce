"""The evaluation plan: shards merge to the unsharded report, even with more shards than batches; a shard
reads only its own images and ``finish`` none of the in-set images."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etm.datasets import Dataset, load_dataset, open_dataset
from etm.errors import DatasetError
from etm.evaluation import Resolver, evaluate, finish, run_inset, shard_indices
from etm.spec import EvaluationSpec


def _numbers(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["provenance"].pop("timing")
    return report


def test_more_shards_than_batches_still_merge(family_onnx: list[Path], dataset_dir: Path) -> None:
    spec = EvaluationSpec(
        candidates=[{"name": "fam", "models": [str(p) for p in family_onnx]}],
        dataset=str(dataset_dir),
        measures=["entropy", "stability"],
        batch_size=8,
        bootstrap_resamples=200,
    )
    assert [len(shard_indices(24, 8, (i, 5))) for i in range(5)] == [0, 8, 0, 8, 8]  # 3 batches, 5 shards
    parts = [run_inset(spec, shard=(i, 5)) for i in range(5)]
    merged = finish(spec, parts)
    whole = evaluate(spec)
    assert _numbers(merged.report) == _numbers(whole.report)
    assert merged.per_image_csv() == whole.per_image_csv()


# -- a shard reads only its own images ------------------------------------------------------------

_OPENED: list[Path] | None = None  # files opened while a test listens (set by _reads)
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | Path):
        _OPENED.append(Path(args[0]))


@contextlib.contextmanager
def _reads(root: Path) -> Iterator[set[str]]:
    """The files under ``root`` (outside its ``.etm`` index folder) opened inside the block, relative to it."""
    global _OPENED, _HOOKED
    if not _HOOKED:  # Python's own hook for every open() (PIL's, hashlib's...); it cannot be removed again
        sys.addaudithook(_audit)
        _HOOKED = True
    seen: set[str] = set()
    _OPENED = []
    try:
        yield seen
    finally:
        opened, _OPENED = _OPENED, None
        for p in opened:
            rel = p.resolve().relative_to(root.resolve()) if p.resolve().is_relative_to(root.resolve()) else None
            if rel is not None and rel.parts[0] != ".etm":
                seen.add(rel.as_posix())


def _registered_copy(src: Path, dest: Path) -> Path:
    """A copy of a dataset folder, validated once as registration does (which leaves the index)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".etm"))  # the source's own index, if any
    assert open_dataset(dest).unverified == set()  # a full validation, now indexed
    return dest


def _files_of(ds: Dataset, indices: range) -> set[str]:
    out = set()
    for it in (ds.items[i] for i in indices):
        out.add(it.key)
        if it.mask_path is not None:
            out.add(it.mask_path.relative_to(ds.root).as_posix())
    return out


def test_a_shard_opens_only_its_own_images_and_finish_none(
    family_onnx: list[Path], dataset_dir: Path, tmp_path: Path
) -> None:
    root = _registered_copy(dataset_dir, tmp_path / "ds")
    spec = EvaluationSpec(
        candidates=[{"name": "fam", "models": [str(p) for p in family_onnx[:2]]}],
        dataset=str(root),
        measures=["entropy", "agreement"],  # agreement reads the masks too
        batch_size=8,
        bootstrap_resamples=100,
    )
    ds = load_dataset(root)
    ranges = [shard_indices(len(ds), 8, (i, 2)) for i in range(2)]
    assert ranges == [range(0, 8), range(8, 24)]
    parts = []
    for i in range(2):
        with _reads(root) as seen:  # each shard a fresh Resolver, as in its own worker process
            parts.append(run_inset(spec, Resolver(), shard=(i, 2)))
        assert seen == _files_of(ds, ranges[i]), f"shard {i} opened files outside its range"
    with _reads(root) as seen:
        merged = finish(spec, parts, Resolver())
    assert seen == set(), "finish opened in-set images"
    whole = evaluate(spec)
    assert _numbers(merged.report) == _numbers(whole.report)
    assert merged.per_image_csv() == whole.per_image_csv()
    assert merged.report["dataset"] == ds.describe()  # the index describes what a full validation finds


def test_a_changed_image_fails_the_shard_that_reads_it_as_it_fails_the_whole_run(
    family_onnx: list[Path], dataset_dir: Path, tmp_path: Path
) -> None:
    root = _registered_copy(dataset_dir, tmp_path / "ds")
    spec = EvaluationSpec(
        candidates=[{"name": "fam", "models": [str(family_onnx[0])]}],
        dataset=str(root),
        measures=["entropy"],
        batch_size=8,
        bootstrap_resamples=100,
    )
    victim = load_dataset(root).items[20]  # in shard 1 of 2 (images 8..23)
    # Corrupt it after registration without changing its size or time, so the index still looks current.
    st = victim.path.stat()
    victim.path.write_bytes(b"\0" * st.st_size)
    os.utime(victim.path, ns=(st.st_atime_ns, st.st_mtime_ns))

    part = run_inset(spec, Resolver(), shard=(0, 2))  # never opens it
    assert part.keys == [it.key for it in load_dataset(root).items[:8]]
    with pytest.raises(DatasetError) as whole:
        run_inset(spec, Resolver())
    with pytest.raises(DatasetError) as shard:
        run_inset(spec, Resolver(), shard=(1, 2))
    assert str(shard.value) == str(whole.value)
    assert victim.key in str(whole.value) and "changed after the dataset was validated" in str(whole.value)
    assert "corrupt image" in str(whole.value) or "not a readable image" in str(whole.value)
