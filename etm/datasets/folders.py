"""A dataset folder as a record describes it: where the dataset starts inside an extracted upload, its
splits, and ``describe_folder`` (every split validated with ``load_dataset``, skipped files summarised,
the content hash over the splits)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from etm.datasets.archives import SkipSummary
from etm.datasets.loading import MANIFEST, MASKS_DIR, load_dataset, split_names
from etm.datasets.splits import default_split, is_split_name
from etm.errors import DatasetError

DATASET_HASH_VERSION = "etm-dataset-splits-v1"


def dataset_root(extracted: Path) -> Path:
    """The dataset folder inside an extraction: a lone wrapper folder (``mydata/...``) is descended."""
    here = extracted
    for _ in range(3):
        entries = [p for p in here.iterdir() if not p.name.startswith(".")]
        if (here / MANIFEST).is_file() or len(entries) != 1 or not entries[0].is_dir():
            break
        only = entries[0]
        if only.name == MASKS_DIR or is_split_name(only.name):
            break
        if not any(p.is_dir() for p in only.iterdir() if not p.name.startswith(".")):
            break  # a single class folder of images: keep it as a class
        here = only
    return here


MAX_SPLITS = 16  # splits of one dataset: each is validated in full, and a manifest may name any


def describe_folder(root: Path) -> dict[str, Any]:
    """Validate every split of a dataset folder; the part of a dataset record that depends on content.

    Skipped files are summarised (``SkipSummary``): all counted, by reason, the first ones listed.

    Raises:
        DatasetError: what ``load_dataset`` raises for a split (no usable image, bad manifest...), more
            than MAX_SPLITS splits.
    """
    names = split_names(root)
    if len(names) > MAX_SPLITS:
        raise DatasetError(
            f"{MANIFEST} names more than {MAX_SPLITS} splits (e.g. {', '.join(map(repr, names[:3]))}); a "
            "dataset has a few, such as train, val and test: check the manifest's split column"
        )
    loaded = [(s, load_dataset(root, split=s)) for s in names] if names else [(None, load_dataset(root))]
    splits = []
    counts: dict[str, int] = {}
    skipped = SkipSummary()  # over all splits: a file skipped in two splits counts once
    seen: set[tuple[str, str]] = set()
    n_mask = 0
    for name, ds in loaded:
        d = ds.describe()
        splits.append(
            {
                "split": name,
                "sha256": ds.sha256,
                "n_images": d["n_images"],
                "counts": d["counts"],
                "annotations": d["annotations"],
                **SkipSummary.of(d["skipped"]).as_dict(),
            }
        )
        for c, n in ds.counts.items():
            counts[c] = counts.get(c, 0) + n
        n_mask += ds.n_with_mask
        for s in d["skipped"]:
            if (s["path"], s["reason"]) not in seen:
                seen.add((s["path"], s["reason"]))
                skipped.add(s["path"], s["reason"])
    if names:
        h = hashlib.sha256(f"{DATASET_HASH_VERSION}\n".encode())
        for s in splits:
            h.update(f"{s['split']}\t{s['sha256']}\n".encode())
        sha = h.hexdigest()
    else:
        sha = splits[0]["sha256"]
    n_images = sum(s["n_images"] for s in splits)
    first = loaded[0][1]
    return {
        "sha256": sha,
        "layout": first.layout,
        "has_splits": bool(names),
        "default_split": default_split(names),
        "splits": splits,
        "classes": sorted(counts),
        "n_images": n_images,
        "counts": dict(sorted(counts.items())),
        "split_counts": first.split_counts,
        "annotations": {
            "masks_folder": first.has_masks_folder,
            "n_with_mask": n_mask,
            "n_without_mask": n_images - n_mask,
        },
        **skipped.as_dict(),
    }
