"""Turn an uploaded image into the model's input: 64 float32 values, an 8x8 digit where 16 is ink.

The model was trained on scikit-learn's digits: each digit's height fills all 8 rows, ink is high (0..16)
on a zero background. Any picture of a single digit is brought to that convention:

1. decode strict base64 (a `data:image/...;base64,` prefix is accepted) and open it with Pillow, only as
   one of FORMATS; the pixel count is checked against the limit from the header, before decoding;
2. shrink to WORKING_SIZE, apply EXIF rotation, flatten transparency onto white, convert to grayscale;
3. stretch contrast to 0..1; if the background is light (mean above the middle, i.e. mean > 127 for an
   image spanning 0..255) invert, so ink is high whatever the colours;
4. crop to the bounding box of the ink, centre it in a square of side max(height, width) (+ MARGIN),
   average it down to 8x8 and scale to 0..16.

Anything wrong with an image raises ImageError (a ValueError, the client's fault: 400) or ImageTooLarge
(413); nothing a client sends may surface as another exception.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
MARGIN = 0.0  # the data set's digits touch the frame's top and bottom, so no margin matches training
INK_THRESHOLD = 0.2  # fraction of full contrast that counts as ink for the bounding box (ignores JPEG noise)
MIN_CONTRAST = 0.02  # below this (of the full scale) the image has no digit, only noise
WORKING_SIZE = 256  # shrink big images first: the bounding box needs no more precision for 8x8
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class ImageError(ValueError):
    """The client sent something that is not a usable image of a digit."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


def decode_base64(text: str) -> bytes:
    """Strict base64 (standard alphabet, padding required), so garbage is refused instead of guessed."""
    try:
        raw = base64.b64decode(_DATA_URL.sub("", text, count=1), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"not valid base64: {exc}") from None
    if not raw:
        raise ImageError("empty image")
    return raw


def _open(raw: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception:  # Pillow raises many types on corrupt headers; all mean the same to the client
        raise ImageError(f"not a supported image ({', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"image is {width}x{height} pixels, more than the {max_pixels} allowed")
    return image


def _grayscale(image: Image.Image) -> np.ndarray:
    """Float32 2-D array in 0..1 (not yet stretched), at most WORKING_SIZE; transparency is white paper."""
    image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG only: decode at a reduced scale, much faster
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if image.mode in ("1", "P", "PA"):  # resizing these would pick pixels instead of averaging them
        image = image.convert("RGBA" if transparent else "L")
    # Shrink first, so no later step copies a full-size image (a 16 Mpx RGBA is 64 MB per copy).
    image.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    ImageOps.exif_transpose(image, in_place=True)  # phone photos are stored sideways
    if transparent:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    # 16-bit and float images keep their precision; everything else is 8-bit grayscale.
    scale = 65535.0 if image.mode.startswith("I;16") else 255.0
    image = image.convert("F" if image.mode.startswith(("I", "F")) else "L")
    return np.asarray(image, dtype=np.float32) / scale


def _to_digit(gray: np.ndarray) -> np.ndarray:
    if gray.size == 0:
        raise ImageError("image has no pixels")
    if not np.isfinite(gray).all():  # float TIFFs can hold NaN/inf, which no digit is made of
        raise ImageError("image has non-finite pixel values")
    low, high = float(gray.min()), float(gray.max())
    if high - low < MIN_CONTRAST:
        raise ImageError("image is blank: no digit found")
    ink = (gray.astype(np.float64) - low) / (high - low)  # float64: extreme float-TIFF ranges cannot overflow
    if ink.mean() > 0.5:  # light background: dark ink on paper
        ink = 1.0 - ink
    ink[ink < INK_THRESHOLD / 2] = 0.0  # background noise would otherwise become faint strokes
    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    side = max(height, width)
    pad = round(side * MARGIN)
    square = np.zeros((side + 2 * pad, side + 2 * pad), dtype=np.float32)  # "F" mode for Pillow's resize
    top, left = pad + (side - height) // 2, pad + (side - width) // 2
    square[top : top + height, left : left + width] = ink
    # BOX averages whole areas, like the data set's 4x4 pixel counts of a 32x32 bitmap.
    small = Image.fromarray(square).resize((8, 8), Image.Resampling.BOX)
    return np.clip(np.asarray(small, dtype=np.float32) * 16.0, 0.0, 16.0).reshape(64)


def image_to_features(raw: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> float32 [64] in the training convention (see the module docstring)."""
    image = _open(raw, max_pixels)
    try:
        gray = _grayscale(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception:  # truncated or corrupt pixel data is only found while decoding
        raise ImageError("image data is corrupt or truncated") from None
    finally:
        image.close()
    return _to_digit(gray)
