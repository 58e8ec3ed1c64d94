"""The nightly dedup job: check inputs, run the stages in order, commit the output.

Everything that can be checked without Spark (config, input path, output folder, model)
is checked first, so a bad invocation fails in seconds with one message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from pyspark import StorageLevel

from . import __version__, lsh, pipeline
from .config import Config, ConfigError
from .embed import PreparedModel, prepare_model
from .output import OutputDir, check_output, local_entries
from .sources import InputError, is_local, resolve_format

log = logging.getLogger("neardup")


@dataclass
class Progress:
    """Logs each stage as it starts and ends, and keeps the timings for the manifest.

    While a stage runs, a heartbeat logs Spark's task counts every ``heartbeat_seconds``,
    so a long embed stage on a big catalog still shows that it moves, and how fast.
    """

    spark: object = None
    heartbeat_seconds: float = 30.0
    stages: list[dict] = field(default_factory=list)
    errors: int = 0

    @contextlib.contextmanager
    def stage(self, name: str, images: int | None = None):
        log.info("stage %s: started", name)
        record: dict = {"name": name}
        start = time.perf_counter()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(name, start, stop), daemon=True)
        beat.start()
        try:
            yield record
        finally:
            stop.set()
            beat.join()
        seconds = time.perf_counter() - start
        record["seconds"] = round(seconds, 3)
        self.stages.append(record)
        rate = f", {images / seconds:.1f} images/s" if images and seconds > 0 else ""
        rows = f", {record['rows']} rows" if "rows" in record else ""
        log.info("stage %s: done in %.1f s%s%s, %d errors so far", name, seconds, rows, rate, self.errors)

    def _heartbeat(self, name: str, start: float, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_seconds):
            if self.spark is None:
                continue
            tracker = self.spark.sparkContext.statusTracker()
            infos = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            done = sum(i.numCompletedTasks for i in infos if i)
            total = sum(i.numTasks for i in infos if i)
            log.info("stage %s: running for %.0f s, %d of %d Spark tasks done", name,
                     time.perf_counter() - start, done, total)


@dataclass(frozen=True)
class RunResult:
    output: str
    images: int
    embedded: int
    errors: int
    pairs: int
    manifest: dict


def run(cfg: Config, launched_by_spark_submit: bool = False) -> RunResult:
    """Run the job end to end.

    Raises:
        ConfigError, InputError, ModelError, OutputError: bad invocation, before any
            Spark job runs.
    """
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    fmt = resolve_format(cfg.input)
    if cfg.output.path is None:
        raise InputError("--output is required")
    if is_local(cfg.output.path):
        check_output(local_entries(cfg.output.path), cfg.output.path, cfg.output.overwrite)
    progress = Progress()

    with progress.stage("load-model") as record:
        prepared = prepare_model(cfg.model, cfg.embed)  # fails fast on a bad model; gives dim
        record["dim"] = prepared.dim
        record["model_file"] = prepared.file
    planes = lsh.hyperplanes(cfg.lsh.seed, cfg.lsh.num_tables, cfg.lsh.bits_per_table, prepared.dim)

    spark = progress.spark = pipeline.build_session(cfg.spark, cfg.embed, launched_by_spark_submit)
    _check_gpu_resources(spark, cfg)
    out = OutputDir(spark, cfg.output.path, run_id)
    check_output(out.entries(), cfg.output.path, cfg.output.overwrite)
    try:
        result = _run_stages(spark, cfg, fmt, out, planes, prepared, progress)
        manifest = _manifest(cfg, run_id, started, spark, progress, result)
        out.commit(manifest)
    except BaseException:
        out.discard_staging()
        raise
    log.info("done: %d images, %d errors, %d near-duplicate pairs -> %s",
             result["images"], result["errors"], result["pairs"], cfg.output.path)
    return RunResult(cfg.output.path, result["images"], result["embedded"], result["errors"],
                     result["pairs"], manifest)


def _check_gpu_resources(spark, cfg: Config) -> None:
    if cfg.embed.backend == "tensorrt" and not spark.conf.get("spark.task.resource.gpu.amount", None):
        raise ConfigError(
            "embed.backend tensorrt: spark.task.resource.gpu.amount is not set, so no task would get a GPU; "
            "see conf/spark-gpu.conf, or use embed.backend auto"
        )


def _run_stages(spark, cfg: Config, fmt: str, out: OutputDir, planes, prepared: PreparedModel,
                progress: Progress) -> dict:
    with progress.stage("list") as record:
        listing = pipeline.list_inputs(spark, cfg.input, fmt)
        images = record["rows"] = listing.count()
        if images == 0:
            kind = "image files (" + ", ".join(cfg.input.extensions) + ")" if fmt == "directory" else "rows"
            raise InputError(f"--input {cfg.input.path}: no {kind} found")
        if fmt != "directory":
            problem = pipeline.manifest_id_problem(listing)
            if problem:
                raise InputError(f"--input {cfg.input.path}: {problem} (column {cfg.input.id_column!r})")
            partitions = max(spark.sparkContext.defaultParallelism, -(-images // cfg.input.rows_per_partition))
            listing = listing.repartition(partitions)

    with progress.stage("embed", images=images) as record:
        broadcast = spark.sparkContext.broadcast(planes)
        rows = pipeline.embed(listing, cfg.model, cfg.embed, cfg.input, prepared.file, broadcast,
                              cfg.lsh.num_tables)
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        record["rows"] = rows.count()
        errors = rows.filter("error_stage is not null").select(
            "id", "path", rows["error_stage"].alias("stage"), rows["error_message"].alias("message"))
        embedded = rows.filter("error_stage is null").select("id", "path", "embedding", "keys")
        progress.errors = record["errors"] = errors.count()
        embedded_count = record["rows"] - progress.errors

    # Rows from here on are small (vectors, keys, ids); the low Arrow batch size set for
    # images would only add per-batch overhead.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    with progress.stage("pairs") as record:
        # Size the shuffles by the data, not Spark's default of 200, which on a small
        # catalog is 200 near-empty Python tasks per shuffle.
        if not cfg.spark.shuffle_partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(_shuffle_partitions(spark, embedded_count, cfg)))
        scored = pipeline.score_pairs(
            pipeline.candidate_pairs(embedded, cfg.lsh.num_tables), embedded, cfg.lsh.num_tables
        ).persist(StorageLevel.MEMORY_AND_DISK)
        candidates = record["candidate_pairs"] = scored.count()
        near = scored.filter(scored["cosine"] >= cfg.pairs.cosine_threshold).orderBy("id_a", "id_b")
        near.write.parquet(out.staged("pairs"))
        pairs = record["rows"] = spark.read.parquet(out.staged("pairs")).count()

    with progress.stage("write") as record:
        errors.orderBy("id").write.parquet(out.staged("errors"))
        if cfg.output.write_embeddings:
            embedded.write.parquet(out.staged("embeddings"))
        record["rows"] = embedded_count + progress.errors

    by_stage = errors.groupBy("stage").count().collect() if progress.errors else []
    for frame in (scored, rows):
        frame.unpersist()
    broadcast.destroy()
    return {"images": images, "embedded": embedded_count, "errors": progress.errors,
            "errors_by_stage": {row["stage"]: row["count"] for row in by_stage},
            "candidate_pairs": candidates, "pairs": pairs, "dim": prepared.dim}


def _shuffle_partitions(spark, rows: int, cfg: Config) -> int:
    """About 500k bucket rows per shuffle partition, at least one per core."""
    bucket_rows = rows * cfg.lsh.num_tables
    return max(spark.sparkContext.defaultParallelism, -(-bucket_rows // 500_000))


def _manifest(cfg: Config, run_id: str, started: dt.datetime, spark, progress: Progress, result: dict) -> dict:
    return {
        "neardup_version": __version__,
        "run_id": run_id,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spark": {"version": spark.version, "master": spark.sparkContext.master,
                  "default_parallelism": spark.sparkContext.defaultParallelism},
        "counts": {
            "inputs": result["images"],
            "embedded": result["embedded"],
            "errors": result["errors"],
            "errors_by_stage": result["errors_by_stage"],
            "candidate_pairs": result["candidate_pairs"],
            "pairs": result["pairs"],
        },
        "embedding_dim": result["dim"],
        "stages": progress.stages,
        "config": cfg.to_dict(),
    }
