"""`neardup pairs`' read stage, Spark's Parquet reader against the PyArrow slices, in one session.

    python benchmarks/read_embeddings.py TABLE.parquet [--rounds 2] [--id id] [--embedding embedding]

Runs read-embeddings as the job does (read, cache, count, duplicate-id check, error count) with
Spark's reader (the fallback: `spark.listing._arrow_table` answering None) and with the PyArrow
slices, interleaved A B A B after one warm-up of each, in local[2] with the default memory, so a
shared machine's load falls on both alike. Prints seconds per round. Not a test.
"""

from __future__ import annotations

import argparse
import time

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from neardup_core.spark import listing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--id", default="id")
    ap.add_argument("--embedding", default="embedding")
    args = ap.parse_args()
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    arrow_table = listing._arrow_table

    def stage(pyarrow: bool) -> tuple[float, int]:
        listing._arrow_table = arrow_table if pyarrow else (lambda *_: None)
        start = time.perf_counter()
        read = listing.read_embeddings(spark, args.table, args.id, args.embedding)
        rows = read.rows.persist(StorageLevel.DISK_ONLY if read.task_bytes > 64 * 2**20
                                 else StorageLevel.MEMORY_AND_DISK)
        n = rows.count()
        listing.manifest_id_problem(rows)
        rows.filter("error_stage is not null").count()
        seconds = time.perf_counter() - start
        rows.unpersist()
        return seconds, n

    stage(True)
    stage(False)  # warm-up: Python workers, JIT
    for r in range(args.rounds):
        for pyarrow in (False, True):
            seconds, n = stage(pyarrow)
            print(f"round {r}: {'PyArrow slices' if pyarrow else 'Spark reader'}: {seconds:.1f} s, {n:,} rows",
                  flush=True)


if __name__ == "__main__":
    main()
