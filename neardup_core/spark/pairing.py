"""The pairing stage: hash, bucket, pair, score and name, from embedded rows to the
``pairs/`` dataset; and the ``embeddings/`` dataset with each row's bucket keys.

:func:`pair` is the one entry point. Data that fits one task (:func:`tuning.pairing_tasks`)
is paired in one task with no shuffle; otherwise in three shuffled steps that move packed
blocks (:mod:`neardup_core.blocks`): bucket entries to the task of their bucket, candidate
pairs to the task of their first row, then to the task of their second row, where they
are scored. The maths is in :mod:`lsh` and :mod:`pairing`; this module only moves data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import blocks, tuning
from ..config import LshConfig, PairsConfig
from ..lsh import LshTables
from ..pairing import BucketStats
from .arrow import BLOCK_SCHEMA, blobs_by_kind, block_batch, key_column, matrix
from .listing import IMAGE_FACTS
from .session import default_parallelism, executor_cores
from .tally import Tally
from .verify import accepted_on_embedding

PAIR_SCHEMA = (
    "id_a string, id_b string, path_a string, path_b string, "
    "cosine double, jaccard double, tables_matched int"
)
KEYED_SCHEMA = ("id string, path string, embedding array<float>, keys binary, "
                "width int, height int, bytes bigint, modified timestamp, content_hash string")
KEYED_COLUMNS = ("id", "path", "embedding", "keys", "width", "height", "bytes", "modified", "content_hash")
_SCORED_SCHEMA = "row_a bigint, row_b bigint, cosine double, jaccard double, tables_matched int"
_NAMED_INPUT_SCHEMA = ("id_x string, id_y string, path_x string, path_y string, "
                       "cosine double, jaccard double, tables_matched int")
_ONE_TASK_INPUT = pa.schema([("id", pa.string()), ("path", pa.string()), ("embedding", pa.list_(pa.float32()))])


class PairingResult(NamedTuple):
    pairs: int  # written, at cosine >= pairs.cosine_threshold
    candidate_pairs: int  # distinct candidates scored
    # What the bucket step found, all tasks added up; None where no bucket was paired whole
    # (an incremental run pairs the fresh rows with their bucket mates only).
    buckets: BucketStats | None
    tasks: dict  # the stage's task counts, for the manifest


def sample_embeddings(embedded: DataFrame, rows: int, size: int, seed: int, dim: int) -> np.ndarray:
    """About ``size`` of the ``rows`` embeddings, drawn at random, as (n, dim) float32:
    what the LSH plan is priced on (:func:`tuning.plan_for`)."""
    fraction = min(1.0, 1.2 * size / max(rows, 1))
    picked = embedded.select("embedding").sample(fraction=fraction, seed=seed).limit(size).toArrow()
    return matrix(picked.column("embedding"), dim).astype(np.float32)


def number_rows(embedded: DataFrame) -> DataFrame:
    """Adds ``row``, a unique int64 that stands for the id in the pairing stage. Stable
    across the stage's passes as long as ``embedded`` is read from a persisted frame."""
    return embedded.select(F.monotonically_increasing_id().alias("row"), "id", "path", "embedding", *IMAGE_FACTS)


def pair(numbered: DataFrame, items: int, tables: LshTables, expected_candidates: float, lsh_cfg: LshConfig,
         pairs_cfg: PairsConfig, shuffle_partitions: int, path: str, final: bool = False) -> PairingResult:
    """Every pair of ``numbered``'s rows (from :func:`number_rows`; ``items`` of them)
    that shares a bucket in one of ``tables`` and has cosine >= ``pairs.cosine_threshold``,
    written to ``path`` as PAIR_SCHEMA Parquet; ``final``: sorted by id_a, id_b and with
    the verify stage's columns too (:func:`spark.verify.accepted_on_embedding`), for a run
    that verifies nothing, so that no stage rewrites them (else the verify stage sorts
    them as it rewrites them).

    One task, or task counts, from :func:`tuning.pairing_tasks` (``pairs.one_task_mb``;
    ``pairs.partition_mb`` of packed data per task); ``shuffle_partitions`` > 0 forces that
    many and the shuffled path.
    """
    spark = numbered.sparkSession
    tally = Tally(spark)
    labelled = accepted_on_embedding if final else (lambda frame: frame)
    if shuffle_partitions:
        tasks = (shuffle_partitions, shuffle_partitions)
    else:
        tasks = tuning.pairing_tasks(items, tables.dim, tables.num_tables, expected_candidates,
                                     pairs_cfg.partition_bytes, default_parallelism(spark), pairs_cfg.one_task_bytes)
    planes = spark.sparkContext.broadcast(tables)
    if tasks is None:
        labelled(_pair_in_one_task(numbered, planes, lsh_cfg.max_bucket_size, pairs_cfg.cosine_threshold, tally,
                                   executor_cores(spark))).write.parquet(path)  # one partition, already sorted
        pairs = sum(v[0] for v in tally.values("pairs"))
        task_record = {"buckets": 1, "rows": 1, "shuffled": False}
    else:
        bucket_parts, row_parts = tasks
        # Packed from the cached rows by each scoring step: as cheap as reading a cache of
        # them (measured at 200k), and the JVM does not hold N vectors twice.
        vectors = _vector_blocks(numbered, tables.dim, row_parts)
        entries = _bucket_entries(numbered, planes, bucket_parts)
        candidates = _bucket_candidates(entries, bucket_parts, row_parts, lsh_cfg.max_bucket_size,
                                        tables.split_bits, tally)
        halves = _attach_first_rows(candidates, vectors, tables.dim, row_parts)
        near = _score_halves(halves, vectors, tables.dim, row_parts, tables.num_tables, pairs_cfg.cosine_threshold,
                             tally)
        named = _name_pairs(near, numbered).persist(StorageLevel.MEMORY_AND_DISK)
        pairs = named.count()  # runs the stage once; the write (and the sort, if final) read the cache
        # Sorted only if final: the verify stage sorts the pairs it rewrites.
        labelled(named.orderBy("id_a", "id_b") if final else named).write.parquet(path)
        named.unpersist()
        task_record = {"buckets": bucket_parts, "rows": row_parts, "shuffled": True}
    planes.unpersist()
    buckets = BucketStats()
    for values in tally.values("buckets"):
        buckets = buckets.merge(BucketStats(*values))
    return PairingResult(pairs, sum(v[0] for v in tally.values("scored")), buckets, task_record)


def write_no_pairs(spark: SparkSession, path: str) -> None:
    """An empty ``pairs/`` (nothing was embedded, so nothing could be hashed)."""
    spark.createDataFrame([], PAIR_SCHEMA).write.parquet(path)


def _pair_in_one_task(numbered: DataFrame, planes_broadcast, max_bucket_size: int, cosine_threshold: float,
                      tally: Tally, threads: int) -> DataFrame:
    """The whole stage in one task, with no shuffle: hash and score on up to ``threads`` threads
    (the task runs alone), pair (:func:`pairing.candidates_of_vectors`, the same bucket
    kernel as the shuffled path), score and name. Tallies what the shuffled steps would,
    and "pairs"; returns PAIR_SCHEMA rows in one partition, sorted by id_a, id_b."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import candidates_of_vectors, near_pairs, pair_cosines

        tables: LshTables = planes_broadcast.value
        table = pa.Table.from_batches(list(batches), schema=_ONE_TASK_INPUT)
        x = matrix(table.column("embedding"), tables.dim)
        threads_here = min(threads, usable_cores())
        stats, a, b, matched = candidates_of_vectors(x, tables, max_bucket_size, threads=threads_here)
        near = near_pairs(a, b, pair_cosines(x, a, b, threads=threads_here), matched, tables.num_tables,
                          cosine_threshold)
        tally.record("buckets", tuple(stats))
        tally.record("scored", (len(a),))
        tally.record("pairs", (len(near.a),))
        ids, paths = table.column("id"), table.column("path")
        yield from _named_table(ids.take(near.a), ids.take(near.b), paths.take(near.a), paths.take(near.b),
                                near.cosine, near.jaccard, near.tables_matched).sort_by(
                                    [("id_a", "ascending"), ("id_b", "ascending")]).combine_chunks().to_batches()

    return numbered.select("id", "path", "embedding").coalesce(1).mapInArrow(run, PAIR_SCHEMA)


def _named_table(id_x, id_y, path_x, path_y, cosine, jaccard, tables_matched) -> pa.Table:
    """PAIR_SCHEMA columns, the ends of each pair ordered by :func:`pairing.ordered_by_id`."""
    from neardup_core.pairing import ordered_by_id

    return pa.table({**ordered_by_id(id_x, id_y, path_x, path_y),
                     "cosine": pa.array(cosine, pa.float64()), "jaccard": pa.array(jaccard, pa.float64()),
                     "tables_matched": pa.array(tables_matched, pa.int32())})


def _bucket_entries(numbered: DataFrame, planes_broadcast, bucket_parts: int) -> DataFrame:
    """Hashes each row (:func:`lsh.signature_keys`) and emits its L bucket entries
    (table, key, sub-key, row), packed into one block per destination task; a bucket's
    entries all go to one task (:func:`blocks.bucket_part`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import signature_keys

        tables: LshTables = planes_broadcast.value
        for batch in batches:
            keys, subkeys = signature_keys(matrix(batch.column("embedding"), tables.dim), tables)
            entries = blocks.bucket_entries(batch.column("row").to_numpy(), keys, subkeys)
            yield block_batch(*blocks.route(entries, blocks.bucket_part(entries["table"], entries["key"],
                                                                        bucket_parts)), blocks.ENTRIES)

    return numbered.select("row", "embedding").mapInArrow(run, BLOCK_SCHEMA)


def _vector_blocks(numbered: DataFrame, dim: int, row_parts: int) -> DataFrame:
    """Each row's embedding packed with its row number, one block per destination task
    (:func:`blocks.spread` of the row number)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            records = np.empty(batch.num_rows, dtype=blocks.vector_dtype(dim))
            records["row"] = batch.column("row").to_numpy()
            records["vec"] = matrix(batch.column("embedding"), dim)
            yield block_batch(*blocks.route(records, blocks.spread(records["row"], row_parts)), blocks.VECTORS)

    return numbered.select("row", "embedding").mapInArrow(run, BLOCK_SCHEMA)


def _bucket_candidates(entries: DataFrame, bucket_parts: int, row_parts: int, max_bucket_size: int,
                       split_bits: int, tally: Tally) -> DataFrame:
    """Each task takes whole buckets and pairs their rows (:func:`pairing.bucket_pairs`),
    emitting the pairs in blocks bound for the task of their first row, and adds what it
    found (:class:`pairing.BucketStats`) to ``tally`` under "buckets". A pair comes once
    per table it collides in."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import bucket_pairs

        found = blocks.unpack(blobs_by_kind(batches).get(blocks.ENTRIES, []), blocks.ENTRY)
        stats, pair_blocks = bucket_pairs(found["table"], found["key"], found["subkey"], found["row"],
                                          max_bucket_size, split_bits)
        del found
        for a, b in pair_blocks:
            pairs = np.empty(len(a), dtype=blocks.PAIR)
            pairs["a"], pairs["b"] = a, b
            yield block_batch(*blocks.route(pairs, blocks.spread(a, row_parts)), blocks.PAIRS)
        tally.record("buckets", tuple(stats))

    return entries.repartitionById(bucket_parts, "part").mapInArrow(run, BLOCK_SCHEMA)


def _attach_first_rows(candidates: DataFrame, vectors: DataFrame, dim: int, row_parts: int,
                       max_records: int = 65536) -> DataFrame:
    """First scoring step, in the task of each pair's first row: the copies of a pair
    (one per table it collides in) are merged and counted (:func:`pairing.merge_copies`),
    and the first row's vector is attached. Emits blocks bound for the second row's task."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import merge_copies

        by_kind = blobs_by_kind(batches)
        rows, vecs = blocks.vector_index(blocks.unpack(by_kind.get(blocks.VECTORS, []), blocks.vector_dtype(dim)))
        pairs = blocks.unpack(by_kind.get(blocks.PAIRS, []), blocks.PAIR)
        a, b, matched = merge_copies(pairs["a"], pairs["b"])
        del pairs, by_kind
        for part in blocks.chunks(len(a), max_records):
            half = np.empty(part.stop - part.start, dtype=blocks.half_dtype(dim))
            half["a"], half["b"], half["matched"] = a[part], b[part], matched[part]
            half["vec_a"] = vecs[blocks.lookup(rows, a[part])]
            yield block_batch(*blocks.route(half, blocks.spread(half["b"], row_parts)), blocks.HALVES)

    return candidates.unionByName(vectors).repartitionById(row_parts, "part").mapInArrow(run, BLOCK_SCHEMA)


def _score_halves(halves: DataFrame, vectors: DataFrame, dim: int, row_parts: int, num_tables: int,
                  cosine_threshold: float, tally: Tally) -> DataFrame:
    """Second scoring step, in the task of each pair's second row: exact cosine (float64)
    and LSH Jaccard (:func:`pairing.near_pairs`). Adds the number of pairs scored to
    ``tally`` under "scored", and returns the pairs at ``cosine >= cosine_threshold``,
    each once, by row number."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import near_pairs, rowwise_cosine

        by_kind = blobs_by_kind(batches)
        rows, vecs = blocks.vector_index(blocks.unpack(by_kind.get(blocks.VECTORS, []), blocks.vector_dtype(dim)))
        scored = 0
        for blob in by_kind.get(blocks.HALVES, []):
            half = np.frombuffer(blob, dtype=blocks.half_dtype(dim))
            cosine = rowwise_cosine(half["vec_a"], vecs[blocks.lookup(rows, half["b"])])
            scored += len(half)
            near = near_pairs(half["a"], half["b"], cosine, half["matched"], num_tables, cosine_threshold)
            yield pa.RecordBatch.from_arrays(
                [pa.array(near.a, pa.int64()), pa.array(near.b, pa.int64()), pa.array(near.cosine, pa.float64()),
                 pa.array(near.jaccard, pa.float64()), pa.array(near.tables_matched, pa.int32())],
                names=["row_a", "row_b", "cosine", "jaccard", "tables_matched"])
        tally.record("scored", (scored,))

    return halves.unionByName(vectors).repartitionById(row_parts, "part").mapInArrow(run, _SCORED_SCHEMA)


def _name_pairs(scored: DataFrame, numbered: DataFrame) -> DataFrame:
    """Scored pairs with their rows' ids and paths (two joins), ordered so that
    id_a < id_b by the same kernel as the one-task path."""
    names = numbered.select("row", "id", "path")
    joined = (scored.join(names.toDF("row_a", "id_x", "path_x"), "row_a")
              .join(names.toDF("row_b", "id_y", "path_y"), "row_b")
              .select("id_x", "id_y", "path_x", "path_y", "cosine", "jaccard", "tables_matched"))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            c = batch.column
            yield from _named_table(c("id_x"), c("id_y"), c("path_x"), c("path_y"), c("cosine"), c("jaccard"),
                                    c("tables_matched")).to_batches()

    return joined.mapInArrow(run, PAIR_SCHEMA)


def keyed_embeddings(numbered: DataFrame, tables: LshTables, vectors: bool = True) -> DataFrame:
    """id, path, embedding, the row's bucket key in each table (before splitting; packed,
    :func:`lsh.pack_keys`) and the image's facts, for the ``embeddings/`` output
    (KEYED_SCHEMA); without ``embedding`` when not ``vectors``: the vectors then go to
    Python to be hashed but do not come back."""
    planes_broadcast = numbered.sparkSession.sparkContext.broadcast(tables)
    names = ["id", "path", *(["embedding"] if vectors else []), "keys", *IMAGE_FACTS]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import signature_keys

        lsh_tables: LshTables = planes_broadcast.value
        for batch in batches:
            keys, _ = signature_keys(matrix(batch.column("embedding"), lsh_tables.dim), lsh_tables, subkeys=False)
            columns = {name: batch.column(name) for name in batch.schema.names}
            columns["keys"] = key_column(keys, lsh_tables.bits_per_table)
            yield pa.RecordBatch.from_arrays([columns[name] for name in names], names=names)

    schema = KEYED_SCHEMA if vectors else KEYED_SCHEMA.replace("embedding array<float>, ", "")
    return numbered.select("id", "path", "embedding", *IMAGE_FACTS).mapInArrow(run, schema)


def write_keyed(keyed: DataFrame, path: str, row_group_bytes: int, append: bool = False) -> None:
    """``keyed`` (KEYED_SCHEMA, with or without ``embedding``) written to ``path`` as Parquet
    in row groups of about ``row_group_bytes`` (``append``: beside the files already there).
    Memory: Parquet's writer buffers a whole row group per task (128 MB unless told),
    whatever the task's row count; with 220 keys a row (1.8 kB), that buffer, not the rows
    streaming through, is a writing task's heap."""
    keyed.write.mode("append" if append else "errorifexists").option("parquet.block.size", row_group_bytes
                                                                      ).parquet(path)


def unkeyed_embeddings(numbered: DataFrame) -> DataFrame:
    """KEYED_SCHEMA rows with no keys (nothing was hashed)."""
    return numbered.select("id", "path", "embedding", F.lit(b"").alias("keys"), *IMAGE_FACTS)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
