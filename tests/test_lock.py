"""The output lock: kernel tests without Spark, and two real runs into one output."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from neardup_core.lock import LOCK_NAME, Holder, LocalLockFile, LockError, OutputLock, stale_reason

from .conftest import REPO, SAMPLE_CATALOG


def dead_pid():
    """A pid that no process has: a child that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, holder):
    os.makedirs(folder, exist_ok=True)
    (folder / LOCK_NAME).write_text(holder.text())


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    out = tmp_path / "out"
    first = OutputLock(str(out), "run-1")
    first.acquire(LocalLockFile(str(out)))
    assert json.loads((out / LOCK_NAME).read_text())["run_id"] == "run-1"
    second = OutputLock(str(out), "run-2", break_lock=True)  # a live holder is never broken
    with pytest.raises(LockError, match=rf"locked by run run-1 \(host .*, pid {os.getpid()}\), which is still"):
        second.acquire(LocalLockFile(str(out)))
    first.release()
    assert not out.exists()  # the run made the folder and left it empty: removed with the lock
    second.acquire(LocalLockFile(str(out)))
    assert json.loads((out / LOCK_NAME).read_text())["run_id"] == "run-2"
    second.release()
    second.release()  # idempotent


def test_stale_lock_is_reported_and_broken_only_with_the_flag(tmp_path):
    out = tmp_path / "out"
    gone = Holder("run-dead", Holder.me("x").host, dead_pid())
    write_lock(out, gone)
    with pytest.raises(LockError, match=f"run run-dead .* looks stale: its process {gone.pid} is gone; "
                                        "pass --break-lock"):
        OutputLock(str(out), "run-2").acquire(LocalLockFile(str(out)))
    lock = OutputLock(str(out), "run-2", break_lock=True)
    lock.acquire(LocalLockFile(str(out)))
    assert "run-dead" in lock.broken
    assert json.loads((out / LOCK_NAME).read_text())["run_id"] == "run-2"
    lock.release()
    assert out.exists() and not (out / LOCK_NAME).exists()  # a folder it did not make stays


def test_stale_reasons():
    host = Holder.me("x").host
    assert stale_reason(Holder("r", host, os.getpid()), host) is None
    assert "another host (elsewhere)" in stale_reason(Holder("r", "elsewhere", os.getpid()), host)
    assert "names no run" in stale_reason(Holder.parse("{truncated"), host)
    assert Holder.parse(json.dumps({"run_id": "r" * 10_000, "host": "h", "pid": 1})).run_id == "r" * 100


def test_unwritable_output_is_a_one_line_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LockError, match="cannot write there"):
            OutputLock(str(ro / "out"), "r").acquire(LocalLockFile(str(ro / "out")))
    finally:
        ro.chmod(0o755)


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(LockError, match="cannot write there"):
        OutputLock(str(tmp_path / "out"), "r").acquire(LocalLockFile(str(tmp_path / "out")))


def cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO, PYSPARK_PYTHON=sys.executable)
    return subprocess.Popen([sys.executable, "-m", "neardup_core.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.mark.spark
@pytest.mark.model
def test_two_real_runs_into_one_output(tmp_path):
    """The second run exits 2 naming the first, which finishes untouched; a dead run's
    staging folder is removed by the run holding the lock."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("baboon", "fruits", "home"):
        shutil.copy(os.path.join(SAMPLE_CATALOG, f"{name}.jpg"), src)
    out = tmp_path / "out"
    (out / "_staging-20260101T000000Z-deadbeef" / "pairs").mkdir(parents=True)
    first = cli("--input", str(src), "--output", str(out), "--set", "spark.master=local[1]")
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).exists():
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder = json.loads((out / LOCK_NAME).read_text())
    second = cli("--input", str(src), "--output", str(out), "--overwrite")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-2000:]
    assert err.strip().splitlines() == [
        f"neardup: error: --output {out}: locked by run {holder['run_id']} (host {holder['host']}, "
        f"pid {first.pid}), which is still running; wait for it to finish"]
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["run_id"] == holder["run_id"] and manifest["counts"]["inputs"] == 3
    assert sorted(os.listdir(out)) == sorted(["_SUCCESS", "._SUCCESS.crc", "_manifest.json", "._manifest.json.crc",
                                              "pairs", "rejected_pairs", "groups", "embeddings", "errors", "report"])


@pytest.mark.spark
@pytest.mark.model
@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_ctrl_c_prints_one_line_and_leaves_nothing(tmp_path, delay):
    """SIGINT to the run's process group, as a terminal sends it, ``delay`` seconds after
    its staging folder appears. At once, it lands in the first write's job set-up, which
    the JVM finishes after Python has its KeyboardInterrupt (2 runs in 6 left folders
    there before the staging folder was removed only once Spark was quiet)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("baboon", "fruits", "home"):
        shutil.copy(os.path.join(SAMPLE_CATALOG, f"{name}.jpg"), src)
    out = tmp_path / "out"
    run = cli("--input", str(src), "--output", str(out), "--set", "spark.master=local[1]")
    deadline = time.monotonic() + 180
    while not (out.exists() and any(n.startswith("_staging-") for n in os.listdir(out))):
        assert run.poll() is None, run.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if " INFO neardup" not in line and "incubator" not in line]
    assert lines == ["neardup: interrupted; the output folder holds what it held before"], err[-3000:]
    # The run made the folder; its staging and lock are gone, and so is it.
    assert not out.exists(), [(folder, files) for folder, _, files in os.walk(out)]


@pytest.mark.spark
def test_the_hadoop_lock_file_behaves_like_the_local_one(spark, tmp_path):
    """The remote path's code, through Hadoop's local file system (whose create is not
    atomic; HDFS's is): exclusive, names its holder, breaks a stale lock, removes itself."""
    from neardup_core.lock import HadoopLockFile
    from neardup_core.spark.jvm import hadoop_filesystem, read_text

    out = "file:" + str(tmp_path / "out")
    fs, path_class = hadoop_filesystem(spark, out)

    def lock_file():
        return HadoopLockFile(fs, path_class, out, lambda name: read_text(spark, name))

    first = OutputLock(out, "run-1")
    first.acquire(lock_file())
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["run_id"] == "run-1"
    with pytest.raises(LockError, match="locked by run run-1 .* which is still running"):
        OutputLock(out, "run-2", break_lock=True).acquire(lock_file())
    first.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    write_lock(tmp_path / "out", Holder("run-dead", Holder.me("x").host, dead_pid()))
    with pytest.raises(LockError, match="looks stale"):
        OutputLock(out, "run-3").acquire(lock_file())
    third = OutputLock(out, "run-3", break_lock=True)
    third.acquire(lock_file())
    assert "run-dead" in third.broken
    third.release()
