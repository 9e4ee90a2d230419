"""Turn an uploaded image into the model's input: 64 float32 values, an 8x8 digit where 16 is ink.

The model was trained on scikit-learn's digits: each digit's height fills all 8 rows, ink is high (0..16)
on a zero background. Any picture of a single digit is brought to that convention:

1. decode strict base64 (a `data:image/...;base64,` prefix is accepted) and open it with Pillow, only as
   one of FORMATS, reading the header alone: the caller checks its pixel count (per image and per
   request; pixel_cost, where a WEBP counts twice) before anything is decoded; a JPEG with more than
   MAX_JPEG_SCANS scans is refused here;
2. decode and shrink to WORKING_SIZE first, averaging, before any other step touches the pixels (palette
   and 1-bit images go through a 1-byte lookup of their final gray, so they can be averaged too); then
   apply the EXIF rotation, flatten transparency onto white and convert to grayscale, all at 256 px;
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
from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
MARGIN = 0.0  # the data set's digits touch the frame's top and bottom, so no margin matches training
INK_THRESHOLD = 0.2  # fraction of full contrast that counts as ink for the bounding box (ignores JPEG noise)
MIN_CONTRAST = 0.02  # below this (of the full scale) the image has no digit, only noise
WORKING_SIZE = 256  # shrink big images first: the bounding box needs no more precision for 8x8
# Each scan of a progressive JPEG is a pass over all its coefficients, so decoding time grows with scans x
# pixels while a scan can be 16 bytes: 20,000 of them in a 0.4 MB request kept a worker busy for 7 s.
# libjpeg writes 10 scans (6 for grayscale), mozjpeg a few dozen at most.
MAX_JPEG_SCANS = 100
# Peak memory of decoding and shrinking, per pixel, measured at 16 Mpx: ~8 bytes for an RGBA PNG (the image,
# then its premultiplied copy while shrinking), ~16 for a WEBP (libwebp's canvas, a copy, then the image).
# A WEBP's pixels count twice against MAX_IMAGE_PIXELS and MAX_REQUEST_PIXELS, so that no image accepted
# costs more memory than the largest PNG: a 300-byte lossless WEBP of 4096 x 4096 took a worker to 460 MB.
PIXEL_WEIGHT = {"WEBP": 2}
_SOS = b"\xff\xda"  # JPEG start-of-scan marker; never inside entropy-coded data, where 0xFF is followed by 0x00
# EXIF Orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


def open_image(raw: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read (nothing decoded yet); the caller closes it.

    ImageTooLarge beyond max_pixels (or Pillow's own decompression-bomb limit), or for a JPEG with more
    than MAX_JPEG_SCANS scans; ImageError if it is not one of FORMATS.
    """
    try:
        image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception:  # Pillow raises many types on corrupt headers; all mean the same to the client
        raise ImageError(f"not a supported image ({', '.join(FORMATS)})") from None
    if pixel_cost(image) > max_pixels:
        image.close()
        width, height = image.size
        weight = PIXEL_WEIGHT.get(image.format or "", 1)
        counted = f" (a {image.format} counts {weight}x)" if weight > 1 else ""
        raise ImageTooLarge(f"image is {width}x{height} pixels{counted}, more than the {max_pixels} allowed")
    # An upper bound (an EXIF thumbnail's or stray bytes in a metadata segment count too), which is all a
    # limit this far above real encoders needs.
    if image.format == "JPEG" and (scans := raw.count(_SOS)) > MAX_JPEG_SCANS:
        image.close()
        raise ImageTooLarge(f"JPEG has {scans} scans, more than the limit of {MAX_JPEG_SCANS}")
    return image


def pixel_cost(image: Image.Image) -> int:
    """width x height, times PIXEL_WEIGHT for formats that need more memory per pixel to decode."""
    return image.width * image.height * PIXEL_WEIGHT.get(image.format or "", 1)


def _palette_gray(image: Image.Image) -> Image.Image:
    """A 1-bit, P or PA image as L (LA for PA) holding each pixel's final gray, composited onto white.

    Pillow resizes these modes by picking pixels, which would drop strokes thinner than the step, so they
    must become averageable first. A 256-entry table lookup does it at 1 byte per pixel, the size of the
    decoded image itself, instead of converting the full image to RGBA (4 bytes per pixel, premultiplied,
    composited and converted again) as before.
    """
    pixels = np.asarray(image)
    if image.mode == "1":
        return Image.fromarray(np.where(pixels, np.uint8(255), np.uint8(0)), "L")  # bool -> 0/255
    palette = np.zeros((256, 4), dtype=np.float64)
    palette[:, 3] = 255.0  # indices past the end of a short palette are opaque black, as Pillow shows them
    entries = np.asarray(image.getpalette("RGBA") or [], dtype=np.float64).reshape(-1, 4)[:256]
    palette[: len(entries)] = entries
    transparency = image.info.get("transparency")  # GIF: one transparent index; PNG tRNS: an alpha per index
    if isinstance(transparency, int) and 0 <= transparency < 256:
        palette[transparency, 3] = 0.0
    elif isinstance(transparency, bytes):
        palette[: min(len(transparency), 256), 3] = np.frombuffer(transparency[:256], dtype=np.uint8)
    gray = palette[:, :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as Pillow's convert("L")
    alpha = palette[:, 3] / 255.0
    if image.mode == "PA":  # the alpha is the pixel's own (as Pillow reads PA): shrink as LA, composite small
        la = np.stack([gray.round().astype(np.uint8)[pixels[..., 0]], pixels[..., 1]], axis=-1)
        return Image.fromarray(la, "LA")
    composited = (gray * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return Image.fromarray(composited[pixels], "L")


def _grayscale(image: Image.Image) -> np.ndarray:
    """Float32 2-D array in 0..1 (not yet stretched), at most WORKING_SIZE; transparency is white paper."""
    # Read before any pixel work: it lives in the file's metadata, which a resized copy may not carry.
    orientation = image.getexif().get(0x0112)
    image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG only: decode at a reduced scale, much faster
    if image.mode in ("1", "P", "PA"):
        image = _palette_gray(image)
    # Shrink before anything else copies the full-size image (a 16 Mpx RGBA is 64 MB per copy). BOX
    # averages (premultiplied by alpha for RGBA/LA), and resize handles every mode, 16-bit included.
    if max(image.size) > WORKING_SIZE:
        scale = WORKING_SIZE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    if orientation in _ORIENTATION:  # phone photos are stored sideways
        image = image.transpose(_ORIENTATION[orientation])
    if image.mode in ("RGBA", "LA", "RGBa", "La") or "transparency" in image.info:
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


def features(image: Image.Image) -> np.ndarray:
    """An opened image (open_image) -> float32 [64] in the training convention; closes the image."""
    try:
        gray = _grayscale(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception:  # truncated or corrupt pixel data is only found while decoding
        raise ImageError("image data is corrupt or truncated") from None
    finally:
        image.close()
    return _to_digit(gray)


def image_to_features(raw: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> float32 [64] in the training convention (see the module docstring)."""
    return features(open_image(raw, max_pixels))
