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


def content_box_reference(rgb, tolerance, noise, min_area):
    """The same rule written line by line: walk in from each edge while the line matches
    the corner colour, first of the top-left corner, then of what is left's bottom-right."""
    h, w = rgb.shape[:2]
    box = [0, 0, w, h]
    for which in (0, -1):
        left, top, right, bottom = box
        corner = rgb[top:bottom, left:right][which, which].astype(int)

        def plain(line, corner=corner):
            return np.mean(np.abs(line.astype(int) - corner).max(axis=-1) > tolerance) <= noise

        while top < bottom and plain(rgb[top, box[0]:box[2]]):
            top += 1
        while left < right and plain(rgb[box[1]:box[3], left]):
            left += 1
        if top == bottom or left == right:
            continue
        while plain(rgb[bottom - 1, box[0]:box[2]]):
            bottom -= 1
        while plain(rgb[box[1]:box[3], right - 1]):
            right -= 1
        if (right - left) * (bottom - top) >= min_area * w * h:
            box = [left, top, right, bottom]
    return tuple(box)


@pytest.mark.parametrize("seed", range(12))
def test_content_box_matches_the_line_by_line_rule(seed):
    from neardup_core.decode import content_box

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(3, 60)), int(rng.integers(3, 60))
    fill = rng.integers(0, 256, 3)
    rgb = np.broadcast_to(fill, (h, w, 3)).astype(np.uint8).copy()
    top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
    bottom, right = int(rng.integers(top + 1, h + 1)), int(rng.integers(left + 1, w + 1))
    rgb[top:bottom, left:right] = rng.integers(0, 256, (bottom - top, right - left, 3))
    if seed % 3 == 0:  # a caption band of another colour at the bottom
        rgb[-max(1, h // 5):] = 255 - fill
    for min_area in (0.0, 0.3):
        assert content_box(rgb, 12, 0.02, min_area) == content_box_reference(rgb, 12, 0.02, min_area)


def test_padding_frame_and_band_are_cut_and_a_plain_photo_is_kept_whole():
    from neardup_core.decode import content_box

    photo = np.asarray(gradient(120, 80))
    assert content_box(photo) == (0, 0, 120, 80)
    framed = np.full((100, 160, 3), 255, np.uint8)
    framed[10:90, 20:140] = photo
    assert content_box(framed) == (20, 10, 140, 90)
    banded = np.zeros((110, 120, 3), np.uint8)  # black caption band on top, white frame below
    banded[:30] = 0
    banded[30:] = 255
    banded[30:105, 5:115] = photo[:75, :110]
    assert content_box(banded) == (5, 30, 115, 105)
    flat = np.full((50, 50, 3), 7, np.uint8)
    assert content_box(flat) == (0, 0, 50, 50)
    small = np.full((100, 100, 3), 255, np.uint8)  # an object on a studio background
    small[40:60, 40:60] = 0
    assert content_box(small) == (0, 0, 100, 100)


def test_a_padded_grayscale_copy_decodes_like_its_original():
    photo = gradient(480, 320)
    padded = Image.new("RGB", (640, 480), (0, 0, 0))
    padded.paste(photo.convert("L").convert("RGB"), (80, 80))
    kw = dict(size=224, max_pixels=10**6, trim_borders=True, grayscale=True)
    a = decode_image(encode(photo, "PNG"), **kw).astype(int)
    b = decode_image(encode(padded, "PNG"), **kw).astype(int)
    # The box is found at about half the model size, so an edge may cut a few pixels of the photo.
    assert np.abs(a - b).max() <= 8 and np.abs(a - b).mean() <= 2
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    untrimmed = decode_image(encode(padded, "PNG"), size=224, max_pixels=10**6, grayscale=True).astype(int)
    assert np.abs(a - untrimmed).max() > 50


def decode_reference(data, size, trim_borders, grayscale):
    """The decode as first written: every image transposed and converted (copies), the
    grayscale image resized as three bands."""
    from PIL import ImageOps

    from neardup_core.decode import _content_box_at, _to_rgb

    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        rgb = _to_rgb(ImageOps.exif_transpose(im)).convert("RGB")
        if trim_borders:
            rgb = rgb.crop(_content_box_at(rgb, max(16, size // 2)))
        if grayscale:
            rgb = rgb.convert("L").convert("RGB")
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(3))
def test_decode_gives_the_pixels_of_the_reference(seed):
    """The copy-free decode against the reference, on seeded photos-like images in every
    EXIF orientation, format and mode the shortcuts touch."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(np.clip(gradient(int(rng.integers(60, 400)), int(rng.integers(60, 400)))
                                   + rng.normal(0, 20, (1, 1, 3)), 0, 255).astype(np.uint8))
    cases = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append(encode(base, "JPEG", quality=int(rng.integers(60, 95)), exif=exif))
    cases += [encode(base, "PNG"), encode(base.convert("L"), "PNG"), encode(base.convert("RGBA"), "PNG"),
              encode(base.convert("P"), "PNG"), encode(base, "WEBP")]
    for data in cases:
        for trim, grey in ((False, False), (True, True), (False, True)):
            size = int(rng.choice([16, 64, 224]))
            got = decode_image(data, size, 10**8, trim_borders=trim, grayscale=grey)
            np.testing.assert_array_equal(got, decode_reference(data, size, trim, grey))
