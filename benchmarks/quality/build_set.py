"""Build the labelled near-duplicate set for the quality benchmark.

Real photos that no one here made (benchmarks/quality/photos.py says where from) are
copied with the transforms a catalog really sees, alone and combined. Every file gets a
random name that says nothing about its group; truth.csv holds the labels. The seed
fixes everything, so every machine builds the same set from the same package versions
(recorded in set.json).

    python benchmarks/quality/build_set.py --out bench-quality/set [--seed 4] [--cache DIR]

Labels (truth.csv: file, group, role, transform, source):
- role original / copy / shipped: one near-duplicate group per scene; every pair inside
  a group is a true pair. ``shipped`` copies come as such in the packages (another
  resolution or aspect ratio of the same wallpaper).
- role ambiguous: stereo views, frames of one video, one board photographed again, an
  edited photo. Pairs inside one ambiguous set count neither way.
- hard_negatives.csv: sets of different photos of the same kind of subject (three photos
  of leaves, of fruit, of textures...). Their pairs are negatives; the scorer reports them
  separately.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

sys.path.insert(0, os.path.dirname(__file__))
import photos

MAX_SIDE = 2560  # originals above this are re-encoded smaller (keeps the set ~100 MB)
WORDS = ["sale", "new", "limited", "offer", "best", "price", "summer", "collection", "exclusive", "free",
         "shipping", "today", "only", "original", "quality", "photo", "studio", "archive", "catalog", "premium",
         "edition", "classic"]
TRANSFORMS = ["downscale", "jpeg", "crop", "pad", "colour", "grayscale", "caption", "text", "logo",
              "rotate", "aspect", "combo"]
COMBINABLE = ["downscale", "jpeg", "crop", "pad", "colour", "grayscale", "caption", "text", "logo", "rotate"]

HARD_NEGATIVES = [  # same kind of subject, different photos (names from photos.PHOTOS)
    ["apple.jpg", "orange.jpg", "fruits.jpg"],
    ["Autumn/", "FallenLeaf/", "sunset_by_Aitzol_Berasategi.jpg", "life_by_Aitzol_Berasategi.jpg"],
    ["FreshFlower.jpg", "YellowFlower.jpg", "Garden.jpg", "LadyBird.jpg"],
    ["brick.png", "gravel.png", "grass.png", "analogpattern_by_Peter_Nerlich.jpg"],
    ["Aqua.jpg", "Storm.jpg", "rhythm.jpg", "ColdRipple/", "BytheWater/", "EveningGlow/"],
    ["aitzgorri_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Path/"],
    ["GreenMeadow.jpg", "seeding_by_Clements_Engelhardt.jpg", "RainDrops.jpg", "Blinds.jpg"],
    ["Dragonfly_by_Bolly.jpg", "TwoWings.jpg", "butterfly.jpg", "LadyBird.jpg"],
    ["text_defocus.jpg", "licenseplate_motion.jpg", "page.png", "sudoku.png"],
    [f"{name}-theme/grub/grub-4x3.png" for name in photos.DEBIAN_THEME_NAMES],  # one series of artworks
]


class Transforms:
    """Each method takes an RGB image and returns (image, description); ``jpeg_quality``
    is set by the ``jpeg`` transform and read when the copy is saved."""

    def __init__(self, rng: np.random.Generator, logos: list[Image.Image]):
        self.rng = rng
        self.logos = logos
        self.jpeg_quality: int | None = None

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def words(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choice(WORDS, int(self.rng.integers(lo, hi + 1))))

    def random_colour(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in self.rng.integers(0, 256, 3))

    def font(self, px: float) -> ImageFont.FreeTypeFont:
        return ImageFont.load_default(size=max(8, int(px)))

    def downscale(self, im):
        s = self.u(0.2, 0.5)
        w, h = im.size
        s = max(s, 96 / min(w, h))
        return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS), f"scale {s:.2f}"

    def jpeg(self, im):
        self.jpeg_quality = int(self.rng.integers(20, 41))
        return im, f"quality {self.jpeg_quality}"

    def crop(self, im):
        w, h = im.size
        fw, fh = self.u(0.75, 0.95), self.u(0.75, 0.95)
        cw, ch = round(w * fw), round(h * fh)
        x, y = int(self.rng.integers(0, w - cw + 1)), int(self.rng.integers(0, h - ch + 1))
        return im.crop((x, y, x + cw, y + ch)), f"keep {fw:.2f} x {fh:.2f}"

    def pad(self, im):
        w, h = im.size
        fill = [(255, 255, 255), (0, 0, 0), self.random_colour()][int(self.rng.integers(0, 3))]
        if self.rng.random() < 0.5:  # letterbox to a square canvas
            side = max(w, h)
            return ImageOps.pad(im, (side, side), color=fill), "letterbox to square"
        b = self.u(0.05, 0.2)
        return ImageOps.expand(im, border=round(b * min(w, h)), fill=fill), f"border {b:.2f}"

    def colour(self, im):
        b, c, s = self.u(0.6, 1.4), self.u(0.6, 1.4), self.u(0.4, 1.6)
        im = ImageEnhance.Brightness(im).enhance(b)
        im = ImageEnhance.Contrast(im).enhance(c)
        im = ImageEnhance.Color(im).enhance(s)
        hue = int(self.rng.integers(-20, 21))
        if hue:
            h, s_, v = im.convert("HSV").split()
            h = h.point(lambda x: (x + hue) % 256)
            im = Image.merge("HSV", (h, s_, v)).convert("RGB")
        return im, f"brightness {b:.2f} contrast {c:.2f} saturation {s:.2f} hue {hue:+d}"

    def grayscale(self, im):
        return im.convert("L").convert("RGB"), "grayscale"

    def caption(self, im):
        w, h = im.size
        band = round(h * self.u(0.12, 0.25))
        bg = (255, 255, 255) if self.rng.random() < 0.6 else (0, 0, 0)
        canvas = Image.new("RGB", (w, h + band), bg)
        top = self.rng.random() < 0.5
        canvas.paste(im, (0, band if top else 0))
        draw = ImageDraw.Draw(canvas)
        text = self.words(2, 5).upper()
        font = self.font(band * 0.5)
        while font.size > 8 and draw.textlength(text, font=font) > w * 0.95:
            font = self.font(font.size * 0.85)
        fg = (0, 0, 0) if bg == (255, 255, 255) else (255, 255, 255)
        draw.text((w / 2, (band / 2) if top else h + band / 2), text, fill=fg, font=font, anchor="mm")
        return canvas, f"caption band {band / h:.2f} {'top' if top else 'bottom'}"

    def text(self, im):
        im = im.copy()
        w, h = im.size
        draw = ImageDraw.Draw(im)
        lines = int(self.rng.integers(1, 4))
        size = h * self.u(0.05, 0.12)
        for _ in range(lines):
            font = self.font(size)
            text = self.words(1, 4)
            x, y = self.u(0, 0.5) * w, self.u(0, 0.85) * h
            draw.text((x, y), text, fill=self.random_colour(), font=font, stroke_width=max(1, int(size / 15)),
                      stroke_fill=self.random_colour())
        return im, f"{lines} lines of text, {size / h:.2f} of height"

    def logo(self, im):
        im = im.copy().convert("RGBA")
        w, h = im.size
        logo = self.logos[int(self.rng.integers(0, len(self.logos)))].convert("RGBA")
        lw = round(w * self.u(0.12, 0.3))
        logo = logo.resize((lw, max(1, round(logo.height * lw / logo.width))), Image.Resampling.LANCZOS)
        opacity = self.u(0.5, 1.0)
        logo.putalpha(logo.getchannel("A").point(lambda a: int(a * opacity)))
        margin = round(0.03 * w)
        corners = [(margin, margin), (w - logo.width - margin, margin), (margin, h - logo.height - margin),
                   (w - logo.width - margin, h - logo.height - margin)]
        x, y = corners[int(self.rng.integers(0, 4))]
        im.alpha_composite(logo, (max(0, x), max(0, y)))
        return im.convert("RGB"), f"logo {lw / w:.2f} of width, opacity {opacity:.2f}"

    def rotate(self, im):
        angle = self.u(2, 10) * (1 if self.rng.random() < 0.5 else -1)
        if self.rng.random() < 0.5:
            return im.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=self.random_colour()), \
                f"rotate {angle:+.1f} with corners"
        w, h = im.size
        rotated = im.rotate(angle, Image.Resampling.BICUBIC)
        t = np.tan(np.radians(abs(angle)))
        dx, dy = round(h * t / 2) + 1, round(w * t / 2) + 1  # cut the filled corners off
        return rotated.crop((dx, dy, w - dx, h - dy)), f"rotate {angle:+.1f} cropped"

    def aspect(self, im):
        w, h = im.size
        if self.rng.random() < 0.5:
            f = self.u(0.65, 0.85) if self.rng.random() < 0.5 else self.u(1.2, 1.5)
            return im.resize((round(w * f), h), Image.Resampling.LANCZOS), f"stretch width x{f:.2f}"
        target = [1.0, 4 / 3, 16 / 9, 3 / 4][int(self.rng.integers(0, 4))]
        if w / h > target:
            cw = round(h * target)
            return im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h)), f"centre crop to {target:.2f}"
        ch = round(w / target)
        return im.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch)), f"centre crop to {target:.2f}"

    def apply(self, name: str, im):
        """(copy, label, description) for transform ``name``; ``combo`` chains 2-3 others."""
        self.jpeg_quality = None
        if name == "combo":
            names = list(self.rng.choice(COMBINABLE, int(self.rng.integers(2, 4)), replace=False))
            descriptions = []
            for part in names:
                im, d = getattr(self, part)(im)
                descriptions.append(d)
            return im, "combo:" + "+".join(names), "; ".join(descriptions)
        im, d = getattr(self, name)(im)
        return im, name, d


def load_rgb(src: photos.Sources, rel: str) -> Image.Image:
    with src.open(rel) as f, Image.open(io.BytesIO(f.read())) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")


def save(im: Image.Image, path_stem: str, rng, jpeg_quality: int | None) -> str:
    if jpeg_quality is None and rng.random() < 0.2:
        path = path_stem + ".png"
        im.save(path, optimize=False)
    else:
        path = path_stem + ".jpg"
        im.save(path, quality=jpeg_quality or int(rng.integers(80, 96)))
    return os.path.basename(path)


def copy_original(src: photos.Sources, rel: str, path_stem: str) -> str:
    """The original as shipped (its own bytes), re-encoded only when larger than MAX_SIDE."""
    ext = os.path.splitext(rel)[1].lower()
    with src.open(rel) as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= MAX_SIDE:
            with open(path_stem + ext, "wb") as out:
                out.write(data)
            return os.path.basename(path_stem + ext)
    im = load_rgb(src, rel)
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    im.save(path_stem + ".jpg", quality=95)
    return os.path.basename(path_stem + ".jpg")


def build(out: str, seed: int, cache: str) -> dict:
    src = photos.fetch(cache)
    rng = np.random.default_rng(seed)
    if os.path.exists(out):
        shutil.rmtree(out)
    images = os.path.join(out, "images")
    os.makedirs(images)
    used_names: set[str] = set()

    def stem() -> str:
        while True:
            name = f"{int(rng.integers(0, 2**40)):010x}"
            if name not in used_names:
                used_names.add(name)
                return os.path.join(images, name)

    logos = [load_rgb(src, rel).convert("RGBA") for rel in photos.LOGOS]
    tf = Transforms(rng, logos)
    rows = []
    base = [f"{root}/{name}" if root != "skimage" else f"skimage/{name}"
            for root, names in photos.PHOTOS.items() for name in names]
    shipped = {group[0].split("/contents/")[0]: group for group in photos.SHIPPED_COPIES}
    order = list(rng.permutation(len(TRANSFORMS) * 40) % len(TRANSFORMS))
    for g, rel in enumerate(base):
        group = f"g{g:03d}"
        n_copies = int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.1, 0.15, 0.2, 0.25, 0.15, 0.15]))
        with_original = n_copies < 2 or rng.random() < 0.85
        if with_original:
            rows.append((copy_original(src, rel, stem()), group, "original", "", rel))
        im = load_rgb(src, rel)
        for _ in range(n_copies):
            copy, label, d = tf.apply(TRANSFORMS[order.pop()], im)
            rows.append((save(copy, stem(), rng, tf.jpeg_quality), group, "copy", label, f"{rel}: {d}"))
        for variant in shipped.pop(rel.split("/contents/")[0], []):
            if variant != rel:
                rows.append((copy_original(src, variant, stem()), group, "shipped", "shipped", variant))
    for g, group_files in enumerate(shipped.values(), start=len(base)):
        for variant in group_files:
            rows.append((copy_original(src, variant, stem()), f"g{g:03d}", "shipped", "shipped", variant))
    for a, group_files in enumerate(photos.AMBIGUOUS):
        for rel in group_files:
            rows.append((copy_original(src, rel, stem()), f"a{a:02d}", "ambiguous", "", rel))
    rows.sort()
    with open(os.path.join(out, "truth.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "group", "role", "transform", "source"])
        w.writerows(rows)
    by_source = {source: file for file, _, role, _, source in rows if role == "original"}
    with open(os.path.join(out, "hard_negatives.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "file"])
        for s, members in enumerate(HARD_NEGATIVES):
            for m in members:
                for source, file in by_source.items():
                    if source.endswith("/" + m) or (m.endswith("/") and f"/{m}contents/" in source + "/"):
                        w.writerow([f"h{s:02d}", file])
    info = {"seed": seed, "images": len(rows), "packages": src.versions,
            "groups": len({r[1] for r in rows if not r[1].startswith("a")}),
            "copies": sum(r[2] == "copy" for r in rows)}
    with open(os.path.join(out, "set.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


def default_cache() -> str:
    return os.path.expanduser("~/.cache/neardup/bench-photos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-quality/set")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--cache", default=default_cache())
    args = parser.parse_args()
    info = build(args.out, args.seed, args.cache)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
