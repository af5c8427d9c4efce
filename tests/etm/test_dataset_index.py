"""The validation index: ``open_dataset`` gives what ``load_dataset`` gives, without reading images when
nothing listed changed, and verifies an item's files only when a batch reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etm.cache_paths import index_dir
from etm.datasets import decode_batch, iter_batches, load_dataset, open_dataset
from etm.errors import DatasetError
from tests.helpers.tiny import tiny_dataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ds = tiny_dataset(tmp_path / "ds", n_per_class=4, size=24)
    (ds / "real" / "notes.png").write_bytes(b"not an image")  # a skipped file belongs in the index too
    return ds


def _same_size_rewrite(path: Path) -> None:
    """Zeros of the same length, the modification time put back: invisible to the index's stamp."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_indexed_open_equals_a_full_validation(root: Path) -> None:
    first = open_dataset(root)  # validates everything and writes the index
    assert first.unverified == set() and index_dir(root).is_dir()
    again = open_dataset(root)
    full = load_dataset(root)
    assert again.index_path is not None and again.unverified == {it.key for it in full.items}
    assert again == full and again.items == full.items and again.describe() == full.describe()
    assert [s.path for s in again.skipped] == ["real/notes.png"]
    # Reading verifies exactly the items read, once.
    list(iter_batches(again, [0, 1], 2, (24, 24)))
    assert again.unverified == {it.key for it in full.items[2:]}
    decode_batch(again, [2], (24, 24))
    assert len(again.unverified) == len(full.items) - 3


def test_a_listed_change_makes_the_index_stale(root: Path) -> None:
    open_dataset(root)
    victim = root / "synthetic" / "synthetic_001.png"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated: another size
    ds = open_dataset(root)
    assert ds.unverified == set()  # validated again in full, as load_dataset would
    assert "synthetic/synthetic_001.png" in {s.path for s in ds.skipped}
    assert ds == load_dataset(root)
    assert open_dataset(root).unverified  # and indexed again

    next(index_dir(root).iterdir()).write_text("{torn")
    assert open_dataset(root).unverified == set()  # an unreadable index is ignored, not trusted


def test_a_mask_changed_behind_the_index_fails_the_batch_that_reads_it(root: Path) -> None:
    open_dataset(root)
    ds = open_dataset(root)
    mask = ds.items[3].mask_path
    assert mask is not None
    _same_size_rewrite(mask)
    list(iter_batches(ds, [0, 1, 2], 3, (24, 24)))  # does not read item 3
    with pytest.raises(DatasetError, match=r"changed after the dataset was validated .*: the mask of "
                       rf"{ds.items[3].key} \(masks/{mask.name}\): not a readable image"):
        list(iter_batches(ds, [3], 1, (24, 24)))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_opening_never_writes_into_the_dataset_folder(root: Path) -> None:
    """A user's folder (git- or DVC-tracked, a read-only mount) is only read: the index lives in the cache."""
    before = _tree(root)
    assert open_dataset(root).unverified == set()
    again = open_dataset(root)
    assert again.index_path is not None and again.index_path.is_relative_to(index_dir(root))
    assert again.unverified  # the index was written (elsewhere) and used
    assert _tree(root) == before  # not a file added, changed or touched
