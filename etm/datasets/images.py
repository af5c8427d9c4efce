"""Reading one image or mask file: sniffing, validation at load time, decoding at batch time.

Conventions (every measure sees images through these, so they are fixed and documented here):

- Accepted formats are PNG, JPEG and WebP, recognised by content (PIL's sniffing), never by
  extension. Files whose extension says they are obviously something else (``.txt``, ``.csv``,
  ``.json``...) are not opened at all.
- Colour: every image becomes 8-bit RGB. Greyscale is replicated to three channels, palette
  images are expanded, CMYK is converted by PIL. Transparency (RGBA, LA, palette with a
  transparent colour) is removed by compositing on **black**: ``rgb * alpha / 255``. Black
  rather than white because a transparent pixel carries no evidence, and black is what a zero
  pixel means to every normalisation and perturbation in the measures.
- 16-bit greyscale PNGs are scaled by 1/65535 (PIL would otherwise clip them to 255, i.e.
  nearly white).
- EXIF orientation is not applied: pixels are used as stored, like torchvision's ImageFolder,
  so that human-annotation masks drawn on the stored pixels stay aligned.
- Resizing uses PIL's bilinear filter, which is antialiased when downscaling (its support grows
  with the scale factor), applied to the 8-bit RGB image as torchvision's PIL pipeline does.
  Values are then ``uint8 / 255`` in float32, the same arithmetic as ``ToTensor``.
- Masks: greyscale, values 0..255 mean 0..1 (alpha is ignored); resized bilinearly in float
  to the batch size and clipped to [0, 1].
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}

# Extensions of files that are obviously not images: skipped without being opened.
NOT_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".md",
        ".rst",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".htm",
        ".toml",
        ".ini",
        ".cfg",
        ".log",
        ".py",
        ".ipynb",
        ".sh",
        ".pdf",
        ".zip",
        ".tar",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".7z",
        ".npy",
        ".npz",
        ".pt",
        ".pth",
        ".pt2",
        ".onnx",
        ".pkl",
        ".h5",
        ".mat",
        ".mp4",
        ".avi",
        ".mov",
    }
)

# JPEG can decode at 1/8 scale ("draft"): validation still reads the whole entropy-coded stream
# (so truncation is caught) at a fraction of the cost of a full decode.
_DRAFT_SIZE = (64, 64)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def is_obviously_not_image(path: Path) -> bool:
    """Whether the extension says the file is something other than an image.

    Args:
        path: The file.

    Returns:
        True for extensions such as ``.txt`` or ``.json``; False otherwise (the file is sniffed).
    """
    return path.suffix.lower() in NOT_IMAGE_SUFFIXES


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks so large files do not sit in memory.

    Args:
        path: The file.

    Returns:
        The hex digest.

    Raises:
        OSError: The file cannot be read.
    """
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def max_image_pixels() -> int:
    """The decompression-bomb limit (``ETM_MAX_IMAGE_PIXELS``), also installed as Pillow's own guard."""
    from etm.settings import get_settings

    limit = get_settings().max_image_pixels
    # Pillow warns above this and raises above twice this, at open time, before anything is decoded.
    Image.MAX_IMAGE_PIXELS = limit
    return limit


def _too_many_pixels(pixels: int | str, limit: int) -> str:
    return (
        f"image too large: {pixels} pixels, above the limit of {limit} (ETM_MAX_IMAGE_PIXELS); refused unread "
        "as a possible decompression bomb"
    )


def check_image(path: Path, max_pixels: int | None = None) -> tuple[str | None, str | None]:
    """Validate an image file and hash it.

    The file is sniffed, its format checked, its pixel count bounded (read from the header, before
    any decoding), its structure verified (``Image.verify``: PNG chunk CRCs, ...) and then decoded, so
    that truncated files are caught at load time rather than in the middle of a job.

    Args:
        path: The file.
        max_pixels: Largest width x height; None: ``ETM_MAX_IMAGE_PIXELS``.

    Returns:
        ``(sha256, None)`` when the file is a usable image, ``(None, reason)`` otherwise.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        with Image.open(path) as im:
            fmt = im.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                return None, f"unsupported image format {fmt} (accepted: PNG, JPEG, WebP)"
            width, height = im.size
            if width * height > limit:
                return None, _too_many_pixels(f"{width}x{height} = {width * height}", limit)
            im.verify()
        # verify() leaves the image unusable; reopen to decode.
        with Image.open(path) as im:
            im.draft("RGB", _DRAFT_SIZE)
            im.load()
        return file_sha256(path), None
    except UnidentifiedImageError:
        return None, "not a readable image (content is not PNG, JPEG or WebP)"
    except Image.DecompressionBombError as e:  # Pillow's guard fired first (more than twice the limit)
        found = re.search(r"\((\d+) pixels\)", str(e))
        return None, _too_many_pixels(found.group(1) if found else "too many", limit)
    except OSError as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            return None, f"unreadable file: {e.strerror}"
        return None, f"corrupt image: {e}"
    except Exception as e:  # noqa: BLE001 - PIL raises many types on malformed data; never crash a load
        return None, f"corrupt image: {type(e).__name__}: {e}"


def _to_rgb_uint8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, alpha composited on black (see the module docstring)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        # Integer rounding of rgb * a / 255: compositing on black.
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode an image to float32 RGB in [0, 1], resized to ``size``.

    Args:
        path: The image file.
        size: Output ``(height, width)``.

    Returns:
        Array of shape [3, height, width], float32.

    Raises:
        OSError, ValueError, ...: Whatever PIL raises for a file it cannot decode; the caller
            turns it into a DatasetError naming the file.
    """
    height, width = size
    with Image.open(path) as im:
        im.load()
        if im.mode in _SIXTEEN_BIT_MODES:
            f = im.convert("F")
            if f.size != (width, height):
                f = f.resize((width, height), Image.Resampling.BILINEAR)
            grey = np.clip(np.asarray(f, dtype=np.float32) / np.float32(65535), 0.0, 1.0)
            return np.broadcast_to(grey, (3, height, width)).copy()
        rgb = _to_rgb_uint8(im)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    return arr.astype(np.float32) / np.float32(255)


def decode_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode a greyscale annotation mask to float32 in [0, 1], resized to ``size``.

    Args:
        path: The mask file.
        size: Output ``(height, width)``.

    Returns:
        Array of shape [height, width], float32.

    Raises:
        OSError, ValueError, ...: Whatever PIL raises for a file it cannot decode.
    """
    height, width = size
    with Image.open(path) as im:
        im.load()
        scale = 65535.0 if im.mode in _SIXTEEN_BIT_MODES else 255.0
        f = (im if im.mode in _SIXTEEN_BIT_MODES else im.convert("L")).convert("F")
    if f.size != (width, height):
        f = f.resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(f, dtype=np.float32) / np.float32(scale), 0.0, 1.0)
