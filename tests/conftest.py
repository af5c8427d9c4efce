from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import tiny_dataset, tiny_family

# Small tensor ops dominate the measures; a second OpenMP thread mostly adds barrier waits on 2 cores.
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    # The datasets' validation indexes of this run go to a folder of its own, not the user's cache (service
    # processes started by tests/servicekit.py start from a clean ETM_* environment and use the default).
    if not os.environ.get("ETM_DATASET_INDEX_DIR"):
        os.environ["ETM_DATASET_INDEX_DIR"] = tempfile.mkdtemp(prefix="etm-test-index-")


@pytest.fixture(scope="session")
def family_onnx(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_family(tmp_path_factory.mktemp("fam_onnx"), k=3, fmt="onnx")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("ds") / "tiny")


@pytest.fixture(scope="session")
def ood_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("ood") / "tiny_ood", n_per_class=6, seed=7, masks=False)
