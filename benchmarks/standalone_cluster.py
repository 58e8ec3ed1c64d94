"""A real Spark standalone cluster on 127.0.0.1, and the job submitted to it as the README's
"On a cluster" section says; also what tests/test_cluster.py runs.

    python benchmarks/standalone_cluster.py [--catalog samples/catalog] [--copies 3] [--work DIR]

Builds (or reuses) dist/neardup-executor-env.tar.gz, starts a Master and two Workers (1 core,
2 GB each) with the ``spark-class`` of the installed pyspark, runs ``spark-submit
jobs/dedup.py`` against them and the same job in local mode (``neardup run``, local[2]) on
the same catalog, and prints: the executor environment's size, seconds from submit to the
first executor and to the first embed task (from Spark's event log), and both runs' wall
times. Everything it starts is stopped by pid at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_ARCHIVE = os.path.join(REPO, "dist", "neardup-executor-env.tar.gz")
JOB = os.path.join(REPO, "jobs", "dedup.py")
# Settings of the machine that must not reach the cluster's processes: executors take
# neardup and its dependencies from the packed environment only.
PRIVATE_ENV = ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME", "VIRTUAL_ENV")


def spark_home() -> str:
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_executor_env(timeout: float = 900) -> str:
    """``make executor-env``'s command (without make's install step); reuses an archive
    built from the same sources. Returns its path."""
    subprocess.run([sys.executable, os.path.join(REPO, "deploy", "executor_env.py"), "--output", ENV_ARCHIVE],
                   check=True, timeout=timeout)
    return ENV_ARCHIVE


class StandaloneCluster:
    """A Master and ``workers`` Workers on 127.0.0.1, on free ports, each process in its own
    process group so that :meth:`stop` ends it and its executors by pid."""

    def __init__(self, work_dir: str, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.work_dir = work_dir
        self.workers, self.cores, self.memory = workers, cores, memory
        self.master_url = ""
        self.processes: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        self.env["SPARK_HOME"] = spark_home()
        self.env["SPARK_LOCAL_DIRS"] = os.path.join(work_dir, "local")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(os.path.join(self.work_dir, f"{name}.log"), "wb") as log:
            process = subprocess.Popen([os.path.join(spark_home(), "bin", "spark-class"), *args], stdout=log,
                                       stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, timeout: float = 240) -> StandaloneCluster:
        os.makedirs(self.env["SPARK_LOCAL_DIRS"], exist_ok=True)
        port = free_port()
        self.master_url = f"spark://127.0.0.1:{port}"
        self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(free_port())])
        self._wait_for("master", "I have been elected leader", 1, timeout)
        for i in range(self.workers):
            work = os.path.join(self.work_dir, f"worker-{i}")
            os.makedirs(work, exist_ok=True)
            self._start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host",
                                        "127.0.0.1", "--port", str(free_port()), "--webui-port", str(free_port()),
                                        "--cores", str(self.cores), "--memory", self.memory, "--work-dir", work])
        self._wait_for("master", "Registering worker", self.workers, timeout)
        return self

    def _wait_for(self, name: str, text: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        path = os.path.join(self.work_dir, f"{name}.log")
        while time.monotonic() < deadline:
            with open(path, errors="replace") as fh:
                if fh.read().count(text) >= count:
                    return
            dead = [p.args[1] for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while starting the cluster; see {self.work_dir}/*.log")
            time.sleep(0.5)
        raise TimeoutError(f"no {count} x {text!r} in {path} after {timeout} s")

    def executor_pids(self) -> list[int]:
        """Pids of the executors our Workers launched (CoarseGrainedExecutorBackend). ``-ww``: ps
        otherwise cuts command lines at $COLUMNS, before the class name."""
        workers = {p.pid for p in self.processes[1:]}
        ps = ["ps", "-ww", "-eo", "pid=,ppid=,args="]
        out = subprocess.run(ps, capture_output=True, text=True, check=True).stdout
        pids = []
        for line in out.splitlines():
            pid, ppid, args = line.split(None, 2)
            if int(ppid) in workers and "CoarseGrainedExecutorBackend" in args:
                pids.append(int(pid))
        return pids

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM each started process's group (the process, its executors and their Python
        workers), then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in reversed(self.processes):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
            deadline = time.monotonic() + timeout
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(deadline - time.monotonic(), 0.1))
            if all(p.poll() is not None for p in self.processes):
                break


@contextlib.contextmanager
def standalone_cluster(work_dir: str, **kwargs) -> Iterator[StandaloneCluster]:
    cluster = StandaloneCluster(work_dir, **kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def submit_command(master_url: str, catalog: str, output: str, extra_conf: dict[str, str] | None = None,
                   job_args: tuple[str, ...] = ()) -> list[str]:
    """The README's standalone (client mode) command: the driver runs this interpreter (the
    full install), executors ./environment/bin/python from the packed environment."""
    spark_submit = os.path.join(spark_home(), "bin", "spark-submit")
    conf = {"spark.pyspark.driver.python": sys.executable, "spark.pyspark.python": "./environment/bin/python",
            **(extra_conf or {})}
    return [spark_submit, "--master", master_url, "--total-executor-cores", "2", "--executor-cores", "1",
            "--executor-memory", "1g", "--archives", f"{ENV_ARCHIVE}#environment",
            *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")],
            JOB, "--input", catalog, "--output", output, *job_args]


class Submission:
    """A running spark-submit whose output lines are collected as they come."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: str):
        self.started = time.time()
        self.lines: list[str] = []
        self.log_path = log_path
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                        cwd=REPO, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

    def wait_for_line(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.process.poll() is not None and not self.reader.is_alive():
                return False
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reader.join(10)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def driver_env() -> dict[str, str]:
    """The submitting shell's environment: this checkout importable by the driver."""
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    env["PYTHONPATH"] = REPO
    return env


def copied_catalog(catalog: str, copies: int, target: str) -> str:
    """``copies`` copies of ``catalog`` side by side in ``target`` (more images to embed,
    and known duplicates across the copies)."""
    for i in range(copies):
        shutil.copytree(catalog, os.path.join(target, f"copy{i}"))
    return target


def read_pairs(output: str) -> list[tuple[str, str, float]]:
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(output, "pairs")).to_pydict()
    return sorted(zip(table["id_a"], table["id_b"], (round(c, 5) for c in table["cosine"])))


def event_log_times(event_dir: str) -> dict[str, float]:
    """Epoch seconds of the application's start, its first executor and the first task of
    a job described ``neardup embed`` (the embed stage), from Spark's event log."""
    (path,) = glob.glob(os.path.join(event_dir, "*"))
    times: dict[str, float] = {}
    embed_stages: set[int] = set()
    with open(path) as fh:
        for line in fh:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerApplicationStart":
                times["application_start"] = event["Timestamp"] / 1000
            elif kind == "SparkListenerExecutorAdded" and "first_executor" not in times:
                times["first_executor"] = event["Timestamp"] / 1000
            elif kind == "SparkListenerJobStart" and (event.get("Properties") or {}).get(
                    "spark.job.description") == "neardup embed":
                embed_stages.update(event["Stage IDs"])
            elif kind == "SparkListenerTaskStart" and event["Stage ID"] in embed_stages \
                    and "first_embed_task" not in times:
                times["first_embed_task"] = event["Task Info"]["Launch Time"] / 1000
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=os.path.join(REPO, "samples", "catalog"))
    p.add_argument("--copies", type=int, default=3, help="copies of the catalog to run on (default 3)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="neardup-cluster-")
    os.makedirs(work, exist_ok=True)
    catalog = copied_catalog(args.catalog, args.copies, os.path.join(work, "catalog"))
    start = time.perf_counter()
    archive = build_executor_env()
    print(f"executor environment: {os.path.getsize(archive) / 1e6:.1f} MB packed "
          f"({time.perf_counter() - start:.1f} s to build or check)")

    local_out = os.path.join(work, "local")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neardup_core.cli", "run", "--input", catalog, "--output", local_out,
                    "--set", "spark.master=local[2]"], check=True, env=driver_env(), timeout=900)
    local_seconds = time.perf_counter() - start

    with standalone_cluster(os.path.join(work, "cluster")) as cluster:
        events = os.path.join(work, "events")
        os.makedirs(events)
        cmd = submit_command(cluster.master_url, catalog, os.path.join(work, "cluster-out"),
                             {"spark.eventLog.enabled": "true", "spark.eventLog.dir": f"file://{events}",
                              "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"})
        run = Submission(cmd, driver_env(), os.path.join(work, "submit.log"))
        code = run.wait(900)
        cluster_seconds = time.time() - run.started
        if code != 0:
            print(run.output[-3000:])
            return 1
    times = event_log_times(events)
    same = read_pairs(local_out) == read_pairs(os.path.join(work, "cluster-out"))
    images = sum(len(files) for _, _, files in os.walk(catalog))
    print(f"catalog: {images} files ({args.copies} copies of {args.catalog})")
    print(f"submit -> application start: {times['application_start'] - run.started:.1f} s; "
          f"-> first executor: {times['first_executor'] - run.started:.1f} s; "
          f"-> first embed task: {times['first_embed_task'] - run.started:.1f} s")
    print(f"whole run: cluster (2 workers x 1 core) {cluster_seconds:.1f} s, local[2] {local_seconds:.1f} s "
          f"(ratio {cluster_seconds / local_seconds:.2f}); same pairs: {same}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
