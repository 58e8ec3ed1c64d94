import io

import numpy as np
import pytest
from PIL import Image

from neardup_core.decode import DecodeError, decode_image


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w, h):
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb_at_model_size(mode):
    im = gradient(90, 60).convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(90 * 60).reshape(60, 90) * 7).astype(np.uint16))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(encode(im, fmt), size=32, max_pixels=10**6)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_transparent_pixels_composite_on_white():
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    out = decode_image(encode(im, "PNG"), size=8, max_pixels=10**6)
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    # A landscape gradient stored with "rotate 90" must come out as the rotated picture.
    im = gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    rotated = decode_image(encode(im, "JPEG", quality=95, exif=exif), size=32, max_pixels=10**6)
    plain = decode_image(encode(im.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95),
                         size=32, max_pixels=10**6)
    assert np.abs(rotated.astype(int) - plain.astype(int)).mean() < 3


def test_jpeg_draft_decode_stays_close_to_a_full_decode():
    rng = np.random.default_rng(0)
    big = gradient(1600, 1200)
    noise = Image.fromarray(rng.integers(0, 40, (1200, 1600, 3), dtype=np.uint8))
    im = Image.blend(big, noise, 0.3)
    data = encode(im, "JPEG", quality=90)
    fast = decode_image(data, size=224, max_pixels=10**8)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2.0


def test_truncated_jpeg_is_reported():
    data = encode(gradient(200, 200), "JPEG")
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], size=32, max_pixels=10**6)


@pytest.mark.parametrize("data,reason", [(b"", "empty file"), (b"hello, not an image", "not a recognised image format"),
                                         (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt or truncated|not a recognised")])
def test_non_images_are_reported(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, size=32, max_pixels=10**6)


@pytest.mark.parametrize("side", [9000, 20000])  # under and over Pillow's own hard limit
def test_decompression_bomb_refused_before_decoding(side):
    bomb = encode(Image.new("1", (side, side)), "PNG")  # a few kB on disk, 81-400 Mpx in memory
    assert len(bomb) < 100_000
    with pytest.raises(DecodeError, match="too many pixels, above input.max_pixels=64000000"):
        decode_image(bomb, size=32, max_pixels=64_000_000)


def test_first_frame_of_animated_gif():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data, size=8, max_pixels=10**6)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50
