"""Finding, validating and hashing a dataset's images: ``load_dataset`` and the ``Dataset`` it returns.

Layouts (checked in this order):

1. **manifest**: ``root/manifest.csv`` with a header containing ``split,label,path`` (the CYBORG
   layout; extra columns are ignored, ``path`` is relative to ``root``, ``\\`` is read as ``/``).
   An empty ``split`` column everywhere means the dataset has no splits.
2. **splits**: every top-level folder (other than ``masks``) is one of train/val/validation/test
   (compared case-insensitively): ``root/<split>/<class>/<image>``.
3. **classes**: ``root/<class>/<image>``.

In the folder layouts a class folder may contain sub-folders (the class is the first folder
under the root or split); names starting with ``.`` are ignored, symlinked folders are not
followed. ``root/masks/`` is reserved for human-annotation masks, matched to images by file stem
(any image extension, anywhere under ``masks/``).

Every image is validated once at load (see ``images.check_image``); a file that fails is
skipped and listed with its reason, never raised. Only whole-dataset problems raise
``DatasetError``.

Validation index (``open_dataset``): a full validation reads every image's bytes, which a worker
that evaluates one shard of a split does not need. ``open_dataset`` writes what a full validation
found (items, their hashes, the skipped files) to ``index_dir(root)/index-*.json``, stamped with the
listing and every listed file's size and modification time. A later ``open_dataset`` whose listing
and stamp are unchanged rebuilds the same ``Dataset`` from it without opening any image; its items
are then *unverified* and are validated and hashed again, against the index, only when a batch is
about to read them (``Dataset.verify``, called by ``iter_batches``). A file that changed without
changing its size and time therefore fails the pass that reads it, with the same error whichever
shard reads it, instead of being skipped. The index lives in a cache folder (``etm.cache_paths``), never in the
dataset folder: a user's folder (tracked by git or DVC, or mounted read-only) is only ever read.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from etm.cache_paths import index_dir
from etm.datasets.images import check_image, is_obviously_not_image, max_image_pixels
from etm.datasets.splits import SPLIT_NAMES, choose_split, is_split_name
from etm.errors import DatasetError
from etm.text import is_utf8, utf8_safe

MASKS_DIR = "masks"
MANIFEST = "manifest.csv"
HASH_VERSION = "etm-dataset-v1"
INDEX_VERSION = "etm-dataset-index-v1"

_ACCEPTED = "PNG, JPEG or WebP"
_MAX_LISTED = 10  # how many offending names an error message spells out
# A manifest may list up to MANIFEST_ROWS_PER_FILE rows per file in the folder, plus MANIFEST_EXTRA_ROWS:
# room for rows naming files left out of the upload (skipped as "file not found"), not for a manifest
# that describes some other, far larger dataset (300,000 rows for 24 images made a 62 MB record).
MANIFEST_ROWS_PER_FILE = 2
MANIFEST_EXTRA_ROWS = 1000
MAX_MANIFEST_BYTES = 128 * 2**20
MAX_MANIFEST_LINE = 64 * 1024  # characters in one line of the manifest
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Skipped:
    """A file (or manifest entry) left out of the dataset, and why."""

    path: str  # posix path relative to the root, or the path as written in the manifest
    reason: str


@dataclass(frozen=True)
class Item:
    """One usable image.

    ``key`` is its posix path relative to the dataset root: unique, and the canonical sort key.
    """

    key: str
    label: str
    path: Path
    mask_path: Path | None
    sha256: str
    mask_sha256: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A validated dataset split, in canonical order (items sorted by ``key``).

    ``sha256`` identifies the content: the SHA-256 of the UTF-8 text made of the line
    ``etm-dataset-v1`` followed by one line per item, sorted,
    ``key TAB label TAB image_sha256 TAB mask_sha256-or-"-"``, each ending in a newline. It is
    therefore independent of where the folder lives, of file times and of skipped files, and
    changes when a relative path, a label, an image byte or a mask byte changes.
    """

    root: Path
    layout: str  # "manifest", "splits" or "classes"
    split: str | None
    splits: list[str]
    classes: list[str]
    items: list[Item]
    skipped: list[Skipped]
    counts: dict[str, int]
    split_counts: dict[str, dict[str, int]] | None
    has_masks_folder: bool
    sha256: str
    # Keys of items rebuilt from a validation index whose files were not read since (see the module
    # docstring). A set shared with every ``dataclasses.replace`` copy (e.g. a subset of the items),
    # so an item is verified once however the dataset is sliced.
    unverified: set[str] = field(default_factory=set, compare=False, repr=False)
    index_path: Path | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def verify(self, indices: Iterable[int]) -> None:
        """Validate and hash the unverified items at ``indices`` (and their masks) against the index.

        Items from a full validation are verified already; this only reads files of a dataset that
        ``open_dataset`` rebuilt from its index, and each of them once.

        Raises:
            DatasetError: A file is no longer a usable image, or its bytes differ from those indexed;
                the message names every such file among ``indices``.
        """
        if not self.unverified:
            return
        todo = list({it.key: it for i in indices if (it := self.items[i]).key in self.unverified}.values())
        if not todo:
            return
        files = [(it.key, "image", it.path, it.sha256) for it in todo] + [
            (it.key, "mask", it.mask_path, it.mask_sha256) for it in todo if it.mask_path is not None
        ]
        found = _parallel_map(check_image, [f[2] for f in files])
        problems = []
        for (key, what, path, expected), (sha, reason) in zip(files, found, strict=True):
            name = key if what == "image" else f"the mask of {key} ({path.relative_to(self.root).as_posix()})"
            if sha is None:
                problems.append(f"{name}: {reason}")
            elif sha != expected:
                problems.append(f"{name}: content changed (SHA-256 {sha[:12]}..., validated as {expected[:12]}...)")
        if problems:
            where = f" (index {self.index_path})" if self.index_path is not None else ""
            raise DatasetError(
                f"{len(problems)} file(s) of dataset {self.root} changed after the dataset was validated{where}: "
                f"{_name_some(problems)}. Restore them, or delete "
                f"{index_dir(self.root)} so that the dataset is validated again (unusable files are then skipped)"
            )
        self.unverified.difference_update(it.key for it in todo)

    @property
    def n_with_mask(self) -> int:
        """How many items have a human-annotation mask."""
        return sum(item.mask_path is not None for item in self.items)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for reports and the API.

        Returns:
            ``sha256``, ``layout``, ``split``, ``splits``, ``n_images``, ``classes``, ``counts``
            (usable images per class), ``split_counts`` (entries listed per split and class,
            before validation; null without splits), ``annotations`` (``masks_folder``,
            ``n_with_mask``, ``n_without_mask``), ``n_skipped`` and ``skipped``
            (``[{"path", "reason"}]``). The root path is left out so that the same data in
            another place describes identically.
        """
        n_mask = self.n_with_mask
        return {
            "sha256": self.sha256,
            "layout": self.layout,
            "split": self.split,
            "splits": list(self.splits),
            "n_images": len(self.items),
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "split_counts": None if self.split_counts is None else {s: dict(c) for s, c in self.split_counts.items()},
            "annotations": {
                "masks_folder": self.has_masks_folder,
                "n_with_mask": n_mask,
                "n_without_mask": len(self.items) - n_mask,
            },
            "n_skipped": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


@dataclass(frozen=True)
class _Candidate:
    key: str
    label: str
    path: Path


@dataclass
class _Listing:
    """What a layout scanner found for the chosen split, before any file is opened."""

    layout: str
    split: str | None
    splits: list[str]
    split_counts: dict[str, dict[str, int]] | None
    candidates: list[_Candidate]
    skipped: list[Skipped]
    looked_for: str


def load_dataset(root: str | Path, split: str | None = None) -> Dataset:
    """Find, validate and hash the images of a dataset (one split of it, when it has splits).

    Args:
        root: The dataset folder (see the module docstring for the layouts).
        split: Which split to use when the dataset has splits; None means ``test``.

    Returns:
        The dataset, items sorted by relative path, unusable files listed in ``skipped``.

    Raises:
        DatasetError: The root is not a folder; the manifest is unreadable or lacks columns;
            the split is unknown (the message lists the available ones), or None while there is
            no ``test`` split, or given for a dataset without splits; masks exist and image file
            stems are ambiguous; no usable image is left.
    """
    root_path = _root(root)
    return _validate(root_path, _list(root_path, split))


def open_dataset(root: str | Path, split: str | None = None) -> Dataset:
    """``load_dataset``, reusing the validation index of an earlier call when nothing listed changed.

    Without a usable index (none yet, a file added, removed, resized or touched, another
    ``ETM_MAX_IMAGE_PIXELS``), this is ``load_dataset`` followed by writing the index (best effort:
    a read-only folder just gets no index). With one, no image is opened here: the items are
    unverified until ``Dataset.verify`` (see the module docstring). Either way the result describes,
    hashes and orders exactly as ``load_dataset`` would have when the index was written.

    Args and Raises: as ``load_dataset``.
    """
    root_path = _root(root)
    listing = _list(root_path, split)
    stamp = _stamp(root_path, listing)  # before validating: a file changed meanwhile makes the index stale
    path = index_dir(root_path) / f"index-{hashlib.sha256(repr(listing.split).encode()).hexdigest()[:16]}.json"
    indexed = _read_index(path, root_path, stamp)
    if indexed is not None:
        return indexed
    ds = _validate(root_path, listing)
    _write_index(path, ds, stamp)
    return ds


def _root(root: str | Path) -> Path:
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    return root_path.resolve()


def _list(root_path: Path, split: str | None) -> _Listing:
    if (root_path / MANIFEST).is_file():
        return _list_manifest(root_path, split)
    return _list_folders(root_path, split)


def _validate(root_path: Path, listing: _Listing) -> Dataset:
    """Open, validate and hash every listed file: the ``Dataset`` of ``load_dataset``."""
    skipped = list(listing.skipped)
    to_check: list[_Candidate] = []
    for cand in listing.candidates:
        if is_obviously_not_image(cand.path):
            skipped.append(Skipped(cand.key, "not an image"))
        elif "\t" in cand.key or "\n" in cand.key or "\r" in cand.key:
            # Would make the content-hash lines ambiguous.
            skipped.append(Skipped(cand.key, "file name contains a tab or line break"))
        elif not is_utf8(cand.key):  # a name from disk that is not UTF-8: it could be neither hashed nor shown
            skipped.append(Skipped(utf8_safe(cand.key), "file name is not valid UTF-8"))
        else:
            to_check.append(cand)

    usable: list[tuple[_Candidate, str]] = []
    for cand, (sha, reason) in zip(to_check, _parallel_map(check_image, [c.path for c in to_check]), strict=True):
        if sha is None:
            skipped.append(Skipped(cand.key, reason or "unreadable"))
        else:
            usable.append((cand, sha))

    masks_dir = root_path / MASKS_DIR
    has_masks_folder = masks_dir.is_dir()
    items = (
        _attach_masks(root_path, masks_dir, usable, skipped)
        if has_masks_folder
        else [Item(c.key, c.label, c.path, None, sha) for c, sha in usable]
    )
    items.sort(key=lambda it: it.key)
    skipped.sort(key=lambda s: s.path)

    if not items:
        where = f"{root_path}" + (f" (split {listing.split!r})" if listing.split is not None else "")
        msg = f"no usable images in {where}: looked for {listing.looked_for}"
        if skipped:
            examples = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
            more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
            msg += f". Skipped {len(skipped)} file(s): {examples}{more}"
        else:
            msg += ", and found no files there"
        raise DatasetError(msg)

    counts = dict(sorted(Counter(it.label for it in items).items()))
    return Dataset(
        root=root_path,
        layout=listing.layout,
        split=listing.split,
        splits=listing.splits,
        classes=list(counts),
        items=items,
        skipped=skipped,
        counts=counts,
        split_counts=listing.split_counts,
        has_masks_folder=has_masks_folder,
        sha256=content_sha256(items),
    )


def content_sha256(items: Sequence[Item]) -> str:
    """The dataset content hash (see ``Dataset``).

    Args:
        items: The dataset's items, in any order.

    Returns:
        The hex digest.
    """
    lines = sorted(f"{it.key}\t{it.label}\t{it.sha256}\t{it.mask_sha256 or '-'}\n" for it in items)
    h = hashlib.sha256(f"{HASH_VERSION}\n".encode())
    for line in lines:
        h.update(line.encode("utf-8"))
    return h.hexdigest()


# -- the validation index ------------------------------------------------------------------------


def _stamp(root: Path, listing: _Listing) -> str:
    """What a validation's outcome depends on, short of the files' bytes: the listing, each listed
    file's size and modification time, the masks folder likewise, and the pixel limit."""
    h = hashlib.sha256(f"{INDEX_VERSION}\n{max_image_pixels()}\n".encode())
    head = [listing.layout, listing.split, listing.splits, listing.split_counts]
    h.update(json.dumps(head, sort_keys=True).encode() + b"\n")

    def add(key: str, path: Path, extra: str = "") -> None:  # surrogatepass: names from disk need not be UTF-8
        try:
            st = path.stat()
            h.update(f"{key}\t{extra}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
        except OSError as e:  # validation will say what is wrong; the stamp only has to differ
            h.update(f"{key}\t{extra}\t{type(e).__name__}\n".encode("utf-8", "surrogatepass"))

    for c in listing.candidates:
        add(c.key, c.path, c.label)
    for s in listing.skipped:
        h.update(f"skipped\t{s.path}\t{s.reason}\n".encode("utf-8", "surrogatepass"))
    masks_dir = root / MASKS_DIR
    if masks_dir.is_dir():
        h.update(b"masks\n")
        for p in _walk_files(masks_dir):
            add(p.relative_to(root).as_posix(), p)
    return h.hexdigest()


def _write_index(path: Path, ds: Dataset, stamp: str) -> None:
    doc = {
        "version": INDEX_VERSION,
        "stamp": stamp,
        "layout": ds.layout,
        "split": ds.split,
        "splits": ds.splits,
        "split_counts": ds.split_counts,
        "has_masks_folder": ds.has_masks_folder,
        "sha256": ds.sha256,
        "items": [
            [
                it.key,
                it.label,
                it.sha256,
                None if it.mask_path is None else it.mask_path.relative_to(ds.root).as_posix(),
                it.mask_sha256,
            ]
            for it in ds.items
        ],
        "skipped": [[s.path, s.reason] for s in ds.skipped],
    }
    with contextlib.suppress(OSError):  # an unwritable cache: the dataset is validated in full every time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"))
            os.replace(tmp, path)  # atomic: shards opening the dataset at once read a whole index
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _read_index(path: Path, root: Path, stamp: str) -> Dataset | None:
    """The dataset an index describes, its items unverified; None when there is no usable index."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != INDEX_VERSION or doc.get("stamp") != stamp:
            return None
        items = [
            Item(key, label, root / key, None if mask is None else root / mask, sha, mask_sha)
            for key, label, sha, mask, mask_sha in doc["items"]
        ]
        if not items or content_sha256(items) != doc["sha256"]:
            return None
        counts = dict(sorted(Counter(it.label for it in items).items()))
        return Dataset(
            root=root,
            layout=doc["layout"],
            split=doc["split"],
            splits=list(doc["splits"]),
            classes=list(counts),
            items=items,
            skipped=[Skipped(p, r) for p, r in doc["skipped"]],
            counts=counts,
            split_counts=doc["split_counts"],
            has_masks_folder=bool(doc["has_masks_folder"]),
            sha256=doc["sha256"],
            unverified={it.key for it in items},
            index_path=path,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, torn or foreign: validate
        return None


# -- layouts -------------------------------------------------------------------------------------



def _walk_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, skipping hidden names and symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)


def _loose_file(root: Path, path: Path) -> Skipped:
    key = path.relative_to(root).as_posix()
    if is_obviously_not_image(path):
        return Skipped(key, "not an image")
    return Skipped(key, "not inside a class folder")


def _list_folders(root: Path, split: str | None) -> _Listing:
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    dirs = [p for p in entries if p.is_dir() and p.name != MASKS_DIR]
    loose = [p for p in entries if p.is_file()]
    skipped = [_loose_file(root, p) for p in loose]

    if not dirs:
        return _Listing(
            "classes",
            None,
            [],
            None,
            [],
            skipped,
            f"{MANIFEST}, class folders (<class>/<image>) or split folders "
            f"({'/'.join(SPLIT_NAMES)}/<class>/<image>), but {root.name!r} has no folders",
        )

    if not all(is_split_name(d.name) for d in dirs):
        if split is not None:
            raise DatasetError(
                f"{root} has no splits (its folders are classes), but split {split!r} "
                "was asked for; leave split unset to use all images"
            )
        return _Listing(
            "classes",
            None,
            [],
            None,
            _list_class_folders(root, dirs),
            skipped,
            f"{_ACCEPTED} files in class folders (<class>/<image>)",
        )

    splits = [d.name for d in dirs]
    chosen = choose_split(splits, split, str(root))
    split_counts: dict[str, dict[str, int]] = {}
    candidates: list[_Candidate] = []
    for d in dirs:
        class_dirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        found = _list_class_folders(root, class_dirs)
        split_counts[d.name] = dict(
            sorted(Counter(c.label for c in found if not is_obviously_not_image(c.path)).items())
        )
        if d.name == chosen:
            candidates = found
            skipped += [_loose_file(root, p) for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return _Listing(
        "splits", chosen, splits, split_counts, candidates, skipped, f"{_ACCEPTED} files in {chosen}/<class>/ folders"
    )


def _list_class_folders(root: Path, class_dirs: list[Path]) -> list[_Candidate]:
    return [_Candidate(path.relative_to(root).as_posix(), d.name, path) for d in class_dirs for path in _walk_files(d)]


def _manifest_key(raw: str) -> tuple[str | None, str | None]:
    """A manifest path as a safe posix key relative to the root, or the reason it is refused."""
    norm = raw.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return None, "absolute path not allowed (paths are relative to the dataset root)"
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "path leaves the dataset root ('..' not allowed)"
    if not parts:
        return None, "empty path"
    return "/".join(parts), None


def _count_files(root: Path) -> int:
    """Files under ``root`` other than the manifest, hidden names left out (as the layouts do)."""
    n = 0
    for _, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n += sum(1 for name in filenames if not name.startswith("."))
    return n - (1 if (root / MANIFEST).is_file() else 0)


def _bounded_lines(f: Any) -> Iterator[str]:
    """The manifest's lines, refusing one longer than MAX_MANIFEST_LINE (read no further than that)."""
    while line := f.readline(MAX_MANIFEST_LINE + 1):
        if len(line) > MAX_MANIFEST_LINE:
            raise DatasetError(
                f"{MANIFEST} has a line longer than {MAX_MANIFEST_LINE} characters; each line is one "
                "'split,label,path' row"
            )
        yield line


def _read_manifest(root: Path) -> tuple[list[tuple[int, str, str, str]], list[Skipped]]:
    """The manifest's rows as ``(line, split, label, raw path)`` and the rows skipped (too few columns).

    Raises:
        DatasetError: the manifest is unreadable, too large, lacks columns or has more rows than the folder
            has files (see MANIFEST_ROWS_PER_FILE).
    """
    manifest = root / MANIFEST
    try:
        size = manifest.stat().st_size
    except OSError as e:
        raise DatasetError(f"{manifest} cannot be read: {e}") from e
    if size > MAX_MANIFEST_BYTES:
        raise DatasetError(
            f"{MANIFEST} is {size} bytes, more than {MAX_MANIFEST_BYTES}; a manifest has one short "
            "'split,label,path' row per image"
        )
    n_files = _count_files(root)
    max_rows = MANIFEST_ROWS_PER_FILE * n_files + MANIFEST_EXTRA_ROWS
    skipped: list[Skipped] = []
    entries: list[tuple[int, str, str, str]] = []  # (line, split, label, raw path)
    n_rows = 0
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(_bounded_lines(f))
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{manifest} is empty; expected a header line 'split,label,path'")
            columns = [h.strip().lower() for h in header]
            missing = [c for c in ("split", "label", "path") if c not in columns]
            if missing:
                raise DatasetError(
                    f"{manifest} header lacks column(s) {missing}; expected 'split,label,path' "
                    f"(extra columns are ignored), found {header}"
                )
            i_split, i_label, i_path = (columns.index(c) for c in ("split", "label", "path"))
            width = max(i_split, i_label, i_path) + 1
            for row in reader:  # streamed: the row limit applies before the whole file is held
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                n_rows += 1
                if n_rows > max_rows:
                    raise DatasetError(
                        f"{MANIFEST} has more than {max_rows} rows, but the dataset folder holds only {n_files} "
                        f"file(s) besides it; each row names one image file, so this manifest describes another "
                        f"dataset (at most {MANIFEST_ROWS_PER_FILE} rows per file plus {MANIFEST_EXTRA_ROWS} are "
                        "accepted; rows naming missing files are skipped). Upload the images it lists, or a "
                        "manifest of the images you upload"
                    )
                if len(row) < width:
                    skipped.append(Skipped(f"{MANIFEST} line {line}", "too few columns"))
                    continue
                entries.append((line, row[i_split].strip(), row[i_label].strip(), row[i_path].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{manifest} cannot be read as a UTF-8 CSV file: {e}") from e
    return entries, skipped


def _manifest_splits(entries: list[tuple[int, str, str, str]]) -> list[str]:
    return sorted({s for _, s, _, _ in entries if s})


def _folder_splits(root: Path) -> list[str]:
    """The split folders of a folder layout (empty: its folders are classes, or it has none)."""
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != MASKS_DIR]
    return sorted(d.name for d in dirs) if dirs and all(is_split_name(d.name) for d in dirs) else []


def split_names(root: str | Path) -> list[str]:
    """The splits of a dataset folder, as ``load_dataset`` sees them (empty: the dataset has no splits).

    Raises:
        DatasetError: what ``load_dataset`` raises for an unreadable manifest or a missing folder.
    """
    root_path = _root(root)
    if (root_path / MANIFEST).is_file():
        return _manifest_splits(_read_manifest(root_path)[0])
    return _folder_splits(root_path)


def _list_manifest(root: Path, split: str | None) -> _Listing:
    manifest = root / MANIFEST
    entries, skipped = _read_manifest(root)
    split_counts_raw: dict[str, Counter[str]] = defaultdict(Counter)
    for _, s, label, _ in entries:
        if s:
            split_counts_raw[s][label] += 1
    splits = _manifest_splits(entries)
    chosen = choose_split(splits, split, str(manifest))
    split_counts = {s: dict(sorted(c.items())) for s, c in sorted(split_counts_raw.items())} if splits else None

    candidates: list[_Candidate] = []
    first_line: dict[str, int] = {}
    for line, s, label, raw in entries:
        if chosen is not None and s != chosen:
            if not s:
                skipped.append(Skipped(raw, f"{MANIFEST} line {line}: no split given while other rows have one"))
            continue
        reason: str | None
        key, reason = _manifest_key(raw)
        if key is not None:
            path = root / key
            try:
                if not label:
                    reason = "no label"
                elif not path.resolve().is_relative_to(root):
                    reason = "path leaves the dataset root through a symlink"
                elif not path.exists():
                    reason = "file not found"
                elif not path.is_file():
                    reason = "not a file"
                elif key in first_line:
                    reason = f"duplicate entry (first on line {first_line[key]})"
                else:
                    first_line[key] = line
                    candidates.append(_Candidate(key, label, path))
                    continue
            except OSError as e:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
                reason = f"unusable path ({e.strerror or type(e).__name__})"
        skipped.append(Skipped(raw or f"{MANIFEST} line {line}", f"{MANIFEST} line {line}: {reason}"))

    where = f"split {chosen!r} of " if chosen is not None else ""
    return _Listing(
        "manifest", chosen, splits, split_counts, candidates, skipped, f"{_ACCEPTED} files listed in {where}{MANIFEST}"
    )


# -- masks ---------------------------------------------------------------------------------------


def _attach_masks(
    root: Path, masks_dir: Path, usable: list[tuple[_Candidate, str]], skipped: list[Skipped]
) -> list[Item]:
    """Match masks to images by file stem; validate and hash the matched masks."""
    index: dict[str, list[Path]] = defaultdict(list)
    for p in _walk_files(masks_dir):
        if not is_obviously_not_image(p):
            index[p.stem].append(p)
    if not index:
        return [Item(c.key, c.label, c.path, None, sha) for c, sha in usable]

    by_stem: dict[str, list[str]] = defaultdict(list)
    for cand, _ in usable:
        by_stem[cand.path.stem].append(cand.key)
    dups = {stem: keys for stem, keys in by_stem.items() if len(keys) > 1}
    if dups:
        raise DatasetError(
            "masks are matched to images by file stem, but these stems name more than one image: "
            + _name_some(f"{stem!r} ({', '.join(keys)})" for stem, keys in sorted(dups.items()))
            + "; rename the images so that each stem is unique"
        )
    ambiguous = {stem: paths for stem, paths in index.items() if len(paths) > 1 and stem in by_stem}
    if ambiguous:
        raise DatasetError(
            "more than one mask file matches an image: "
            + _name_some(
                ", ".join(p.relative_to(root).as_posix() for p in paths) for _, paths in sorted(ambiguous.items())
            )
        )

    matched = [index[c.path.stem][0] if c.path.stem in index else None for c, _ in usable]
    wanted = [p for p in matched if p is not None]
    results = dict(zip(wanted, _parallel_map(check_image, wanted), strict=True))
    items: list[Item] = []
    for (cand, sha), mask in zip(usable, matched, strict=True):
        mask_sha: str | None = None
        if mask is not None:
            mask_sha, reason = results[mask]
            if mask_sha is None:
                skipped.append(
                    Skipped(
                        mask.relative_to(root).as_posix(),
                        f"mask of {cand.key} unusable, image kept without mask: {reason}",
                    )
                )
                mask = None
        items.append(Item(cand.key, cand.label, cand.path, mask, sha, mask_sha))
    return items


# -- helpers -------------------------------------------------------------------------------------


def _name_some(names: Iterator[str] | Sequence[str]) -> str:
    names = list(names)
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return "; ".join(names[:_MAX_LISTED]) + more


def _parallel_map(fn: Callable[[_T], _R], args: Sequence[_T]) -> list[_R]:
    """``fn`` over ``args`` in order, on a few threads: PIL decoding and hashing release the GIL,
    so validation of thousands of files is bound by the disk, not by one core."""
    if len(args) < 4:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2, len(args))) as pool:
        return list(pool.map(fn, args))
