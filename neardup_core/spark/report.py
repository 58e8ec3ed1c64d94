"""The report stage: thumbnails made in Spark from the original files, for the images the
report shows only (:mod:`neardup_core.report` chooses them and lays out the page)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import SparkSession

from ..config import Config, InputConfig
from ..evaluation import Truth
from ..sources import is_local, local_path
from .jvm import hadoop_filesystem
from .session import default_parallelism

log = logging.getLogger("neardup")

THUMBNAIL_SCHEMA = "id string, jpeg binary, error string"
# Thumbnails per task: enough that a task's start-up is small beside its decoding.
THUMBNAILS_PER_TASK = 64


def make_thumbnails(spark: SparkSession, items: list[tuple[str, str]], max_side: int, input_cfg: InputConfig
                    ) -> dict[str, bytes | str]:
    """Read each (id, path) file where it lies (:func:`sources.read_file`: local paths and
    any URI ``pyarrow.fs`` knows) and make its thumbnail (:func:`report.thumbs.thumbnail`).

    Returns:
        id -> JPEG bytes, or the reason there is none. Collected on the driver: the report
        bounds how many (``report.*``), at a few kB each.
    """
    if not items:
        return {}
    cores = default_parallelism(spark)
    tasks = max(1, min(cores * 2, -(-len(items) // THUMBNAILS_PER_TASK)))
    # From an Arrow table, as the listing: a parallelized Python list would start Python
    # workers of another kind for its rows alone (1-3 s in a run whose workers are warm).
    listed = spark.createDataFrame(pa.table({"id": [i for i, _ in items], "path": [p for _, p in items]}),
                                   "id string, path string")
    listed = listed.repartition(tasks) if tasks > cores else listed.coalesce(tasks)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.report.thumbs import ThumbnailError, thumbnail
        from neardup_core.sources import ReadError, read_file

        for batch in batches:
            jpegs, errors = [], []
            for path in batch.column("path").to_pylist():
                try:
                    data = read_file(path, input_cfg.max_file_bytes).data
                    jpegs.append(thumbnail(data, max_side, input_cfg.max_pixels))
                    errors.append(None)
                except (ReadError, ThumbnailError) as err:
                    jpegs.append(None)
                    errors.append(str(err))
            yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(jpegs, pa.binary()),
                                              pa.array(errors, pa.string())], names=["id", "jpeg", "error"])

    made = listed.mapInArrow(run, THUMBNAIL_SCHEMA).collect()
    return {row["id"]: bytes(row["jpeg"]) if row["jpeg"] is not None else row["error"] for row in made}


def build_report(spark: SparkSession, run: str, manifest: dict, folder: str, cfg: Config,
                 truth: Truth | None = None) -> dict:
    """:func:`report.build` with thumbnails from :func:`make_thumbnails`; ``folder`` local.

    Raises:
        ReportError: the run lacks a dataset the report reads.
    """
    from .. import report

    return report.build(run, manifest, folder, cfg.report,
                        lambda items: make_thumbnails(spark, items, cfg.report.thumbnail_px, cfg.input), truth)


def write_report(spark: SparkSession, cfg: Config, staging: str, manifest: dict) -> dict:
    """The job's report stage: ``report/`` into the run's staging folder, so it is committed
    with the rest. A failure does not fail the run: it is logged and returned.

    Returns:
        The manifest's ``report``: what :func:`report.build` says, and ``seconds``; or
        ``{"written": false, "error": ...}``.
    """
    if not cfg.report.enabled:
        return {"written": False, "error": None, "enabled": False}
    start = time.perf_counter()
    target = f"{staging}/report"
    try:
        if is_local(target):
            record = build_report(spark, staging, manifest, local_path(target), cfg)
        else:  # built on the driver's disk, then copied through Hadoop's file system
            tmp = tempfile.mkdtemp(prefix="neardup-report-")
            try:
                record = build_report(spark, staging, manifest, os.path.join(tmp, "report"), cfg)
                fs, path_class = hadoop_filesystem(spark, target)
                fs.copyFromLocalFile(False, True, path_class("file://" + os.path.join(tmp, "report")),
                                     path_class(target))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:  # noqa: BLE001 - the run's data outputs stand without the report
        log.warning("report: not written: %s: %s", type(err).__name__, err)
        return {"written": False, "error": f"{type(err).__name__}: {err}"}
    record["seconds"] = round(time.perf_counter() - start, 3)
    reused = f"{record['thumbnails_reused']} from the previous run, " if record["thumbnails_reused"] else ""
    log.info("report: %d groups and %d pairs shown, %d thumbnails (%s%d failed), %d bytes -> %s/report",
             record["groups_shown"], record["pairs_shown"], record["thumbnails"], reused, record["thumbnail_errors"],
             record["bytes"], cfg.output.path)
    return record
