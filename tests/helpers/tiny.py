"""Small real models and datasets for tests: a GAP + linear CNN exported to ONNX (both exporters)
and .pt2, and a folder dataset of generated images with masks."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

META = {
    "input_size": [32, 32],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "class_names": ["real", "synthetic"],
    "positive_class": "synthetic",
    "score_activation": "softmax",
}


class TinyNet(torch.nn.Module):
    """conv(3->8, stride 2) -> relu -> conv(8->16, stride 2) -> relu -> GAP -> linear(16->2); 8x8 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class NoPoolNet(torch.nn.Module):
    """conv(3->4, stride 4) -> relu -> flatten -> linear: no global pool, so ONNX gradcam/cam are refused."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = torch.nn.Linear(4 * (size // 4) ** 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def export(module: torch.nn.Module, out: Path, fmt: str, size: int = 32, meta: dict | None = None) -> Path:
    """Export ``module`` as ``onnx`` (dynamo), ``onnx-legacy`` or ``pt2``, with a JSON sidecar."""
    module = module.eval()
    x = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if fmt == "onnx":
        torch.onnx.export(
            module,
            (x,),
            str(out),
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    elif fmt == "onnx-legacy":
        torch.onnx.export(
            module,
            (x,),
            str(out),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=17,
        )
    else:
        ep = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(ep, str(out))
    m = dict(META if meta is None else meta)
    m["input_size"] = [size, size]
    out.with_name(out.name + ".json").write_text(json.dumps(m))
    return out


# Exports already made in this process: (fmt, seed, file name) -> (folder holding the file and its sidecar,
# torch's RNG state right after the export). A dynamo ONNX export takes seconds and is byte-for-byte
# deterministic, so tiny_family copies what it exported before instead of exporting the same net again.
_EXPORTED: dict[tuple[str, int, str], tuple[Path, torch.Tensor]] = {}


@functools.cache
def _exports_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="etm-tiny-exports-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def tiny_family(out: Path, k: int = 3, fmt: str = "onnx", identical: bool = False) -> list[Path]:
    """``k`` TinyNets (seeds 0..k-1, or all seed 0 when ``identical``) exported as ``out/run{i}.{ext}`` with
    sidecars. The files are the bytes an export here would write, and torch's global RNG is left as that
    export leaves it: a net exported before in this process is copied, not exported again."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(k):
        seed = 0 if identical else i
        ext = "pt2" if fmt == "pt2" else "onnx"
        name = f"run{i}.{ext}"
        key = (fmt, seed, name)
        if key not in _EXPORTED:
            folder = _exports_dir() / f"{fmt}-{seed}"
            folder.mkdir(exist_ok=True)
            torch.manual_seed(seed)
            export(TinyNet(), folder / name, fmt)
            _EXPORTED[key] = (folder, torch.get_rng_state())
        folder, rng_after = _EXPORTED[key]
        for f in (name, name + ".json"):
            shutil.copyfile(folder / f, out / f)
        torch.set_rng_state(rng_after)
        paths.append(out / name)
    return paths


def tiny_dataset(root: Path, n_per_class: int = 12, size: int = 40, seed: int = 0, masks: bool = True) -> Path:
    """Two classes of random-texture images; 'synthetic' has a bright square; masks mark the square."""
    rng = np.random.default_rng(seed)
    for c, label in enumerate(["real", "synthetic"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = (rng.random((size, size, 3)) * 120).astype(np.uint8)
            y, x = rng.integers(4, size - 14, 2)
            if c == 1:
                img[y : y + 10, x : x + 10] = 230
            Image.fromarray(img).save(root / label / f"{label}_{i:03d}.png")
            if masks:
                (root / "masks").mkdir(exist_ok=True)
                m = np.zeros((size, size), np.uint8)
                m[y : y + 10, x : x + 10] = 255
                Image.fromarray(m).save(root / "masks" / f"{label}_{i:03d}.png")
    return root
