"""Geometric verification's kernel on one core: ratio-test matching as the job does it
(neardup_core.verify.good_matches, one float32 matrix product) against OpenCV's brute-force
knnMatch (what it did before; tests/references.py), on the same pairs in the same process,
plus RANSAC; and whether the two give the same matches.

    python benchmarks/verify_kernel.py

Pairs: every pair among 10 opencv-doc photos and two crops of each (30 images at 512 px,
1,000 SIFT keypoints each; 435 pairs, copies and non-copies).
"""

from __future__ import annotations

import io
import os
import sys
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neardup_core import verify
from tests.references import brute_force_matches

DATA = "/usr/share/doc/opencv-doc/examples/data"
PHOTOS = ["baboon.jpg", "fruits.jpg", "messi5.jpg", "home.jpg", "butterfly.jpg", "building.jpg", "graf1.png",
          "leuvenA.jpg", "starry_night.jpg", "aero1.jpg"]


def main() -> None:
    import cv2

    cv2.setNumThreads(1)
    feats = []
    start = time.perf_counter()
    for name in PHOTOS:
        with Image.open(os.path.join(DATA, name)) as im:
            im = im.convert("RGB")
        w, h = im.size
        for box in [(0, 0, w, h), (w // 10, h // 10, w * 9 // 10, h * 9 // 10), (0, h // 5, w * 7 // 10, h)]:
            buf = io.BytesIO()
            im.crop(box).save(buf, "JPEG", quality=85)
            feats.append(verify.features(verify.gray_image(buf.getvalue(), 512, 10**9)))
    per_image = (time.perf_counter() - start) / len(feats)
    pairs = [(i, j) for i in range(len(feats)) for j in range(i + 1, len(feats))]
    with verify.one_thread():
        start = time.perf_counter()
        before = [brute_force_matches(feats[i], feats[j], 0.75) for i, j in pairs]
        bf = time.perf_counter() - start
        start = time.perf_counter()
        now = [verify.good_matches(feats[i], feats[j], 0.75) for i, j in pairs]
        fast = time.perf_counter() - start
        start = time.perf_counter()
        for (i, j), (ia, ib) in zip(pairs, now):
            verify.fit_inliers(feats[i].points[ia], feats[j].points[ib], "homography")
        ransac = time.perf_counter() - start
    same = sum(list(a) == n[0].tolist() and list(b) == n[1].tolist() for (a, b), n in zip(before, now))
    n = len(pairs)
    print(f"{len(feats)} images: {per_image:.3f} s per featurized image (decode included)")
    print(f"{n} pairs, one thread: matching {fast / n * 1000:.1f} ms per pair (brute-force knnMatch "
          f"{bf / n * 1000:.1f} ms: {bf / fast:.1f} x); RANSAC {ransac / n * 1000:.1f} ms per pair")
    print(f"per 1,000 verified pairs: {(fast + ransac) / n * 1000:.1f} s now, {(bf + ransac) / n * 1000:.1f} s with "
          f"knnMatch ({(bf + ransac) / (fast + ransac):.1f} x)")
    print(f"same matches as knnMatch: {same} of {n} pairs")


if __name__ == "__main__":
    main()
