"""Incremental runs (``--previous RUN``) in Spark: which listed images the previous run's
``embeddings/`` already holds, the pairs that involve a new or changed image (the rest
carry over), and ``changes/``. The rules are in :mod:`neardup_core.incremental`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..incremental import KEY_BITS, bucket_codes, touched_rows
from ..lsh import LshTables
from ..pairing import BucketStats
from .arrow import matrix
from .pairing import PAIR_SCHEMA, PairingResult
from .tally import Tally

CHANGES_SCHEMA = ("change string, id_a string, id_b string, cosine double, id string, previous_action string, "
                  "action string, kept_id string")
_ENTRY_SCHEMA = "code bigint, id string, fresh boolean"
_ONE_TASK_INPUT = pa.schema([("id", pa.string()), ("path", pa.string()), ("embedding", pa.list_(pa.float32())),
                             ("keys", pa.list_(pa.int64())), ("fresh", pa.bool_())])
_PAIR_ARROW = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("path_a", pa.string()),
                         ("path_b", pa.string()), ("cosine", pa.float64()), ("jaccard", pa.float64()),
                         ("tables_matched", pa.int32())])


class Previous(NamedTuple):
    embeddings: DataFrame  # the previous run's embeddings/ (KEYED_SCHEMA)
    pairs: DataFrame
    groups: DataFrame


def read_previous(spark: SparkSession, path: str) -> Previous:
    return Previous(*(spark.read.parquet(f"{path.rstrip('/')}/{name}") for name in ("embeddings", "pairs", "groups")))


def unchanged_by_listing(listing: DataFrame, previous: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(rows to embed, rows unchanged): a listed file is unchanged when the previous run
    holds its id with the same size and modification time (both known). The rows to embed
    carry ``previous_hash`` (null for new ids), so the embed stage can still find a file
    unchanged by content, without decoding it."""
    before = previous.select("id", F.col("bytes").alias("previous_bytes"),
                             F.col("modified").alias("previous_modified"),
                             F.col("content_hash").alias("previous_hash"))
    joined = listing.join(before, "id", "left")
    same = F.coalesce((F.col("size") == F.col("previous_bytes")) & (F.col("modified") == F.col("previous_modified"))
                      & F.col("error_message").isNull(), F.lit(False))
    unchanged = joined.filter(same).select("id", "path", F.col("size").alias("bytes"), "modified")
    to_embed = joined.filter(~same).drop("previous_bytes", "previous_modified")
    return to_embed, unchanged


def reused_rows(unchanged: DataFrame, previous: DataFrame) -> DataFrame:
    """Unchanged images (id, path, bytes, modified as listed or read tonight) with the
    previous run's embedding, keys, size in pixels and content hash."""
    kept = previous.select("id", "embedding", "keys", "width", "height", "content_hash")
    return unchanged.join(kept, "id")


def reused_vectors(rows: DataFrame, previous: DataFrame) -> DataFrame:
    """``neardup pairs``: rows whose vector the previous run holds unchanged (same id and
    content hash), with their keys from the previous run's ``embeddings/``, which need
    not hold the vectors themselves."""
    return rows.select("id", "path", "embedding", "width", "height", "bytes", "modified", "content_hash").join(
        previous.select("id", "keys"), "id")


class IncrementalPairs(NamedTuple):
    result: PairingResult | None  # None: a touched bucket is oversized; pair in full instead
    touched_buckets: int
    largest_touched: int
    found: DataFrame | None = None  # PAIR_SCHEMA: tonight's pairs that involve a fresh row (persisted)
    lost: DataFrame | None = None  # id_a, id_b, cosine: last night's pairs that involve a gone row
    verified_before: DataFrame | None = None  # id_a, id_b, inliers, verified of the carried pairs


def pair_incrementally(keyed: DataFrame, gone: DataFrame, previous_pairs: DataFrame, tables: LshTables,
                       max_bucket_size: int, cosine_threshold: float, path: str) -> IncrementalPairs:
    """Tonight's pairs from last night's, for data the full pairing would shuffle: the
    previous pairs between images still here and unchanged, and the pairs that involve a
    fresh (new or changed) image, found in the buckets the fresh images hash to. Written to
    ``path`` like the pairing stage writes.

    Args:
        keyed: tonight's rows: id, path, embedding, keys, fresh (embedded tonight).
        gone: id, keys of the previous run's rows that are deleted or changed.

    Exact (what a full run with the same tables gives) while no bucket the change touches
    holds more than ``max_bucket_size`` rows, before or after: then a pair's buckets
    depend on its two rows only. Otherwise nothing is written and ``result`` is None.
    """
    spark = keyed.sparkSession
    num_tables, dim = tables.num_tables, tables.dim
    codes = [_codes(frame.select("keys"), num_tables) for frame in (keyed.filter("fresh"), gone)]
    touched = np.unique(np.concatenate(codes))
    bcast = spark.sparkContext.broadcast(touched)
    # The members of the touched buckets: one scan of every row's keys, kept for the three
    # uses below (bucket sizes, fresh rows' partners, their scores).
    entries = _touched_entries(bcast, num_tables)
    now = keyed.select("id", "keys", "fresh").mapInArrow(entries, _ENTRY_SCHEMA).persist()
    before = gone.select("id", "keys", F.lit(False).alias("fresh")).mapInArrow(entries, _ENTRY_SCHEMA)
    sizes = (now.select("code", F.lit(1).alias("now"), F.when(F.col("fresh"), 0).otherwise(1).alias("before"))
             .unionByName(before.select("code", F.lit(0).alias("now"), F.lit(1).alias("before")))
             .groupBy("code").agg(F.sum("now").alias("now"), F.sum("before").alias("before"))
             .agg(F.count("*").alias("buckets"), F.max(F.greatest("now", "before")).alias("largest")).first())
    largest = sizes["largest"] or 0
    if largest > max_bucket_size:
        now.unpersist()
        bcast.unpersist()
        return IncrementalPairs(None, sizes["buckets"], largest)
    fresh = now.filter("fresh").select("code", F.col("id").alias("id_x"))
    candidates = (fresh.join(now.select("code", F.col("id").alias("id_y")), "code")
                  .where(F.col("id_x") != F.col("id_y"))
                  .select(F.least("id_x", "id_y").alias("id_a"), F.greatest("id_x", "id_y").alias("id_b"))
                  .distinct().persist())
    scored = candidates.count()
    # Only the candidates' rows, picked by a broadcast of their ids, meet the candidates.
    ends_ids = candidates.select(F.col("id_a").alias("id")).union(candidates.select(F.col("id_b").alias("id")))
    rows = keyed.select("id", "path", "embedding", "keys").join(F.broadcast(ends_ids.distinct()), "id", "left_semi")
    ends = (candidates.join(rows.toDF("id_a", "path_a", "vec_a", "keys_a"), "id_a")
            .join(rows.toDF("id_b", "path_b", "vec_b", "keys_b"), "id_b"))

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import score_with_keys

        for batch in batches:
            c = batch.column
            near = score_with_keys(matrix(c("vec_a"), dim), matrix(c("vec_b"), dim), matrix(c("keys_a"), num_tables),
                                   matrix(c("keys_b"), num_tables), cosine_threshold)
            index = pa.array(near.a)
            yield pa.RecordBatch.from_arrays(
                [c("id_a").take(index), c("id_b").take(index), c("path_a").take(index), c("path_b").take(index),
                 pa.array(near.cosine), pa.array(near.jaccard), pa.array(near.tables_matched)],
                names=["id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched"])

    found = ends.select("id_a", "id_b", "path_a", "path_b", "vec_a", "vec_b", "keys_a", "keys_b").mapInArrow(
        score, PAIR_SCHEMA).persist()
    found.count()
    pairs = _carried(previous_pairs, gone, keyed, broadcast=False).unionByName(found).persist()
    count = pairs.count()
    pairs.orderBy("id_a", "id_b").write.parquet(path)
    pairs.unpersist()
    candidates.unpersist()
    now.unpersist()
    bcast.unpersist()
    return IncrementalPairs(PairingResult(count, scored, BucketStats(), {"incremental": True}), sizes["buckets"],
                            largest, found, _lost(previous_pairs, gone), _verified_before(previous_pairs, gone))


def pair_incrementally_in_one_task(keyed: DataFrame, gone: DataFrame, previous_pairs: DataFrame,
                                   tables: LshTables, max_bucket_size: int, cosine_threshold: float, path: str
                                   ) -> IncrementalPairs:
    """As :func:`pair_incrementally`, for data the full pairing would pair in one task:
    the fresh rows' candidates found and scored in one task (:func:`incremental.fresh_candidates`,
    no shuffle), the carried pairs named by broadcast joins, and the union sorted in one task."""
    spark = keyed.sparkSession
    num_tables, dim = tables.num_tables, tables.dim
    gone_keys = spark.sparkContext.broadcast(matrix(gone.select("keys").toArrow().column("keys"), num_tables))
    tally = Tally(spark)

    def find(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.incremental import fresh_candidates
        from neardup_core.pairing import ordered_by_id, score_with_keys

        batches = list(batches)  # Spark's own list field names and nullability
        table = pa.Table.from_batches(batches) if batches else _ONE_TASK_INPUT.empty_table()
        keys = matrix(table.column("keys"), num_tables)
        fresh = table.column("fresh").to_numpy(zero_copy_only=False).astype(bool)
        found = fresh_candidates(keys, fresh, gone_keys.value, max_bucket_size)
        tally.record("touched", (found.touched_buckets, found.largest_touched, found.a is not None))
        if found.a is None:
            return
        x = matrix(table.column("embedding"), dim)
        near = score_with_keys(x[found.a], x[found.b], keys[found.a], keys[found.b], cosine_threshold)
        tally.record("scored", (len(found.a),))
        a, b = pa.array(found.a[near.a]), pa.array(found.b[near.a])
        ids, paths = table.column("id"), table.column("path")
        named = ordered_by_id(ids.take(a), ids.take(b), paths.take(a), paths.take(b))
        yield from pa.table({**named, "cosine": near.cosine, "jaccard": near.jaccard,
                             "tables_matched": near.tables_matched}).to_batches()

    found = (keyed.select(*_ONE_TASK_INPUT.names).coalesce(1).mapInArrow(find, PAIR_SCHEMA)
             .persist(StorageLevel.MEMORY_AND_DISK))
    found.count()
    ((touched, largest, exact),) = tally.values("touched")
    gone_keys.unpersist()
    if not exact:
        found.unpersist()
        return IncrementalPairs(None, touched, largest)

    def sort(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = list(batches)
        table = pa.Table.from_batches(batches) if batches else _PAIR_ARROW.empty_table()
        tally.record("pairs", (table.num_rows,))
        yield from table.sort_by([("id_a", "ascending"), ("id_b", "ascending")]).combine_chunks().to_batches()

    pairs = _carried(previous_pairs, gone, keyed, broadcast=True).unionByName(found)
    pairs.coalesce(1).mapInArrow(sort, PAIR_SCHEMA).write.parquet(path)
    count = sum(v[0] for v in tally.values("pairs"))
    return IncrementalPairs(PairingResult(count, tally.values("scored")[0][0], BucketStats(),
                                          {"incremental": True, "rows": 1}),
                            touched, largest, found, _lost(previous_pairs, gone),
                            _verified_before(previous_pairs, gone))


def _carried(previous_pairs: DataFrame, gone: DataFrame, keyed: DataFrame, broadcast: bool) -> DataFrame:
    """Last night's pairs between rows still here and unchanged, named with tonight's paths."""
    hint = F.broadcast if broadcast else (lambda frame: frame)
    gone_ids = F.broadcast(gone.select("id"))
    names = hint(keyed.select("id", "path"))
    return (previous_pairs.select("id_a", "id_b", "cosine", "jaccard", "tables_matched")
            .join(gone_ids.toDF("id_a"), "id_a", "left_anti").join(gone_ids.toDF("id_b"), "id_b", "left_anti")
            .join(names.toDF("id_a", "path_a"), "id_a").join(names.toDF("id_b", "path_b"), "id_b")
            .select("id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched"))


def _verified_before(previous_pairs: DataFrame, gone: DataFrame) -> DataFrame | None:
    """How last night verified the pairs carried over (both images unchanged, so a full
    run would verify them the same way), or None for a run made without verification."""
    if "verified" not in previous_pairs.columns:
        return None
    gone_ids = F.broadcast(gone.select("id"))
    return (previous_pairs.select("id_a", "id_b", "inliers", "verified")
            .join(gone_ids.toDF("id_a"), "id_a", "left_anti").join(gone_ids.toDF("id_b"), "id_b", "left_anti"))


def _lost(previous_pairs: DataFrame, gone: DataFrame) -> DataFrame:
    """Last night's pairs that involve a deleted or changed row: the only ones that can be
    missing tonight."""
    gone_ids = F.broadcast(gone.select("id"))
    pairs = previous_pairs.select("id_a", "id_b", "cosine")
    return (pairs.join(gone_ids.toDF("id_a"), "id_a", "left_semi")
            .unionByName(pairs.join(gone_ids.toDF("id_b"), "id_b", "left_semi")).distinct())


def _codes(frame: DataFrame, num_tables: int) -> np.ndarray:
    """Every (table, key) of a small frame's keys (:func:`incremental.bucket_codes`), on the driver."""
    return bucket_codes(matrix(frame.toArrow().column("keys"), num_tables))


def _touched_entries(touched_broadcast, num_tables: int):
    """A task function: for each row in a touched bucket, its (code, id, fresh)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        touched = touched_broadcast.value
        for batch in batches:
            if batch.num_rows == 0 or len(touched) == 0:
                continue
            keys = matrix(batch.column("keys"), num_tables)
            for table, row in enumerate(touched_rows(keys, touched)):
                if len(row):
                    codes = (np.int64(table) << KEY_BITS) | keys[row, table]  # as bucket_codes
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(codes), batch.column("id").take(pa.array(row)),
                         batch.column("fresh").take(pa.array(row))], names=["code", "id", "fresh"])

    return run


def changes(previous: Previous, previous_ids: DataFrame, pairs: DataFrame, groups: DataFrame,
            current_ids: DataFrame, found: IncrementalPairs | None = None) -> DataFrame:
    """``changes/``: pairs added and removed since the previous run, and images whose
    action changed where either side is a drop (an image without a pair is kept; one not
    in the catalog has no action).

    With ``found`` (pairs found incrementally, and no exact copies on either night), the
    pairs are compared only where they can differ: a pair added involves a fresh row, a
    pair removed a deleted or changed one.
    """
    key = ["id_a", "id_b"]
    if found is not None and found.found is not None:
        # Of the pairs found tonight, those verification kept.
        tonight = pairs.select(*key, "cosine").join(found.found.select(*key), key, "left_semi")
        before = found.lost
    else:
        tonight, before = pairs.select(*key, "cosine"), previous.pairs.select(*key, "cosine")
    added = tonight.join(before.select(*key), key, "left_anti").select(
        F.lit("pair_added").alias("change"), *key, "cosine")
    removed = before.join(tonight.select(*key), key, "left_anti").select(
        F.lit("pair_removed").alias("change"), *key, "cosine")

    def actions(ids: DataFrame, grouped: DataFrame, suffix: str) -> DataFrame:
        return ids.join(grouped.select("id", "action", "kept_id"), "id", "left").select(
            "id", F.coalesce("action", F.lit("keep")).alias(f"action{suffix}"), F.col("kept_id").alias(f"kept{suffix}"))

    both = actions(previous_ids, previous.groups, "_before").join(actions(current_ids, groups, ""), "id", "full")
    moved = both.where(~F.col("action_before").eqNullSafe(F.col("action"))
                       & ((F.col("action_before") == "drop") | (F.col("action") == "drop"))).select(
        F.lit("action_changed").alias("change"), "id", F.col("action_before").alias("previous_action"), "action",
        F.col("kept").alias("kept_id"))
    return added.unionByName(removed, allowMissingColumns=True).unionByName(moved, allowMissingColumns=True).select(
        *[F.col(name).cast(kind) for name, kind in (f.split() for f in CHANGES_SCHEMA.split(", "))])
