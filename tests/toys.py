"""A plugin with one toy measure and one toy salience method, registered exactly as the built-ins are.

It proves that adding a measure or a method is one module and one registry line: name it in ``ETM_PLUGINS``
(``ETM_PLUGINS=tests.toys``) and the API validates jobs that use it, the OpenAPI enums list it, the workers and
the sandboxed model process compute it, and the report and the page show it (tests/etm/test_plugins.py).

- ``mass`` (variant ``mass.center``): how far the salience map's centre of mass lies from the image centre, as
  a share of the half-diagonal (0: centred, 1: in a corner). A real measure, if a simple one.
- ``edges``: the Sobel gradient magnitude of the image itself (grey or the strongest channel). It ignores the
  model (one forward pass gives the logits), a baseline any method should beat, and it runs on every model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from etm.measures import register_measure
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.models.base import Model
from etm.ops.maps import is_empty
from etm.params import Param
from etm.salience.registry import register
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

MAPS = ("native", "upsampled")


def centre_distance(maps: torch.Tensor) -> np.ndarray:
    """[N, h, w] non-negative maps -> [N]: the centre of mass's distance from the centre over the half-diagonal,
    cell centres at ``(2j + 1) / w - 1`` in [-1, 1]; NaN for an empty map."""
    m = maps.detach().double().cpu()
    n, h, w = m.shape
    ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    mass = m.sum(dim=(1, 2))
    cy = (m.sum(dim=2) * ys).sum(dim=1) / mass
    cx = (m.sum(dim=1) * xs).sum(dim=1) / mass
    out = (torch.sqrt(cx**2 + cy**2) / math.sqrt(2)).numpy()
    out[is_empty(m).numpy()] = np.nan
    return out


class MassCentreMeasure(Measure):
    """Distance of the salience's centre of mass from the image centre. Params: ``map`` ("native" or
    "upsampled"), ``bootstrap_resamples``."""

    name = "mass"
    title = "Centre of salience"
    about = "Where the salience's centre of mass lies. Lower: closer to the image centre."
    variants = {"mass.center": ("extra", "lower")}
    notes = {"mass.center": "centre of mass's distance from the image centre (share of the half-diagonal)"}
    param_types = {"map": Param("native", str, choices=MAPS)}

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "map": "native"}

    def per_image(self, ctx: BatchContext) -> Columns:
        key = self.params["map"]
        return {"distance": np.stack([centre_distance(getattr(r, key)) for r in ctx.clean], axis=1)}

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        values = cols["distance"]
        s = summarize_runs(values, rng_seed, reps)
        return [self.result("mass.center", s, {"map": self.params["map"]}, {}, per_image=row_nanmean(values))]


register_measure(MassCentreMeasure)

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(images: torch.Tensor, channel: str) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, H, W]: Sobel gradient magnitude of the grey image ("grey") or the largest of
    the channels' ("max"), replicate-padded."""
    x = images.float()
    planes = x.mean(dim=1, keepdim=True) if channel == "grey" else x.reshape(-1, 1, *x.shape[-2:])
    kernels = torch.stack([_SOBEL, _SOBEL.T])[:, None].to(x.device)
    g = F.conv2d(F.pad(planes, (1, 1, 1, 1), mode="replicate"), kernels)
    mag = torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2)
    return mag if channel == "grey" else mag.reshape(len(x), 3, *x.shape[-2:]).amax(dim=1)


def _always(model: Model) -> tuple[bool, str]:
    return True, "image edges only; one forward pass for the logits"


@register(
    "edges", title="Image edges", has_native=False, capability=_always,
    params={"channel": Param("grey", str, choices=("grey", "max"))},
)
def edges(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: None, seeds: torch.Tensor, channel: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel edges of the image (see ``sobel_magnitude``); the model only gives the logits."""
    return sobel_magnitude(images, channel), model.forward(images).logits
