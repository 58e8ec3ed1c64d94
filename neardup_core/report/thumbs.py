"""Thumbnails for the report: an image's bytes -> a small JPEG. Pure (Pillow).

A thumbnail's file name is made from a hash of the image id, never from the file name,
which is untrusted input (it may hold ``..``, slashes in a URI, or markup).
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageOps

JPEG_QUALITY = 82


class ThumbnailError(ValueError):
    """The bytes could not be made into a thumbnail; the message says why."""


def thumbnail_name(image_id: str) -> str:
    """The thumbnail's file name in ``report/thumbs/``: 32 hex digits of BLAKE2b of the id."""
    return hashlib.blake2b(image_id.encode("utf-8"), digest_size=16).hexdigest() + ".jpg"


def thumbnail(data: bytes, max_side: int, max_pixels: int) -> bytes:
    """A JPEG whose longest side is at most ``max_side`` pixels, oriented as displayed.

    JPEGs are decoded at a reduced DCT scale (Pillow's ``draft``), so a 12-megapixel photo
    costs a fraction of a full decode.

    Raises:
        ThumbnailError: not an image, or more than ``max_pixels`` pixels (refused before
            decoding: decompression bombs).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ThumbnailError(f"{im.width}x{im.height} pixels, above input.max_pixels={max_pixels}")
            im.draft("RGB", (max_side, max_side))
            small = ImageOps.exif_transpose(im).convert("RGB")
            small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            small.save(out, "JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except Image.UnidentifiedImageError as err:  # its text names a BytesIO object and its address
        raise ThumbnailError("not a recognised image format") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, ThumbnailError):
            raise
        raise ThumbnailError(f"unreadable image data: {err}") from err
