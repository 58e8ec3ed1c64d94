"""The pairing stage at scale, against exact search and Spark MLlib, on the same data.

    python benchmarks/pairing_scale.py [--sizes 20000 100000] [--dim 256] [--threshold 0.9]
                                       [--mllib-max 20000] [--exact-max 200000] [--recall-rows 5000]
                                       [--driver-memory 4g] [--no-job] [--set KEY=VALUE ...]
                                       [--plot growth.png]

`neardup pairs` with the defaults against exact search (issue 19: 100k against exact
NumPy, 1M in one file of one row group, as pyarrow.parquet.write_table writes it):

    python benchmarks/pairing_scale.py --sizes 100000 1000000 --driver-memory default --mllib-max 0

Data: seeded synthetic unit vectors in clusters (real embeddings are not uniform), plus
planted near-duplicates at known cosines 0.85..0.99 (see `synthetic`). For each N it runs,
one after the other:
  - `neardup pairs` on the Parquet table (Spark local mode, defaults: auto LSH plan;
    one file, one row group up to 1Mi rows), reporting every stage's seconds, the whole
    command's against exact NumPy where both ran, the pairs stage's wall time, shuffle
    bytes per item, candidate pairs, and the peak memory of the command's process tree,
    JVM (RSS) and Python (PSS) apart;
  - exact blocked brute force in NumPy (float32 matrix products in blocks of 4096 rows),
    whose pair set is the truth for recall; above --exact-max, the truth is every pair
    that involves one of --recall-rows random rows (exact search of those rows against
    all), an unbiased sample;
  - MLlib BucketedRandomProjectionLSH.approxSimilarityJoin (Euclidean distance on unit
    vectors: cosine >= t  <=>  distance <= sqrt(2 - 2t)), up to --mllib-max.
Prints measured numbers, and with --plot draws seconds against N for each method (log-log).
It is not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n unit vectors: 2% planted copies of other rows at cosines uniform in 0.85..0.99;
    the rest around n/50 cluster centres (spread so that clusters overlap)."""
    rng = np.random.default_rng(seed)
    planted = n // 50
    base = n - planted
    centres = rng.standard_normal((max(1, base // 50), dim))
    x = centres[rng.integers(0, len(centres), base)] + 1.5 * rng.standard_normal((base, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.integers(0, base, planted)
    cos = rng.uniform(0.85, 0.99, planted)
    r = rng.standard_normal((planted, dim))
    r -= np.sum(r * x[src], axis=1, keepdims=True) * x[src]
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    copies = cos[:, None] * x[src] + np.sqrt(1 - cos**2)[:, None] * r
    return np.vstack([x, copies]).astype(np.float32)


def exact_pairs(x: np.ndarray, threshold: float, block: int = 4096) -> np.ndarray:
    """Codes i * n + j (i < j) of all pairs with cosine >= threshold. Memory O(block * n)."""
    n = len(x)
    found = []
    for start in range(0, n, block):
        gram = x[start:start + block] @ x.T
        i, j = np.nonzero(gram >= threshold)
        i += start
        keep = j > i
        found.append(i[keep].astype(np.int64) * n + j[keep])
    return np.sort(np.concatenate(found))


def sampled_truth(x: np.ndarray, threshold: float, rows: int, seed: int = 1, block: int = 256) -> np.ndarray:
    """Codes of all pairs at cosine >= threshold that involve one of ``rows`` rows drawn at
    random: exact search of those rows against all N (an unbiased sample of the truth
    where all-pairs search would take too long). Memory O(block * N)."""
    n = len(x)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False))
    found = []
    for start in range(0, len(picked), block):
        q = picked[start:start + block]
        i, j = np.nonzero(x[q] @ x.T >= threshold)
        i, keep = q[i], j != q[i]
        a, b = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
        found.append(a.astype(np.int64) * n + b)
    return np.unique(np.concatenate(found))


def write_table(path: str, x: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
    pq.write_table(pa.table({"id": [f"{i:08d}" for i in range(n)], "i": np.arange(n), "embedding": vectors}),
                   path)


def tree_memory(root: int) -> dict[str, int]:
    """Memory (bytes) of a process and its descendants, from /proc (Linux), by kind: the
    JVM's resident set (VmRSS), and the proportional set size (PSS) of the Python
    processes (the driver and Spark's forked workers; PSS splits the pages that forked
    workers share with their daemon, so the sum does not count them twice, as a sum of
    RSS would). The JVM's PSS is not read: walking its page tables (smaps_rollup) holds
    its memory-map lock and measurably slowed the job being measured."""
    parent, cmd = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parent[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd[pid] = fh.read().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(children)
        frontier = children
    out = {"jvm": 0, "python": 0}
    for pid in tree:
        jvm = b"java" in cmd.get(pid, b"")
        field, source = ("VmRSS:", "status") if jvm else ("Pss:", "smaps_rollup")
        try:
            with open(f"/proc/{pid}/{source}") as fh:
                value = next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))
        except (OSError, ValueError, StopIteration):
            continue
        out["jvm" if jvm else "python"] += value
    return out


def peak_memory_of_tree(pid: int, stop: threading.Event, out: list) -> None:
    """Poll the tree's memory; keep the peak of the total and of each kind."""
    peak = {"total": 0, "jvm": 0, "python": 0}
    while not stop.is_set():
        now = tree_memory(pid)
        peak = {"total": max(peak["total"], sum(now.values())), **{k: max(peak[k], v) for k, v in now.items()}}
        time.sleep(0.5)
    out.append(peak)


def run_job(table: str, out: str, threshold: float, driver_memory: str, overrides: list[str]
            ) -> tuple[dict, float, dict]:
    cmd = [sys.executable, "-m", "neardup_core.cli", "pairs", "--embeddings", table, "--output", out,
           "--set", f"pairs.cosine_threshold={threshold}"]
    if driver_memory != "default":
        cmd += ["--set", f"spark.conf={{spark.driver.memory: {driver_memory}}}"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=peak_memory_of_tree, args=(proc.pid, stop, peak))
    watcher.start()
    log = proc.communicate()[0]
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        print(f"| - | neardup pairs FAILED after {time.perf_counter() - start:.0f} s: "
              f"{' '.join(log.strip().splitlines()[-1:])[:300]} |", flush=True)
        return None, time.perf_counter() - start, peak[0]
    with open(os.path.join(out, "_manifest.json")) as fh:
        return json.load(fh), time.perf_counter() - start, peak[0]


def tasks_text(tasks: dict) -> str:
    if not tasks["shuffled"]:
        return "one task"
    return f"{tasks['buckets']} bucket + {tasks['rows']} row tasks"


def mllib(table: str, threshold: float, tables: int, bucket_length: float) -> tuple[np.ndarray, float]:
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", "8g")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(table).select(F.col("i"), array_to_vector("embedding").alias("v")).cache()
    df.count()
    start = time.perf_counter()
    model = BucketedRandomProjectionLSH(inputCol="v", outputCol="h", bucketLength=bucket_length,
                                        numHashTables=tables, seed=1).fit(df)
    joined = model.approxSimilarityJoin(df, df, math.sqrt(2 - 2 * threshold), distCol="d")
    rows = joined.select(F.col("datasetA.i").alias("a"), F.col("datasetB.i").alias("b")).filter("a < b").toPandas()
    seconds = time.perf_counter() - start
    spark.stop()
    return rows, seconds


def report_job(n: int, table: str, work: str, truth, sampled: bool, args, times: dict) -> None:
    manifest, wall, peak = run_job(table, os.path.join(work, "out"), args.threshold, args.driver_memory, args.set)
    if manifest is None:
        return
    stage = next(s for s in manifest["stages"] if s["name"] == "pairs")
    found = pd.read_parquet(os.path.join(work, "out", "pairs"))
    codes = np.sort(found.id_a.astype(np.int64).to_numpy() * n + found.id_b.astype(np.int64).to_numpy())
    recall = f"{np.isin(truth, codes).mean():.4f}" if truth is not None else "-"
    recall += " (sampled)" if sampled else ""
    lsh = manifest["lsh"]
    times.setdefault("neardup pairs stage", []).append((n, stage["seconds"]))
    print(f"| {n:,} | neardup pairs stage (whole command {wall:.0f} s) | {stage['seconds']:.1f} | {recall} "
          f"| {len(found):,} | {stage['candidate_pairs']:,} | {stage.get('shuffle_bytes_per_image', '-')} "
          f"| {peak['total'] / 1e9:.1f} ({peak['jvm'] / 1e9:.1f} + {peak['python'] / 1e9:.1f}) "
          f"| k={lsh['bits_per_table']} L={lsh['num_tables']}, {tasks_text(stage['tasks'])}, "
          f"oversized buckets {lsh['buckets']['oversized']} |", flush=True)
    exact = dict(times.get("exact NumPy, blocked", [])).get(n)
    ratio = f"; whole command / exact NumPy {wall / exact:.2f}" if exact else ""
    stages = ", ".join(f"{s['name']} {s['seconds']:.1f}" for s in manifest["stages"])
    print(f"  stage seconds at {n:,}: {stages}{ratio}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--exact-max", type=int, default=200_000)
    ap.add_argument("--mllib-max", type=int, default=20_000)
    ap.add_argument("--recall-rows", type=int, default=5000,
                    help="above --exact-max: recall against exact search of this many random rows")
    ap.add_argument("--mllib-tables", type=int, default=10)
    ap.add_argument("--mllib-bucket-length", type=float, default=0.02)
    ap.add_argument("--driver-memory", default="4g",
                    help="spark.driver.memory of neardup pairs (local mode); 'default': no setting (Spark's 1g)")
    ap.add_argument("--no-job", action="store_true", help="skip neardup pairs (to time the other methods alone)")
    ap.add_argument("--set", action="append", default=[], help="passed on to neardup pairs")
    ap.add_argument("--plot", help="write a PNG of seconds against N for each method here")
    args = ap.parse_args()
    times: dict[str, list[tuple[int, float]]] = {}
    print(f"dim {args.dim}, pairs at cosine >= {args.threshold}, {os.cpu_count()} cores, "
          f"spark.driver.memory {args.driver_memory}")
    print("| N | method | seconds | recall | pairs found | candidates | shuffle B/item "
          "| peak GB (JVM RSS + Python PSS) | plan |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n in args.sizes:
        x = synthetic(n, args.dim)
        with tempfile.TemporaryDirectory(prefix="neardup-scale-") as work:
            table = os.path.join(work, "emb.parquet")
            write_table(table, x)
            truth, sampled = None, False
            if n > args.exact_max and args.recall_rows:
                start = time.perf_counter()
                truth, sampled = sampled_truth(x, args.threshold, args.recall_rows), True
                print(f"| {n:,} | exact search of {args.recall_rows:,} random rows against all (recall truth) "
                      f"| {time.perf_counter() - start:.1f} | 1 | {len(truth):,} | - | - | - | - |", flush=True)
            if n <= args.exact_max:
                start = time.perf_counter()
                truth = exact_pairs(x, args.threshold)
                seconds = time.perf_counter() - start
                times.setdefault("exact NumPy, blocked", []).append((n, seconds))
                print(f"| {n:,} | exact NumPy, blocked | {seconds:.1f} | 1 | {len(truth):,} "
                      f"| {n * (n - 1) // 2:,} | - | - | - |", flush=True)
            if not args.no_job:
                report_job(n, table, work, truth, sampled, args, times)
            if n <= args.mllib_max:
                rows, seconds = mllib(table, args.threshold, args.mllib_tables, args.mllib_bucket_length)
                times.setdefault("MLlib BRP approxSimilarityJoin", []).append((n, seconds))
                codes = np.sort(rows.a.to_numpy(np.int64) * n + rows.b.to_numpy(np.int64))
                recall = f"{np.isin(truth, codes).mean():.4f}" if truth is not None else "-"
                print(f"| {n:,} | MLlib BRP approxSimilarityJoin | {seconds:.1f} | {recall} | {len(rows):,} "
                      "| - | - | - "
                      f"| L={args.mllib_tables}, bucketLength={args.mllib_bucket_length} |", flush=True)
    if args.plot:
        plot(times, args.threshold, args.dim, args.plot)


def plot(times: dict[str, list[tuple[int, float]]], threshold: float, dim: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for method, points in times.items():
        ax.plot([n for n, _ in points], [t for _, t in points], "-o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items (N)")
    ax.set_ylabel("seconds")
    ax.set_title(f"Pairs at cosine >= {threshold:g}, {dim}-d, {os.cpu_count()} cores")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
