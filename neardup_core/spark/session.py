"""The job's Spark session, and what the job asks of it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from pyspark.sql import DataFrame, SparkSession

from ..config import ConfigError, SparkConfig
from .class_archive import java_options as archive_options
from .jvm import registered_executors, silence_jvm_logs, submit_settings

log = logging.getLogger("neardup")

QUIET_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2-quiet.properties")
QUIET_JVM_LOGS = f"-Dlog4j2.configurationFile=file:{QUIET_LOG4J}"  # the driver JVM's option: warnings and errors

# Settings the job gives Spark unless spark.conf or spark-submit sets them (job_defaults).
# spark.serializer.objectStreamReset: Spark's Java serializer keeps a reference to every
# object it writes or reads until it resets its stream, by default every 100 objects. A
# DataFrame cached on disk (or spilled from memory) is a stream of column batches of
# spark.sql.inMemoryColumnarStorage.batchSize rows (10,000: 10 MB of 256-d vectors), so a
# task that caches or reads back a partition held up to 100 of them, its whole partition
# below 1 GB: at 1M vectors in 2 tasks, 830 MB of the default 1g heap writing embeddings/,
# then OutOfMemoryError (docs/performance.md). Reset after every batch, a task holds one;
# the cost is a class description written again per object.
# spark.sql.optimizer.canChangeCachedPlanOutputPartitioning: adaptive execution sizes a
# shuffle's partitions to its data, but by default not in a frame the job persists (and it
# persists the rows it joins: the listing against the previous run, the reused rows), which
# then kept Spark's 200 tasks of a few rows each (400 after a union; docs/performance.md).
JOB_DEFAULTS = {"spark.serializer.objectStreamReset": "1",
                "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true"}


def build_session(cfg: SparkConfig, arrow_batch_size: int, launched_by_spark_submit: bool,
                  verbose: bool = False, class_archive: str | None = None) -> SparkSession:
    """The job's session. Locally it runs ``local[*]`` unless ``spark.master`` says
    otherwise; under spark-submit the master, resources and logging come from spark-submit.

    Args:
        arrow_batch_size: rows per Arrow batch handed to the stages' Python functions.
        verbose: keep Spark's own start-up and INFO logging (local runs); otherwise the
            JVM logs warnings and errors only.
        class_archive: a class-data archive (:mod:`spark.class_archive`) the driver's JVM
            starts from, where this process starts it and ``spark.conf`` sets no
            ``spark.driver.extraJavaOptions``. Should the JVM not start with it, it starts
            without it, and the archive is removed.
    """
    builder = SparkSession.builder.appName(cfg.app_name)
    master, ignored = session_master(cfg, launched_by_spark_submit)
    for key, value in ignored:
        log.warning("%s %s from the configuration is ignored: under spark-submit, spark-submit's --master "
                    "decides", key, value)
    if master is not None:
        builder = builder.master(master)
    # The driver JVM's options, where this process starts it and spark.conf does not set them.
    java_options: list[str] | None = None
    if not launched_by_spark_submit:
        # Local workers must run the interpreter that has our dependencies installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if "spark.driver.extraJavaOptions" not in cfg.conf:
            java_options = [] if verbose else [QUIET_JVM_LOGS]
    archived = class_archive is not None and java_options is not None
    if java_options or archived:
        builder = builder.config("spark.driver.extraJavaOptions",
                                 " ".join([archive_options(class_archive)] * archived + java_options))
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch_size))
    # The stage log lines say where the job is; Spark's progress bar garbles them.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    # Spark packs files into read tasks as if each cost 4 MB more than its size; for
    # 100-500 kB images that makes ~30-image tasks whose fixed cost rivals their work.
    builder = builder.config("spark.sql.files.openCostInBytes", str(64 * 1024))
    if cfg.shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    for key, value in job_defaults(cfg.conf, submit_settings() if launched_by_spark_submit else {}).items():
        builder = builder.config(key, value)
    for key, value in cfg.conf.items():
        if key != "spark.master" or not launched_by_spark_submit:
            builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # the JVM refused the settings (a bad master, too little memory)
        if not archived:
            raise _start_error(err) from err
        # Perhaps the archive (a damaged file crashes the JVM as it maps it): without it.
        builder = builder.config("spark.driver.extraJavaOptions", " ".join(java_options))
        try:
            spark = builder.getOrCreate()
        except Exception as again:
            raise _start_error(again) from again
        log.warning("the JVM did not start from its class archive %s (%s); started without it and removed the "
                    "archive (rebuild it with `neardup build-jvm-archive`)", class_archive, _first_line(err))
        with contextlib.suppress(OSError):
            os.remove(class_archive)
    if not verbose:
        spark.sparkContext.setLogLevel("WARN")
    return spark


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _start_error(err: Exception) -> ConfigError:
    return ConfigError(f"Spark could not start with these settings (spark.master, spark.conf): {_first_line(err)}")


def job_defaults(conf: dict[str, str], submitted: dict[str, str]) -> dict[str, str]:
    """:data:`JOB_DEFAULTS` less the keys that ``conf`` (``spark.conf``) or ``submitted``
    (spark-submit's settings) set: theirs win."""
    return {key: value for key, value in JOB_DEFAULTS.items() if key not in conf and key not in submitted}


def session_master(cfg: SparkConfig, launched_by_spark_submit: bool) -> tuple[str | None, list[tuple[str, str]]]:
    """(the master the job's builder sets, the configured masters it ignores).

    Run by ``neardup``: ``spark.master`` (or ``spark.conf``'s), else ``local[*]``. Under
    spark-submit: None, since spark-submit's ``--master`` has already configured the
    session; a master in the configuration would silently replace it (a cluster submit
    running ``local[2]`` on the submitting machine), so it is ignored and returned for a
    warning."""
    configured = [(key, value) for key, value in (("spark.master", cfg.master),
                                                  ("spark.conf.spark.master", cfg.conf.get("spark.master")))
                  if value is not None]
    if launched_by_spark_submit:
        return None, configured
    if cfg.master is not None:
        return cfg.master, []
    return (None if "spark.master" in cfg.conf else "local[*]"), []


def launch_setting(cfg: SparkConfig, key: str, launched_by_spark_submit: bool) -> str | None:
    """Spark setting ``key`` as the session will have it, known before it starts: from
    ``spark.conf``, else under spark-submit from spark-submit's own settings."""
    if key in cfg.conf:
        return cfg.conf[key]
    return submit_settings().get(key) if launched_by_spark_submit else None


_ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"


def set_arrow_batch_size(spark: SparkSession, rows: int) -> None:
    """Rows per Arrow batch for the stages that run from here on."""
    spark.conf.set(_ARROW_BATCH_ROWS, str(rows))


def arrow_batch_rows(spark: SparkSession, rows: int) -> contextlib.AbstractContextManager[None]:
    """Rows per Arrow batch for the stages run inside the block, then the previous value
    again: for stages whose rows are large (two feature sets a pair), not for collecting
    many small rows, which then arrive in many small chunks."""
    return _setting(spark, _ARROW_BATCH_ROWS, rows)


@contextlib.contextmanager
def _setting(spark: SparkSession, key: str, value: object) -> Iterator[None]:
    """The session's SQL setting ``key`` at ``value`` inside the block, then as it was."""
    previous = spark.conf.get(key)
    spark.conf.set(key, str(value))
    try:
        yield
    finally:
        spark.conf.set(key, previous)


def executor_cores(spark: SparkSession) -> int:
    """Cores of one executor: ``spark.executor.cores``, or in local mode all the
    session's cores; 1 when neither says."""
    configured = spark.conf.get("spark.executor.cores", None)
    if configured:
        return int(configured)
    return spark.sparkContext.defaultParallelism if spark.sparkContext.master.startswith("local") else 1


def expected_executors(conf: dict[str, str]) -> int | None:
    """How many executors the application asked for, from its Spark settings:
    ``spark.executor.instances`` (YARN, Kubernetes), or on a standalone master
    ``spark.cores.max // spark.executor.cores``; None when they do not say (dynamic
    allocation, or standalone executors that take a whole worker)."""
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return None
    if conf.get("spark.executor.instances"):
        return int(conf["spark.executor.instances"])
    if conf.get("spark.master", "").startswith("spark://") and conf.get("spark.cores.max") and conf.get(
            "spark.executor.cores"):
        return int(conf["spark.cores.max"]) // int(conf["spark.executor.cores"])
    return None


def executor_status(spark: SparkSession) -> tuple[int, int | None] | None:
    """(executors registered, executors asked for or None) on a cluster; None in local mode
    or when the count cannot be read. What the progress lines say while executors start."""
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return None
    registered = registered_executors(spark)
    if registered < 0:
        return None
    return registered, expected_executors(dict(sc.getConf().getAll()))


def default_parallelism(spark: SparkSession) -> int:
    """Tasks Spark runs at once by default: the floor for any stage's task count."""
    return spark.sparkContext.defaultParallelism


def shuffle_partitions(spark: SparkSession, partitions: int) -> contextlib.AbstractContextManager[None]:
    """``spark.sql.shuffle.partitions`` for the stages run inside the block, then the
    previous value again. Spark's default of 200 suits large data; for a stage of a few
    hundred MB on a few cores, 200 tasks a shuffle cost more in task overhead than work."""
    return _setting(spark, "spark.sql.shuffle.partitions", partitions)


def sorted_by(frame: DataFrame, columns: tuple[str, ...], one_task: bool) -> DataFrame:
    """``frame`` sorted by ``columns`` for writing: where the rows are few enough for one
    task, sorted in one (a global sort makes a pass of its own to sample them: 3.2-5.7 s
    against 1.9-2.5 s for 836,599 pairs on 2 cores), else by a global sort. The one task
    also runs what makes the rows since the last shuffle: cheaper than another shuffle
    after a scan (2.5 s against 3.3 s for those pairs), not after a join of many rows
    (repartition the frame to one first)."""
    if one_task:
        return frame.coalesce(1).sortWithinPartitions(*columns)
    return frame.orderBy(*columns)


def quiet_interrupts(spark: SparkSession) -> None:
    """On Ctrl-C: silence Spark's log, cancel the running jobs, and raise
    KeyboardInterrupt, so the console gets neardup's one line instead of every cancelled
    task's stack trace (PySpark's own handler only cancels). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    sc = spark.sparkContext

    def cancel():
        with contextlib.suppress(Exception):
            silence_jvm_logs(spark)
            sc.cancelAllJobs()

    def interrupted(signum, frame):
        # py4j's connection is per thread, and this one may be inside a call: another
        # thread talks to the JVM. py4j logs the interrupted call on the root logger.
        logging.disable(logging.CRITICAL)
        helper = threading.Thread(target=cancel, daemon=True)
        helper.start()
        helper.join(10)
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, interrupted)


def quiesce(spark: SparkSession, deadline: float, settle: float = 0.5) -> None:
    """After a Ctrl-C: return once no Spark job, stage or task has run for ``settle``
    seconds, cancelling every job that starts meanwhile; at the latest at ``deadline``
    (``time.monotonic()``).

    The interrupted Py4J call goes on in the JVM: Python gets its KeyboardInterrupt at
    once, and cancelling the running jobs neither stops a write whose job had not started
    yet (it starts after the cancel) nor the driver-side setup and commit around a job,
    nor a killed task before it notices. Each of those may still create files."""
    sc = spark.sparkContext
    quiet_since = time.monotonic()
    with contextlib.suppress(Exception):  # the JVM is going away: nothing runs in it
        tracker, executors = sc.statusTracker(), sc._jsc.sc().statusTracker()
        while (now := time.monotonic()) < deadline and now - quiet_since < settle:
            if (tracker.getActiveJobsIds() or tracker.getActiveStageIds()
                    or any(info.numRunningTasks() for info in executors.getExecutorInfos())):
                sc.cancelAllJobs()
                quiet_since = time.monotonic()
            time.sleep(0.05)


def out_of_memory_advice(err: BaseException, spark: SparkSession | None) -> str | None:
    """One line naming the memory setting to raise, when ``err`` (or its cause) is a JVM
    out-of-memory error; None otherwise. In local mode the tasks run in the driver's JVM,
    so ``spark.driver.memory`` is the one; on a cluster, ``spark.executor.memory``."""
    seen, text, died = err, "", False
    while seen is not None and len(text) < 100_000:
        died |= isinstance(seen, ConnectionError)  # the JVM is gone (an OutOfMemoryError in local mode ends it)
        try:
            text += str(seen)  # a Py4JJavaError asks the JVM for its text
        except Exception:  # noqa: BLE001 - the JVM is gone
            died = True
        seen = seen.__cause__ or seen.__context__
    if died and "OutOfMemoryError" not in text:
        return ("the Spark JVM stopped; if the log above shows java.lang.OutOfMemoryError, raise "
                "spark.driver.memory, e.g. --set 'spark.conf={spark.driver.memory: 4g}'")
    if "java.lang.OutOfMemoryError" not in text and "SparkOutOfMemoryError" not in text:
        return None
    kind = next((line.split("OutOfMemoryError:", 1)[1].strip() for line in text.splitlines()
                 if "OutOfMemoryError:" in line), "")
    local = True
    key, now = "spark.driver.memory", "1g"
    with contextlib.suppress(Exception):
        local = (spark.sparkContext.master or "").startswith("local")
        key = "spark.driver.memory" if local else "spark.executor.memory"
        now = spark.conf.get(key, "1g")
    return (f"Spark ran out of Java memory ({kind or 'OutOfMemoryError'}); raise {key} (now {now}), "
            f"e.g. --set 'spark.conf={{{key}: 4g}}'" + ("" if local else ", or use more, smaller partitions"))
