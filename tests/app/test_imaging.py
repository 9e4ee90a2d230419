"""imaging.py's cost bounds: big images are shrunk before any mode conversion, palette images are
averaged (not sampled) without a full-size RGBA copy, and a JPEG's scan count is capped."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier import imaging
from classifier.imaging import MAX_JPEG_SCANS, WORKING_SIZE, ImageTooLarge, image_to_features


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def big_digit(side: int) -> Image.Image:
    """A dark bar on white paper, side x side pixels."""
    pixels = np.full((side, side), 255, dtype=np.uint8)
    pixels[side // 5 : 4 * side // 5, 2 * side // 5 : 3 * side // 5] = 0
    return Image.fromarray(pixels)


BIG = 1500  # well over WORKING_SIZE
BIG_IMAGES = {
    "1-bit PNG": lambda: encoded(big_digit(BIG).convert("1"), "PNG"),
    "1-bit TIFF G4": lambda: encoded(big_digit(BIG).convert("1"), "TIFF", compression="group4"),
    "P GIF": lambda: encoded(big_digit(BIG).convert("P"), "GIF"),
    "P PNG transparent": lambda: encoded(big_digit(BIG).convert("RGBA").convert("P"), "PNG", transparency=255),
    "L PNG": lambda: encoded(big_digit(BIG), "PNG"),
    "LA PNG": lambda: encoded(big_digit(BIG).convert("LA"), "PNG"),
    "RGBA PNG": lambda: encoded(big_digit(BIG).convert("RGBA"), "PNG"),
    "RGB WEBP": lambda: encoded(big_digit(BIG).convert("RGB"), "WEBP", lossless=True),
    "CMYK TIFF": lambda: encoded(big_digit(BIG).convert("CMYK"), "TIFF"),
    "16-bit TIFF": lambda: encoded(Image.fromarray(np.asarray(big_digit(BIG)).astype(np.uint16) * 257), "TIFF"),
    "float TIFF": lambda: encoded(Image.fromarray(np.asarray(big_digit(BIG)).astype(np.float32)), "TIFF"),
    "CMYK JPEG": lambda: encoded(big_digit(BIG).convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("name", BIG_IMAGES)
def test_big_images_of_every_mode_are_shrunk_before_any_mode_conversion(name, monkeypatch):
    data = BIG_IMAGES[name]()
    converted: list[tuple[str, str, tuple[int, int]]] = []
    convert = Image.Image.convert

    def spy(self, mode=None, *args, **kwargs):
        converted.append((self.mode, mode, self.size))
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    features = image_to_features(data, max_pixels=2 * BIG * BIG)  # (a WEBP counts twice)
    assert converted, "every mode ends in a conversion to L or F"
    # Except Pillow's resize itself premultiplying colours by alpha (RGBA <-> RGBa, LA <-> La), which is
    # part of averaging transparent pixels correctly: the shrink, not a conversion before it.
    premultiply = {("RGBA", "RGBa"), ("RGBa", "RGBA"), ("LA", "La"), ("La", "LA")}
    ours = [(old, new, size) for old, new, size in converted if (old, new) not in premultiply]
    assert all(max(size) <= WORKING_SIZE for _, _, size in ours), converted
    # And the result is the bar: ink in the middle columns, none at the sides.
    digit = features.reshape(8, 8)
    assert digit[:, 3:5].mean() > 8 and digit[:, 0].max() < 1 and digit[:, 7].max() < 1


def test_a_dithered_1_bit_scan_is_averaged_like_its_gray_original(heldout):
    """Sampling a dithered image's pixels gives noise; averaging gives back the grays it dithers."""
    averaged, sampled = [], []
    for pixels in heldout[0][:8]:
        gray = np.round((1 - pixels.reshape(8, 8) / 16) * 255).astype(np.uint8)
        original = Image.fromarray(gray).resize((1024, 1024), Image.Resampling.BILINEAR)
        dithered = original.convert("1")  # Floyd-Steinberg, like a fax or a bilevel scan
        truth = image_to_features(encoded(original, "PNG"), 1 << 24)
        averaged.append(np.abs(image_to_features(encoded(dithered, "PNG"), 1 << 24) - truth).mean())
        # What picking pixels (Pillow's resize of a 1-bit image) would have given instead:
        picked = dithered.resize((WORKING_SIZE, WORKING_SIZE), Image.Resampling.NEAREST)
        sampled.append(np.abs(image_to_features(encoded(picked, "PNG"), 1 << 24) - truth).mean())
    assert np.mean(averaged) < 0.3 < np.mean(sampled), (averaged, sampled)  # of 16 per feature


def reference_gray(image: Image.Image) -> np.ndarray:
    """The previous pipeline's colours for a small palette image: full RGBA, composited onto white, L."""
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L")
    return np.asarray(flat, dtype=np.float32)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    palette=st.binary(min_size=3, max_size=768),
    alphas=st.one_of(st.none(), st.integers(0, 255), st.binary(min_size=1, max_size=256)),
    pixels=st.lists(st.integers(0, 255), min_size=64, max_size=64),
    pixel_alphas=st.one_of(st.none(), st.lists(st.integers(0, 255), min_size=64, max_size=64)),
)
def test_palette_lookup_gives_the_colours_of_a_full_rgba_conversion(palette, alphas, pixels, pixel_alphas):
    image = Image.frombytes("P", (8, 8), bytes(pixels))
    image.putpalette(palette[: len(palette) // 3 * 3])
    if alphas is not None:
        image.info["transparency"] = alphas
    try:  # Pillow itself cannot convert some (a transparent index past the end of the palette): skip those
        if pixel_alphas is not None:  # PA: an alpha per pixel on top of the palette's
            image.apply_transparency()
            image = Image.merge("PA", [image, Image.frombytes("L", (8, 8), bytes(pixel_alphas))])
        expected = reference_gray(image.copy())
    except (IndexError, ValueError):
        assume(False)
    gray = imaging._palette_gray(image)
    if gray.mode == "LA":  # composited once shrunk, as _grayscale does
        gray = Image.alpha_composite(Image.new("RGBA", gray.size, "white"), gray.convert("RGBA")).convert("L")
    assert np.abs(np.asarray(gray, dtype=np.float32) - expected).max() <= 1.0  # rounding, in 0..255


def jpeg_with_extra_scans(extra: int, data: bytes | None = None, max_bytes: int = 0) -> bytes:
    """A real progressive JPEG (by default a 512 px one) with one of its scans repeated `extra` times:
    the smallest, or with max_bytes the biggest that keeps the file within it. Decoders accept it (a
    bogus progression is only a warning), and each copy is another pass over every coefficient."""
    if data is None:
        data = encoded(big_digit(512).convert("RGB"), "JPEG", progressive=True)
    scans, pos = [], 2
    while data[pos + 1] != 0xD9:  # walk the marker segments up to EOI
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if data[pos + 1] != 0xDA:
            pos += 2 + length
            continue
        end = pos + 2 + length
        while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
            end += 1  # entropy-coded data: 0xFF only before 0x00 (stuffing) or a restart marker
        scans.append(data[pos:end])
        pos = end
    fitting = [scan for scan in scans if len(data) + extra * len(scan) <= max_bytes]
    repeated = max(fitting, key=len) if fitting else min(scans, key=len)
    return data[:pos] + repeated * extra + data[pos:]


def test_jpeg_with_more_scans_than_any_encoder_writes_is_refused_before_decoding():
    assert image_to_features(jpeg_with_extra_scans(0), 1 << 24).shape == (64,)
    assert image_to_features(jpeg_with_extra_scans(MAX_JPEG_SCANS - 20), 1 << 24).shape == (64,)
    with pytest.raises(ImageTooLarge, match=f"scans, more than the limit of {MAX_JPEG_SCANS}"):
        image_to_features(jpeg_with_extra_scans(MAX_JPEG_SCANS), 1 << 24)
