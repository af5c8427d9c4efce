"""Where the project keeps what it can rebuild: the datasets' validation indexes (``etm.datasets.loading``).

Never inside a dataset folder: a user's folder (tracked by git or DVC, or mounted read-only) is only ever read.
A module of its own, without torch, because the sandbox's launcher needs the path before any dataset is opened.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

INDEX_HOME_ENV = "ETM_DATASET_INDEX_DIR"


def index_home() -> Path:
    """Where validation indexes are kept: ``ETM_DATASET_INDEX_DIR``, else the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/explain-to-me/dataset-index``."""
    given = os.environ.get(INDEX_HOME_ENV)
    if given:
        return Path(given).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(cache) / "explain-to-me" / "dataset-index").resolve()


def index_dir(root: str | Path) -> Path:
    """The folder of the indexes of dataset folder ``root`` (one per split), keyed by its absolute path."""
    return index_home() / hashlib.sha256(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:32]
