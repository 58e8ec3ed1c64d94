"""How long the review report takes to build, and how big it is, on a synthetic run.

    python benchmarks/report_build.py [--images 1000 100000] [--pool 200] [--work DIR]

For each size, a finished run's folder is written with PyArrow (seeded): 35 % of the
images in duplicate groups (sizes 2 + a geometric number, one group of 1 % of the
catalog), each drop paired with its kept image plus a chain pair in every group of four
or more, cosines skewed towards 1 above the 0.7 threshold, 1 % errors over 20 reasons,
and embeddings/ with sizes. Images point at a pool of `--pool` real JPEGs (~1000 px,
made once) so that the thumbnails decode real files. The report is built with the
default `report.*` limits, with the thumbnails made in this process on one core (in a
run, the same kernel runs as a Spark stage on every core). It prints the seconds for
choosing what to show (reading the Parquet outputs), for the thumbnails, for rendering
and writing, and the folder's size. It prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neardup_core.config import ReportConfig
from neardup_core.report import attach_thumbnails, prepare, write
from neardup_core.report.thumbs import ThumbnailError, thumbnail

THRESHOLD = 0.7


def photo_pool(folder: str, count: int, seed: int = 0) -> list[str]:
    """``count`` JPEGs of about 1000 x 750 px: smooth random colour fields, q 90."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"photo-{i:04d}.jpg")
        if not os.path.exists(path):
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((1000, 750), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def synthetic_run(folder: str, images: int, pool: list[str], seed: int = 1) -> dict:
    """A finished run's folder of ``images`` images; returns its manifest."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"img-{i:07d}.jpg" for i in range(images)], dtype=object)
    paths = np.array([pool[i % len(pool)] for i in range(images)], dtype=object)
    sizes = [max(2, images // 100)]
    grouped = int(images * 0.35)
    while sum(sizes) < grouped:
        sizes.append(2 + int(rng.geometric(0.45)) - 1)
    members = rng.permutation(images)[:sum(sizes)]
    groups = {k: [] for k in ("id", "path", "group_id", "group_size", "action", "kept_id", "cosine")}
    pairs = {k: [] for k in ("id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched")}

    def add_pair(a, b, cosine):
        a, b = sorted((a, b))
        for key, value in zip(pairs, (ids[a], ids[b], paths[a], paths[b], cosine, 0.5, 8)):
            pairs[key].append(value)

    start = 0
    for size in sizes:
        group = sorted(members[start:start + size], key=lambda i: ids[i])
        start += size
        kept = group[0]
        cosines = 1 - (1 - THRESHOLD) * rng.beta(1.2, 3.0, size - 1)
        for key, value in zip(groups, (ids[kept], paths[kept], ids[kept], size, "keep", None, None)):
            groups[key].append(value)
        for i, c in zip(group[1:], cosines):
            for key, value in zip(groups, (ids[i], paths[i], ids[kept], size, "drop", ids[kept], float(c))):
                groups[key].append(value)
            add_pair(kept, i, float(c))
        if size >= 4:
            add_pair(group[-2], group[-1], float(1 - (1 - THRESHOLD) * rng.beta(1.2, 3.0)))
    failed = rng.permutation(images)[:images // 100]
    errors = {"id": ids[failed], "path": paths[failed], "stage": ["decode"] * len(failed),
              "message": [f"cannot identify image file (reason {i % 20})" for i in range(len(failed))]}
    embeddings = {"id": ids, "path": paths, "width": np.full(images, 1000, np.int32),
                  "height": np.full(images, 750, np.int32), "bytes": rng.integers(50_000, 500_000, images)}
    for name, data in (("groups", groups), ("pairs", pairs), ("errors", errors), ("embeddings", embeddings)):
        os.makedirs(os.path.join(folder, name))
        pq.write_table(pa.table({k: list(v) if isinstance(v, np.ndarray) and v.dtype == object else v
                                 for k, v in data.items()}), os.path.join(folder, name, "part-00000.parquet"))
    manifest = {"run_id": f"synthetic-{images}", "neardup_version": "bench", "finished_at": "",
                "counts": {"inputs": images, "errors": len(failed), "pairs": len(pairs["id_a"]),
                           "groups": len(sizes), "kept": len(sizes), "dropped": sum(sizes) - len(sizes)},
                "lsh": {"num_tables": 16, "bits_per_table": 14, "recall_at_threshold": 0.99},
                "stages": [], "config": {"pairs": {"cosine_threshold": THRESHOLD}}}
    with open(os.path.join(folder, "_manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    return manifest


def local_thumbnails(items: list[tuple[str, str]], cfg: ReportConfig) -> dict[str, bytes | str]:
    made = {}
    for image_id, path in items:
        try:
            with open(path, "rb") as fh:
                made[image_id] = thumbnail(fh.read(), cfg.thumbnail_px, 64_000_000)
        except (OSError, ThumbnailError) as err:
            made[image_id] = str(err)
    return made


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="report-bench-")
    cfg = ReportConfig()
    pool = photo_pool(os.path.join(work, "pool"), args.pool)
    print(f"report.* defaults: max_groups {cfg.max_groups}, max_images_per_group {cfg.max_images_per_group}, "
          f"max_pairs {cfg.max_pairs}, thumbnail_px {cfg.thumbnail_px}; thumbnails in one process")
    print(f"{'images':>8} {'groups':>7} {'pairs':>7} {'errors':>6} | {'choose s':>8} {'thumbs s':>8} "
          f"{'write s':>7} {'total s':>7} | {'thumbs':>6} {'html kB':>7} {'folder kB':>9}")
    try:
        for images in args.images:
            run = os.path.join(work, f"run-{images}")
            shutil.rmtree(run, ignore_errors=True)
            manifest = synthetic_run(run, images, pool)
            folder = os.path.join(run, "report")
            t0 = time.perf_counter()
            data = prepare(run, manifest, cfg)
            t1 = time.perf_counter()
            wanted = dict(sorted({i.id: i.path for i in data.images()}.items()))
            made = local_thumbnails(list(wanted.items()), cfg)
            t2 = time.perf_counter()
            write(data, attach_thumbnails(data, made), folder)
            t3 = time.perf_counter()
            counts = manifest["counts"]
            print(f"{images:>8,} {counts['groups']:>7,} {counts['pairs']:>7,} {counts['errors']:>6,} | "
                  f"{t1 - t0:>8.2f} {t2 - t1:>8.2f} {t3 - t2:>7.2f} {t3 - t0:>7.2f} | {len(wanted):>6,} "
                  f"{os.path.getsize(os.path.join(folder, 'index.html')) / 1000:>7.0f} "
                  f"{folder_bytes(folder) / 1000:>9.0f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
