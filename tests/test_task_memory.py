"""What bounds a task's heap in the job's session: a disk-cached partition is read back one
column batch at a time (spark.session.JOB_DEFAULTS), and embeddings/ is written in row
groups of pairs.partition_mb (spark.pairing.write_keyed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from neardup_core.spark.session import JOB_DEFAULTS, job_defaults

from .conftest import REPO

RESET = "spark.serializer.objectStreamReset"


def test_job_defaults_yield_to_the_users_settings():
    cached = "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning"
    assert job_defaults({}, {}) == {RESET: "1", cached: "true"} == JOB_DEFAULTS
    assert job_defaults({RESET: "100"}, {}) == {cached: "true"}
    assert job_defaults({}, {RESET: "100", cached: "false"}) == {}
    assert job_defaults({"spark.driver.memory": "4g"}, {"spark.executor.memory": "2g"}) == JOB_DEFAULTS


@pytest.mark.spark
def test_the_jobs_session_reads_back_a_disk_cached_partition_larger_than_its_heap(tmp_path):
    """One partition of 600 MB cached on disk and read back by the job's session in a 512 MB
    JVM (its own process: the heap is fixed when the JVM starts). With Spark's default
    stream reset (every 100 objects) the task holds every 40 MB column batch it wrote or
    read, and that JVM dies of OutOfMemoryError (checked by hand: add
    ``"spark.serializer.objectStreamReset": "100"`` to the conf below)."""
    script = textwrap.dedent("""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F
        from neardup_core.config import from_dict
        from neardup_core.spark.session import build_session

        conf = {"spark.driver.memory": "512m", "spark.ui.enabled": "false"}
        spark = build_session(from_dict({"spark": {"master": "local[1]", "conf": conf}}).spark, 10000, False)
        rows = spark.range(0, 150000, 1, 1).select("id", F.array_repeat(F.rand(7).cast("float"), 1024).alias("v"))
        cached = rows.persist(StorageLevel.DISK_ONLY)
        print("cached", cached.count(), cached.select(F.sum("id")).first()[0], flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_DIRS=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"cached 150000 {150000 * 149999 // 2}" in done.stdout


@pytest.mark.spark
@pytest.mark.parametrize("tasks", [1, 3])
def test_keyed_write_cuts_row_groups_at_the_bound_and_keeps_the_rows(spark, tmp_path, tasks):
    from neardup_core.spark.pairing import write_keyed

    rng = np.random.default_rng(19)
    n, tables, bound = 3001, 100, 256 * 1024  # 800 B of keys a row: 2.4 MB in all
    keys = rng.integers(0, 2**62, (n, tables)).tolist()
    frame = spark.createDataFrame([(f"r{i:05d}", f"/p/{i}", k) for i, k in enumerate(keys)],
                                  "id string, path string, keys array<bigint>").repartition(tasks)
    write_keyed(frame, str(tmp_path / "bounded"), bound)
    frame.write.parquet(str(tmp_path / "whole"))

    files = sorted((tmp_path / "bounded").glob("*.parquet"))
    groups = [meta.row_group(i) for meta in (pq.ParquetFile(f).metadata for f in files)
              for i in range(meta.num_row_groups)]
    assert len(groups) >= 2.4e6 // bound  # the 2.4 MB cut at the bound, not one group per task
    # Parquet checks its buffer every 100 rows or more: a group may pass the bound by a check's rows.
    assert max(g.total_byte_size for g in groups) <= bound + 100 * tables * 8
    bounded = pq.read_table(tmp_path / "bounded").sort_by("id")
    whole = pq.read_table(tmp_path / "whole").sort_by("id")
    assert bounded.num_rows == n
    assert bounded.equals(whole)
    assert bounded.column("keys").to_pylist()[:3] == keys[:3]
