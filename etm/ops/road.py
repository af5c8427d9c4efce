"""ROAD's noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"), shared by ``degradation.road`` and ``bench/degradation.py``.

Each removed pixel is replaced by the weighted mean of its 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12
for the 4 diagonal ones, renormalised at the image border), where neighbours that are removed too are unknowns of
the same linear system: one sparse system per image, solved once for all channels with SciPy's ``spsolve``
(SuperLU). Then Gaussian noise of standard deviation ``noise`` is added to the imputed values. This is the system
of the authors' ``imputations.py`` as pytorch-grad-cam 1.5.7 (``NoisyLinearImputer``) and Quantus 0.6.0
(``noisy_linear_imputation``) ship it; here it is built with vectorised COO arrays instead of a ``lil_matrix``.

The noise is drawn from keyed streams (``etm.ops.random``): a pure function of the image's seed, the stream and the
pixel, so it does not depend on the batch, the shard or which other pixels are removed.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

from etm.ops.random import keyed_uniform

# (row offset, column offset) -> weight, in the authors' order (the order the right-hand side is summed in).
NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The noiseless imputed values of the removed pixels: float64 [C, R] (R removed pixels, row-major order).

    Args:
        image: [C, H, W] the image (any float dtype; the system is solved in float64).
        removed: [H, W] bool, True where the pixel is imputed.
    """
    c, h, w = image.shape
    gone = np.asarray(removed, bool).ravel()
    idx = np.flatnonzero(gone)
    m = idx.size
    if m == 0:
        return np.zeros((c, 0))
    if m == h * w:  # no known pixel: the system is singular (its rows sum to 0)
        raise ValueError("noisy linear imputation needs at least one pixel that is not removed")
    flat = image.reshape(c, h * w).astype(np.float64)
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(m)
    ys, xs = np.divmod(idx, w)
    diag = np.ones(m)
    rows, cols, vals = [], [], []
    b = np.zeros((m, c))
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[~valid] -= weight  # the border: the weights of the neighbours that exist
        eq = np.flatnonzero(valid)
        nb = ny[valid] * w + nx[valid]
        unknown = gone[nb]
        b[eq[~unknown]] -= weight * flat[:, nb[~unknown]].T
        rows.append(eq[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(int(unknown.sum()), weight))
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)).tocsc()
    return np.asarray(spsolve(a, b), dtype=np.float64).reshape(m, c).T


def gaussian_noise(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal draws, float64 [N, *shape], keyed like ``keyed_uniform`` (Box-Muller on two streams)."""
    u1 = keyed_uniform(seeds, stream, shape).double()
    u2 = keyed_uniform(seeds, stream ^ 0x5DEECE66D, shape).double()
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor | np.ndarray, noise: float, draws: torch.Tensor | None
) -> torch.Tensor:
    """``image`` [C, H, W] with its ``removed`` [H, W] pixels imputed: the linear solution cast to the image's
    dtype plus ``noise * draws`` at those pixels (``draws`` [C, H, W] standard normal, or None for no noise),
    added in that dtype as pytorch-grad-cam adds its ``randn``."""
    c, h, w = image.shape
    gone = removed.cpu().numpy() if isinstance(removed, torch.Tensor) else np.asarray(removed)
    gone = gone.astype(bool).ravel()
    out = image.detach().cpu().reshape(c, h * w).clone()
    idx = torch.from_numpy(np.flatnonzero(gone))
    if idx.numel() == 0:
        return out.view(c, h, w)
    solved = torch.from_numpy(linear_imputation(image.detach().cpu().numpy(), gone.reshape(h, w))).to(out.dtype)
    if draws is not None and noise != 0:
        solved = solved + noise * draws.reshape(c, h * w)[:, idx].to(out.dtype)
    out[:, idx] = solved
    return out.view(c, h, w)
