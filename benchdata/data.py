"""Read the generated benchmark back into tensors (for training and the direction check).

This is deliberately independent of the service's dataset loader: the benchmark must be usable to
build models before the service exists, and a second reader of the same layout is a useful check
of that layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchdata.faces import CLASS_NAMES


@dataclass
class Split:
    """One split held in memory.

    Attributes:
        images: [N, 3, S, S] uint8 RGB.
        masks: [N, S, S] uint8 human salience (zeros where a set has none).
        labels: [N] int64 (0 real, 1 synthetic).
        stems: file stems, in canonical (sorted) order.
        generators: generator name per image ("" for real).
        shortcut: [N] bool, the shortcut cue is present.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    stems: list[str]
    generators: list[str]
    shortcut: torch.Tensor

    def __len__(self) -> int:
        return len(self.stems)


def _read(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def _read_meta(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["stem"]: row for row in csv.DictReader(fh)}


def _stack(files: list[tuple[str, Path, Path | None, int]], meta: dict[str, dict[str, str]]) -> Split:
    files = sorted(files)  # canonical order: by stem
    images = np.stack([_read(p, "RGB") for _, p, _, _ in files]).transpose(0, 3, 1, 2)
    size = images.shape[-1]
    masks = np.stack([_read(m, "L") if m is not None and m.exists() else np.zeros((size, size), np.uint8)
                      for _, _, m, _ in files])
    stems = [s for s, _, _, _ in files]
    return Split(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        masks=torch.from_numpy(masks),
        labels=torch.tensor([lab for _, _, _, lab in files], dtype=torch.long),
        stems=stems,
        generators=[meta.get(s, {}).get("generator", "") for s in stems],
        shortcut=torch.tensor([meta.get(s, {}).get("shortcut", "0") == "1" for s in stems]),
    )


def load_faces_split(root: Path, split: str) -> Split:
    """A split of ``DIR/faces`` via its manifest."""
    meta = _read_meta(root / "meta.csv")
    files = []
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split:
                p = root / row["path"]
                files.append((p.stem, p, root / "masks" / f"{p.stem}.png", CLASS_NAMES.index(row["label"])))
    if not files:
        raise ValueError(f"no images of split {split!r} in {root / 'manifest.csv'}")
    return _stack(files, meta)


def load_folder(root: Path) -> Split:
    """A class-folder dataset (``root/<class>/<stem>.png``, optional ``root/masks``)."""
    meta = _read_meta(root / "meta.csv") if (root / "meta.csv").exists() else {}
    files = []
    for ci, name in enumerate(CLASS_NAMES):
        for p in sorted((root / name).glob("*.png")):
            files.append((p.stem, p, root / "masks" / f"{p.stem}.png", ci))
    if not files:
        raise ValueError(f"no images under {root}/{{{','.join(CLASS_NAMES)}}}")
    return _stack(files, meta)
