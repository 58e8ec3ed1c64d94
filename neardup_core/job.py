"""The nightly dedup job: check inputs, run the stages in order, commit the output.

Everything that can be checked without Spark (config, input path, output folder, model)
is checked first, so a bad invocation fails in seconds with one message.

    run:       load-model -> list -> embed -> plan -> pairs -> groups -> write -> commit
    run_pairs:                read-embeddings -> plan -> pairs -> groups -> write -> commit

(with ``--previous``, a reuse stage after embed). Over 400 lines because it is the one
place that says in which order the stages run, for both commands, full and incremental;
every stage it calls lives in :mod:`neardup_core.spark`, every formula in the pure modules.
The incremental branch is the next thing to move out if it grows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from . import __version__, incremental, near_copies, tuning
from .config import Config, ConfigError, EmbedConfig, LshConfig
from .console import callers_interrupts, caused_by_interrupt, note_interrupts, without_native_info
from .embed import prepare_model
from .lock import HadoopLockFile, LocalLockFile, OutputLock
from .lsh import LshTables
from .output import (
    OutputDir,
    OutputError,
    check_local_output,
    check_local_previous,
    check_output,
    hold_columns,
    link_data_files,
)
from .pairing import BucketStats
from .progress import Progress
from .sources import InputError, is_local, local_path, require_local_path, resolve_format
from .spark import exact as exact_stage
from .spark import groups as groups_stage
from .spark import incremental as incremental_stage
from .spark import listing as listing_stage
from .spark import near as near_stage
from .spark import pairing as pairing_stage
from .spark import report as report_stage
from .spark import verify as verify_stage
from .spark.class_archive import configured_archive
from .spark.driver_tables import write_table
from .spark.embed import embed_images
from .spark.jvm import hadoop_filesystem, read_text, shuffle_bytes_written
from .spark.listing import IMAGE_FACTS
from .spark.session import (
    build_session,
    default_parallelism,
    executor_cores,
    executor_status,
    launch_setting,
    out_of_memory_advice,
    quiesce,
    quiet_interrupts,
    set_arrow_batch_size,
    shuffle_partitions,
    sorted_by,
)

log = logging.getLogger("neardup")

# Rows per Arrow batch once images are embedded: vectors, keys and ids are small, and the
# low batch size that suits images would only add per-batch overhead.
VECTOR_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class RunCounts:
    """What a run counted; the manifest's ``counts``."""

    inputs: int
    embedded: int
    errors: int
    errors_by_stage: dict[str, int]
    candidate_pairs: int
    pairs: int
    groups: int  # duplicate groups: connected components of the pair graph
    largest_group: int
    kept: int  # images in a group that are kept
    dropped: int  # images in a group that duplicate a kept one
    reused: int = 0  # an incremental run: images taken from the previous run, not embedded again
    changed: int = 0  # images of the previous run whose content changed (embedded again)
    deleted: int = 0  # images of the previous run no longer listed
    exact_copies: int = 0  # embedded images with the same bytes as another one, paired only with it
    near_copies: int = 0  # embedded images within pairs.copy_cosine of another one, collapsed onto it
    verified_pairs: int = 0  # pairs with cosine under pairs.accept_cosine matched geometrically
    rejected_pairs: int = 0  # borderline pairs rejected: not in pairs/ (in rejected_pairs/ with pairs.keep_rejected)
    unverified_pairs: int = 0  # borderline pairs not matched: their verdict could change no group or decision
    over_budget_pairs: int = 0  # of rejected_pairs, not matched: past pairs.max_verified_per_image


@dataclass(frozen=True)
class RunResult:
    output: str
    counts: RunCounts
    manifest: dict
    interrupted: threading.Event | None = None  # set by a Ctrl-C after the commit (console.note_interrupts)


class _Prior(NamedTuple):
    """What ``--previous`` gave: the run, its datasets, and why it cannot be reused (empty
    when it can)."""

    run: incremental.PreviousRun
    data: incremental_stage.Previous
    why_not: list[str]


class _Embedded(NamedTuple):
    rows: DataFrame  # persisted, spark.listing.EMBEDDED_SCHEMA
    inputs: int
    errors: int
    fresh: int  # rows embedded (or read) tonight: no error, not reused
    dim: int
    extras: DataFrame | None  # id and the input's own columns that groups.keep names
    fingerprint: dict
    prior: _Prior | None = None
    listed: DataFrame | None = None  # id of every input (an incremental run: to count deletions)
    by_listing: incremental_stage.ByListing | None = None  # inputs unchanged by the listing, with their vectors
    by_content: int = 0  # inputs found unchanged by content (rows' "reused"): by the embed stage, or by vector
    has_images: bool = False  # the rows' paths name images that can be read again (geometric verification)
    paths_are_ids: bool = False  # `neardup pairs` of a table with no path column: no file to show
    # `neardup pairs`: counted where the reuse was decided. Images: still_listed is None
    # (found by the write stage); paths_moved and as_before are found by the reuse stage.
    still_listed: int | None = None  # the previous run's inputs listed again
    paths_moved: bool = False  # a reused input's path differs from the previous run's
    as_before: int = 0  # reused inputs whose embeddings/ row is the previous run's as it was
    fetch: Callable[[pa.Array], DataFrame] | None = None  # `rows` were read without vectors: see _with_vectors


class _Planned(NamedTuple):
    plan: tuning.LshPlan
    tables: LshTables
    sample_size: int  # 0: priced from the previous run's estimate
    items: int

    def record(self) -> dict:
        plan = self.plan
        return {"bits_per_table": plan.bits_per_table, "num_tables": plan.num_tables,
                "recall_at_threshold": round(plan.recall_at_threshold, 5),
                "expected_candidate_pairs": round(plan.expected_candidates),
                "expected_shuffle_bytes": round(plan.bucket_shuffle_bytes + plan.candidate_shuffle_bytes),
                "expected_core_seconds": round(plan.cost, 1), "sample_size": self.sample_size, "items": self.items}


def run(cfg: Config, launched_by_spark_submit: bool = False, verbose: bool = False,
        previous: str | None = None) -> RunResult:
    """Run the job end to end on ``cfg.input``: list, embed, then :func:`_pair_and_write`.
    With ``previous`` (a finished run's folder), images unchanged since that run are
    taken from it instead of being embedded again (:mod:`neardup_core.incremental`).

    Raises:
        ConfigError, InputError, ModelError, OutputError: bad invocation, before any
            Spark job runs.
    """
    cfg.output.required_path()
    check_local_previous(previous)
    fmt = resolve_format(cfg.input)
    extra_columns = tuple(cfg.groups.manifest_columns())
    if fmt == "directory" and extra_columns:
        raise ConfigError(f"groups.keep names {', '.join(map(repr, extra_columns))}, which a directory input "
                          "does not have (built in: pixels, bytes, modified, id); use a manifest with that column")
    if cfg.embed.backend == "tensorrt":  # before the model and Spark: spark-submit's settings tell already
        _check_gpu_setting(cfg.embed, launch_setting(cfg.spark, GPU_PER_TASK, launched_by_spark_submit))
    lock = _lock_output(cfg)
    progress = Progress()
    try:
        with progress.stage("load-model") as record, without_native_info(enabled=not verbose):
            gpus = bool(launch_setting(cfg.spark, GPU_PER_TASK, launched_by_spark_submit))
            prepared = prepare_model(cfg.model, cfg.embed, gpus)  # fails fast on a bad model; gives dim
            record["dim"] = prepared.dim
            record["model_file"] = prepared.file
            record["precision"] = prepared.precision or "fp32"
            if prepared.export:
                record["export_file"] = prepared.export  # what GPU executors build from
        log.info("model file: %s (%s), %d-d embeddings", prepared.file, record["precision"].upper(), prepared.dim)
    except BaseException:
        lock.release()
        raise

    def produce(spark: SparkSession, out: OutputDir) -> _Embedded:
        _check_gpu_resources(spark, cfg.embed)
        fingerprint = incremental.fingerprint(cfg, prepared.digest, prepared.dim, prepared.precision)
        prior = _previous(spark, out, previous, fingerprint, cfg)
        reusing = prior is not None and not prior.why_not
        with progress.stage("list") as record:
            listing = listing_stage.list_inputs(spark, cfg.input, fmt, extra_columns, with_content=not reusing)
            # A manifest's ids are checked in the same pass: one more aggregate, the distinct ids.
            images, ids = listing.agg(F.count(F.lit(1)), F.count_distinct("id") if fmt != "directory" else F.lit(0)
                                      ).first()
            record["rows"] = images
            if images == 0:
                kind = "image files (" + ", ".join(cfg.input.extensions) + ")" if fmt == "directory" else "rows"
                raise InputError(f"--input {cfg.input.path}: no {kind} found")
            if fmt != "directory":
                problem = listing_stage.manifest_id_problem(listing) if ids != images else None
                if problem:
                    raise InputError(f"--input {cfg.input.path}: {problem} (column {cfg.input.id_column!r})")
                listing = listing_stage.spread_manifest(listing, images, cfg.input.rows_per_partition,
                                                        default_parallelism(spark))
        to_embed, by_listing = listing, None
        if reusing:
            by_listing = incremental_stage.unchanged_by_listing(listing, prior.data.embeddings)
            to_embed = by_listing.to_embed
        with progress.stage("embed", images=images) as record, _sized_shuffles(spark, cfg, images if reusing else 0):
            rows = embed_images(to_embed, prepared, cfg.model, cfg.embed, cfg.input)
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            record["rows"], errors, fresh, by_content = _counts(rows, F.count_if("reused"))
            record["errors"] = errors
        extras = listing.select("id", *extra_columns) if extra_columns else None
        return _Embedded(rows, images, errors, fresh, prepared.dim, extras, fingerprint, prior, listing.select("id"),
                         by_listing, by_content, has_images=True)

    return _run_session(cfg, launched_by_spark_submit, verbose, progress, produce, lock)


def run_pairs(cfg: Config, embeddings: str, launched_by_spark_submit: bool = False, verbose: bool = False,
              previous: str | None = None) -> RunResult:
    """Hash, pair and score embeddings made elsewhere (``neardup pairs``): the full job's
    outputs from a Parquet table of ids and vectors.

    Raises:
        ConfigError, InputError, OutputError: bad invocation, before the pairing runs.
    """
    cfg.output.required_path()
    require_local_path(embeddings, "--embeddings")
    check_local_previous(previous)
    lock = _lock_output(cfg)
    progress = Progress()

    def produce(spark: SparkSession, out: OutputDir) -> _Embedded:
        with progress.stage("read-embeddings") as record:
            extra_columns = tuple(cfg.groups.manifest_columns())
            read = listing_stage.read_embeddings(spark, embeddings, cfg.input.id_column, cfg.input.embedding_column,
                                                 extra_columns, cfg.input.slice_rows, VECTOR_BATCH_ROWS,
                                                 cfg.pairs.partition_bytes)  # nothing read yet: the count below reads
            rows, dim, extras = read.rows, read.dim, read.extras
            fingerprint = incremental.fingerprint(cfg, None, dim)
            prior = _previous(spark, out, previous, fingerprint, cfg)
            reusing = prior is not None and not prior.why_not
            if reusing and read.without_vectors is not None and _pairs_without_every_vector(cfg, prior.run):
                # Tonight's vectors are read for their hashes only, and again where needed.
                read = read.without_vectors()
                rows = read.rows
            if reusing:
                rows = incremental_stage.match_previous_vectors(rows, prior.data.embeddings)
            # Caching in memory builds a task's rows in the heap before it can spill them, and
            # a cache larger than the heap's storage share spills through it: vectors beyond
            # one pairing task's data (pairs.partition_mb) per core go straight to disk.
            big = read.fetch is None and read.vector_bytes > cfg.pairs.partition_bytes * default_parallelism(spark)
            rows = rows.persist(StorageLevel.DISK_ONLY if big else StorageLevel.MEMORY_AND_DISK)
            # One pass reads the table into the cache, counts, and counts the distinct ids;
            # only where they fall short does the ids' check (which names them) read the cache.
            by_join = (F.count_if("was_there"), F.count_if("path_moved"), F.count_if("as_before")) if reusing else ()
            images, errors, fresh, ids, reused, *joined = _counts(rows, F.count_distinct("id"), F.count_if("reused"),
                                                                  *by_join)
            record["rows"], record["errors"] = images, errors
            problem = listing_stage.manifest_id_problem(rows) if ids != images else None
            if problem:
                raise InputError(f"--embeddings {embeddings}: {problem} (column {cfg.input.id_column!r})")
        return _Embedded(rows, images, errors, fresh, dim, extras if extra_columns else None, fingerprint, prior,
                         rows.select("id"), by_content=reused, paths_are_ids=not read.has_paths,
                         still_listed=joined[0] if joined else None, paths_moved=bool(joined and joined[1]),
                         as_before=joined[2] if joined else 0, fetch=read.fetch)

    return _run_session(cfg, launched_by_spark_submit, verbose, progress, produce, lock)


def _pairs_without_every_vector(cfg: Config, previous: incremental.PreviousRun) -> bool:
    """Whether an incremental ``neardup pairs`` can read tonight's table without keeping
    its vectors (:func:`_with_vectors` reads those it needs): its pairs carry over (a plan
    priced without a sample, no near copies collapsed, no rejected pair lost), and
    ``embeddings/`` is not to hold the vectors. At 1M x 256 the vectors cost the read 7-9
    s of 18 (a scratch timing of the read, the join and the cache)."""
    return (cfg.output.write_embeddings is not True and previous.num_tables is not None
            and bool(previous.plan_items) and not previous.near_copies and not previous.rejected_lost)


def _with_vectors(frame: DataFrame, embedded: _Embedded) -> DataFrame:
    """``frame`` (good rows: id, embedding, ...) with each row's vector, where the table
    was read without them (``embedded.fetch``): read again for these rows' ids, collected
    on the driver (the fresh rows; the reused ones where the pairing runs in one task; every
    row where it falls back to a full one), and joined by a shuffle: Spark cannot size the
    fetch before it runs and would otherwise broadcast it, every vector through the driver.
    Not persisted."""
    if embedded.fetch is None:
        return frame
    vectors = embedded.fetch(frame.select("id").toArrow().column("id").combine_chunks())
    return (frame.withColumnRenamed("embedding", "_unread")
            .join(vectors.select("id", "embedding").hint("shuffle_merge"), "id").select(*frame.columns))


def _counts(rows: DataFrame, *more: Column) -> tuple[int, ...]:
    """Rows, those with an error, those embedded here (no error, not reused), and the
    aggregates ``more``, in one pass (the pass that fills a persisted frame's cache)."""
    fresh = F.count_if(F.col("error_stage").isNull() & ~F.col("reused"))
    return tuple(rows.agg(F.count(F.lit(1)), F.count("error_stage"), fresh, *more).first())


def _lock_output(cfg: Config) -> OutputLock:
    """The output lock (:mod:`neardup_core.lock`) for a new run id, taken now where the
    output is local (before any work; creating it also proves the folder writable), and
    the output checked again under it. A remote output's lock needs Hadoop's file system,
    so :func:`_run_session` takes it once the session is up, before any Spark job.

    Raises:
        OutputError, LockError: see :func:`check_output` and :meth:`OutputLock.acquire`.
    """
    check_local_output(cfg.output)  # a finished run or foreign files: say so before locking
    path = cfg.output.required_path()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    lock = OutputLock(path, run_id, cfg.output.break_lock)
    if is_local(path):
        lock.acquire(LocalLockFile(local_path(path)))
        try:
            check_local_output(cfg.output)  # again: a run may have finished while this one waited
        except BaseException:
            lock.release()
            raise
    return lock


def _run_session(cfg: Config, launched_by_spark_submit: bool, verbose: bool, progress: Progress,
                 produce: Callable[[SparkSession, OutputDir], _Embedded], lock: OutputLock) -> RunResult:
    with callers_interrupts():  # the run replaces the Ctrl-C handler (quiet_interrupts, note_interrupts)
        try:
            return _run_locked(cfg, launched_by_spark_submit, verbose, progress, produce, lock)
        finally:
            lock.release()


def _run_locked(cfg: Config, launched_by_spark_submit: bool, verbose: bool, progress: Progress,
                produce: Callable[[SparkSession, OutputDir], _Embedded], lock: OutputLock) -> RunResult:
    path = cfg.output.required_path()
    started = dt.datetime.now(dt.timezone.utc)
    run_id = lock.me.run_id
    spark = progress.spark = build_session(cfg.spark, cfg.embed.batch_size, launched_by_spark_submit, verbose,
                                           configured_archive(cfg))
    progress.executors = lambda: executor_status(spark)
    if not verbose:
        quiet_interrupts(spark)
    if not lock.held:
        fs, path_class = hadoop_filesystem(spark, path)
        lock.acquire(HadoopLockFile(fs, path_class, path, lambda name: read_text(spark, name)))
    if lock.broken:
        log.warning("--output %s: took over the stale lock of %s (--break-lock)", path, lock.broken)
    out = OutputDir(spark, path, run_id)
    check_output(out.entries(), path, cfg.output.overwrite)
    stale = out.stale_staging()
    if stale:  # the lock proves their runs are gone
        log.warning("--output %s: removing %d staging folders left by runs that died (%s)", path, len(stale),
                    ", ".join(stale[:3]))
        out.remove_staging(stale)
    try:
        embedded = produce(spark, out)
        counts, lsh_record, incremental_record = _pair_and_write(spark, cfg, embedded, out, progress)
        dim = embedded.dim if counts.embedded + counts.reused else 0  # the width of what embeddings/ holds
        manifest = _manifest(cfg, run_id, started, spark, progress, counts, dim, lsh_record)
        manifest["fingerprint"] = embedded.fingerprint
        manifest["incremental"] = incremental_record
        manifest["paths_are_ids"] = embedded.paths_are_ids
        _check_accounting(counts)
        manifest["report"] = report_stage.write_report(spark, cfg, out.staging, manifest)
        out.commit(manifest)
        interrupted = note_interrupts()  # committed: a Ctrl-C no longer undoes anything
    except BaseException as err:
        interrupt = caused_by_interrupt(err)
        if interrupt:
            _discard_after_interrupt(spark, out)
        else:
            out.discard_staging()
        if interrupt and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt() from err  # what the user did, not the Py4J error that followed it
        advice = out_of_memory_advice(err, spark)
        if advice:
            raise ConfigError(advice) from err
        raise
    log.info("done: %d images, %d errors, %d near-duplicate pairs, %d groups, %d images to drop -> %s",
             counts.inputs, counts.errors, counts.pairs, counts.groups, counts.dropped, path)
    return RunResult(path, counts, manifest, interrupted)


def _discard_after_interrupt(spark: SparkSession, out: OutputDir, seconds: float = 60.0) -> None:
    """Remove this run's staging folder for good after a Ctrl-C: the interrupted call may
    still write into it from the JVM (:func:`quiesce`), so it is removed once Spark is
    quiet, and again while it comes back, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        quiesce(spark, deadline)
        out.discard_staging()
        quiesce(spark, deadline)
        if not out.staging_exists() or time.monotonic() >= deadline:
            return


def _check_accounting(counts: RunCounts) -> None:
    """Every input is embedded, reused or an error row: checked before ``_SUCCESS``.

    Raises:
        RuntimeError: the counts do not add up (a bug; the run is not committed).
    """
    if counts.inputs != counts.embedded + counts.reused + counts.errors:
        raise RuntimeError(f"accounting: {counts.inputs} inputs but {counts.embedded} embedded + {counts.reused} "
                           f"reused + {counts.errors} errors; not committing this run")


def _previous(spark: SparkSession, out: OutputDir, path: str | None, fingerprint: dict, cfg: Config
              ) -> _Prior | None:
    """The previous run named by ``--previous``, and why it cannot be reused, if so.

    Raises:
        InputError: no finished run there, or one made without what an incremental run needs.
    """
    if path is None:
        return None
    try:
        manifest = out.read_finished_manifest(spark, path)
        run = incremental.previous_run(path, manifest)
    except (OutputError, ValueError) as err:
        raise InputError(str(err)) from err
    why_not = incremental.differences(run.fingerprint, fingerprint)
    why_not += incremental.plan_conflicts(run, cfg.lsh.bits_per_table, cfg.lsh.num_tables)
    if why_not:
        log.warning("--previous %s: its embeddings cannot be reused, so every image is embedded and paired again: %s",
                    path, "; ".join(why_not))
    return _Prior(run, incremental_stage.read_previous(spark, path, run.bits_per_table, run.num_tables,
                                                       rejected=run.rejected_to_read), why_not)


def _sized_shuffles(spark: SparkSession, cfg: Config, rows: int):
    """Shuffle partitions sized for ``rows`` rows (ids, pairs) in the block, where the
    user set none; 0 rows: Spark's setting as it is. The incremental run's joins (the
    listing against the previous run, changes/) otherwise pay 200 tasks a shuffle."""
    if not rows or cfg.spark.shuffle_partitions:
        return contextlib.nullcontext()
    return shuffle_partitions(spark, groups_stage.round_tasks(rows, cfg.pairs.partition_bytes,
                                                              default_parallelism(spark)))


GPU_PER_TASK = "spark.task.resource.gpu.amount"


def _check_gpu_resources(spark: SparkSession, embed: EmbedConfig) -> None:
    _check_gpu_setting(embed, spark.conf.get(GPU_PER_TASK, None))


def _check_gpu_setting(embed: EmbedConfig, gpu_per_task: str | None) -> None:
    """Refuse ``embed.backend`` tensorrt when no task would get a GPU: checked before Spark
    starts (the configuration and spark-submit's settings) and again in the session."""
    if embed.backend == "tensorrt" and not gpu_per_task:
        raise ConfigError(
            f"embed.backend tensorrt: {GPU_PER_TASK} is not set, so no task would get a GPU; "
            "see conf/spark-gpu.conf, or use embed.backend auto"
        )


def _pair_and_write(spark: SparkSession, cfg: Config, embedded: _Embedded, out: OutputDir, progress: Progress
                    ) -> tuple[RunCounts, dict | None, dict | None]:
    """From the embedded rows (id, path, embedding | error): plan the LSH tables, pair
    (:func:`spark.pairing.pair`, or for an incremental run
    :func:`spark.incremental.pair_incrementally`), group, and stage every output."""
    rows = embedded.rows
    prior = embedded.prior
    reusing = prior is not None and not prior.why_not
    errors = rows.filter("error_stage is not null").select(
        "id", "path", rows["error_stage"].alias("stage"), rows["error_message"].alias("message"))
    fresh = rows.filter("error_stage is null and not reused").select("id", "path", "embedding", *IMAGE_FACTS)
    # Counted (in the pass that filled the cache), not derived, so that the accounting
    # check before _SUCCESS can fail.
    fresh_count = embedded.fresh
    good, reused, reused_count, paths_moved, as_before = fresh, None, 0, False, 0
    if reusing:
        with progress.stage("reuse") as record, _sized_shuffles(spark, cfg, embedded.inputs):
            if embedded.has_images:
                reused = embedded.by_listing.unchanged  # with path_moved and as_before, as reused_rows
                if embedded.by_content:  # their vectors are read from the previous run now
                    reused = reused.unionByName(incremental_stage.reused_rows(
                        rows.filter("reused").select("id", "path", "bytes", "modified"), prior.data.embeddings))
                reused = reused.persist(StorageLevel.MEMORY_AND_DISK)
                reused_count, moved, as_before = reused.agg(F.count(F.lit(1)), F.count_if("path_moved"),
                                                            F.count_if("as_before")).first()
                paths_moved = moved > 0
                embedded.by_listing.joined.unpersist()
            else:  # `neardup pairs`: tonight's cached rows, with last night's keys; counted as cached
                reused = incremental_stage.reused_vectors(rows.filter("reused"))
                reused_count, paths_moved, as_before = embedded.by_content, embedded.paths_moved, embedded.as_before
                # The fresh rows are few among the table's cached rows: kept apart, in tasks of
                # about pairs.partition_mb, so that each stage after reads them, not the table.
                tasks = -(-fresh_count * tuning.vector_bytes(embedded.dim) // cfg.pairs.partition_bytes)
                fresh = (_with_vectors(fresh, embedded).repartition(max(1, tasks), "id")
                         .persist(StorageLevel.MEMORY_AND_DISK))
            record["rows"] = reused_count
        good = fresh.unionByName(reused.select(*fresh.columns))
    items = fresh_count + reused_count
    set_arrow_batch_size(spark, VECTOR_BATCH_ROWS)
    every = good  # every good row; `good` is one row per content from here (spark.exact)
    with _sized_shuffles(spark, cfg, items):
        collapsed = _collapse_copies(cfg, good, fresh if reusing else None, embedded.extras, prior, progress)
    items -= collapsed.count if collapsed.representatives is not good else 0
    good, copies = collapsed.representatives, collapsed.copies
    with _sized_shuffles(spark, cfg, items):
        near = _collapse_near_copies(cfg, good, embedded.extras, prior, items, embedded.dim, progress)
    near_vectors = good  # the rows near copies were found among: their vectors for spark.near
    items -= near.count
    good = near.representatives
    pairs_path = out.staged("pairs") if copies is None else out.staged("_near-pairs")

    lsh = cfg.lsh
    reused_plan = prior.run if reusing and prior.run.num_tables is not None else None
    if reused_plan is not None:  # the previous plan, priced again for the record
        lsh = dataclasses.replace(lsh, bits_per_table=reused_plan.bits_per_table, num_tables=reused_plan.num_tables)
    with progress.stage("plan") as record:
        planned = _plan(good, items, embedded.dim, lsh, cfg.pairs.cosine_threshold, reused_plan)
        if planned is not None:
            record.update(planned.record())

    numbered = pairing_stage.number_rows(good)
    keyed, fresh_keyed, gone, incremental_record, last_night_rows, refetched = None, None, None, None, -1, None
    if prior is not None:
        incremental_record = {"previous": prior.run.path, "reused": reusing, "why_not": prior.why_not}
        if not embedded.has_images:  # `neardup pairs`: whether tonight's table was read with its vectors
            incremental_record["vectors"] = "where needed" if embedded.fetch is not None else "all"
    carry_pairs = planned is not None and reused_plan is not None and not reused_plan.near_copies
    if carry_pairs and reused_plan.rejected_lost:
        log.info("--previous %s rejected %d pairs and did not keep them (pairs.keep_rejected: false): pairing "
                 "in full", reused_plan.path, reused_plan.rejected_pairs)
        carry_pairs = False
    with progress.stage("pairs") as record:
        shuffle_before = shuffle_bytes_written(spark)
        result, found, final = None, None, False
        if planned is None:  # nothing embedded: no pairs, and nothing to hash
            pairing_stage.write_no_pairs(spark, pairs_path)
            result = pairing_stage.PairingResult(0, 0, BucketStats(), {})
        elif carry_pairs:
            # Only the pairs that involve a new or changed image are found; the rest carry over.
            fresh_keyed = (pairing_stage.keyed_embeddings(pairing_stage.number_rows(fresh), planned.tables)
                           .withColumn("fresh", F.lit(True)).persist(StorageLevel.MEMORY_AND_DISK))
            # Deleted and changed rows: small, and read by every step below, so kept. Every
            # reused row is one of last night's (a Parquet count reads the files' footers), so
            # there are none when the counts agree; else they are found by their ids alone and
            # only their keys read (joining last night's keys of every row took 17 s at 1M).
            last_night = prior.data.embeddings.select("id", "keys")
            last_night_rows = last_night.count()
            if last_night_rows == reused_count:
                gone = last_night.limit(0)
            else:
                gone_ids = last_night.select("id").join(reused.select("id"), "id", "left_anti")
                gone = last_night.join(gone_ids, "id", "left_semi").persist(StorageLevel.MEMORY_AND_DISK)
            if embedded.has_images:  # the reuse stage's rows hold last night's keys
                reused_keys, reused_keyed = reused.select("id", "keys"), reused
            else:  # `neardup pairs`: last night's keys, read where they lie, joined only where needed
                reused_keys = incremental_stage.previous_keys(prior.data.embeddings,
                                                              gone if last_night_rows != reused_count else None)
                reused_keyed = incremental_stage.with_previous_keys(reused, reused_keys)
            one_task = not cfg.spark.shuffle_partitions and tuning.pairing_tasks(
                items, planned.tables.dim, planned.tables.num_tables, planned.plan.expected_candidates,
                cfg.pairs.partition_bytes, default_parallelism(spark), cfg.pairs.one_task_bytes) is None
            if one_task:  # small: the one task takes every row's vector
                reused_keyed = _with_vectors(reused_keyed, embedded)
            keyed = fresh_keyed.unionByName(
                reused_keyed.select(*pairing_stage.KEYED_COLUMNS).withColumn("fresh", F.lit(False)))
            tasks = cfg.spark.shuffle_partitions or groups_stage.round_tasks(
                items + prior.run.pairs, cfg.pairs.partition_bytes, default_parallelism(spark))
            common = dict(max_bucket_size=cfg.lsh.max_bucket_size, cosine_threshold=cfg.pairs.cosine_threshold,
                          path=pairs_path, accept_cosine=_settles_at(cfg, embedded, copies), paths_moved=paths_moved)
            with shuffle_partitions(spark, tasks):
                if one_task:
                    found = incremental_stage.pair_incrementally_in_one_task(
                        keyed, gone, prior.data, planned.tables, threads=executor_cores(spark),
                        max_driver_pairs=cfg.groups.max_pairs_in_one_task, **common)
                else:
                    # Tonight's rows: the fresh ones hashed and kept (few), and the reused ones
                    # as the reuse stage keeps them, their keys and vectors apart; nothing is
                    # copied into a cache of its own (at 1M rows that copy took 17 s).
                    found = incremental_stage.pair_incrementally(
                        fresh_keyed, reused_keys, reused, gone, prior.data, planned.tables,
                        chunk_bytes=cfg.pairs.partition_bytes, fetch=embedded.fetch, **common)
            incremental_record.update(touched_buckets=found.touched_buckets, largest_touched=found.largest_touched,
                                      pairing="incremental" if found.result else "full", settled=found.settled)
            result = found.result
            if result is None:
                log.info("a bucket the change touches holds %d rows, over lsh.max_bucket_size=%d: pairing in full",
                         found.largest_touched, cfg.lsh.max_bucket_size)
        if result is None:
            if incremental_record is not None and "pairing" not in incremental_record:
                incremental_record["pairing"] = "full"
            if embedded.fetch is not None:  # the table was read without its vectors: every one, now
                good = near_vectors = refetched = _with_vectors(good, embedded).persist(StorageLevel.DISK_ONLY)
                numbered = pairing_stage.number_rows(good)
            if near.copies is None:
                # Nothing to verify, and no copies whose pairs replace these: the pairs are final as written.
                final = (found is None and copies is None
                         and not (cfg.pairs.verifies and embedded.has_images))
                result = pairing_stage.pair(numbered, items, planned.tables, planned.plan.expected_candidates,
                                            cfg.lsh, cfg.pairs, cfg.spark.shuffle_partitions, pairs_path, final)
            else:  # scored down to the at-risk bound, then spark.near writes pairs_path
                lowest = near_copies.lowest_cosine_at_risk(cfg.pairs.cosine_threshold, near.largest_radius)
                result = pairing_stage.pair(numbered, items, planned.tables, planned.plan.expected_candidates,
                                            cfg.lsh, dataclasses.replace(cfg.pairs, cosine_threshold=lowest),
                                            cfg.spark.shuffle_partitions, out.staged("_low-pairs"))
                written, at_risk = near_stage.write_pairs(
                    spark.read.parquet(out.staged("_low-pairs")), near, near_vectors.select("id", "path", "embedding"),
                    planned.tables, cfg.pairs.cosine_threshold, pairs_path)
                result = result._replace(pairs=written)
                record["near_copies"] = {"copies": near.count, "largest_radius": near.largest_radius,
                                         "scored_down_to": lowest, "at_risk_pairs": at_risk}
        if copies is not None:
            written = exact_stage.write_pairs_with_copies(spark.read.parquet(pairs_path), copies,
                                                          planned.tables.num_tables, out.staged("pairs"))
            result = result._replace(pairs=written)
        if planned is not None:
            record["tasks"] = result.tasks
        record["rows"] = result.pairs
        buckets = record["buckets"] = None if result.buckets is None else result.buckets._asdict()
        record["candidate_pairs"] = result.candidate_pairs
        shuffled = shuffle_bytes_written(spark) - shuffle_before
        if shuffle_before >= 0 and shuffled >= 0:
            record["shuffle_bytes"] = shuffled
            record["shuffle_bytes_per_image"] = round(shuffled / max(items, 1), 1)
    _log_oversized(result.buckets, cfg.lsh)
    # The groups stage's images and keep priority; verification plans with the same ones.
    nodes = every.select("id", "path", *IMAGE_FACTS)
    if embedded.extras is not None:
        nodes = nodes.join(embedded.extras, "id", "left")
    criteria = cfg.groups.criteria()
    if near.copies is not None:  # copies rank last: no image is dropped for a copy (spark.near)
        nodes = near_stage.copies_first_criterion(nodes, [f for f in (near.copies, copies) if f is not None])
        criteria = [(near_stage.COPY_LAST, False), *criteria]
    result, verified = _verify(spark, cfg, out, progress, near_vectors if embedded.has_images else None, result,
                               found.matched_before if found is not None and cfg.pairs.verifies else None,
                               nodes, criteria, settled=final or (found is not None and found.settled))

    with progress.stage("groups") as record:
        tasks = cfg.spark.shuffle_partitions or groups_stage.round_tasks(
            result.pairs, cfg.pairs.partition_bytes, default_parallelism(spark))
        decided = "groups" if copies is None and near.copies is None else "_groups-decided"
        grouped = groups_stage.group(spark.read.parquet(out.staged("pairs")), nodes, criteria,
                                     result.pairs, cfg.groups.max_pairs_in_one_task, out.staged("_groups-scratch"),
                                     out.staged(decided), tasks, staged=out.staged("pairs"))
        if near.copies is not None:
            near_groups = "groups" if copies is None else "_groups-near"
            grouped = near_stage.copies_follow_representatives(
                spark.read.parquet(out.staged(decided)), near.copies, near_vectors, embedded.dim, grouped,
                out.staged(near_groups))
            decided = near_groups
        if copies is not None:
            grouped = exact_stage.copies_follow_representatives(
                spark.read.parquet(out.staged(decided)), copies, grouped, out.staged("groups"))
        record.update(grouped.record())
        record["rows"] = grouped.kept + grouped.dropped
    log.info("%d duplicate groups (largest %d images): %d images kept, %d dropped", grouped.groups,
             grouped.largest_group, grouped.kept, grouped.dropped)

    changed = deleted = 0
    sized = _sized_shuffles(spark, cfg, result.pairs + prior.run.pairs + items if prior is not None else 0)
    with progress.stage("write") as record, sized:
        # Counted as the rows were cached: with none, no scan of the cache (two at 1M rows: 2.8 s).
        (errors.orderBy("id") if embedded.errors else errors.limit(0)).write.parquet(out.staged("errors"))
        if cfg.output.write_embeddings is not False:
            if copies is not None or near.copies is not None:
                numbered = pairing_stage.number_rows(every)  # embeddings/ holds the copies too
            vectors = cfg.output.write_embeddings is True or embedded.has_images  # auto: not the user's own
            if keyed is not None:
                keyed = keyed.drop("fresh")
            elif planned is None:
                keyed = pairing_stage.unkeyed_embeddings(numbered)
            else:
                keyed = pairing_stage.keyed_embeddings(numbered, planned.tables, vectors)
            written = keyed if vectors else keyed.drop("embedding")
            # Where every row of last night's embeddings/ is tonight's as it was (a night that
            # only adds), its files are linked and only the fresh rows written.
            linked = (_link_last_night(prior, out, written.columns)
                      if fresh_keyed is not None and as_before == last_night_rows else 0)
            if linked:
                written = fresh_keyed.select(*written.columns)
                incremental_record["embeddings_linked"] = linked
            pairing_stage.write_keyed(written, out.staged("embeddings"), cfg.pairs.partition_bytes, append=bool(linked))
        if prior is not None:
            before = prior.data.embeddings.select("id")
            # Tonight's ids: embeddings/ holds every good row, and one Parquet column of it reads
            # faster than the rows' cache (2.7 s at 1M vectors).
            now = (spark.read.parquet(out.staged("embeddings")) if cfg.output.write_embeddings is not False
                   else good).select("id")
            changes = incremental_stage.changes(prior.data, before, spark.read.parquet(out.staged("pairs")),
                                                spark.read.parquet(out.staged("groups")), now,
                                                found if found is not None and found.settled else None)
            # At most both nights' pairs and images: where each night's pairs fit one task, on
            # the driver if every folder is local, else sorted in one task, gathered there by a
            # shuffle so that the joins before it keep every core.
            one_task = max(result.pairs, prior.run.pairs) <= cfg.groups.max_pairs_in_one_task
            on_driver = (incremental_stage.changes_table(prior.data, out.staged("pairs"), out.staged("groups"),
                                                         out.staged("embeddings"))
                         if one_task and cfg.output.write_embeddings is not False else None)
            if on_driver is not None:
                write_table(spark, on_driver, out.staged("changes"))
            else:
                sorted_by(changes.repartition(1) if one_task else changes, ("change", "id_a", "id_b", "id"), one_task
                          ).write.parquet(out.staged("changes"))
            still_listed = (embedded.still_listed if embedded.still_listed is not None
                            else before.join(embedded.listed, "id", "left_semi").count())
            deleted = before.count() - still_listed  # a Parquet count: from the files' footers
            changed = still_listed - reused_count
        record["rows"] = embedded.inputs

    by_stage = errors.groupBy("stage").count().collect() if embedded.errors else []
    rows.unpersist()
    carried = (found.found, found.lost) if found is not None else ()
    for frame in (fresh, reused, fresh_keyed, gone, copies, near.copies, near.radii, refetched, *carried):
        if frame is not None:
            frame.unpersist()
    counts = RunCounts(inputs=embedded.inputs, embedded=fresh_count, errors=embedded.errors,
                       errors_by_stage={row["stage"]: row["count"] for row in by_stage},
                       candidate_pairs=result.candidate_pairs, pairs=result.pairs, groups=grouped.groups,
                       largest_group=grouped.largest_group, kept=grouped.kept, dropped=grouped.dropped,
                       reused=reused_count, changed=changed, deleted=deleted, exact_copies=collapsed.count,
                       near_copies=near.count, verified_pairs=verified.matched, rejected_pairs=verified.rejected,
                       unverified_pairs=verified.unverified, over_budget_pairs=verified.over_budget)
    lsh_record = None if planned is None else {**planned.record(), "buckets": buckets}
    return counts, lsh_record, incremental_record


def _link_last_night(prior: _Prior, out: OutputDir, columns: list[str]) -> int:
    """Hard-link the previous run's embeddings/ files into tonight's staged embeddings/
    (:func:`output.link_data_files`) and return how many, where both are local and the
    files hold ``columns`` with packed keys; else 0 (then every row is written)."""
    source, target = f"{prior.run.path.rstrip('/')}/embeddings", out.staged("embeddings")
    if not (is_local(source) and is_local(target)) or not hold_columns(source, columns, binary=("keys",)):
        return 0
    try:
        return link_data_files(source, target)
    except OSError as err:
        log.info("embeddings/: could not link the files of --previous %s (%s); writing every row", prior.run.path, err)
        return 0


def _collapse_copies(cfg: Config, good: DataFrame, fresh: DataFrame | None, extras: DataFrame | None,
                     prior: _Prior | None, progress: Progress) -> exact_stage.Collapsed:
    """One row per content to pair (:mod:`spark.exact`). An incremental run pairs every
    row as before (its carried pairs and reuse are per id), and its copies' pairs are then
    replaced by the exact pairs, so it writes what a full run writes; where the previous
    run held no copies, it looks for them only if a ``fresh`` row can be one
    (:func:`spark.exact.copies_may_be_fresh`)."""
    with progress.stage("exact-copies") as record:
        if (fresh is not None and prior.run.exact_copies == 0
                and not exact_stage.copies_may_be_fresh(fresh, prior.data.embeddings)):
            collapsed = exact_stage.Collapsed(good, None, 0)
        else:
            collapsed = exact_stage.collapse(good, cfg.groups.criteria(), extras)
        record["rows"] = collapsed.count
    if prior is not None:
        return collapsed._replace(representatives=good)
    return collapsed


def _collapse_near_copies(cfg: Config, good: DataFrame, extras: DataFrame | None, prior: _Prior | None,
                          items: int, dim: int, progress: Progress) -> near_stage.NearCollapsed:
    """Near copies collapsed onto representatives (:mod:`spark.near`); not in incremental
    runs (whose carried pairs are per id) nor with ``pairs.copy_cosine: 1``."""
    copy_cosine = cfg.pairs.near_copy_cosine
    if prior is not None or copy_cosine is None or items < 2:
        return near_stage.NearCollapsed(good, None, None, 0, 0.0)
    with progress.stage("near-copies") as record:
        near = near_stage.collapse(good, cfg.groups.criteria(), extras, copy_cosine, cfg.pairs.copy_min_rows,
                                   cfg.lsh.seed, items, dim)
        record["rows"] = near.count
    return near


def _settles_at(cfg: Config, embedded: _Embedded, copies: DataFrame | None) -> float | None:
    """For an incremental run: the cosine at or above which a pair found tonight needs no
    verification (-1: none does), so that pairs/ can be written final by the pairing stage
    (:func:`spark.incremental.pair_incrementally`); None where the verify stage must still
    rewrite it: exact copies tonight or last night (their pairs are replaced), or any
    borderline pair last night (tonight's verification decides again which pairs it
    matches, as a full run would; last night's counts save the matching only)."""
    prior = embedded.prior
    if copies is not None or prior.run.exact_copies or prior.run.borderline_pairs != 0:
        return None
    return cfg.pairs.accept_cosine if cfg.pairs.verifies and embedded.has_images else -1.0


def _verify(spark: SparkSession, cfg: Config, out: OutputDir, progress: Progress, images: DataFrame | None,
            result: pairing_stage.PairingResult, known: DataFrame | None = None, nodes: DataFrame | None = None,
            criteria: list[tuple[str, bool]] | None = None, settled: bool = False
            ) -> tuple[pairing_stage.PairingResult, verify_stage.VerifyResult]:
    """Borderline pairs verified on local features (:func:`spark.verify.verify_pairs`;
    ``images`` None: none, as for ``neardup pairs``; ``known``: inlier counts last night
    found for the pairs an incremental run carried over; ``nodes`` and ``criteria``: the
    groups stage's images and keep priority, so only the pairs whose verdict the groups
    need are matched); the staged pairs/ is rewritten with ``inliers`` and ``verified``
    before the groups stage reads it. ``settled``: the staged pairs/ is final already
    (nothing to match); kept as it is, and ``rejected_pairs/`` (``pairs.keep_rejected``) empty."""
    if settled:
        with progress.stage("verify") as record:
            if cfg.pairs.keep_rejected:
                spark.read.parquet(out.staged("pairs")).limit(0).write.parquet(out.staged("rejected_pairs"))
            verified = verify_stage.VerifyResult(result.pairs, 0, 0, 0, 0, 0)
            record.update(verified.record())
            record["rows"] = result.pairs
        return result, verified
    with progress.stage("verify") as record:
        verified = verify_stage.verify_pairs(
            verify_stage.staged_pairs(spark, out.staged("pairs")), images, cfg.pairs, cfg.input,
            cfg.spark.shuffle_partitions or default_parallelism(spark), out.staged("_verify-scratch"),
            out.staged("pairs-verified"), out.staged("rejected_pairs") if cfg.pairs.keep_rejected else None, known,
            nodes, criteria or cfg.groups.criteria(), cfg.groups.max_pairs_in_one_task, staged=out.staged("pairs"))
        out.replace_staged("pairs", "pairs-verified")
        record.update(verified.record())
        record["rows"] = verified.pairs
    if verified.borderline:
        log.info("%d borderline pairs: %d matched on %d images in %d rounds (%d accepted, %d rejected), %d left "
                 "unverified (their verdict changes no group or decision), %d rejected over the budget",
                 verified.borderline, verified.matched, verified.images, verified.rounds, verified.accepted,
                 verified.rejected - verified.over_budget, verified.unverified, verified.over_budget)
    return result._replace(pairs=verified.pairs), verified


def _plan(embedded: DataFrame, items: int, dim: int, lsh: LshConfig, cosine_threshold: float,
          previous: incremental.PreviousRun | None = None) -> _Planned | None:
    """The LSH tables for ``items`` embeddings (:func:`tuning.plan_for`, priced on a sample
    of them), or None when there is nothing to hash. With ``previous`` (an incremental
    run, whose ``lsh`` is the previous plan): that plan, priced from the previous run's
    estimate for tonight's ``items`` (:func:`tuning.scaled_candidates`), without a sample."""
    if previous is not None and previous.plan_items and items:
        candidates = tuning.scaled_candidates(previous.plan_candidates, previous.plan_items, items)
        plan = tuning.price_plan(lsh.bits_per_table, lsh.num_tables, cosine_threshold, candidates, items, dim,
                                 lsh.split_bits)
        sample_size = 0
    else:
        sample = pairing_stage.sample_embeddings(embedded, items, lsh.sample_size, lsh.seed, dim)
        if len(sample) == 0:
            return None
        try:
            plan = tuning.plan_for(lsh, cosine_threshold, tuning.unit_pair_cosines(sample), items, dim,
                                   threads=pairing_stage.usable_cores())
        except ValueError as err:
            raise ConfigError(str(err)) from err
        sample_size = len(sample)
    log.info("LSH plan: %d tables of %d bits; recall %.4f at cosine %.3f; about %.0f candidate pairs",
             plan.num_tables, plan.bits_per_table, plan.recall_at_threshold, cosine_threshold,
             plan.expected_candidates)
    tables = LshTables.draw(lsh.seed, plan.num_tables, plan.bits_per_table, lsh.split_bits, dim)
    return _Planned(plan, tables, sample_size, items)


def _log_oversized(buckets: BucketStats | None, lsh: LshConfig) -> None:
    if buckets is not None and buckets.oversized:
        log.info("%d buckets over lsh.max_bucket_size=%d (largest %d rows): %d split by up to %d more bits; "
                 "%d still over it are paired within a window", buckets.oversized, lsh.max_bucket_size,
                 buckets.largest_rows, buckets.split, buckets.max_split_depth, buckets.windowed)


def _manifest(cfg: Config, run_id: str, started: dt.datetime, spark: SparkSession, progress: Progress,
              counts: RunCounts, embedding_dim: int, lsh_record: dict | None) -> dict:
    return {
        "neardup_version": __version__,
        "run_id": run_id,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spark": {"version": spark.version, "master": spark.sparkContext.master,
                  "default_parallelism": spark.sparkContext.defaultParallelism,
                  "shuffle_bytes_written": shuffle_bytes_written(spark)},  # the whole run's, -1 if unknown
        "counts": asdict(counts),
        "embedding_dim": embedding_dim,
        "lsh": lsh_record,
        "stages": progress.stages,
        "config": cfg.to_dict(),
    }
