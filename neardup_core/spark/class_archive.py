"""The driver JVM's class-data archive (Java's AppCDS): the classes a run loads, stored once
by ``neardup build-jvm-archive`` under ``{model.cache_dir}/jvm/`` and mapped by every later
JVM start instead of being read from Spark's jars, verified and parsed again. Measured on
2 cores: the session starts about 4 s sooner and the first job runs about 2 s sooner
(docs/performance.md, "Start-up").

Only a JVM this process starts uses it (``neardup`` outside spark-submit: local runs, or a
driver in client mode); under spark-submit the JVM has started before the job's code runs.
The JVM checks that the archive fits its version and class path and ignores it silently
when it does not. A half-written archive would crash the JVM at start, so the archive is
recorded under a temporary name, checked by a JVM that must map it (``-Xshare:on``), then
renamed into place; and a session that still cannot start from it starts without it
(:func:`spark.session.build_session`), and the archive is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark

from ..config import Config, ConfigError

# The JVM's own notes on the archive (classes it skips while recording, an archive it
# cannot use) stay out of the console.
_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


class ArchiveError(Exception):
    """The archive could not be recorded or did not start a JVM."""


def archive_path(cache_dir: str) -> str:
    """Where the archive for this PySpark (its jars) and this Java lives: the JVM refuses an
    archive recorded with other jars or another JVM, so each pair has its own file."""
    jars = os.path.realpath(os.path.join(os.path.dirname(pyspark.__file__), "jars"))
    key = hashlib.sha256("\0".join((pyspark.__version__, jars, _java_binary())).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser(cache_dir), "jvm", f"spark-{pyspark.__version__}-{key}.jsa")


def _java_binary() -> str:
    """The java PySpark launches: JAVA_HOME's, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java") or "java"
    return os.path.realpath(java)


def usable_archive(cache_dir: str) -> str | None:
    """The archive's path when one has been built and can be named in Spark's
    ``extraJavaOptions`` (which splits on spaces), else None."""
    path = archive_path(cache_dir)
    return path if os.path.isfile(path) and _nameable(path) else None


def _nameable(path: str) -> bool:
    return not any(c.isspace() or c in "'\"" for c in path)


def configured_archive(cfg: Config) -> str | None:
    """The archive a session of this configuration starts from (``spark.class_archive``),
    or None."""
    return usable_archive(cfg.model.cache_dir) if cfg.spark.class_archive else None


def java_options(path: str) -> str:
    """The driver's JVM options that start it from the archive at ``path``."""
    return f"-XX:SharedArchiveFile={path} {_QUIET}"


def build(cache_dir: str) -> str:
    """Record the archive by running ``neardup pairs`` on a small seeded table (its read,
    hashing, pairing, grouping and Parquet writes load the classes any run loads), check
    that a JVM starts from it, and put it in place. Returns its path.

    Raises:
        ConfigError: ``cache_dir`` is a path Spark cannot pass to the JVM.
        ArchiveError: the JVM could not record the archive, or could not start from it.
    """
    path = archive_path(cache_dir)
    if not _nameable(path):
        raise ConfigError(f"model.cache_dir: {path}: Spark splits the JVM's options at spaces and quotes, so an "
                          "archive there could not be used; set model.cache_dir to a path without them")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    recording = f"{path}.{os.getpid()}.tmp"
    try:
        _child("record", recording)
        if not os.path.isfile(recording):
            raise ArchiveError(f"the JVM wrote no archive to {recording}")
        _child("check", recording)
        os.replace(recording, path)
    finally:
        if os.path.exists(recording):
            os.remove(recording)
    return path


def _child(step: str, archive: str) -> None:
    """One step in a Python process of its own: a JVM records its archive only as it exits,
    and a JVM that cannot map one may crash."""
    done = subprocess.run([sys.executable, "-m", __name__, step, archive], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    if done.returncode:
        tail = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("\tat "))[-2000:]
        raise ArchiveError(f"{step} failed (exit {done.returncode}):\n{tail}")


def _record(archive: str) -> None:
    from pyspark.core.context import SparkContext

    from ..config import from_dict
    from ..job import run_pairs
    from .session import QUIET_JVM_LOGS

    with tempfile.TemporaryDirectory() as work:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((2000, 64)).astype(np.float32)
        vectors[1000:] = vectors[:1000] + 0.05 * rng.standard_normal((1000, 64)).astype(np.float32)
        table = os.path.join(work, "embeddings.parquet")
        pq.write_table(pa.table({"id": [f"v{i}" for i in range(len(vectors))],
                                 "embedding": pa.array(list(vectors), pa.list_(pa.float32()))}), table)
        options = f"-XX:ArchiveClassesAtExit={archive} {_QUIET} {QUIET_JVM_LOGS}"
        cfg = from_dict({"output": {"path": os.path.join(work, "out")},
                         "spark": {"class_archive": False, "conf": {"spark.driver.extraJavaOptions": options}}})
        run_pairs(cfg, table)
        _stop_jvm(SparkContext._gateway)


def _check(archive: str) -> None:
    from pyspark.sql import SparkSession

    from .session import QUIET_JVM_LOGS

    options = f"-Xshare:on {java_options(archive)} {QUIET_JVM_LOGS}"
    spark = SparkSession.builder.master("local[1]").config("spark.driver.extraJavaOptions", options).getOrCreate()
    if spark.range(1000).selectExpr("sum(id)").first()[0] != 499500:
        raise ArchiveError("a JVM started from the archive computed a wrong sum")
    spark.stop()


def _stop_jvm(gateway) -> None:
    """Stop the JVM PySpark started and wait for it: it exits when its stdin closes, and
    writes the archive as it exits."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    gateway.shutdown()
    gateway.proc.stdin.close()
    if gateway.proc.wait(timeout=600):
        raise ArchiveError(f"the JVM exited with {gateway.proc.returncode}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a step of build(): record or check an archive")
    parser.add_argument("step", choices=("record", "check"))
    parser.add_argument("archive")
    args = parser.parse_args()
    (_record if args.step == "record" else _check)(args.archive)
