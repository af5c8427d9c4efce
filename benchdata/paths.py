"""Canonical locations of the reference benchmark: generated data and committed model families."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Generated data is reproducible from a seed, so it lives under the git-ignored var/ tree.
DATA_DIR = REPO_ROOT / "var" / "benchmark"
FACES_DIR = DATA_DIR / "faces"  # splits train/val/test with manifest.csv and masks/
UNSEEN_DIR = DATA_DIR / "unseen_generators"  # held-out generators, both classes, with masks/
NONFACES_DIR = DATA_DIR / "nonfaces"  # rendered scenes and LFW non-face patches
LFW_DIR = DATA_DIR / "lfw"  # skimage's bundled LFW faces, upscaled

# Trained families are small and committed, so that evaluations need no training step.
MODELS_DIR = REPO_ROOT / "benchdata" / "models"
MODELS_MANIFEST = MODELS_DIR / "MANIFEST.json"
RECIPES = ("xent", "cyborg")
N_RUNS = 5


def family_dir(recipe: str, models_dir: Path = MODELS_DIR) -> Path:
    """Folder of one recipe's runs: ``run{k}.onnx`` / ``run{k}.pt2`` with ``.json`` sidecars."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {RECIPES}")
    return models_dir / recipe


def family_files(recipe: str, fmt: str = "onnx", models_dir: Path = MODELS_DIR,
                 n_runs: int = N_RUNS) -> list[Path]:
    """The committed model files of one family, in run order."""
    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"unknown format {fmt!r}; choose 'onnx' or 'pt2'")
    return [family_dir(recipe, models_dir) / f"run{k}.{fmt}" for k in range(n_runs)]
