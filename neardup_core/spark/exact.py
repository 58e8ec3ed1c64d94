"""Exact copies: inputs with the same content hash (the same file bytes; for ``neardup
pairs``, the same vector bytes) are paired and hashed once.

A flood of copies (one image uploaded a thousand times) would otherwise fill one LSH bucket
per table with identical vectors, and pairing a bucket costs the square of its size.
Instead, before the LSH stage, each set of copies is collapsed to its *representative*:
the copy that ranks first under ``groups.keep`` (so decisions stay those of the full
graph). Only representatives are planned, hashed and paired (an incremental run pairs every
row, then leaves out the copies' pairs); each other copy gets one pair
with its representative, marked ``exact`` (cosine 1), and takes its representative's
decision (docs/design.md, "Exact copies"):

- the representative is kept: the copy is dropped for the representative (cosine 1);
- the representative is dropped for image K: the copy is dropped for K, with the
  representative's cosine to K.

That is what the sequential keep/drop would decide on the full graph, where copies share
every neighbour: the copies rank after their representative, and the first kept neighbour
of a later copy is the representative's. Cost: one aggregate of the hashes; where there are
copies, a shuffle of their (id, hash, priority columns) by hash and a rewrite of pairs/ and
groups/; linear in the inputs.
"""

from __future__ import annotations

from typing import NamedTuple

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .groups import GroupsResult, priority_order

# Columns of groups.keep that are facts of the image rather than manifest columns.
_FACTS = ("width", "height", "bytes", "modified")


class Collapsed(NamedTuple):
    representatives: DataFrame  # the rows to plan, hash and pair: one per content
    copies: DataFrame | None  # id, path, representative, representative_path (persisted); None: no copies
    count: int  # rows in copies


def collapse(good: DataFrame, criteria: list[tuple[str, bool]], extras: DataFrame | None) -> Collapsed:
    """Split ``good`` (embedded rows with content_hash) into one representative per hash
    and the other copies. Rows without a hash are their own representatives.

    Args:
        criteria: ``groups.keep`` (:meth:`GroupsConfig.criteria`), ending in ``id asc``.
        extras: id and the manifest columns the criteria name, or None.
    """
    names = [name for name, _ in criteria if name not in ("pixels", "id", *_FACTS)]
    hashed = good.filter(F.col("content_hash").isNotNull())
    # Most catalogs hold no copies: one aggregate says so, and the ranking below never runs.
    # Persisted (the repeated hashes: few), so that where copies exist it runs once.
    shared = (hashed.groupBy("content_hash").count().filter(F.col("count") > 1).select("content_hash")
              .persist(StorageLevel.MEMORY_AND_DISK))
    if shared.isEmpty():
        shared.unpersist()
        return Collapsed(good, None, 0)
    facts = hashed.select("id", "path", "content_hash", *_FACTS).join(shared, "content_hash", "left_semi")
    if names and extras is not None:
        facts = facts.join(extras.select("id", *names), "id", "left")
    order = Window.partitionBy("content_hash").orderBy(*priority_order(criteria), F.col("id").asc())
    ranked = facts.select("id", "path", F.row_number().over(order).alias("copy_rank"),
                          F.first("id").over(order).alias("representative"),
                          F.first("path").over(order).alias("representative_path"))
    copies = (ranked.filter("copy_rank > 1").drop("copy_rank")
              .persist(StorageLevel.MEMORY_AND_DISK))
    count = copies.count()
    shared.unpersist()
    if count == 0:
        copies.unpersist()
        return Collapsed(good, None, 0)
    return Collapsed(good.join(copies.select("id"), "id", "left_anti"), copies, count)


def copies_may_be_fresh(fresh: DataFrame, previous_embeddings: DataFrame) -> bool:
    """For an incremental run whose previous run held no exact copies: whether tonight's
    rows can hold any. Every reused row keeps its previous content hash, and those were
    distinct, so a copy tonight involves a fresh (new or changed) row: its hash repeats
    among the fresh rows' or is one of the previous run's. Reads the fresh rows' hashes
    and the previous run's hash column, not every row of tonight's; a hash of a row gone
    tonight gives a false alarm (then :func:`collapse` runs), never a miss."""
    hashes = fresh.select("content_hash").where(F.col("content_hash").isNotNull())
    rows, distinct = hashes.agg(F.count(F.lit(1)), F.count_distinct("content_hash")).first()
    if rows != distinct:
        return True
    return not (previous_embeddings.select("content_hash")
                .join(F.broadcast(hashes), "content_hash", "left_semi").isEmpty())


def write_pairs_with_copies(near_pairs: DataFrame, copies: DataFrame, tables_matched: int, path: str) -> int:
    """``pairs/``: the representatives' pairs (``exact`` false; pairs with a copy at either
    end, which an incremental run finds, are left out) and one pair per copy with its
    representative (``exact`` true, cosine and jaccard 1, every table matched), in any
    order (the verify stage rewrites them, sorted). Returns the pairs written."""
    low = F.col("id") < F.col("representative")
    exact = copies.select(
        F.when(low, F.col("id")).otherwise(F.col("representative")).alias("id_a"),
        F.when(low, F.col("representative")).otherwise(F.col("id")).alias("id_b"),
        F.when(low, F.col("path")).otherwise(F.col("representative_path")).alias("path_a"),
        F.when(low, F.col("representative_path")).otherwise(F.col("path")).alias("path_b"),
        F.lit(1.0).alias("cosine"), F.lit(1.0).alias("jaccard"),
        F.lit(tables_matched).cast("int").alias("tables_matched"), F.lit(True).alias("exact"))
    ids = F.broadcast(copies.select("id"))
    near = (near_pairs.join(ids.withColumnRenamed("id", "id_a"), "id_a", "left_anti")
            .join(ids.withColumnRenamed("id", "id_b"), "id_b", "left_anti")
            .select(*near_pairs.columns).withColumn("exact", F.lit(False)))
    flags = [F.lit(False).alias(name) for name in near.columns if name not in exact.columns]  # near_copy
    near.unionByName(exact.select(*exact.columns, *flags).select(*near.columns)).write.parquet(path)
    return near_pairs.sparkSession.read.parquet(path).count()


def copies_follow_representatives(groups: DataFrame, copies: DataFrame, result: GroupsResult, path: str
                                  ) -> GroupsResult:
    """``groups/`` with each copy taking its representative's decision (the groups stage
    ran on pairs/ with the exact pairs, so copies are already in their representative's
    group; a copy of a dropped representative is then still "keep", having no other
    neighbour). Order and columns as ``groups``; the result's kept and dropped counts
    corrected."""
    # Where each row was, to write them back in the same order: by file, by split of the
    # file, then by position in the split (Spark reads files in its own order).
    rows = groups.withColumn("file", F.input_file_name()).withColumn("block", F.input_file_block_start()) \
        .withColumn("position", F.monotonically_increasing_id())
    rep = rows.select(F.col("id").alias("representative"), F.col("action").alias("rep_action"),
                      F.col("kept_id").alias("rep_kept_id"), F.col("cosine").alias("rep_cosine"))
    follow = copies.select("id", "representative").join(rep, "representative")
    joined = rows.join(follow, "id", "left")
    is_copy = F.col("representative").isNotNull()
    rep_kept = F.col("rep_action") == "keep"
    fixed = joined.select(
        "id", "path", "group_id", "group_size",
        F.when(is_copy, F.lit("drop")).otherwise(F.col("action")).alias("action"),
        F.when(is_copy & rep_kept, F.col("representative")).when(is_copy, F.col("rep_kept_id"))
        .otherwise(F.col("kept_id")).alias("kept_id"),
        F.when(is_copy & rep_kept, F.lit(1.0)).when(is_copy, F.col("rep_cosine"))
        .otherwise(F.col("cosine")).alias("cosine"),
        F.when(is_copy & (F.col("action") == "keep"), 1).otherwise(0).alias("moved"),
        "file", "block", "position")
    return write_fixed_groups(fixed, result, path)


def write_fixed_groups(fixed: DataFrame, result: GroupsResult, path: str) -> GroupsResult:
    """Write ``fixed`` (groups/ rows with copies' decisions set, plus ``moved``: 1 where a
    copy went from keep to drop, and ``file``, ``block``, ``position``: where each row was
    read) back in the order it was read, and correct the result's kept and dropped counts."""
    fixed = fixed.persist(StorageLevel.MEMORY_AND_DISK)
    moved = fixed.agg(F.sum("moved")).first()[0] or 0
    fixed.orderBy("file", "block", "position").drop("moved", "file", "block", "position").write.parquet(path)
    fixed.unpersist()
    return result._replace(kept=result.kept - moved, dropped=result.dropped + moved)
