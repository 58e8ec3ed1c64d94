"""End-to-end throughput of `neardup run` in Spark local mode on this machine.

Builds a catalog of N JPEGs of about 1000 px (random crops, scales and colour shifts of the
photos that Debian's opencv-doc installs, so decode work is like a real catalog's), runs
the job once, and prints the seconds and images/s of each stage from _manifest.json.

    python benchmarks/job_throughput.py [--images 600] [--set KEY=VALUE ...] [--baseline KEY=VALUE ...]

Prints measured numbers; it is not a test.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = "/usr/share/doc/opencv-doc/examples/data"


def build_catalog(root: str, n: int, seed: int = 0) -> None:
    sources = [p for p in sorted(glob.glob(os.path.join(PHOTOS, "*.jpg"))) if os.path.getsize(p) > 40_000]
    if not sources:
        sys.exit(f"no photos under {PHOTOS}: apt-get install opencv-doc")
    rng = np.random.default_rng(seed)
    images = [Image.open(p).convert("RGB") for p in sources]
    for i in range(n):
        im = images[i % len(images)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        tile = im.crop((x, y, x + cw, y + ch))
        scale = 1000 / max(cw, ch)
        tile = tile.resize((max(1, int(cw * scale)), max(1, int(ch * scale))), Image.Resampling.BILINEAR)
        tile = ImageEnhance.Color(tile).enhance(rng.uniform(0.5, 1.5))
        tile.save(os.path.join(root, f"img{i:06d}.jpg"), quality=int(rng.integers(70, 95)))


def run_job(catalog: str, out: str, overrides: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "neardup_core.cli", "run", "--input", catalog, "--output", out, "--overwrite"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "_manifest.json")) as fh:
        return wall, json.load(fh)


def print_run(images: int, overrides: list[str], wall: float, manifest: dict) -> None:
    print(f"images: {images}, overrides: {overrides or 'none'}, cores: {os.cpu_count()}")
    print(f"{'stage':<12}{'seconds':>9}{'images/s':>10}")
    for stage in manifest["stages"]:
        rate = images / stage["seconds"] if stage["name"] == "embed" else float("nan")
        print(f"{stage['name']:<12}{stage['seconds']:>9.1f}{rate:>10.1f}")
    print(f"{'whole run':<12}{wall:>9.1f}{images / wall:>10.1f}")
    print("counts:", manifest["counts"])
    print("lsh:", manifest.get("lsh"))
    verify = next((s for s in manifest["stages"] if s["name"] == "verify"), None)
    if verify and verify.get("borderline"):
        found = manifest["counts"]["pairs"] + manifest["counts"]["rejected_pairs"]
        matched = verify.get("matched", verify["borderline"])
        print(f"verify: {verify['borderline']} of {found} pairs borderline ({verify['borderline'] / found:.1%}): "
              f"{matched} matched ({matched / verify['borderline']:.1%}), {verify.get('unverified', 0)} left "
              f"unverified, {verify.get('over_budget', 0)} over the budget; {verify['rejected']} rejected; "
              f"{verify['images']} images featurized; {verify.get('rounds', 1)} rounds; {verify['seconds']:.1f} s")
        if "match_seconds" in verify and matched and verify["images"]:
            print(f"verify: featurizing {verify['featurize_seconds']:.1f} s "
                  f"({verify['featurize_seconds'] / verify['images']:.3f} s per image), matching "
                  f"{verify['match_seconds']:.1f} s ({verify['match_seconds'] / matched * 1000:.1f} s per 1,000 "
                  f"pairs), wall-clock on all {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--baseline", action="append", default=None, metavar="KEY=VALUE",
                    help="also run the job on the same catalog with these overrides, first, and print the "
                         "ratio of the two whole runs (e.g. --baseline pairs.accept_cosine=-1: no verification)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="neardup-bench-")
    try:
        catalog, out = os.path.join(work, "catalog"), os.path.join(work, "out")
        os.makedirs(catalog)
        build_catalog(catalog, args.images)
        if args.baseline is not None:
            base_wall, base = run_job(catalog, out, args.baseline)
            print_run(args.images, args.baseline, base_wall, base)
            print()
        wall, manifest = run_job(catalog, out, args.set)
        print_run(args.images, args.set, wall, manifest)
        if args.baseline is not None:
            print(f"\nwhole run {wall:.1f} s / baseline {base_wall:.1f} s = {wall / base_wall:.2f}; embed stage "
                  f"{_stage(manifest, 'embed') / _stage(base, 'embed'):.2f} x the baseline's")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage(manifest: dict, name: str) -> float:
    return next(s["seconds"] for s in manifest["stages"] if s["name"] == name)


if __name__ == "__main__":
    main()
