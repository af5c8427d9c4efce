"""The report page's Strategies section (#20) in real headless Chromium: per class and cluster the mean map (SVG),
the representatives' overlays and the embedding scatter load, nothing leaves the page, nothing scrolls sideways;
a screenshot is kept under test-artifacts/strategies-tiny.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_report_html import Browser, browser, check_in_browser, chromium, evaluate_with_artifacts, render

__all__ = ["browser", "chromium"]  # fixtures, imported so that pytest sees them here
pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_strategies_section_in_chromium(browser: Browser, family_onnx: list[Path], dataset_dir: Path) -> None:
    report, artifacts = evaluate_with_artifacts({
        "candidates": [{"name": "baseline", "models": [str(p) for p in family_onnx]}],
        "dataset": str(dataset_dir),
        "measures": ["entropy", "strategies"],
        "measure_params": {"strategies": {"n_neighbors": 4, "max_clusters": 3, "grid": 4}},
        "bootstrap_resamples": 100,
        "overlays": 2,
    })
    classes = report["candidates"][0]["measures"]["strategies.clusters"]["details"]["classes"]
    reps = sum(len(cl["representatives"]) for c in classes.values() for cl in c.get("clusters", []))
    clusters = sum(len(c.get("clusters", [])) for c in classes.values())
    assert reps > 0
    page = render(report, artifacts, "j-strategies000000000000")
    assert '<section id="strategies">' in page and '<a href="#strategies">' in page
    assert page.count('class="mapheat"') == clusters
    assert page.count('class="scatter"') == sum("embedding" in c for c in classes.values())
    info = check_in_browser(browser, page, "strategies-tiny", 2 + reps)
    assert "Strategies" in info["h2"]
