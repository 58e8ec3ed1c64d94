"""Duplicate groups and keep/drop decisions at scale: the groups stage on a seeded pair
graph, both paths, beside a sequential reference on the same graph.

    python benchmarks/groups_scale.py [--images 1000000] [--scale 1.0] [--driver-memory 8g]
                                      [--paths rounds one-task] [--no-reference]

The graph (seeded; `--scale` multiplies every count): a few large cliques, dense groups
of 60 images, chains of 100, and the remaining images in small cliques of 2 to 6. At
scale 1 that is 1M images and about 10M pairs. For each path the stage
(`neardup_core.spark.groups.group`) runs in Spark local mode on all cores, and the script
prints wall time, rounds, shuffle bytes and the group counts; the reference (NumPy
components and the decision kernel on the driver, one process) runs on the same graph,
and the outputs are compared: the two paths row for row, the reference on every image's
group, action and kept image. It prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neardup_core.groups import components, keep_or_drop, priority_order


def graph(images: int, scale: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(pairs: id_a, id_b, cosine; nodes: id, path, width, height, bytes, modified)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(images)
    parts, start = [], 0

    def take(k):
        nonlocal start
        block = order[start:start + k]
        start += k
        return block

    for _ in range(max(1, round(3 * scale))):  # large cliques
        block = take(1000)
        i, j = np.triu_indices(len(block), 1)
        parts.append((block[i], block[j]))
    for _ in range(round(6000 * scale)):  # dense groups: each pair present with p = 0.72
        block = take(60)
        i, j = np.triu_indices(len(block), 1)
        keep = rng.random(len(i)) < 0.72
        parts.append((block[i[keep]], block[j[keep]]))
    for _ in range(round(1000 * scale)):  # chains
        block = take(100)
        parts.append((block[:-1], block[1:]))
    while images - start >= 2:  # small cliques of 2..6
        block = take(int(min(images - start, rng.integers(2, 7))))
        i, j = np.triu_indices(len(block), 1)
        parts.append((block[i], block[j]))
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    ids = np.char.add("img-", np.char.zfill(np.arange(images).astype(str), 7))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pairs = pa.table({"id_a": ids[lo], "id_b": ids[hi], "cosine": np.round(rng.uniform(0.7, 1.0, len(a)), 4)})
    width = rng.choice([640, 800, 1024, 1280], images).astype(np.int32)
    nodes = pa.table({"id": ids, "path": np.char.add("s3://catalog/", ids), "width": width,
                      "height": (width * 3 // 4).astype(np.int32), "bytes": rng.integers(20_000, 900_000, images),
                      "modified": pa.array(np.full(images, 1_796_000_000_000_000), pa.timestamp("us", tz="UTC"))})
    return pairs, nodes


def reference(pairs: pa.Table, nodes: pa.Table, criteria) -> tuple[pa.Table, float]:
    """The same output from the pure kernels in one process: rank, components, decisions."""
    start = time.perf_counter()
    import pyarrow.compute as pc

    in_pairs = pc.unique(pa.concat_arrays([pairs.column("id_a").combine_chunks(),
                                           pairs.column("id_b").combine_chunks()]))
    members = nodes.filter(pc.is_in(nodes.column("id"), value_set=in_pairs))
    ranked = members.take(priority_order(members, criteria))
    ids = ranked.column("id").combine_chunks()
    a = pc.index_in(pairs.column("id_a"), value_set=ids).to_numpy()
    b = pc.index_in(pairs.column("id_b"), value_set=ids).to_numpy()
    label = components(len(ids), a, b)
    decided = keep_or_drop(len(ids), a, b, pairs.column("cosine").to_numpy())
    seconds = time.perf_counter() - start
    frame = pd.DataFrame({"id": ids.to_pylist(), "label": label, "kept_by": decided.kept_by})
    frame["group_id"] = frame.groupby("label").id.transform("min")
    frame["action"] = np.where(frame.kept_by < 0, "keep", "drop")
    frame["kept_id"] = np.where(frame.kept_by < 0, None, frame.id.to_numpy()[np.maximum(frame.kept_by, 0)])
    return frame[["id", "group_id", "action", "kept_id"]].sort_values("id", ignore_index=True), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--paths", nargs="+", default=["rounds"], choices=["rounds", "one-task"])
    p.add_argument("--no-reference", action="store_true")
    args = p.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from neardup_core.spark.groups import group, round_tasks
    from neardup_core.spark.jvm import shuffle_bytes_written

    criteria = [("pixels", True), ("bytes", True), ("id", False)]
    t0 = time.perf_counter()
    pairs, nodes = graph(args.images, args.scale)
    print(f"graph: {nodes.num_rows:,} images, {pairs.num_rows:,} pairs (built in {time.perf_counter() - t0:.1f} s), "
          f"{os.cpu_count()} cores, spark.driver.memory {args.driver_memory}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        pq.write_table(pairs, f"{work}/pairs.parquet")
        pq.write_table(nodes, f"{work}/nodes.parquet")
        spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", args.driver_memory)
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000").getOrCreate())
        spark.sparkContext.setLogLevel("WARN")
        outputs = {}
        for path_kind in args.paths:
            limit = 0 if path_kind == "rounds" else pairs.num_rows
            before = shuffle_bytes_written(spark)
            start = time.perf_counter()
            result = group(spark.read.parquet(f"{work}/pairs.parquet"), spark.read.parquet(f"{work}/nodes.parquet"),
                           criteria, pairs.num_rows, limit, f"{work}/scratch-{path_kind}", f"{work}/groups-{path_kind}",
                           round_tasks(pairs.num_rows, 64 * 2**20, spark.sparkContext.defaultParallelism))
            seconds = time.perf_counter() - start
            shuffled = shuffle_bytes_written(spark) - before
            print(f"{path_kind}: {seconds:.1f} s, {result.rounds} rounds, shuffle {shuffled / 1e9:.2f} GB; "
                  f"{result.groups:,} groups (largest {result.largest_group:,}), {result.kept:,} kept, "
                  f"{result.dropped:,} dropped", flush=True)
            outputs[path_kind] = pq.read_table(f"{work}/groups-{path_kind}").to_pandas().sort_values("id",
                                                                                                   ignore_index=True)
        spark.stop()
        if len(outputs) == 2:
            print("paths give identical groups/ rows:", outputs["rounds"].equals(outputs["one-task"]))
        if not args.no_reference:
            expected, seconds = reference(pairs, nodes, criteria)
            got = next(iter(outputs.values()))[["id", "group_id", "action", "kept_id"]]
            print(f"reference (NumPy kernels, one process): {seconds:.1f} s; {expected.group_id.nunique():,} groups, "
                  f"{int((expected.action == 'keep').sum()):,} kept; same group, action and kept image for every "
                  f"image: {expected.equals(got)}")


if __name__ == "__main__":
    main()
