from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import tiny_dataset, tiny_family

# Small tensor ops dominate the measures; a second OpenMP thread mostly adds barrier waits on 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def family_onnx(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_family(tmp_path_factory.mktemp("fam_onnx"), k=3, fmt="onnx")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("ds") / "tiny")


@pytest.fixture(scope="session")
def ood_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("ood") / "tiny_ood", n_per_class=6, seed=7, masks=False)
