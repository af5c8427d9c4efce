"""Write the shortcut probe as a dataset folder: the test split re-rendered with the training cue in half of each class.

``benchdata.check_directions`` renders this probe in memory (``_render_test(cfg, 0.5)``); this module writes the
same images to disk so that the service can evaluate them (e.g. ``strategies``, #20). Nothing the models were
trained on changes: the probe is rendered from the generation config in ``benchmark.json`` with the test split's
seed, and the cue flags only switch drawing on or off, so its faces, labels and generators are the test split's,
in the same order (``probe_<i>`` is ``test_<i>`` with or without the cue).

Usage::

    python -m benchdata.probe [--data var/benchmark] [--out var/benchmark/probe]

Layout (``DIR`` = ``--out``, the layout of ``unseen_generators``)::

    DIR/{real,synthetic}/probe_<i>.png     the images
    DIR/masks/probe_<i>.png                human salience (as the test split's)
    DIR/meta.csv                           stem,label,generator,shortcut,test_stem (shortcut = carries the cue)
    DIR/cue.npz                            stems [N] and cue [N, S, S] uint8: where the cue was drawn (analysis only)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchdata import faces, paths
from benchdata.check_directions import _render_test
from benchdata.generate import _label, _write_all, _write_csv

PROBE_CUE_SHARE = 0.5  # the cue in half of each class, as check_directions' probe
DEFAULT_OUT = paths.DATA_DIR / "probe"


@dataclass(frozen=True)
class ProbeMeta:
    """What ``meta.csv`` and ``cue.npz`` of a written probe say, in stem order."""

    stems: list[str]
    labels: np.ndarray  # [N] 0 real, 1 synthetic
    shortcut: np.ndarray  # [N] bool
    cue: np.ndarray  # [N, S, S] uint8


def render_probe(data_dir: Path = paths.DATA_DIR) -> faces.Rendered:
    """The probe of the benchmark generated in ``data_dir`` (its ``benchmark.json`` config), in memory."""
    cfg = json.loads((data_dir / "benchmark.json").read_text(encoding="utf-8"))["config"]
    return _render_test(cfg, PROBE_CUE_SHARE)


def write_probe(out: Path = DEFAULT_OUT, data_dir: Path = paths.DATA_DIR) -> int:
    """Render the probe and write it to ``out`` (replacing a previous probe there); returns the image count."""
    if out.exists() and not (out / "meta.csv").exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty and holds no probe meta.csv; refusing to write into it")
    if out.exists():
        shutil.rmtree(out)
    r = render_probe(data_dir)
    jobs, meta, stems = [], [], []
    for i in range(len(r.labels)):
        stem, lab = f"probe_{i:06d}", _label(int(r.labels[i]))
        jobs += [(out / lab / f"{stem}.png", r.images[i]), (out / "masks" / f"{stem}.png", r.masks[i])]
        meta.append((stem, lab, r.generators[i], int(r.shortcut[i]), f"test_{i:06d}"))
        stems.append(stem)
    _write_all(jobs)
    _write_csv(out / "meta.csv", ("stem", "label", "generator", "shortcut", "test_stem"), meta)
    with open(out / "cue.npz", "wb") as f:
        np.savez_compressed(f, stems=np.array(stems, dtype=str), cue=r.cue)
    return len(stems)


def read_probe_meta(out: Path = DEFAULT_OUT) -> ProbeMeta:
    """The cue flags and masks of a written probe."""
    import csv

    with (out / "meta.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with np.load(out / "cue.npz", allow_pickle=False) as z:
        stems, cue = z["stems"].tolist(), z["cue"]
    if stems != [row["stem"] for row in rows]:
        raise ValueError(f"{out}: cue.npz and meta.csv list different images")
    return ProbeMeta(
        stems=stems,
        labels=np.array([faces.CLASS_NAMES.index(row["label"]) for row in rows], dtype=np.int64),
        shortcut=np.array([row["shortcut"] == "1" for row in rows]),
        cue=cue,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchdata.probe", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=paths.DATA_DIR, help="the generated benchmark (its benchmark.json)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    n = write_probe(args.out, args.data)
    print(f"wrote the probe ({n} images, cue in half of each class) to {args.out} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
