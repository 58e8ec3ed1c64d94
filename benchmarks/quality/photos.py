"""Where the quality benchmark's photos come from: Debian packages and one PyPI wheel.

Nothing here was made by us. Installed Debian packages are read where they are; others
are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache
(no root needed). scikit-image's sample photos are read straight out of its wheel
(``pip download``), so scikit-image is not installed.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass

DEBIAN_PACKAGES = ["opencv-doc", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                   "mate-backgrounds", "ukui-wallpapers", "plasma-workspace-wallpapers",
                   "gnome-backgrounds", "desktop-base"]
SKIMAGE_WHEEL = "scikit-image==0.25.2"

OPENCV = "usr/share/doc/opencv-doc/examples/data"
GNOME = "usr/share/backgrounds/gnome"
DEBIAN_THEMES = "usr/share/desktop-base"
# Artwork: one design in a light and a dark colouring (gnome-backgrounds; the two count
# neither way in verify_study.py, as the set's own colour and grayscale copies are positives),
# and the boot-screen artworks of Debian's release themes (desktop-base): different pictures
# of one series, sharing a palette and a style: hard negatives (build_set.HARD_NEGATIVES).
GNOME_SERIES = ["adwaita", "licorice", "pixels", "truchet", "wood", "grid", "symbolic"]
DEBIAN_THEME_NAMES = ["emerald", "homeworld", "joy", "softwaves", "futureprototype", "lines", "moonlight", "spacefun"]
BACKGROUNDS = "usr/share/backgrounds"
PLASMA = "usr/share/wallpapers"

# Photos, one per scene. Graphics, renderings, charts and near-blank wallpapers are left out.
PHOTOS = {
    OPENCV: ["apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg",
             "home.jpg", "messi5.jpg", "orange.jpg", "smarties.png", "squirrel_cls.jpg",
             "starry_night.jpg", "stuff.jpg", "HappyFish.jpg", "licenseplate_motion.jpg",
             "pca_test1.jpg", "sudoku.png", "box_in_scene.png", "text_defocus.jpg", "blox.jpg"],
    BACKGROUNDS: ["Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Kleiber_by_Lukas_Baubkus.jpg",
                  "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg",
                  "aitzgorri_by_Aitzol_Berasategi.jpg", "analogpattern_by_Peter_Nerlich.jpg",
                  "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
                  "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
                  "picosdeeuropa_by_Aitzol_Berasategi.jpg", "rhythm.jpg", "seeding_by_Clements_Engelhardt.jpg",
                  "sunset_by_Aitzol_Berasategi.jpg", "umang_by_Abhishek_Mudgal.jpg", "Infinite-Sea_by_Aury88.jpg",
                  "mate/nature/Aqua.jpg", "mate/nature/Blinds.jpg", "mate/nature/Dune.jpg",
                  "mate/nature/FreshFlower.jpg", "mate/nature/Garden.jpg", "mate/nature/GreenMeadow.jpg",
                  "mate/nature/LadyBird.jpg", "mate/nature/RainDrops.jpg", "mate/nature/Storm.jpg",
                  "mate/nature/TwoWings.jpg", "mate/nature/Wood.jpg", "mate/nature/YellowFlower.jpg"],
    PLASMA: ["Autumn/contents/images/1920x1080.jpg", "BytheWater/contents/images/1920x1080.jpg",
             "ColdRipple/contents/images/1920x1080.jpg", "DarkestHour/contents/images/1920x1080.jpg",
             "EveningGlow/contents/images/1920x1080.jpg", "FallenLeaf/contents/images/1920x1080.jpg",
             "Grey/contents/images/1920x1080.jpg", "Kite/contents/images/1920x1080.jpg",
             "OneStandsOut/contents/images/1920x1080.jpg", "Path/contents/images/1920x1080.jpg"],
    GNOME: [f"{name}-{tone}.webp" for name in GNOME_SERIES for tone in ("l", "d")],
    DEBIAN_THEMES: [f"{name}-theme/grub/grub-4x3.png" for name in DEBIAN_THEME_NAMES],
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "ihc.png",
                "retina.jpg", "page.png"],
}

# Copies that exist in the packages themselves: the same picture shipped at other
# resolutions and aspect ratios. Each list is one near-duplicate group.
SHIPPED_COPIES = [
    [f"{BACKGROUNDS}/mate/abstract/Elephants.jpg", f"{BACKGROUNDS}/mate/abstract/Elephants_3840x2160.jpg"],
    *[[f"{PLASMA}/{name}/contents/images/{size}.jpg" for size in sizes] for name, sizes in [
        ("EveningGlow", ["640x480", "1280x1024"]), ("Kite", ["800x600", "2560x1600"]),
        ("Path", ["1280x800", "1600x1200"]), ("Autumn", ["1280x1024"]), ("FallenLeaf", ["1440x900"])]],
]

# Honestly ambiguous sets: stereo views, frames of one video, the same object or board
# photographed again, an edited photo. Pairs inside a set count neither way.
AMBIGUOUS = [
    [f"{OPENCV}/aloeL.jpg", f"{OPENCV}/aloeR.jpg"],
    [f"{OPENCV}/left.jpg", f"{OPENCV}/right.jpg"],
    [f"{OPENCV}/aero1.jpg", f"{OPENCV}/aero3.jpg"],
    [f"{OPENCV}/basketball1.png", f"{OPENCV}/basketball2.png"],
    [f"{OPENCV}/rubberwhale1.png", f"{OPENCV}/rubberwhale2.png"],
    [f"{OPENCV}/graf1.png", f"{OPENCV}/graf3.png"],
    [f"{OPENCV}/leuvenA.jpg", f"{OPENCV}/leuvenB.jpg"],
    [f"{OPENCV}/Blender_Suzanne1.jpg", f"{OPENCV}/Blender_Suzanne2.jpg"],
    [f"{OPENCV}/ela_original.jpg", f"{OPENCV}/ela_modified.jpg"],
    [f"{OPENCV}/left0{i}.jpg" for i in (1, 3, 5, 7, 9)] + [f"{OPENCV}/right0{i}.jpg" for i in (2, 4, 6, 8)],
    ["skimage/motorcycle_left.png", "skimage/motorcycle_right.png"],
]

LOGOS = [f"{OPENCV}/opencv-logo.png", f"{OPENCV}/opencv-logo-white.png", "skimage/logo.png"]


@dataclass(frozen=True)
class Sources:
    debian_root: dict[str, str]  # package -> root its files are under ("/" when installed)
    versions: dict[str, str]
    skimage_wheel: str

    def open(self, rel: str):
        """A binary file object for a path like ``usr/share/...`` or ``skimage/NAME``."""
        if rel.startswith("skimage/"):
            zf = zipfile.ZipFile(self.skimage_wheel)
            return zf.open("skimage/data/" + rel.split("/", 1)[1])
        for root in self.debian_root.values():
            path = os.path.join(root, rel)
            if os.path.exists(path):
                return open(path, "rb")
        raise FileNotFoundError(f"{rel}: in none of {sorted(self.debian_root)}")


def fetch(cache: str) -> Sources:
    """Find or fetch every package; exits with the command to run if it cannot."""
    os.makedirs(cache, exist_ok=True)
    roots, versions = {}, {}
    for package in DEBIAN_PACKAGES:
        installed = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", package],
                                   capture_output=True, text=True)
        if installed.returncode == 0 and installed.stdout.startswith("install ok installed"):
            roots[package], versions[package] = "/", installed.stdout.split()[-1]
            continue
        root = os.path.join(cache, package)
        debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
        if not debs:
            print(f"fetching {package} (apt-get download)", file=sys.stderr)
            got = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
            debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
            if got.returncode or not debs:
                sys.exit(f"cannot fetch Debian package {package}: {got.stderr.strip()}\n"
                         f"install it (apt-get install {package}) or put its .deb in {cache}")
        if not os.path.isdir(root):
            subprocess.run(["dpkg-deb", "-x", debs[0], root + ".tmp"], check=True)
            os.rename(root + ".tmp", root)
        roots[package] = root
        versions[package] = subprocess.run(["dpkg-deb", "-f", debs[0], "Version"], capture_output=True,
                                           text=True, check=True).stdout.strip()
    wheels = glob.glob(os.path.join(cache, "scikit_image-*.whl"))
    if not wheels:
        print(f"fetching {SKIMAGE_WHEEL} (pip download, not installed)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", cache,
                        SKIMAGE_WHEEL], check=True)
        wheels = glob.glob(os.path.join(cache, "scikit_image-*.whl"))
    versions["scikit-image"] = SKIMAGE_WHEEL.split("==")[1]
    return Sources(roots, versions, wheels[0])
