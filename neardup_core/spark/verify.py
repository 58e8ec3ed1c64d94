"""The verification stage: borderline pairs kept only when local features agree
(:mod:`neardup_core.verify`), from the staged ``pairs/`` to the final one.

    borderline pairs (pairs.cosine_threshold <= cosine < pairs.accept_cosine)
      -> the images in them, each once -> read again, featurize     [one stage; written to scratch]
      -> both feature sets joined to each borderline pair -> inliers, accepted
      -> pairs/ = accepted pairs with inliers and verified; rejected_pairs/ behind a flag

Features are computed once per image, not once per pair, and only for images in a
borderline pair. Memory is bounded by ``pairs.max_keypoints`` (about 136 bytes a SIFT
keypoint) times the rows of an Arrow batch, which this stage sets to
:data:`FEATURE_BATCH_ROWS` while it runs. This module only moves data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..config import InputConfig, PairsConfig
from .tally import Tally

VERIFIED_COLUMNS = ("inliers", "verified")  # added to pairs/: int (null: not verified), "embedding" | "geometry"
# Rows per Arrow batch while pairs carry two feature sets each (up to 2 x 136 kB with the
# default 1,000 SIFT keypoints): 64 rows keep a batch under 20 MB.
FEATURE_BATCH_ROWS = 64
KEYPOINT_BYTES = 136  # a SIFT keypoint: 2 float32 of position, 128 bytes of descriptor
_FEATURE_SCHEMA = "id string, points binary, descriptors binary, error string"
_DECIDED_SCHEMA = "id_a string, id_b string, inliers int, accepted boolean"
_ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"


class VerifyResult(NamedTuple):
    pairs: int  # written to pairs/
    borderline: int  # pairs that needed verification
    accepted: int  # of those, accepted by verification
    rejected: int  # of those, rejected (not in pairs/)
    images: int  # images featurized
    image_errors: int  # of those, unreadable now: no features, so their pairs are rejected

    def record(self) -> dict:
        return self._asdict()


def label_unverified(pairs: DataFrame) -> DataFrame:
    """``pairs`` with ``inliers`` null and ``verified`` "embedding": what ``neardup pairs``
    (no images) and a run with verification off write."""
    return pairs.withColumn("inliers", F.lit(None).cast("int")).withColumn("verified", F.lit("embedding"))


def verify_pairs(pairs: DataFrame, images: DataFrame | None, cfg: PairsConfig, input_cfg: InputConfig,
                 min_tasks: int, scratch: str, path: str, rejected_path: str | None = None,
                 known: DataFrame | None = None) -> VerifyResult:
    """Verify ``pairs``' borderline pairs and write the accepted pairs to ``path``.

    Args:
        pairs: the pairing stage's pairs (id_a, id_b, cosine, ...), all at or above
            ``cfg.cosine_threshold``.
        images: id and path of every image a pair can name; read again with
            :func:`neardup_core.sources.read_file`. None (``neardup pairs``: no images):
            every pair is written as accepted on the embedding.
        cfg: the thresholds and feature settings (``pairs.*``).
        min_tasks: the fewest tasks for featurizing and for verifying; more when the
            borderline pairs' two feature sets exceed ``cfg.partition_mb`` a task.
        scratch: a folder for the features and the decisions (each computed once).
        path: where the accepted pairs go, sorted by id_a, id_b, with VERIFIED_COLUMNS.
        rejected_path: where the rejected pairs go (same columns), or None.
        known: id_a, id_b, inliers, verified of pairs verified before (an incremental
            run's carried pairs, whose images did not change): not verified again.
    """
    spark = pairs.sparkSession
    borderline = pairs.filter(F.col("cosine") < F.lit(cfg.accept_cosine)).select("id_a", "id_b", "cosine")
    if known is not None:
        borderline = borderline.join(known.select("id_a", "id_b"), ["id_a", "id_b"], "left_anti")
    count = borderline.count() if cfg.verifies and images is not None else 0
    if count == 0:
        _with_known(label_unverified(pairs), known).orderBy("id_a", "id_b").write.parquet(path)
        if rejected_path is not None:
            label_unverified(pairs).limit(0).write.parquet(rejected_path)
        return VerifyResult(pairs.count(), 0, 0, 0, 0, 0)
    previous_batch = spark.conf.get(_ARROW_BATCH)
    spark.conf.set(_ARROW_BATCH, str(FEATURE_BATCH_ROWS))
    tally = Tally(spark)
    tasks = max(min_tasks, math.ceil(count * 2 * cfg.max_keypoints * KEYPOINT_BYTES / cfg.partition_bytes))
    try:
        ends = borderline.select(F.col("id_a").alias("id")).union(borderline.select(F.col("id_b").alias("id")))
        wanted = ends.distinct().join(images.select("id", "path"), "id", "left").repartition(tasks, "id")
        _featurize(wanted, cfg, input_cfg, tally).write.parquet(f"{scratch}/features")
        features = spark.read.parquet(f"{scratch}/features")
        side_a = features.select(F.col("id").alias("id_a"), F.col("points").alias("points_a"),
                                 F.col("descriptors").alias("descriptors_a"))
        side_b = features.select(F.col("id").alias("id_b"), F.col("points").alias("points_b"),
                                 F.col("descriptors").alias("descriptors_b"))
        joined = borderline.join(side_a, "id_a", "left").join(side_b, "id_b", "left").repartition(tasks)
        _decide(joined, cfg).write.parquet(f"{scratch}/decided")
    finally:
        spark.conf.set(_ARROW_BATCH, previous_batch)
    decided = spark.read.parquet(f"{scratch}/decided")
    labelled = _with_known(pairs.join(decided, ["id_a", "id_b"], "left").withColumn(
        "verified", F.when(F.col("inliers").isNull(), F.lit("embedding")).otherwise(F.lit("geometry"))), known)
    columns = [*pairs.columns, *VERIFIED_COLUMNS]
    labelled.filter(F.coalesce(F.col("accepted"), F.lit(True))).select(*columns).orderBy(
        "id_a", "id_b").write.parquet(path)
    if rejected_path is not None:
        labelled.filter(~F.coalesce(F.col("accepted"), F.lit(True))).select(*columns).orderBy(
            "id_a", "id_b").write.parquet(rejected_path)
    accepted = decided.filter("accepted").count()
    images_done = sum(v[0] for v in tally.values("features"))
    errors = sum(v[1] for v in tally.values("features"))
    written = spark.read.parquet(path).count()
    return VerifyResult(written, count, accepted, count - accepted, images_done, errors)


def _with_known(labelled: DataFrame, known: DataFrame | None) -> DataFrame:
    """``labelled`` with the inliers and verdict of the pairs verified before, where given."""
    if known is None:
        return labelled
    before = known.select("id_a", "id_b", F.col("inliers").alias("_inliers"), F.col("verified").alias("_verified"))
    return (labelled.join(before, ["id_a", "id_b"], "left")
            .withColumn("inliers", F.coalesce("_inliers", "inliers"))
            .withColumn("verified", F.coalesce("_verified", "verified")).drop("_inliers", "_verified"))


def _featurize(wanted: DataFrame, cfg: PairsConfig, input_cfg: InputConfig, tally: Tally) -> DataFrame:
    """id, path -> id and packed features (:func:`verify.pack`); an image that cannot be
    read or decoded now gets no features and its reason in ``error``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core import verify
        from neardup_core.sources import ReadError, read_file

        done = failed = 0
        for batch in batches:
            ids, paths = batch.column("id").to_pylist(), batch.column("path").to_pylist()
            points, descriptors, errors = [], [], []
            for path in paths:
                error, found = None, verify.unpack(b"", b"", cfg.features)
                try:
                    if path is None:
                        raise verify.FeatureError("no path")
                    data = read_file(path, input_cfg.max_file_bytes).data
                    gray = verify.gray_image(data, cfg.max_side, input_cfg.max_pixels)
                    found = verify.features(gray, cfg.features, cfg.max_keypoints)
                except (ReadError, verify.FeatureError) as err:
                    error = str(err)
                    failed += 1
                packed = verify.pack(found)
                points.append(packed[0])
                descriptors.append(packed[1])
                errors.append(error)
                done += 1
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids, pa.string()), pa.array(points, pa.binary()), pa.array(descriptors, pa.binary()),
                 pa.array(errors, pa.string())], names=["id", "points", "descriptors", "error"])
        tally.record("features", (done, failed))

    return wanted.mapInArrow(run, _FEATURE_SCHEMA)


def _decide(joined: DataFrame, cfg: PairsConfig) -> DataFrame:
    """Borderline pairs with both feature sets -> inliers and the decision
    (:func:`verify.count_inliers`, :func:`verify.accepted`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np

        from neardup_core import verify

        for batch in batches:
            columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
            inliers = np.zeros(batch.num_rows, np.int64)
            for i in range(batch.num_rows):
                a = verify.unpack(columns["points_a"][i] or b"", columns["descriptors_a"][i] or b"", cfg.features)
                b = verify.unpack(columns["points_b"][i] or b"", columns["descriptors_b"][i] or b"", cfg.features)
                inliers[i] = verify.count_inliers(a, b, cfg.ratio, cfg.transform)
            cosine = np.asarray(columns["cosine"], np.float64)
            keep = verify.accepted(cosine, inliers, cfg.cosine_threshold, cfg.accept_cosine, cfg.min_inliers)
            yield pa.RecordBatch.from_arrays(
                [batch.column("id_a"), batch.column("id_b"), pa.array(inliers, pa.int32()), pa.array(keep)],
                names=["id_a", "id_b", "inliers", "accepted"])

    return joined.select("id_a", "id_b", "cosine", "points_a", "descriptors_a", "points_b", "descriptors_b").mapInArrow(
        run, _DECIDED_SCHEMA)
