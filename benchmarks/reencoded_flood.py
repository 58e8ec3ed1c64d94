"""A flood of real re-encoded JPEGs through `neardup run`: each of a few opencv-doc photos
saved many times at a random scale and JPEG quality (different bytes, nearby vectors).

    python benchmarks/reencoded_flood.py [--photos 5] [--copies 200] [--set KEY=VALUE ...]

Runs the job once on the catalog with the given settings and prints the wall time, every
stage's seconds, and how many copies the near-copy rule collapsed against the pairs it
still wrote (benchmarks/duplicate_flood.py does the same with synthetic vectors at a
chosen noise). Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

PHOTOS = "/usr/share/doc/opencv-doc/examples/data"


def build(root: str, photos: int, copies: int, seed: int = 0) -> None:
    sources = sorted(p for p in glob.glob(os.path.join(PHOTOS, "*.jpg")) if os.path.getsize(p) > 40_000)[:photos]
    if len(sources) < photos:
        sys.exit(f"only {len(sources)} photos under {PHOTOS}: apt-get install opencv-doc")
    rng = np.random.default_rng(seed)
    for k, path in enumerate(sources):
        im = Image.open(path).convert("RGB")
        for j in range(copies):
            scale = rng.uniform(0.6, 1.0)
            size = (max(1, int(im.width * scale)), max(1, int(im.height * scale)))
            im.resize(size, Image.Resampling.BILINEAR).save(os.path.join(root, f"img{k}_{j:04d}.jpg"),
                                                             quality=int(rng.integers(30, 96)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=5)
    p.add_argument("--copies", type=int, default=200)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="neardup-reencoded-") as work:
        catalog, out = os.path.join(work, "catalog"), os.path.join(work, "out")
        os.makedirs(catalog)
        build(catalog, args.photos, args.copies)
        cmd = [sys.executable, "-m", "neardup_core.cli", "run", "--input", catalog, "--output", out,
               *(f for s in args.set for f in ("--set", s))]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, PYSPARK_PYTHON=sys.executable),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(out, "_manifest.json")) as fh:
            manifest = json.load(fh)
    c = manifest["counts"]
    print(f"{args.photos} photos x {args.copies} re-encodes, settings: {args.set or 'defaults'}")
    print(f"wall {wall:.1f} s; near copies {c['near_copies']:,}, exact copies {c['exact_copies']:,}, "
          f"pairs {c['pairs']:,}, candidates {c['candidate_pairs']:,}, groups {c['groups']} "
          f"(largest {c['largest_group']})")
    print("stages: " + ", ".join(f"{s['name']} {s['seconds']:.1f}" for s in manifest["stages"]))


if __name__ == "__main__":
    main()
