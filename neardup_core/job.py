"""The nightly dedup job: check inputs, run the stages in order, commit the output.

Everything that can be checked without Spark (config, input path, output folder, model)
is checked first, so a bad invocation fails in seconds with one message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import __version__, blocks, lsh, pipeline, tuning
from .config import Config, ConfigError
from .embed import prepare_model
from .output import OutputDir, check_output, local_entries
from .pairing import BucketStats
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
    """Run the job end to end: list, embed, then :func:`_pair_and_write`.

    Raises:
        ConfigError, InputError, ModelError, OutputError: bad invocation, before any
            Spark job runs.
    """
    fmt = resolve_format(cfg.input)
    progress = Progress()
    _check_local_output(cfg)
    with progress.stage("load-model") as record:
        prepared = prepare_model(cfg.model, cfg.embed)  # fails fast on a bad model; gives dim
        record["dim"] = prepared.dim
        record["model_file"] = prepared.file

    def produce(spark) -> tuple[DataFrame, int]:
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
            rows = pipeline.embed(listing, cfg.model, cfg.embed, cfg.input, prepared.file)
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            record["rows"] = rows.count()
            progress.errors = record["errors"] = rows.filter("error_stage is not null").count()
        return rows, images

    return _run_session(cfg, launched_by_spark_submit, progress, produce, check_gpus=True)


def run_pairs(cfg: Config, embeddings: str, launched_by_spark_submit: bool = False) -> RunResult:
    """Hash, pair and score embeddings made elsewhere (``neardup pairs``): the full job's
    outputs from a Parquet table of ids and vectors.

    Raises:
        ConfigError, InputError, OutputError: bad invocation, before the pairing runs.
    """
    progress = Progress()
    _check_local_output(cfg)

    def produce(spark) -> tuple[DataFrame, int]:
        with progress.stage("read-embeddings") as record:
            rows = pipeline.read_embeddings(spark, embeddings, cfg.input.id_column, cfg.input.embedding_column)
            problem = pipeline.manifest_id_problem(rows)
            if problem:
                raise InputError(f"--embeddings {embeddings}: {problem} (column {cfg.input.id_column!r})")
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            images = record["rows"] = rows.count()
            progress.errors = record["errors"] = rows.filter("error_stage is not null").count()
        return rows, images

    return _run_session(cfg, launched_by_spark_submit, progress, produce, check_gpus=False)


def _check_local_output(cfg: Config) -> None:
    if cfg.output.path is None:
        raise InputError("--output is required")
    if is_local(cfg.output.path):
        check_output(local_entries(cfg.output.path), cfg.output.path, cfg.output.overwrite)


def _run_session(cfg: Config, launched_by_spark_submit: bool, progress: Progress, produce, check_gpus: bool
                 ) -> RunResult:
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    spark = progress.spark = pipeline.build_session(cfg.spark, cfg.embed, launched_by_spark_submit)
    if check_gpus:
        _check_gpu_resources(spark, cfg)
    out = OutputDir(spark, cfg.output.path, run_id)
    check_output(out.entries(), cfg.output.path, cfg.output.overwrite)
    try:
        rows, images = produce(spark)
        result = _pair_and_write(spark, cfg, rows, images, out, progress)
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


def _pair_and_write(spark, cfg: Config, rows: DataFrame, images: int, out: OutputDir, progress: Progress) -> dict:
    """From the embed stage's rows (id, path, embedding | error): plan the LSH tables,
    hash, split oversized buckets, pair, score, and stage every output."""
    errors = rows.filter("error_stage is not null").select(
        "id", "path", rows["error_stage"].alias("stage"), rows["error_message"].alias("message"))
    embedded = rows.filter("error_stage is null").select("id", "path", "embedding")
    embedded_count = images - progress.errors
    # Rows from here on are small (vectors, keys, ids); the low Arrow batch size set for
    # images would only add per-batch overhead.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    lsh_cfg = cfg.lsh

    with progress.stage("plan") as record:
        sample = pipeline.sample_embeddings(embedded, embedded_count, lsh_cfg.sample_size, lsh_cfg.seed)
        dim = sample.shape[1] if len(sample) else 0
        plan = _plan(cfg, sample, embedded_count, dim) if len(sample) else None
        if plan is not None:
            record.update(_plan_record(plan, len(sample)))
            log.info("LSH plan: %d tables of %d bits; recall %.4f at cosine %.3f; about %.0f candidate pairs",
                     plan.num_tables, plan.bits_per_table, plan.recall_at_threshold, cfg.pairs.cosine_threshold,
                     plan.expected_candidates)

    tables = plan.num_tables if plan else 1
    with progress.stage("pairs") as record:
        shuffle_before = _shuffle_bytes(spark)
        numbered = pipeline.number_rows(embedded)
        tally = pipeline.Tally(spark)
        named = None
        if plan is None:  # nothing embedded: no pairs, and no dimension to hash in
            spark.createDataFrame([], pipeline.PAIR_SCHEMA).write.parquet(out.staged("pairs"))
            pairs = record["rows"] = 0
        else:
            planes = spark.sparkContext.broadcast(
                lsh.hyperplanes(lsh_cfg.seed, tables, plan.bits_per_table + lsh_cfg.split_bits, dim))
            tasks = _pairing_tasks(spark, cfg, embedded_count, tables, dim, plan.expected_candidates)
            if tasks is None:
                record["tasks"] = {"buckets": 1, "rows": 1, "shuffled": False}
                pipeline.pair_in_one_task(numbered, planes, tables, lsh_cfg.split_bits, lsh_cfg.max_bucket_size,
                                          cfg.pairs.cosine_threshold, tally, pipeline.executor_cores(spark)
                                          ).write.parquet(out.staged("pairs"))  # one partition, sorted
                pairs = record["rows"] = sum(v[0] for v in tally.values("pairs"))
            else:
                bucket_parts, row_parts = tasks
                record["tasks"] = {"buckets": bucket_parts, "rows": row_parts, "shuffled": True}
                # Packed from the cached rows by each scoring step: as cheap as reading a cache
                # of them (measured at 200k), and the JVM does not hold N vectors twice.
                vectors = pipeline.vector_blocks(numbered, dim, row_parts)
                entries = pipeline.bucket_entries(numbered, planes, tables, lsh_cfg.split_bits, bucket_parts)
                candidates = pipeline.bucket_candidates(entries, bucket_parts, row_parts, lsh_cfg.max_bucket_size,
                                                        lsh_cfg.split_bits, tally)
                halves = pipeline.attach_first_rows(candidates, vectors, dim, row_parts)
                near = pipeline.score_halves(halves, vectors, dim, row_parts, tables, cfg.pairs.cosine_threshold,
                                             tally)
                named = pipeline.name_pairs(near, numbered).persist(StorageLevel.MEMORY_AND_DISK)
                pairs = record["rows"] = named.count()  # runs the stage; the sort and the write read the cache
                named.orderBy("id_a", "id_b").write.parquet(out.staged("pairs"))
        buckets = record["buckets"] = _bucket_record(tally.values("buckets"), lsh_cfg)
        candidate_count = record["candidate_pairs"] = sum(v[0] for v in tally.values("scored"))
        shuffled = _shuffle_bytes(spark) - shuffle_before
        if shuffle_before >= 0 and shuffled >= 0:
            record["shuffle_bytes"] = shuffled
            record["shuffle_bytes_per_image"] = round(shuffled / max(embedded_count, 1), 1)

    with progress.stage("write") as record:
        errors.orderBy("id").write.parquet(out.staged("errors"))
        if cfg.output.write_embeddings:
            if plan is None:
                keyed = numbered.select("id", "path", "embedding", F.array().cast("array<bigint>").alias("keys"))
            else:
                keyed = pipeline.keyed_embeddings(numbered, planes, tables, lsh_cfg.split_bits)
            keyed.write.parquet(out.staged("embeddings"))
        record["rows"] = embedded_count + progress.errors

    by_stage = errors.groupBy("stage").count().collect() if progress.errors else []
    if named is not None:
        named.unpersist()
    rows.unpersist()
    return {"images": images, "embedded": embedded_count, "errors": progress.errors,
            "errors_by_stage": {row["stage"]: row["count"] for row in by_stage},
            "candidate_pairs": candidate_count, "pairs": pairs, "dim": dim,
            "lsh": None if plan is None else {**_plan_record(plan, len(sample)), "buckets": buckets}}


def _plan(cfg: Config, sample, items: int, dim: int) -> tuning.LshPlan:
    try:
        return tuning.plan_for(cfg.lsh, cfg.pairs.cosine_threshold, tuning.unit_pair_cosines(sample), items, dim)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _plan_record(plan: tuning.LshPlan, sample_size: int) -> dict:
    return {"bits_per_table": plan.bits_per_table, "num_tables": plan.num_tables,
            "recall_at_threshold": round(plan.recall_at_threshold, 5),
            "expected_candidate_pairs": round(plan.expected_candidates),
            "expected_shuffle_bytes": round(plan.bucket_shuffle_bytes + plan.candidate_shuffle_bytes),
            "expected_core_seconds": round(plan.cost, 1), "sample_size": sample_size}


def _bucket_record(task_stats: list, lsh_cfg) -> dict:
    """The pairing tasks' bucket counts, added up, for the manifest and the log."""
    total = BucketStats()
    for values in task_stats:
        total = total.merge(BucketStats(*(int(v) for v in values)))
    if total.oversized:
        log.info("%d buckets over lsh.max_bucket_size=%d (largest %d rows): %d split by up to %d more bits; "
                 "%d still over it are paired within a window", total.oversized, lsh_cfg.max_bucket_size,
                 total.largest_rows, total.split, total.max_split_depth, total.windowed)
    return total._asdict()


def _shuffle_bytes(spark) -> int:
    """Shuffle bytes written by all stages so far (Spark's status store), or -1."""
    try:
        sc = spark.sparkContext
        no_quantiles = sc._gateway.new_array(sc._gateway.jvm.double, 0)
        stages = sc._jsc.sc().statusStore().stageList(None, False, False, no_quantiles, None)
        total = 0
        iterator = stages.iterator()
        while iterator.hasNext():
            total += iterator.next().shuffleWriteBytes()
        return int(total)
    except Exception:  # noqa: BLE001 - a diagnostic; the status store API is internal
        return -1


def _pairing_tasks(spark, cfg: Config, items: int, tables: int, dim: int, expected_candidates: float
                   ) -> tuple[int, int] | None:
    """Tasks for the bucket step and for the two scoring steps, so that each task holds
    about ``pairs.partition_mb`` of packed data, and at least one task per core; or None
    when the bucket entries and the vectors together fit one task's share: then one task
    pairs everything, and the stage's fixed cost (three shuffles, a dozen Spark jobs,
    seconds) is not paid for a second of work. ``spark.shuffle_partitions``, when set,
    is the task count of both steps and always shuffles."""
    if cfg.spark.shuffle_partitions:
        return cfg.spark.shuffle_partitions, cfg.spark.shuffle_partitions
    target = cfg.pairs.partition_mb * 2**20
    entry_bytes = items * tables * blocks.ENTRY.itemsize
    vector_bytes = items * blocks.vector_dtype(dim).itemsize
    if entry_bytes + vector_bytes <= target:
        return None
    floor = spark.sparkContext.defaultParallelism
    row_bytes = vector_bytes + expected_candidates * blocks.half_dtype(dim).itemsize
    return max(floor, math.ceil(entry_bytes / target)), max(floor, math.ceil(row_bytes / target))


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
        "lsh": result["lsh"],
        "stages": progress.stages,
        "config": cfg.to_dict(),
    }
