"""Image bytes -> RGB pixels at model size, or the reason it failed. Pure (Pillow, NumPy).

The cheap path: JPEG files are decoded at a reduced DCT scale (Pillow's ``draft``) to
the smallest size that is still at least the model input, which roughly halves decode
time on catalogue photos and costs nothing visible after the final antialiased resize.

Two preparations make copies look alike to the model, both chosen on the quality
benchmark (benchmarks/quality, docs/quality.md): uniform borders (padding,
letterboxing, frames) are cut off, and the image is turned to grayscale, so a recoloured
or grayscale copy meets its original. Neither costs a model call.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps


class DecodeError(ValueError):
    """The bytes are not an image this job can use; the message says why."""


# A border line is one whose pixels all lie within BORDER_TOLERANCE (per channel, 0..255)
# of the corner's colour, bar BORDER_NOISE of them (JPEG ringing, a stray mark).
BORDER_TOLERANCE = 12
BORDER_NOISE = 0.02
# Trimming never keeps less than this share of the area: a photo of a small object on a
# plain studio background stays whole instead of being cut down to the object.
MIN_TRIMMED_AREA = 0.3
# EXIF orientations 5-8 turn the image a quarter: its displayed width is its stored height.
ORIENTATION_TAG = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)
TURNED = (2, 3, 4, 5, 6, 7, 8)  # orientations that move pixels (1: as stored)


class Decoded(NamedTuple):
    pixels: np.ndarray  # uint8 (size, size, 3) RGB, as the model sees it
    width: int  # the image's own size, as displayed (EXIF orientation applied)
    height: int


def decode_image(data: bytes, size: int, max_pixels: int, trim_borders: bool = False,
                 grayscale: bool = False) -> np.ndarray:
    """:func:`decode_with_size`, the pixels only."""
    return decode_with_size(data, size, max_pixels, trim_borders, grayscale).pixels


def decode_with_size(data: bytes, size: int, max_pixels: int, trim_borders: bool = False,
                     grayscale: bool = False) -> Decoded:
    """Decode, orient, convert and resize one image; keep its own width and height.

    Args:
        data: the file's bytes.
        size: side of the square model input.
        max_pixels: images with more pixels than this are refused before decoding
            (decompression bombs).
        trim_borders: cut uniform borders first (:func:`content_box`).
        grayscale: give the model the image's luminance in all three channels.

    Returns:
        The pixels, uint8 (size, size, 3), RGB, EXIF orientation applied; and the
        image's width and height before any resizing or trimming.

    Raises:
        DecodeError: empty, unrecognised, truncated or corrupt data, or too many pixels.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise DecodeError(
                        f"too many pixels, above input.max_pixels={max_pixels}: "
                        f"image is {width}x{height} = {width * height} pixels"
                    )
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))
                orientation = im.getexif().get(ORIENTATION_TAG)
                if orientation in QUARTER_TURNS:
                    width, height = height, width
                if orientation in TURNED:  # exif_transpose copies even an image it leaves alone
                    im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
                if trim_borders:
                    rgb = rgb.crop(_content_box_at(rgb, max(16, size // 2)))
                if grayscale:
                    # Resized as one band, then repeated: the same values as resizing the
                    # three equal bands (Pillow resizes each band alike), a third of the work.
                    grey = np.asarray(rgb.convert("L").resize((size, size), Image.Resampling.BILINEAR),
                                      dtype=np.uint8)
                    return Decoded(np.repeat(grey[:, :, None], 3, axis=2), width, height)
                pixels = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
                return Decoded(pixels, width, height)
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:
        # Pillow refuses twice its own limit (~179 Mpx) inside open(), before our check.
        raise DecodeError(f"too many pixels, above input.max_pixels={max_pixels}: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise DecodeError("not a recognised image format") from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        # Pillow reports truncated and corrupt data with these (SyntaxError for broken
        # headers in some plugins, EOFError/IndexError for damaged frames).
        raise DecodeError(f"corrupt or truncated image data: {type(err).__name__}: {err}") from err


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white, as catalogues show it."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit-depth grayscale: stretch to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB image


def _content_box_at(im: Image.Image, probe_side: int) -> tuple[int, int, int, int]:
    """:func:`content_box` found on a copy reduced to about ``probe_side`` (a PNG is never
    drafted smaller, and the box needs no more detail), scaled back to ``im``. A cut edge
    moves one reduced pixel inward, since that pixel mixes border and content."""
    factor = max(1, min(im.size) // probe_side)
    if factor == 1:
        return content_box(np.asarray(im))
    small = im.reduce(factor)
    left, top, right, bottom = content_box(np.asarray(small))
    left, top = left + (left > 0), top + (top > 0)
    right, bottom = right - (right < small.width), bottom - (bottom < small.height)
    if right <= left or bottom <= top:  # cannot happen above min_area; never crop to nothing
        return 0, 0, im.width, im.height
    return left * factor, top * factor, min(im.width, right * factor), min(im.height, bottom * factor)


def content_box(rgb: np.ndarray, tolerance: int = BORDER_TOLERANCE, noise: float = BORDER_NOISE,
                min_area: float = MIN_TRIMMED_AREA) -> tuple[int, int, int, int]:
    """The image without its uniform borders, as a (left, top, right, bottom) box.

    The border colour is read at the top-left corner and lines at the edges whose pixels
    nearly all match it are cut; then the same again with the bottom-right corner of what
    is left (a caption band and a frame each have a colour of their own). A box smaller
    than ``min_area`` of the image is not taken.

    Args:
        rgb: uint8 (height, width, 3).

    Returns:
        The box for ``PIL.Image.crop``; the whole image when there is no border.

    Cost: two passes over the pixels in int16.
    """
    height, width = rgb.shape[:2]
    left, top, right, bottom = 0, 0, width, height
    for corner in ((0, 0), (-1, -1)):
        kept = rgb[top:bottom, left:right]
        colour = kept[corner].astype(np.int16)
        differs = np.zeros(kept.shape[:2], dtype=bool)
        for channel in range(3):  # per channel: much faster than a max over the last axis
            differs |= np.abs(kept[..., channel].astype(np.int16) - colour[channel]) > tolerance
        rows = np.flatnonzero(differs.mean(axis=1) > noise)
        cols = np.flatnonzero(differs.mean(axis=0) > noise)
        if len(rows) == 0 or len(cols) == 0:  # one flat colour, or specks below the noise level
            continue
        box = (left + int(cols[0]), top + int(rows[0]), left + int(cols[-1]) + 1, top + int(rows[-1]) + 1)
        if (box[2] - box[0]) * (box[3] - box[1]) >= min_area * width * height:
            left, top, right, bottom = box
    return left, top, right, bottom
