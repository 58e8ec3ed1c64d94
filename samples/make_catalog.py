"""Rebuild samples/catalog, the demo's small catalog, from the photos that the Debian
package opencv-doc installs (OpenCV's sample data, Apache-2.0/BSD licensed).

    python samples/make_catalog.py [SOURCE_DIR]

The catalog holds 12 unrelated photos, 6 near-duplicate copies of some of them (the edits
a catalog really sees), and one truncated JPEG that the job must report, not crash on.
"""

import io
import os
import sys

from PIL import Image, ImageDraw, ImageOps

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/doc/opencv-doc/examples/data"
TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog")
ORIGINALS = ["baboon.jpg", "fruits.jpg", "building.jpg", "messi5.jpg", "home.jpg", "squirrel_cls.jpg",
             "orange.jpg", "butterfly.jpg", "starry_night.jpg", "apple.jpg", "board.jpg", "smarties.png"]


def save_jpeg(im: Image.Image, name: str, quality: int = 90) -> None:
    im.convert("RGB").save(os.path.join(TARGET, name), "JPEG", quality=quality)


def main() -> None:
    os.makedirs(os.path.join(TARGET, "copies"), exist_ok=True)
    photos = {}
    for name in ORIGINALS:
        im = Image.open(os.path.join(SOURCE, name)).convert("RGB")
        photos[name] = im
        save_jpeg(im, name.replace(".png", ".jpg"))
    w, h = photos["baboon.jpg"].size
    save_jpeg(photos["baboon.jpg"].resize((w // 2, h // 2), Image.Resampling.LANCZOS), "copies/baboon_half_size.jpg")
    save_jpeg(photos["fruits.jpg"], "copies/fruits_quality25.jpg", quality=25)
    w, h = photos["building.jpg"].size
    save_jpeg(photos["building.jpg"].crop((w // 20, h // 20, w - w // 20, h - h // 20)), "copies/building_cropped.jpg")
    messi = photos["messi5.jpg"].copy()
    band = ImageDraw.Draw(messi)
    band.rectangle((0, messi.height - 40, messi.width, messi.height), fill=(0, 0, 0))
    band.text((10, messi.height - 30), "SALE -20% www.example.com", fill=(255, 255, 255))
    save_jpeg(messi, "copies/messi5_caption.jpg")
    ImageOps.expand(photos["squirrel_cls.jpg"], border=24, fill=(255, 255, 255)).save(
        os.path.join(TARGET, "copies/squirrel_border.png"))
    w, h = photos["starry_night.jpg"].size
    save_jpeg(photos["starry_night.jpg"].resize((w * 2 // 3, h * 2 // 3)), "copies/starry_night_small.jpg", quality=60)
    buf = io.BytesIO()
    photos["orange.jpg"].save(buf, "JPEG", quality=90)
    with open(os.path.join(TARGET, "copies/orange_truncated.jpg"), "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 3])


if __name__ == "__main__":
    main()
