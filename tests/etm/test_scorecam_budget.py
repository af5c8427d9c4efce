"""Score-CAM's channel budget (``max_channels``) and its progress inside one call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from client.cli import main
from etm.errors import BadInput
from etm.models.base import Model
from etm.models.loader import load_model
from etm.salience.progress import step_reporting
from etm.salience.registry import check_method_params, compute_salience
from tests.helpers.tiny import TinyNet, export

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
K = 16  # TinyNet's channels at the auto layer


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(TinyNet(), tmp_path_factory.mktemp("sc") / "tiny.onnx", "onnx-legacy")


@pytest.fixture(scope="module")
def model(path: Path) -> Model:
    return load_model(path)


def _counted(model: Model) -> list[int]:
    """Rows of every forward pass the model runs from now on (a spy around the real forward)."""
    rows: list[int] = []
    real = model.forward

    def forward(images: torch.Tensor, layer: str | None = None):  # noqa: ANN202
        rows.append(len(images))
        return real(images, layer)

    model.forward = forward  # type: ignore[method-assign]
    return rows


def _scorecam(model: Model, x: torch.Tensor, **params: object) -> torch.Tensor:
    return compute_salience(model, x, "scorecam", params={"batch": 5, **params}).native


def test_budget_at_or_above_the_channel_count_changes_no_bit(model: Model) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = _scorecam(model, x, max_channels=0)
    for budget in (None, K, K + 1, 10_000):
        assert torch.equal(_scorecam(model, x, max_channels=budget), full), budget
    assert torch.equal(_scorecam(model, x), full)  # the default (256) is above TinyNet's 16 channels


def test_budget_limits_the_forward_passes_and_reports_them(model: Model) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    steps: list[tuple[str, int, int]] = []
    rows = _counted(model)
    try:
        with step_reporting(lambda m, d, t: steps.append((m, d, t))):
            limited = _scorecam(model, x, max_channels=4)
        assert sum(rows) == 3 + 3 * 4  # the clean pass, then 4 masked passes per image
        rows.clear()
        _scorecam(model, x, max_channels=0)
        assert sum(rows) == 3 + 3 * K
    finally:
        del model.forward  # back to the class's method
    assert steps[-1] == ("scorecam", 12, 12) and [d for _, d, _ in steps] == sorted(d for _, d, _ in steps)
    full = _scorecam(model, x, max_channels=0)
    assert not torch.equal(limited, full) and limited.shape == full.shape


def test_max_channels_is_validated() -> None:
    assert check_method_params("scorecam", {})["max_channels"] == 256
    assert check_method_params("scorecam", {"max_channels": None})["max_channels"] is None
    with pytest.raises(BadInput, match="max_channels must be an integer >= 0 and <= 100000 or null, got -1"):
        check_method_params("scorecam", {"max_channels": -1})


def test_etm_salience_shows_the_calls_progress(path: Path, dataset_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The sandbox forwards Score-CAM's passes; `etm` shows them as a bar with elapsed and remaining time."""
    args = ["salience", "--model", str(path), "--images", str(dataset_dir), "--method", "scorecam",
            "--batch-size", "24", "--out", str(tmp_path / "m.npz")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "scorecam (this call)" in err and "384/384" in err  # 24 images x 16 channels
    assert re.search(r"384/384 \[elapsed \d\d:\d\d, ETA \d\d:\d\d", err)  # elapsed and remaining
