"""Which split of a dataset a job uses: one rule for ``load_dataset`` and for job admission.

A split is named by a folder (``train/``, ``val/``, ``validation/``, ``test/``, compared case-insensitively)
or by the manifest's ``split`` column. Without one asked for, ``test`` is used (case-folded when that is
unique); a dataset without splits uses all its images.
"""

from __future__ import annotations

from collections.abc import Sequence

from etm.errors import DatasetError

SPLIT_NAMES = ("train", "val", "validation", "test")


def is_split_name(name: str) -> bool:
    """Whether a top-level folder called ``name`` is a split (rather than a class)."""
    return name.lower() in SPLIT_NAMES


def default_split(available: Sequence[str]) -> str | None:
    """The split used when none is asked for: ``test`` (case-folded when unique), else None."""
    if "test" in available:
        return "test"
    folded = [s for s in available if s.lower() == "test"]
    return folded[0] if len(folded) == 1 else None


def choose_split(available: Sequence[str], requested: str | None, where: str, field: str = "split") -> str | None:
    """The split to use, or a DatasetError that lists the available ones.

    Args:
        available: The dataset's splits (empty: it has none).
        requested: What the caller asked for (None: the default split).
        where: The dataset, as the message names it (a folder, a manifest, a dataset id).
        field: The name of the caller's parameter, as the message names it (``split``, ``ood_split``).
    """
    names = list(available)
    if not names:
        if requested is not None:
            raise DatasetError(
                f"{where} has no splits, but {field} {requested!r} was asked for; leave {field} unset to use "
                "all images"
            )
        return None
    if requested is None:
        chosen = default_split(names)
        if chosen is None:
            raise DatasetError(f"{where} has splits {names} and none is called 'test'; choose one with {field}=...")
        return chosen
    if requested in names:
        return requested
    folded = [s for s in names if s.lower() == requested.lower()]
    if len(folded) == 1:
        return folded[0]
    raise DatasetError(f"unknown {field} {requested!r} in {where}; available splits: {names}")
