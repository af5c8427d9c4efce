"""Acceptance (issue: the paper variants reproduce the authors' released code): ``profile: paper`` on our
benchmark models and images gives, image by image, what Crum et al.'s scripts compute.

The reference below follows the authors' repository (``taisubmission23/Explain2Me``, commit 86318cc) step by
step, on the same weights as a PyTorch module and the same image files: ``Salience/scripts/generate-cams.py``
(TorchCAM 0.3.2's ``GradCAM(model)`` with its default layer, ``to_pil_image``, PIL bicubic upscaling),
``Measures/Entropy`` (``shannon_entropy`` of the saved map, ``/ 5.614``), ``Measures/Stability/ssim.py``
(skimage SSIM of two runs' small maps), ``Measures/Degradation/main.py`` (``blur_image`` per uint8 channel,
PAScore ``sigmoid(out)[:, 1]`` of the degraded image) and ``noise-varying-intensities.py`` (the 8-bit round
trip at amount 0). It is written from their code, not imported from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.measure
import skimage.metrics
import torch
from PIL import Image
from skimage.util import img_as_float
from torchvision.transforms.functional import to_pil_image

from benchdata import paths
from benchdata.net import MEAN, STD, FaceNet
from benchdata.replicate import ensure_data
from etm.datasets import open_dataset
from etm.evaluation import run_inset
from etm.models.pt2_model import load_exported_program
from etm.ops.paper import paper_blur_levels, to_uint8_truncated, upscale_bicubic
from etm.spec import EvaluationSpec
from tests.helpers import authors_code

N_IMAGES = 12
RUNS = 2


def _module(pt2: Path) -> FaceNet:
    """The run's weights in the PyTorch module they were trained as (our own committed file, not an upload)."""
    sd = dict(load_exported_program(pt2).state_dict)
    widths = tuple(int(sd[f"features.{i}.weight"].shape[0]) for i in (0, 4, 8, 12))
    net = FaceNet(widths)  # type: ignore[arg-type]
    net.load_state_dict(sd)
    return net.eval()


def _transform(image: Image.Image) -> torch.Tensor:  # transforms.ToTensor() then Normalize(MEAN, STD)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _authors(net: FaceNet, files: list[Path]) -> dict[str, list]:
    from torchcam.methods import GradCAM

    out: dict[str, list] = {k: [] for k in ("small", "upscaled", "entropy", "score0", "levels", "blur")}
    sigmoid = torch.nn.Sigmoid()
    for f in files:
        image = Image.open(f).convert("RGB")
        size = image.size[0]
        cam_extractor = GradCAM(net, input_shape=(3, size, size))
        scores = net(_transform(image).unsqueeze(0))
        activation_map = cam_extractor(scores.squeeze(0).argmax().item(), scores)
        cam_extractor.remove_hooks()
        cam = to_pil_image(activation_map[0].squeeze(0).detach()).convert("L")
        small = np.asarray(cam)
        upscaled = np.array(cam.resize((size, size), resample=Image.BICUBIC))
        out["small"].append(small)
        out["upscaled"].append(upscaled)
        out["entropy"].append(skimage.measure.shannon_entropy(small / 255.0) / 5.614)  # mpimg reads PNGs / 255
        arr = np.asarray(image)
        salted = Image.fromarray(np.array((img_as_float(arr) * 255).astype(np.uint8)))  # random_noise, amount 0
        with torch.no_grad():
            out["score0"].append(sigmoid(net(_transform(salted).unsqueeze(0))).numpy()[:, 1][0])
        for where in ("background", "object"):
            stacked = upscaled if where == "background" else 255 - upscaled
            channels = [authors_code.blur_image(arr[:, :, c].copy(), stacked, 10, True) for c in range(3)]
            blurred = Image.fromarray(np.stack([c[0] for c in channels], axis=-1))
            with torch.no_grad():
                score = sigmoid(net(_transform(blurred).unsqueeze(0))).numpy()[:, 1][0]
            out["levels"].append(channels[0][1])
            out["blur"].append(score)
    return out


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict, list[dict]]:
    ensure_data()
    pt2 = paths.family_files("xent", "pt2")[:RUNS]
    spec = EvaluationSpec(
        candidates=[{"name": "xent", "models": [str(p) for p in pt2]}],
        dataset=str(paths.FACES_DIR),
        split="test",
        profile="paper",
        measure_params={"noise": {"amounts": [0.0, 0.05]}},
        max_images=N_IMAGES,
        bootstrap_resamples=100,
    )
    part = run_inset(spec)
    ds = {it.key: it.path for it in open_dataset(paths.FACES_DIR, split="test").items}
    files = [ds[k] for k in part.keys]
    return spec.canonical(), part.columns["xent"], [_authors(_module(p), files) for p in pt2]


def test_the_profile_sets_the_papers_choices(both: tuple[dict, dict, list[dict]]) -> None:
    spec, cols, _ = both
    assert spec["layer"] == "torchcam" and spec["score"] == "pascore" and spec["profile"] == "paper"
    assert spec["measures"] == ["entropy", "noise", "geometry", "stability", "degradation"]
    assert spec["measure_params"]["degradation"] == {"variants": ["degradation.blur"], "reference_size": None}
    assert "blur_after_background" in cols["degradation"] and "deletion_morf" not in cols["degradation"]


def test_maps_entropy_and_stability_equal_the_authors(both: tuple[dict, dict, list[dict]]) -> None:
    spec, cols, ref = both
    for r in range(RUNS):
        np.testing.assert_allclose(cols["entropy"]["histogram"][:, r], ref[r]["entropy"], rtol=0, atol=1e-6)
    want = [skimage.metrics.structural_similarity(a, b) for a, b in zip(ref[0]["small"], ref[1]["small"], strict=True)]
    np.testing.assert_allclose(cols["stability"]["ssim_pairs"][:, 0], want, rtol=0, atol=1e-6)


def test_8bit_maps_and_blur_levels_bit_for_bit(both: tuple[dict, dict, list[dict]]) -> None:
    """Our maps of the same images through the service's model, 8-bit as the paper profile makes them."""
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

    _, _, ref = both
    model = load_model(paths.family_files("xent", "pt2")[0])
    res = compute_salience(model, _benchmark_images(), "gradcam", "predicted", "torchcam")
    ours_small = to_uint8_truncated(res.native)
    assert np.array_equal(ours_small.numpy(), np.stack(ref[0]["small"]))
    up = upscale_bicubic(ours_small, (64, 64))
    assert np.array_equal(up.numpy(), np.stack(ref[0]["upscaled"]))
    for i in range(N_IMAGES):
        for j, mode in enumerate(("background", "object")):
            levels = paper_blur_levels(up[i : i + 1], mode)[0].numpy() / 10
            np.testing.assert_allclose(levels, ref[0]["levels"][2 * i + j], rtol=0, atol=1e-6)


def test_blur_and_noise_scores_equal_the_authors(both: tuple[dict, dict, list[dict]]) -> None:
    _, cols, ref = both
    for r in range(RUNS):
        blur = np.array(ref[r]["blur"]).reshape(N_IMAGES, 2)
        np.testing.assert_allclose(cols["degradation"]["blur_after_background"][:, r], blur[:, 0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(cols["degradation"]["blur_after_object"][:, r], blur[:, 1], rtol=0, atol=1e-5)
        np.testing.assert_allclose(cols["noise"]["score"][:, r, 0], ref[r]["score0"], rtol=0, atol=1e-6)


def _benchmark_images() -> torch.Tensor:
    spec = EvaluationSpec(
        candidates=[{"name": "x", "models": ["unused"]}], dataset=str(paths.FACES_DIR), split="test",
        max_images=N_IMAGES,
    )
    from etm.evaluation import Resolver, _dataset

    ds = _dataset(spec, Resolver())
    return torch.stack(
        [torch.from_numpy(np.asarray(Image.open(it.path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
         for it in ds.items]
    )
