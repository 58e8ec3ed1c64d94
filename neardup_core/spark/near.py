"""Near copies in Spark: rows whose embeddings are within ``pairs.copy_cosine`` of a
higher-priority row are collapsed onto it before the LSH stage, and their edges that matter
for the groups are found again after it (the maths is in :mod:`neardup_core.near_copies`).

1. :func:`collapse`: each row gets a fine key; rows of keys shared by ``pairs.copy_min_rows``
   rows or more are clustered per key, in ``groups.keep`` order (the first is the
   representative); clusters smaller than that are left alone.
2. The representatives are paired as usual, but scored down to the lowest cosine an
   at-risk pair can have (:func:`near_copies.lowest_cosine_at_risk`).
3. :func:`write_pairs`: ``pairs/`` gets the representatives' pairs at the threshold, one
   pair per copy with its representative (``near_copy`` true), and for each at-risk pair of
   representatives every member pair at the threshold (so groups are those of the full graph).
4. Copies rank after every other image in the groups stage (so no image is dropped for a
   copy), then :func:`copies_follow_representatives`: a copy is dropped for its
   representative if that is kept, else for the image the representative was dropped for.

Cost: one hash of every row (a few projections), a shuffle of the rows that share a fine
key, and joins linear in the copies; the pairing sees one row per cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..lsh import LshTables
from .arrow import matrix
from .exact import write_fixed_groups
from .groups import GroupsResult
from .pairing import PAIR_SCHEMA

_FACTS = ("width", "height", "bytes", "modified")
COPY_SCHEMA = "id string, path string, representative string, representative_path string, cosine double"
NEAR_PAIR_SCHEMA = PAIR_SCHEMA + ", near_copy boolean"
COPY_LAST = "_copy_last"  # the groups stage's first criterion while near copies are collapsed


class NearCollapsed(NamedTuple):
    representatives: DataFrame  # the rows to plan, hash and pair
    copies: DataFrame | None  # COPY_SCHEMA, persisted; None: no near copies
    radii: DataFrame | None  # representative, alpha (radians): each cluster's radius, persisted
    count: int  # rows in copies
    largest_radius: float  # radians


def collapse(good: DataFrame, criteria: list[tuple[str, bool]], extras: DataFrame | None, copy_cosine: float,
             min_rows: int, seed: int, items: int, dim: int) -> NearCollapsed:
    """Split ``good`` (id, path, embedding and the image facts; ``items`` rows) into
    representatives and near copies (:mod:`neardup_core.near_copies`).

    Args:
        criteria: ``groups.keep`` (:meth:`GroupsConfig.criteria`), ending in ``id asc``.
        extras: id and the manifest columns the criteria name, or None.
    """
    from neardup_core.near_copies import fine_bits, fine_planes

    spark = good.sparkSession
    names = [name for name, _ in criteria if name not in ("pixels", "id", *_FACTS)]
    facts = good.select("id", "path", "embedding", *_FACTS)
    if names and extras is not None:
        facts = facts.join(extras.select("id", *names), "id", "left")
    planes = spark.sparkContext.broadcast(fine_planes(seed, fine_bits(items), dim))

    def keyed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.near_copies import fine_keys

        for batch in batches:
            keys = fine_keys(matrix(batch.column("embedding"), dim), planes.value)
            yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(keys, pa.int64())], names=["id", "fine_key"])

    # The vectors go to Python once, and only (id, fine key) come back; where no fine key
    # is shared by min_rows rows (most catalogs), that is the whole stage.
    keys = (good.select("id", "embedding").mapInArrow(keyed, "id string, fine_key bigint")
            .persist(StorageLevel.MEMORY_AND_DISK))
    shared = [row[0] for row in keys.groupBy("fine_key").count().filter(F.col("count") >= min_rows)
              .select("fine_key").collect()]
    planes.unpersist()
    if not shared:
        keys.unpersist()
        return NearCollapsed(good, None, None, 0, 0.0)
    members = keys.join(F.broadcast(spark.createDataFrame([(key,) for key in shared], "fine_key bigint")),
                        "fine_key", "left_semi")

    def cluster(table: pa.Table) -> pa.Table:
        from neardup_core.groups import priority_order
        from neardup_core.near_copies import leader_clusters

        order = priority_order(table, criteria)
        ranked = table.take(pa.array(order))
        found = leader_clusters(matrix(ranked.column("embedding"), dim), copy_cosine, min_rows)
        copies = np.flatnonzero(found.representative != np.arange(ranked.num_rows))
        reps = pa.array(found.representative[copies])
        ids, paths = ranked.column("id"), ranked.column("path")
        return pa.table({"id": ids.take(pa.array(copies)), "path": paths.take(pa.array(copies)),
                         "representative": ids.take(reps), "representative_path": paths.take(reps),
                         "cosine": pa.array(found.cosine[copies], pa.float64())})

    copies = (facts.join(members, "id").groupBy("fine_key").applyInArrow(cluster, COPY_SCHEMA)
              .persist(StorageLevel.MEMORY_AND_DISK))
    count = copies.count()
    keys.unpersist()
    if count == 0:
        copies.unpersist()
        return NearCollapsed(good, None, None, 0, 0.0)
    radii = (copies.groupBy("representative")
             .agg(F.acos(F.least(F.lit(1.0), F.min("cosine"))).alias("alpha"))
             .persist(StorageLevel.MEMORY_AND_DISK))
    largest = radii.agg(F.max("alpha")).first()[0] or 0.0
    return NearCollapsed(good.join(copies.select("id"), "id", "left_anti"), copies, radii, count, float(largest))


def write_pairs(low_pairs: DataFrame, near: NearCollapsed, vectors: DataFrame, tables: LshTables,
                threshold: float, path: str) -> tuple[int, int]:
    """``pairs/`` (NEAR_PAIR_SCHEMA, in any order) from the representatives' pairs
    scored down to :func:`near_copies.lowest_cosine_at_risk` (``low_pairs``): those at
    ``threshold``; one pair per copy with its representative (``near_copy`` true); and the
    member pairs at ``threshold`` of every at-risk pair. ``vectors``: id, path, embedding of
    every row of the collapse. Returns (pairs written, at-risk pairs)."""
    spark = low_pairs.sparkSession
    planes = spark.sparkContext.broadcast(tables)
    columns = [field.name for field in low_pairs.schema.fields]
    kept = low_pairs.filter(F.col("cosine") >= threshold).withColumn("near_copy", F.lit(False))

    alpha = near.radii
    risky_input = (low_pairs.filter(F.col("cosine") < threshold)
                   .join(alpha.toDF("id_a", "alpha_a"), "id_a", "left")
                   .join(alpha.toDF("id_b", "alpha_b"), "id_b", "left")
                   .select("id_a", "id_b", "cosine", F.coalesce("alpha_a", F.lit(0.0)).alias("alpha_a"),
                           F.coalesce("alpha_b", F.lit(0.0)).alias("alpha_b")))

    def risky_only(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.near_copies import at_risk

        for batch in batches:
            c = batch.column
            keep = at_risk(c("cosine").to_numpy(), c("alpha_a").to_numpy(), c("alpha_b").to_numpy(), threshold)
            yield pa.RecordBatch.from_arrays([c("id_a").filter(pa.array(keep)), c("id_b").filter(pa.array(keep))],
                                             names=["id_a", "id_b"])

    risky = risky_input.mapInArrow(risky_only, "id_a string, id_b string").persist(StorageLevel.MEMORY_AND_DISK)
    at_risk_count = risky.count()
    dim = tables.dim

    def scored(ids_a, ids_b, paths_a, paths_b, x_a, x_b, near_copy: bool) -> pa.Table:
        from neardup_core.lsh import signature_keys
        from neardup_core.pairing import ordered_by_id, score_with_keys

        lsh_tables: LshTables = planes.value
        keys_a, _ = signature_keys(x_a, lsh_tables, subkeys=False)
        keys_b, _ = signature_keys(x_b, lsh_tables, subkeys=False)
        s = score_with_keys(x_a, x_b, keys_a, keys_b, -1.0)
        return pa.table({**ordered_by_id(ids_a, ids_b, paths_a, paths_b), "cosine": s.cosine, "jaccard": s.jaccard,
                         "tables_matched": s.tables_matched,
                         "near_copy": pa.array(np.full(len(s.a), near_copy), pa.bool_())})

    parts = [kept.select(*columns, "near_copy")]
    if at_risk_count:
        sides = (risky.select(F.concat_ws("\u0000", "id_a", "id_b").alias("pair"), F.lit(0).alias("side"),
                              F.col("id_a").alias("unit"))
                 .unionByName(risky.select(F.concat_ws("\u0000", "id_a", "id_b").alias("pair"), F.lit(1).alias("side"),
                                           F.col("id_b").alias("unit"))))
        units = sides.select("unit").distinct()
        members = (near.copies.select(F.col("representative").alias("unit"), "id")
                   .join(units, "unit", "left_semi").unionByName(units.select("unit", F.col("unit").alias("id"))))
        expanded = sides.join(members, "unit").join(vectors, "id").select("pair", "side", "id", "path", "embedding")

        def expand(table: pa.Table) -> pa.Table:
            from neardup_core.near_copies import cross_edges

            side = table.column("side").to_numpy()
            one, two = table.filter(pa.array(side == 0)), table.filter(pa.array(side == 1))
            x_one, x_two = matrix(one.column("embedding"), dim), matrix(two.column("embedding"), dim)
            i, j, _ = cross_edges(x_one, x_two, threshold)
            i, j = pa.array(i), pa.array(j)
            return scored(one.column("id").take(i), two.column("id").take(j), one.column("path").take(i),
                          two.column("path").take(j), x_one[i.to_numpy()], x_two[j.to_numpy()], False)

        parts.append(expanded.groupBy("pair").applyInArrow(expand, NEAR_PAIR_SCHEMA))

    by_id = vectors.select("id", "embedding")
    copy_rows = (near.copies.select("id", "path", "representative", "representative_path")
                 .join(by_id, "id").join(by_id.toDF("representative", "rep_embedding"), "representative"))

    def copy_pairs(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            c = batch.column
            yield from scored(c("id"), c("representative"), c("path"), c("representative_path"),
                              matrix(c("embedding"), dim), matrix(c("rep_embedding"), dim), True).to_batches()

    parts.append(copy_rows.mapInArrow(copy_pairs, NEAR_PAIR_SCHEMA))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    union.write.parquet(path)  # in any order: the verify stage rewrites them, sorted
    risky.unpersist()
    planes.unpersist()
    return spark.read.parquet(path).count(), at_risk_count


def copies_first_criterion(nodes: DataFrame, copy_ids: list[DataFrame]) -> DataFrame:
    """``nodes`` with :data:`COPY_LAST`: 1 for the ids in ``copy_ids`` (frames of id),
    else 0; ranked first (ascending), it puts copies after every other image."""
    flagged = copy_ids[0].select("id")
    for more in copy_ids[1:]:
        flagged = flagged.unionByName(more.select("id"))
    flagged = flagged.distinct().withColumn(COPY_LAST, F.lit(1))
    return nodes.join(flagged, "id", "left").withColumn(COPY_LAST, F.coalesce(F.col(COPY_LAST), F.lit(0)))


def copies_follow_representatives(groups: DataFrame, copies: DataFrame, vectors: DataFrame, dim: int,
                                  result: GroupsResult, path: str) -> GroupsResult:
    """``groups/`` with each near copy taking its representative's decision: dropped for
    the representative (with their cosine) if it is kept, else for the image K the
    representative was dropped for, with the copy's own cosine to K. Copies ranked last in
    the groups stage, so no other image names one. Order and columns as ``groups``; the
    result's kept and dropped counts corrected."""
    rows = groups.withColumn("file", F.input_file_name()).withColumn("block", F.input_file_block_start()) \
        .withColumn("position", F.monotonically_increasing_id())
    rep = groups.select(F.col("id").alias("representative"), F.col("action").alias("rep_action"),
                        F.col("kept_id").alias("rep_kept_id"))
    follow = (copies.select("id", "representative").join(rep, "representative")
              .withColumn("target", F.when(F.col("rep_action") == "keep", F.col("representative"))
                          .otherwise(F.col("rep_kept_id"))))
    by_id = vectors.select("id", "embedding")
    far = follow.select("id", "target").join(by_id, "id").join(by_id.toDF("target", "target_embedding"), "target")

    def cosines(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import rowwise_cosine

        for batch in batches:
            c = batch.column
            cos = rowwise_cosine(matrix(c("embedding"), dim), matrix(c("target_embedding"), dim))
            yield pa.RecordBatch.from_arrays([c("id"), pa.array(cos, pa.float64())], names=["id", "target_cosine"])

    follow = follow.join(far.mapInArrow(cosines, "id string, target_cosine double"), "id", "left")
    joined = rows.join(follow, "id", "left")
    is_copy = F.col("representative").isNotNull()
    fixed = joined.select(
        "id", "path", "group_id", "group_size",
        F.when(is_copy, F.lit("drop")).otherwise(F.col("action")).alias("action"),
        F.when(is_copy, F.col("target")).otherwise(F.col("kept_id")).alias("kept_id"),
        F.when(is_copy, F.col("target_cosine")).otherwise(F.col("cosine")).alias("cosine"),
        F.when(is_copy & (F.col("action") == "keep"), 1).otherwise(0).alias("moved"),
        "file", "block", "position")
    return write_fixed_groups(fixed, result, path)
