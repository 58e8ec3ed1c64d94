"""The driver JVM's class-data archive (spark.class_archive): built, used by a session the
job starts, and never the reason a run fails."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neardup_core.config import ConfigError, from_dict
from neardup_core.spark import class_archive

from .conftest import REPO

# A session built as the job builds it, from the archive given as argv[1]; prints a sum.
SESSION = textwrap.dedent("""
    import sys
    from neardup_core.config import ConfigError, from_dict
    from neardup_core.spark.session import build_session

    spark = build_session(from_dict({"spark": {"master": "local[1]"}}).spark, 100, False, class_archive=sys.argv[1])
    print("sum", spark.range(1000).selectExpr("sum(id)").first()[0], flush=True)
""")


def _session(archive: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               PYSPARK_PYTHON=sys.executable)
    return subprocess.run([sys.executable, "-c", SESSION, archive], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_archive_is_one_per_java_and_used_only_where_built(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", "/opt/java-a")
    first = class_archive.archive_path(str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", "/opt/java-b")
    second = class_archive.archive_path(str(tmp_path))
    assert first != second and os.path.dirname(first) == os.path.dirname(second) == str(tmp_path / "jvm")
    assert class_archive.usable_archive(str(tmp_path)) is None  # not built
    os.makedirs(tmp_path / "jvm")
    open(second, "wb").close()
    assert class_archive.usable_archive(str(tmp_path)) == second
    cfg = from_dict({"model": {"cache_dir": str(tmp_path)}, "spark": {"class_archive": False}})
    assert class_archive.configured_archive(cfg) is None
    assert class_archive.configured_archive(cfg.replace(spark=from_dict({}).spark)) == second
    spaced = tmp_path / "a cache"
    os.makedirs(spaced / "jvm")
    open(class_archive.archive_path(str(spaced)), "wb").close()
    assert class_archive.usable_archive(str(spaced)) is None  # extraJavaOptions splits on spaces
    with pytest.raises(ConfigError, match="model.cache_dir"):
        class_archive.build(str(spaced))


@pytest.mark.spark
def test_a_built_archive_starts_the_jobs_session(tmp_path):
    """Recorded by a real `neardup pairs` run, checked, renamed into place; a session the job
    builds then loads Spark's classes from it (the JVM's class-load log names the source)."""
    path = class_archive.build(str(tmp_path / "cache"))
    assert path == class_archive.usable_archive(str(tmp_path / "cache"))
    assert os.path.getsize(path) > 10 * 2**20
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temporary file left
    log = tmp_path / "classes-%p.log"
    done = _session(path, tmp_path, {"JDK_JAVA_OPTIONS": f"-Xlog:class+load=info:file={log}"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sum 499500" in done.stdout
    loads = "".join(Path(name).read_text() for name in glob.glob(str(tmp_path / "classes-*.log")))
    assert "org.apache.spark.SparkContext source: shared objects file (top)" in loads


@pytest.mark.spark
def test_a_damaged_archive_does_not_stop_the_session(tmp_path):
    """A truncated archive crashes the JVM that maps it (SIGBUS): the session starts again
    without it, says so, and removes the archive."""
    whole = tmp_path / "small.jsa"
    subprocess.run(["java", f"-XX:ArchiveClassesAtExit={whole}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off",
                    "-version"], check=True, capture_output=True)
    damaged = tmp_path / "damaged.jsa"
    damaged.write_bytes(whole.read_bytes()[:os.path.getsize(whole) // 2])
    done = _session(str(damaged), tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sum 499500" in done.stdout
    assert f"did not start from its class archive {damaged}" in done.stderr
    assert not damaged.exists()
