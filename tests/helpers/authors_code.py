"""Crum et al.'s degradation step, transcribed from their released ``Measures/Degradation/main.py``
(``taisubmission23/Explain2Me``, commit 86318cc), as the tests' reference. Written from their code, not
imported from it; kept as close to it as a linter allows."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def get_curve(max_blur, val, order=4):  # noqa: ANN001, ANN201
    return (1 / (max_blur ** (order - 1))) * (val**order)


def blur_image(im, stacked_img, max_blur, curved):  # noqa: ANN001, ANN201
    """The authors' ``blur_image`` on one uint8 channel; also returns their rounded levels."""
    blurred_im = im.copy()
    stacked_img = gaussian_filter(stacked_img, 5)
    scaled_img = stacked_img / (stacked_img.max() / max_blur)
    scaled_img = np.around(scaled_img, decimals=1)
    for scaled_val in np.unique(scaled_img):
        blur_amount = round(max_blur - scaled_val, 1)
        if curved:
            blur_amount = get_curve(max_blur, blur_amount, order=4)
        if blur_amount != 0:
            indices = np.where(scaled_img == scaled_val)
            qwerty = gaussian_filter(im, blur_amount)
            blurred_im[indices] = qwerty[indices]
    return blurred_im, scaled_img
