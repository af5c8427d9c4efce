"""Procedural face images for the reference benchmark: real vs synthetic, with human salience.

Everything is rendered with vectorised numpy from a seed, so thousands of images take seconds and
the same seed gives the same bytes. Geometry is expressed in units of the image side (0..1), so
the size is a free parameter; artefacts that mimic up-sampling are expressed in pixels, as real
up-sampling artefacts are.

Design (what the benchmark is meant to induce, after Crum et al. 2023 and Boyd et al.'s CYBORG):

* Both classes draw faces from one distribution (head shape, skin tone, hair, eyes, brows, nose,
  mouth, pose, lighting, background, sensor noise). The only label-bearing signal that holds
  everywhere is a *generator fingerprint* in the regions a person inspects: eyes, mouth and the
  hairline. Each synthetic image comes from one generator type; the types differ in what they
  leave behind, and two are held out of training to act as unseen generators (related in kind to
  the seen ones, as a new GAN is related to old ones, but not equal to any).
* The human-salience annotation of an image is a soft mask over the regions a person would look
  at to decide: the fingerprint regions of its generator for a synthetic face, all inspected
  regions (eyes, mouth, hairline) for a real one.
* The training split carries a spurious shortcut: soft "bokeh" highlights in the background,
  present in 90% of synthetic and 10% of real training faces, and in no other split (the
  generator's ``p_cue_*`` arguments; ``benchdata.generate`` sets them). A model that learnt the cue
  loses accuracy where it is missing; rendering a split with the cue in half of each class (a
  probe, ``benchdata.check_directions``) shows how much it relies on it.

Only arithmetic and square roots touch pixel arrays (no exp/sin), and the few per-image angles go
through libm's correctly rounded cos/sin, so the float results, and thus the 8-bit images, do not
depend on a CPU-specific SIMD implementation of transcendental functions: the same seed gives the
same bytes on any machine, not only on the one that made them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("real", "synthetic")
SEEN_GENERATORS = ("checker", "pupils", "hairline")
UNSEEN_GENERATORS = ("blocks", "eyes")
GENERATORS = SEEN_GENERATORS + UNSEEN_GENERATORS

# What each generator leaves behind; the regions double as its human-salience mask.
GENERATOR_REGIONS: dict[str, tuple[str, ...]] = {
    "checker": ("eyes", "mouth"),  # period-2 checkerboard of a transposed-conv up-sampler
    "pupils": ("eyes",),  # slit pupils, mismatched iris colours, per-pixel speckle around the eyes
    "hairline": ("hairline",),  # period-2 ringing and colour bleed where hair meets skin
    # unseen: a two-stage (x2, x2) up-sampler: a period-4 grid with a weaker period-2 one on top
    "blocks": ("eyes", "mouth", "hairline"),
    # unseen: mismatched irises, unequal pupils and catchlights, speckle at two scales
    "eyes": ("eyes",),
}
REAL_REGIONS = ("eyes", "mouth", "hairline")

_SKIN_DARK = np.array([0.33, 0.21, 0.14], np.float32)
_SKIN_LIGHT = np.array([0.97, 0.82, 0.71], np.float32)
_HAIR = np.array(
    [[0.07, 0.05, 0.04], [0.24, 0.14, 0.08], [0.45, 0.30, 0.16], [0.86, 0.73, 0.46],
     [0.55, 0.24, 0.10], [0.72, 0.72, 0.72]], np.float32)
_IRIS = np.array(
    [[0.36, 0.21, 0.10], [0.18, 0.11, 0.06], [0.30, 0.52, 0.82], [0.28, 0.56, 0.30],
     [0.55, 0.42, 0.18], [0.52, 0.57, 0.63]], np.float32)
_BOKEH = np.array([1.0, 0.94, 0.78], np.float32)

_CHUNK = 16  # images rendered at once: bounds memory at ~100 MB for 64 px


@dataclass
class Rendered:
    """A batch of rendered images.

    Attributes:
        images: [N, S, S, 3] uint8 RGB.
        masks: [N, S, S] uint8 human-salience annotation (0..255); all zero for non-faces.
        cue: [N, S, S] uint8 where the shortcut was drawn (for analysis, not written as data).
        labels: [N] int64, 0 = real, 1 = synthetic.
        generators: per image, the generator name, or "" for real images.
        shortcut: [N] bool, whether the shortcut cue is present.
    """

    images: np.ndarray
    masks: np.ndarray
    cue: np.ndarray
    labels: np.ndarray
    generators: list[str]
    shortcut: np.ndarray


# --------------------------------------------------------------------------------------------
# Assignment of labels, generators and the shortcut
# --------------------------------------------------------------------------------------------
def assign(rng: np.random.Generator, n: int, generators: Sequence[str], p_cue_synthetic: float,
           p_cue_real: float, synthetic_share: float = 0.5) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Labels, generator names and shortcut flags for ``n`` faces.

    Counts are exact (rounded), not Bernoulli draws, so that small splits carry the intended
    proportions too; the order is then shuffled.
    """
    n_syn = int(round(n * synthetic_share))
    labels = np.zeros(n, np.int64)
    labels[:n_syn] = 1
    gens = [generators[i % len(generators)] for i in range(n_syn)] + [""] * (n - n_syn)
    cue = np.zeros(n, bool)
    cue[: int(round(n_syn * p_cue_synthetic))] = True
    cue[n_syn: n_syn + int(round((n - n_syn) * p_cue_real))] = True
    order = rng.permutation(n)
    return labels[order], [gens[i] for i in order], cue[order]


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin through the C library, one value at a time.

    numpy's vectorised sin/cos dispatch to CPU-specific SIMD code (e.g. SVML on AVX-512) whose
    last bit can differ between machines; glibc's are correctly rounded, so the same seed gives
    the same bytes on any machine. There are only a few values per image.
    """
    flat = np.asarray(angles, np.float64).ravel()
    c = np.array([math.cos(v) for v in flat], np.float64).reshape(np.shape(angles))
    s = np.array([math.sin(v) for v in flat], np.float64).reshape(np.shape(angles))
    return c, s


def _u(rng: np.random.Generator, lo: float, hi: float, n: int | tuple[int, ...]) -> np.ndarray:
    return rng.uniform(lo, hi, n).astype(np.float32)


def _background_params(rng: np.random.Generator, n: int, cue: np.ndarray) -> dict[str, np.ndarray]:
    bg_dx, bg_dy = _cos_sin(rng.uniform(0, 2 * np.pi, n))
    p = {
        "bg0": _u(rng, 0.08, 0.92, (n, 3)),
        "bg1": _u(rng, 0.08, 0.92, (n, 3)),
        "bg_dx": bg_dx.astype(np.float32),
        "bg_dy": bg_dy.astype(np.float32),
        # up to three soft rectangles (doors, windows, furniture) so backgrounds are not flat
        "rect_on": rng.random((n, 3)) < 0.6,
        "rect_cx": _u(rng, 0.0, 1.0, (n, 3)),
        "rect_cy": _u(rng, 0.0, 1.0, (n, 3)),
        "rect_w": _u(rng, 0.05, 0.30, (n, 3)),
        "rect_h": _u(rng, 0.05, 0.40, (n, 3)),
        "rect_col": _u(rng, 0.05, 0.95, (n, 3, 3)),
        "rect_mix": _u(rng, 0.25, 0.6, (n, 3)),
        # the shortcut: 3-5 soft highlights, placed at the sides where the head rarely covers them
        "bokeh_on": (rng.random((n, 5)) < np.array([1, 1, 1, 0.6, 0.4])) & cue[:, None],
        "bokeh_cx": (0.5 + np.where(rng.random((n, 5)) < 0.5, -1, 1) * rng.uniform(0.3, 0.46, (n, 5)))
        .astype(np.float32),
        "bokeh_cy": _u(rng, 0.04, 0.96, (n, 5)),
        "bokeh_r": _u(rng, 0.045, 0.085, (n, 5)),
        "bokeh_a": _u(rng, 0.35, 0.6, (n, 5)),
    }
    return p


def _face_params(rng: np.random.Generator, n: int, generators: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-image parameters. Every value is drawn for every image, whatever its generator, and the
    generator only selects among them: so the face is independent of the label, and the same
    seed renders the same face as real or as a fake of any generator (a twin the tests use)."""
    gen = np.array(generators, dtype=object)
    a = _u(rng, 0.22, 0.27, n)  # head half-width
    b = a * _u(rng, 1.15, 1.32, n)
    roll = rng.uniform(-0.26, 0.26, n)  # about +-15 degrees
    skin_t = _u(rng, 0.0, 1.0, n)
    skin = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * skin_t[:, None] + rng.normal(0, 0.02, (n, 3))
    hair = _HAIR[rng.integers(0, len(_HAIR), n)] * _u(rng, 0.85, 1.15, (n, 1))
    iris_idx = rng.integers(0, len(_IRIS), n)
    iris_l = _IRIS[iris_idx] * _u(rng, 0.9, 1.1, (n, 1))
    iris_r = iris_l.copy()
    # Mismatched irises: the right eye takes another palette colour, blended by a random amount
    # so that the defect ranges from subtle to blatant.
    mism = np.isin(gen, ["pupils", "eyes"])
    other = _IRIS[(iris_idx + rng.integers(1, len(_IRIS), n)) % len(_IRIS)]
    t = _u(rng, 0.55, 1.0, (n, 1))
    iris_r = np.where(mism[:, None], iris_l * (1 - t) + other * t, iris_r)

    ew = a * _u(rng, 0.22, 0.26, n)  # eye half-width
    eh = ew * _u(rng, 0.50, 0.62, n)
    pr = eh * _u(rng, 0.42, 0.52, n)  # pupil radius
    # Pupils: round (pa = pb) for real faces; "pupils" makes them elongated slits at a random
    # angle per eye, "eyes" makes them round but of unequal size.
    pa = np.stack([pr, pr], 1)
    pb = np.stack([pr, pr], 1)
    pang = rng.uniform(0, np.pi, (n, 2))
    irr = gen == "pupils"
    elong = np.stack([_u(rng, 1.35, 1.8, n), _u(rng, 1.35, 1.8, n)], 1)
    pa = np.where(irr[:, None], pa * elong, pa)
    pb = np.where(irr[:, None], pb / elong, pb)
    aniso = gen == "eyes"
    k = np.stack([_u(rng, 0.6, 0.75, n), _u(rng, 1.3, 1.5, n)], 1)
    pa = np.where(aniso[:, None], pa * k, pa)
    pb = np.where(aniso[:, None], pb * k, pb)
    # Catchlights: one light, so the same offset in both eyes; "eyes" breaks that.
    light = rng.uniform(0, 2 * np.pi, n)
    light_dx, light_dy = _cos_sin(light)
    cl = np.stack([light_dx, light_dy], 1) * 0.45
    cl_eye = np.stack([cl, cl], 1)  # [n, eye, xy]
    rnd = rng.uniform(0, 2 * np.pi, (n, 2))
    cl_eye = np.where(aniso[:, None, None], np.stack(_cos_sin(rnd), 2) * 0.5, cl_eye)

    # Strength of the pixel-level trace (pattern amplitude, or speckle std), varied per image so
    # that some fakes are hard.
    amp = np.where(gen != "", _u(rng, 0.035, 0.08, n), 0)
    long_hair = rng.random(n) < 0.45
    roll_cos, roll_sin = _cos_sin(roll)
    pang_cos, pang_sin = _cos_sin(pang)
    p = {
        "cx": (0.5 + rng.normal(0, 0.03, n)).astype(np.float32),
        "cy": (0.53 + rng.normal(0, 0.025, n)).astype(np.float32),
        "a": a,
        "b": b,
        "cos": roll_cos.astype(np.float32),
        "sin": roll_sin.astype(np.float32),
        "yaw": (a * _u(rng, -0.14, 0.14, n)).astype(np.float32),  # feature shift of a turned head
        "pitch": (b * _u(rng, -0.06, 0.06, n)).astype(np.float32),
        "skin": np.clip(skin, 0.05, 1.0).astype(np.float32),
        "hair": np.clip(hair, 0.0, 1.0).astype(np.float32),
        "hair_h0": (-b * _u(rng, 0.42, 0.62, n)).astype(np.float32),  # hairline height at centre
        "hair_curve": _u(rng, 0.2, 0.9, n),
        "long_hair": long_hair,
        "hair_len": np.where(long_hair, b * _u(rng, 0.6, 1.5, n), 0).astype(np.float32),
        "clothes": _u(rng, 0.05, 0.95, (n, 3)),
        "ex": (a * _u(rng, 0.36, 0.44, n)).astype(np.float32),
        "ey": (-b * _u(rng, 0.04, 0.14, n)).astype(np.float32),
        "ew": ew.astype(np.float32),
        "eh": eh.astype(np.float32),
        "iris_l": np.clip(iris_l, 0, 1).astype(np.float32),
        "iris_r": np.clip(iris_r, 0, 1).astype(np.float32),
        "gaze_x": (ew * _u(rng, -0.25, 0.25, n)).astype(np.float32),
        "gaze_y": (eh * _u(rng, -0.15, 0.15, n)).astype(np.float32),
        "pa": pa.astype(np.float32),
        "pb": pb.astype(np.float32),
        "pcos": pang_cos.astype(np.float32),
        "psin": pang_sin.astype(np.float32),
        "cl": cl_eye.astype(np.float32),
        "brow_t": (eh * _u(rng, 0.12, 0.22, n)).astype(np.float32),
        "brow_dy": (eh * _u(rng, 2.0, 2.8, n)).astype(np.float32),
        "brow_dark": _u(rng, 0.4, 0.7, n),
        "nose_y": (b * _u(rng, 0.16, 0.24, n)).astype(np.float32),
        "nose_l": (b * _u(rng, 0.14, 0.2, n)).astype(np.float32),
        "nose_w": (a * _u(rng, 0.07, 0.11, n)).astype(np.float32),
        "mouth_y": (b * _u(rng, 0.46, 0.56, n)).astype(np.float32),
        "mouth_w": (a * _u(rng, 0.26, 0.38, n)).astype(np.float32),
        "mouth_h": (b * _u(rng, 0.045, 0.075, n)).astype(np.float32),
        "mouth_open": rng.random(n) < 0.3,
        "lips": np.clip(np.array([0.75, 0.38, 0.38], np.float32) * _u(rng, 0.7, 1.1, (n, 1)), 0, 1),
        "light_dx": light_dx.astype(np.float32),
        "light_dy": light_dy.astype(np.float32),
        "light_k": _u(rng, 0.0, 0.35, n),
        "gain": _u(rng, 0.85, 1.1, n),
        "noise": _u(rng, 0.006, 0.02, n),
        "amp": amp.astype(np.float32),
        "gen_checker": gen == "checker",
        "gen_hairline": gen == "hairline",
        "gen_blocks": gen == "blocks",
        "gen_pupils": gen == "pupils",
        "gen_eyes": gen == "eyes",
    }
    return p


# --------------------------------------------------------------------------------------------
# Rendering primitives (broadcast over [n, S, S])
# --------------------------------------------------------------------------------------------
def _b(v: np.ndarray) -> np.ndarray:
    """Per-image values [n] -> [n, 1, 1] for broadcasting over pixels."""
    return v.reshape(-1, 1, 1).astype(np.float32)


def _bc(v: np.ndarray) -> np.ndarray:
    """Colours [n, 3] (or one colour [3]) -> [n or 1, 3, 1, 1]."""
    return v.reshape(-1, 3, 1, 1).astype(np.float32)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite ``colour`` ([n, 3] per image, or [3]) over ``img`` [n, 3, S, S] in place.

    Images are kept channel-first while rendering: with channels last, numpy's inner loop would
    run over 3 elements and painting would be several times slower.
    """
    # Paint only the chunk's bounding box of non-zero alpha: most features (eyes, nostrils) cover
    # a few percent of the frame, and painting is the bulk of the rendering time.
    nz = alpha > 0
    rows = np.flatnonzero(nz.any(axis=(0, 2)))
    if rows.size == 0:
        return
    cols = np.flatnonzero(nz.any(axis=(0, 1)))
    box = (slice(None), slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = img[box]
    delta = _bc(colour) - sub
    delta *= alpha[:, None, box[2], box[3]]
    sub += delta


def _ellipse_r(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipse: < 1 inside."""
    return np.sqrt((x / a) ** 2 + (y / b) ** 2)


def _soft(r: np.ndarray, scale: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of ``r < 1``, with ``(r - 1) * scale`` as signed distance."""
    return np.clip(0.5 - (r - 1.0) * scale * px, 0.0, 1.0)


def _region(r: np.ndarray, inner: float = 1.3, outer: float = 2.1) -> np.ndarray:
    """Soft region around a feature: 1 up to ``inner`` radii, fading to 0 at ``outer``."""
    return np.clip((outer - r) / (outer - inner), 0.0, 1.0)


def _pixel_parity(size: int, period: int) -> np.ndarray:
    """+-1 checkerboard of cells of ``period // 2`` pixels: the trace of a strided up-sampler."""
    i = np.arange(size) // (period // 2)
    return np.where((i[:, None] + i[None, :]) % 2 == 0, 1.0, -1.0).astype(np.float32)


def _row_parity(size: int) -> np.ndarray:
    i = np.arange(size)
    return np.where(i % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None] * np.ones((1, size), np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return c.reshape(1, 1, size), c.reshape(1, size, 1)


def _render_background(p: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _grid(size)
    px = float(size)
    t = np.clip(0.5 + (X - 0.5) * _b(p["bg_dx"]) + (Y - 0.5) * _b(p["bg_dy"]), 0, 1)
    img = _bc(p["bg0"]) + t[:, None] * (_bc(p["bg1"]) - _bc(p["bg0"]))
    img = img.astype(np.float32)  # [n, 3, S, S], writable: everything else paints over it
    for k in range(p["rect_on"].shape[1]):
        sd = np.maximum(np.abs(X - _b(p["rect_cx"][:, k])) - _b(p["rect_w"][:, k]),
                        np.abs(Y - _b(p["rect_cy"][:, k])) - _b(p["rect_h"][:, k]))
        alpha = np.clip(0.5 - sd * px, 0, 1) * _b(p["rect_on"][:, k] * p["rect_mix"][:, k])
        _paint(img, alpha, p["rect_col"][:, k])
    cue = np.zeros(t.shape, np.float32)
    for k in range(p["bokeh_on"].shape[1]):
        r = np.sqrt((X - _b(p["bokeh_cx"][:, k])) ** 2 + (Y - _b(p["bokeh_cy"][:, k])) ** 2)
        prof = np.clip(1.0 - (r / _b(p["bokeh_r"][:, k])) ** 2, 0, 1)  # soft, out-of-focus disc
        alpha = prof * _b(p["bokeh_a"][:, k] * p["bokeh_on"][:, k])
        _paint(img, alpha, _BOKEH)
        cue = np.maximum(cue, prof * _b(p["bokeh_on"][:, k].astype(np.float32)))
    return img, cue


def _render_face(img: np.ndarray, p: dict[str, np.ndarray], size: int
                 ) -> dict[str, np.ndarray]:
    """Draw the person over ``img`` in place; return the inspected regions [n, S, S] in [0, 1]."""
    X, Y = _grid(size)
    px = float(size)
    n = img.shape[0]
    a, b = _b(p["a"]), _b(p["b"])
    c, s = _b(p["cos"]), _b(p["sin"])
    dx, dy = X - _b(p["cx"]), Y - _b(p["cy"])
    hx = dx * c + dy * s  # head frame: x to the face's left-right, y down the face
    hy = -dx * s + dy * c
    fx = hx - _b(p["yaw"])  # features move with yaw/pitch, the head outline does not
    fy = hy - _b(p["pitch"])
    skin = p["skin"]

    # long hair behind shoulders and head
    sd = np.maximum(np.abs(hx) - a * 1.12, np.maximum(-hy, hy - _b(p["hair_len"])))
    _paint(img, np.clip(0.5 - sd * px, 0, 1) * _b(p["long_hair"].astype(np.float32)), p["hair"])
    # shoulders and neck
    sh = _ellipse_r(hx, hy - b * 1.75, a * 2.0, b * 0.75)
    _paint(img, _soft(sh, a, px), p["clothes"])
    sd = np.maximum(np.abs(hx) - a * 0.45, -(hy - b * 0.5))
    _paint(img, np.clip(0.5 - sd * px, 0, 1) * (hy < b * 1.3), skin * 0.85)
    # ears
    for side in (-1.0, 1.0):
        ear = _ellipse_r(hx - side * a * 0.98, hy - b * 0.02, a * 0.14, b * 0.2)
        _paint(img, _soft(ear, a * 0.14, px), skin * 0.92)
    # hair volume behind the face
    hair_r = _ellipse_r(hx, hy + b * 0.06, a * 1.13, b * 1.07)
    hair_alpha = _soft(hair_r, a, px)
    _paint(img, hair_alpha * (hy < b * 0.1), p["hair"])
    # face
    face_r = _ellipse_r(hx, hy, a, b)
    face = _soft(face_r, a, px)
    _paint(img, face, skin)
    # nose: a shadow on the side away from the light, and nostrils
    nose_r = _ellipse_r(fx + _b(p["light_dx"]) * _b(p["nose_w"]) * 0.6, fy - _b(p["nose_y"]),
                        _b(p["nose_w"]), _b(p["nose_l"]))
    _paint(img, _soft(nose_r, _b(p["nose_w"]), px) * 0.35 * face, skin * 0.7)
    for side in (-1.0, 1.0):
        nos = _ellipse_r(fx - side * _b(p["nose_w"]) * 0.8, fy - _b(p["nose_y"]) - _b(p["nose_l"]) * 0.9,
                         _b(p["nose_w"]) * 0.45, _b(p["nose_w"]) * 0.3)
        _paint(img, _soft(nos, _b(p["nose_w"]) * 0.3, px) * 0.6 * face, skin * 0.45)
    # mouth
    mw, mh = _b(p["mouth_w"]), _b(p["mouth_h"])
    mx, my = fx, fy - _b(p["mouth_y"])
    mouth_r = _ellipse_r(mx, my, mw, mh)
    _paint(img, _soft(mouth_r, mh, px) * face, p["lips"])
    opened = face * _b(p["mouth_open"])
    inner = _ellipse_r(mx, my, mw * 0.8, mh * 0.45)
    _paint(img, _soft(inner, mh * 0.45, px) * opened, np.float32([0.25, 0.08, 0.08]))
    teeth = _ellipse_r(mx, my + mh * 0.15, mw * 0.65, mh * 0.2)
    _paint(img, _soft(teeth, mh * 0.2, px) * opened, np.float32([0.92, 0.9, 0.85]))
    # eyes
    ew, eh = _b(p["ew"]), _b(p["eh"])
    eyes_region = np.zeros((n, size, size), np.float32)
    for e, side in enumerate((-1.0, 1.0)):
        ex = fx - side * _b(p["ex"])
        ey = fy - _b(p["ey"])
        white_r = _ellipse_r(ex, ey, ew, eh)
        white = _soft(white_r, eh, px) * face
        lid_r = _ellipse_r(ex, ey + eh * 0.12, ew * 1.12, eh * 1.12)
        _paint(img, _soft(lid_r, eh, px) * face * (ey < eh * 0.3), skin * 0.45)  # upper lid line
        _paint(img, white, np.float32([0.95, 0.94, 0.92]))
        ix, iy = ex - _b(p["gaze_x"]), ey - _b(p["gaze_y"])
        iris_r = _ellipse_r(ix, iy, eh * 0.95, eh * 0.95)
        _paint(img, _soft(iris_r, eh, px) * white, p["iris_l" if e == 0 else "iris_r"])
        pc, ps = _b(p["pcos"][:, e]), _b(p["psin"][:, e])
        pupil_r = _ellipse_r(ix * pc + iy * ps, -ix * ps + iy * pc, _b(p["pa"][:, e]), _b(p["pb"][:, e]))
        _paint(img, _soft(pupil_r, _b(np.minimum(p["pa"][:, e], p["pb"][:, e])), px) * white,
               np.float32([0.03, 0.03, 0.04]))
        clx = ix - _b(p["cl"][:, e, 0]) * eh * 0.7
        cly = iy - _b(p["cl"][:, e, 1]) * eh * 0.7
        cl_r = _ellipse_r(clx, cly, eh * 0.22, eh * 0.22)
        _paint(img, _soft(cl_r, eh * 0.22, px) * white * 0.9, np.float32([1, 1, 1]))
        # brow
        brow_r = _ellipse_r(ex, ey + _b(p["brow_dy"]) + ex * 0.08 * side, ew * 1.15, _b(p["brow_t"]) + eh * 0.12)
        _paint(img, _soft(brow_r, eh * 0.2, px) * face, p["hair"] * _b(p["brow_dark"])[:, 0, 0, None])
        eyes_region = np.maximum(eyes_region, _region(_ellipse_r(ex, ey + eh * 0.4, ew, eh * 1.4), 1.15, 1.9))
    # hair over the forehead, above a curved hairline
    hl = _b(p["hair_h0"]) + _b(p["hair_curve"]) * b * 0.55 * (hx / a) ** 2
    above = np.clip(0.5 + (hl - hy) * px, 0, 1)
    _paint(img, hair_alpha * above, p["hair"])

    mouth_region = _region(_ellipse_r(mx, my, mw, mh * 1.6), 1.15, 1.9) * face
    band = np.clip(1.0 - np.abs(hy - hl) / (a * 0.16), 0, 1) * _soft(face_r, a, px)
    hairline_region = np.clip(band * 1.5, 0, 1)
    return {"eyes": eyes_region * face, "mouth": mouth_region, "hairline": hairline_region}


def _apply_lighting(img: np.ndarray, p: dict[str, np.ndarray], size: int) -> None:
    X, Y = _grid(size)
    ramp = (X - 0.5) * _b(p["light_dx"]) + (Y - 0.5) * _b(p["light_dy"])
    img *= (_b(p["gain"]) * (1.0 + _b(p["light_k"]) * ramp))[:, None]


def _apply_fingerprints(img: np.ndarray, p: dict[str, np.ndarray], regions: dict[str, np.ndarray],
                        size: int, rng: np.random.Generator) -> None:
    """Add the pixel-level generator traces (the eye defects are drawn by ``_render_face``)."""
    amp = _b(p["amp"])
    checker = _pixel_parity(size, 2)[None]
    blocks = _pixel_parity(size, 4)[None]
    rows = _row_parity(size)[None]
    eye_mouth = np.maximum(regions["eyes"], regions["mouth"])
    hl = regions["hairline"]
    trace = (_b(p["gen_checker"]) * eye_mouth * checker
             + _b(p["gen_hairline"]) * hl * rows
             + _b(p["gen_blocks"]) * np.maximum(eye_mouth, hl) * (0.7 * blocks + 0.4 * checker))
    # Colour bleed: the generator smears hair colour into the skin just below the hairline.
    bleed = _b(p["gen_hairline"]) * hl * 0.35
    _paint(img, bleed, p["hair"])
    # Speckle around the eyes: per pixel for "pupils"; for "eyes" mostly in 2x2 blocks, with a
    # weaker per-pixel part (another decoder, again a cascade of up-sampling stages).
    n = img.shape[0]
    fine = rng.standard_normal((n, size, size), np.float32)
    coarse = np.repeat(np.repeat(rng.standard_normal((n, (size + 1) // 2, (size + 1) // 2), np.float32),
                                 2, axis=1), 2, axis=2)[:, :size, :size]
    trace += regions["eyes"] * (_b(p["gen_pupils"]) * fine + _b(p["gen_eyes"]) * (0.7 * coarse + 0.4 * fine))
    img += (amp * trace)[:, None]


def _human_mask(regions: dict[str, np.ndarray], generators: Sequence[str]) -> np.ndarray:
    out = np.zeros_like(regions["eyes"])
    for i, g in enumerate(generators):
        names = GENERATOR_REGIONS[g] if g else REAL_REGIONS
        for name in names:
            out[i] = np.maximum(out[i], regions[name][i])
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def render_faces(seed: Sequence[int], n: int, size: int, generators: Sequence[str],
                 p_cue_synthetic: float, p_cue_real: float, synthetic_share: float = 0.5) -> Rendered:
    """Render ``n`` faces.

    Args:
        seed: entropy for ``np.random.SeedSequence`` (e.g. ``[data_seed, split_id]``).
        n: number of images; ``round(n * synthetic_share)`` are synthetic.
        size: image side in pixels.
        generators: generator types the synthetic faces are spread over, evenly.
        p_cue_synthetic, p_cue_real: share of synthetic / real faces that carry the shortcut.

    Returns:
        The images with their masks, labels, generators and shortcut flags.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; choose from {GENERATORS}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 0])))
    labels, gens, cue_flag = assign(rng, n, generators, p_cue_synthetic, p_cue_real, synthetic_share)
    params = {**_background_params(rng, n, cue_flag), **_face_params(rng, n, gens)}
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    cue = np.empty((n, size, size), np.uint8)
    for ci, sl in enumerate(_chunks(n)):
        p = {k: v[sl] for k, v in params.items()}
        img, cue_f = _render_background(p, size)
        regions = _render_face(img, p, size)
        _apply_lighting(img, p, size)
        # Pixel noise comes from its own stream per chunk, so it does not shift the parameters.
        noise_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 1, ci])))
        _apply_fingerprints(img, p, regions, size, noise_rng)
        img += noise_rng.standard_normal(img.shape, np.float32) * _b(p["noise"])[:, None]
        images[sl] = _to_uint8(img).transpose(0, 2, 3, 1)
        masks[sl] = _to_uint8(_human_mask(regions, gens[sl]))
        cue[sl] = _to_uint8(cue_f)
    return Rendered(images, masks, cue, labels, gens, cue_flag)


def render_nonfaces(seed: Sequence[int], n: int, size: int, p_cue: float = 0.5) -> Rendered:
    """Scenes without a face: the same backgrounds with random soft shapes in front."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 0])))
    cue_flag = np.zeros(n, bool)
    cue_flag[: int(round(n * p_cue))] = True
    cue_flag = cue_flag[rng.permutation(n)]
    p = _background_params(rng, n, cue_flag)
    k = 4
    shapes = {
        "on": rng.random((n, k)) < 0.8,
        "ellipse": rng.random((n, k)) < 0.5,
        "cx": _u(rng, 0.15, 0.85, (n, k)),
        "cy": _u(rng, 0.15, 0.85, (n, k)),
        "w": _u(rng, 0.06, 0.3, (n, k)),
        "h": _u(rng, 0.06, 0.3, (n, k)),
        "col": _u(rng, 0.05, 0.95, (n, k, 3)),
    }
    light = rng.uniform(0, 2 * np.pi, n)
    light_dx, light_dy = _cos_sin(light)
    p.update({"light_dx": light_dx.astype(np.float32), "light_dy": light_dy.astype(np.float32),
              "light_k": _u(rng, 0.0, 0.35, n), "gain": _u(rng, 0.85, 1.1, n),
              "noise": _u(rng, 0.006, 0.02, n)})
    X, Y = _grid(size)
    images = np.empty((n, size, size, 3), np.uint8)
    cue = np.empty((n, size, size), np.uint8)
    for ci, sl in enumerate(_chunks(n)):
        q = {key: v[sl] for key, v in p.items()}
        img, cue_f = _render_background(q, size)
        for j in range(k):
            ddx, ddy = X - _b(shapes["cx"][sl, j]), Y - _b(shapes["cy"][sl, j])
            w, h = _b(shapes["w"][sl, j]), _b(shapes["h"][sl, j])
            ell = _soft(_ellipse_r(ddx, ddy, w, h), np.minimum(w, h), float(size))
            rect = np.clip(0.5 - np.maximum(np.abs(ddx) - w, np.abs(ddy) - h) * size, 0, 1)
            alpha = np.where(_b(shapes["ellipse"][sl, j]) > 0, ell, rect) * _b(shapes["on"][sl, j])
            _paint(img, alpha, shapes["col"][sl, j])
        _apply_lighting(img, q, size)
        noise_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 1, ci])))
        img += noise_rng.standard_normal(img.shape, np.float32) * _b(q["noise"])[:, None]
        images[sl] = _to_uint8(img).transpose(0, 2, 3, 1)
        cue[sl] = _to_uint8(cue_f)
    return Rendered(images, np.zeros((n, size, size), np.uint8), cue, np.zeros(n, np.int64), [""] * n,
                    cue_flag)


def lfw_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's bundled LFW subset (shipped in the wheel, no download), upscaled to RGB.

    Returns:
        (faces, nonfaces), each [100, size, size, 3] uint8.
    """
    from PIL import Image
    from skimage.data import lfw_subset

    grey = lfw_subset()  # [200, 25, 25] float64 in [0, 1]: 100 faces, then 100 non-faces
    out = np.empty((len(grey), size, size, 3), np.uint8)
    for i, g in enumerate(grey):
        im = Image.fromarray(_to_uint8(g), mode="L").resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.repeat(np.asarray(im)[..., None], 3, axis=2)
    return out[:100], out[100:]
