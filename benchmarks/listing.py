"""Listing a local directory: seconds for `list_inputs` + `count()` (what the job's list stage
does) on N small files, against the walk alone and against handing the same rows to Spark
through pandas with a shuffle (how the listing was built before), in one Spark session.

    python benchmarks/listing.py [--files 10000] [--folders 10] [--repeats 3]

The first Spark job of a session pays JVM warm-up; a throwaway job runs first, so the rows
compare the listing itself. Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from neardup_core.config import InputConfig, SparkConfig
from neardup_core.sources import walk_directory
from neardup_core.spark.listing import list_inputs
from neardup_core.spark.session import build_session

SCHEMA = "id string, path string, content binary, size bigint, modified timestamp, error_message string"


def through_pandas(spark, cfg: InputConfig):
    """The rows of the walk as a DataFrame built from pandas, round-robin repartitioned."""
    import pyarrow as pa

    found = walk_directory(cfg.path, cfg.extensions, cfg.max_file_bytes)
    ids = ["file:" + row.path for row in found]
    table = pa.table({"id": ids, "path": ids, "content": pa.nulls(len(found), pa.binary()),
                      "size": pa.array([r.size for r in found], pa.int64()),
                      "modified": pa.array([r.modified for r in found], pa.timestamp("us", tz="UTC")),
                      "error_message": pa.array([r.error for r in found], pa.string())})
    frame = spark.createDataFrame(table.to_pandas(), SCHEMA)
    slices = max(spark.sparkContext.defaultParallelism, -(-len(found) // cfg.rows_per_partition))
    return frame.repartition(slices)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--folders", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="neardup-listing-")
    try:
        for i in range(args.files):
            folder = os.path.join(work, f"d{i % args.folders}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"img{i:07d}.jpg"), "wb") as fh:
                fh.write(b"\xff\xd8" + bytes(100))
        cfg = InputConfig(path=work)
        spark = build_session(SparkConfig(), 32, False)
        spark.range(10).count()  # JVM warm-up, as the job's session start pays it
        rows = {"walk only": [], "list_inputs + count": [], "pandas + shuffle + count (before)": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            walk_directory(work, cfg.extensions, cfg.max_file_bytes)
            rows["walk only"].append(time.perf_counter() - start)
            start = time.perf_counter()
            assert list_inputs(spark, cfg, "directory").count() == args.files
            rows["list_inputs + count"].append(time.perf_counter() - start)
            start = time.perf_counter()
            assert through_pandas(spark, cfg).count() == args.files
            rows["pandas + shuffle + count (before)"].append(time.perf_counter() - start)
        print(f"{args.files} files in {args.folders} folders, {os.cpu_count()} cores; seconds per pass")
        for name, seconds in rows.items():
            print(f"{name:<36} best {min(seconds):6.2f}  all {' '.join(f'{s:.2f}' for s in seconds)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
