"""Incremental runs (``--previous RUN``) in Spark: which listed images the previous run's
``embeddings/`` already holds, the pairs that involve a new or changed image (the rest
carry over), and ``changes/``. The rules are in :mod:`neardup_core.incremental`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.broadcast import Broadcast
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, StructField, StructType

from ..arrays import isin
from ..incremental import index_fresh, largest_touched, touched_codes
from ..lsh import LshTables
from .arrow import key_column, key_matrix, matrix
from .driver_tables import local_dataset, read_local, write_table
from .pairing import PAIR_SCHEMA, PairingResult, usable_cores
from .session import sorted_by
from .tally import Tally
from .verify import PAIR_KEY, accepted_on_embedding

if TYPE_CHECKING:
    import pyarrow.dataset as pa_dataset

CHANGES_SCHEMA = ("change string, id_a string, id_b string, cosine double, id string, previous_action string, "
                  "action string, kept_id string")
# changes/ as Spark writes it: `change` is never null.
_CHANGES_ARROW_SCHEMA = pa.schema([pa.field(name, pa.float64() if kind == "double" else pa.string(), name != "change")
                                   for name, kind in (f.split() for f in CHANGES_SCHEMA.split(", "))])
_PAIR_COLUMNS = ("id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched")  # PAIR_SCHEMA
_ONE_TASK_INPUT = pa.schema([("id", pa.string()), ("path", pa.string()), ("embedding", pa.list_(pa.float32())),
                             ("keys", pa.binary()), ("fresh", pa.bool_())])


class Previous(NamedTuple):
    embeddings: DataFrame  # the previous run's embeddings/ (KEYED_SCHEMA)
    pairs: DataFrame
    groups: DataFrame
    rejected: DataFrame | None = None  # its rejected_pairs/, where it rejected any
    path: str | None = None  # its folder: pairs/ and rejected_pairs/ are read from there by PyArrow where local


def read_previous(spark: SparkSession, path: str, bits_per_table: int | None, num_tables: int | None,
                  rejected: bool = False) -> Previous:
    """The previous run's embeddings/, pairs/ and groups/ (and ``rejected``: its
    rejected_pairs/), its keys packed as tonight's are (:func:`lsh.pack_keys` for its
    plan's ``bits_per_table`` and ``num_tables``; None: it hashed nothing). A run made
    before keys were packed stored them as array<bigint>; they are packed as read."""
    embeddings, pairs, groups = (spark.read.parquet(f"{path.rstrip('/')}/{name}")
                                 for name in ("embeddings", "pairs", "groups"))
    if isinstance(embeddings.schema["keys"].dataType, ArrayType):
        embeddings = (_packed_keys(embeddings, bits_per_table, num_tables) if num_tables
                      else embeddings.withColumn("keys", F.lit(b"")))
    return Previous(embeddings, pairs, groups,
                    spark.read.parquet(f"{path.rstrip('/')}/rejected_pairs") if rejected else None, path.rstrip("/"))


def _packed_keys(embeddings: DataFrame, bits_per_table: int, num_tables: int) -> DataFrame:
    """``embeddings`` with its list keys, ``num_tables`` a row, packed into one binary
    value a row (:func:`spark.arrow.matrix` refuses rows of another length)."""
    schema = StructType([field if field.name != "keys" else StructField("keys", BinaryType())
                         for field in embeddings.schema.fields])

    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            packed = key_column(matrix(batch.column("keys"), num_tables), bits_per_table)
            yield batch.set_column(batch.schema.get_field_index("keys"), "keys", packed)

    return embeddings.mapInArrow(pack, schema)


class ByListing(NamedTuple):
    to_embed: DataFrame  # the listing's rows that are new or changed, with previous_hash
    unchanged: DataFrame  # id, path, bytes, modified, _REUSED, content_hash, path_moved, as_before
    joined: DataFrame  # persisted; both of the above read it


def unchanged_by_listing(listing: DataFrame, previous: DataFrame) -> ByListing:
    """The listing split by the previous run: a listed file is unchanged when that run
    holds its id with the same size and modification time (both known); it comes with
    that run's embedding, keys, size in pixels and content hash, whether its path moved
    (:func:`path_moved`) and so whether its ``embeddings/`` row is that run's as it was
    (``as_before``), from the same join. The rows to embed carry
    ``previous_hash`` (null for new ids), so the embed stage can still find a file
    unchanged by content, without decoding it (:func:`reused_rows`)."""
    before = previous.select("id", F.col("bytes").alias("previous_bytes"),
                             F.col("modified").alias("previous_modified"),
                             F.col("content_hash").alias("previous_hash"), F.col("path").alias("previous_path"),
                             *_REUSED)
    joined = listing.join(before, "id", "left").persist(StorageLevel.MEMORY_AND_DISK)
    same = F.coalesce((F.col("size") == F.col("previous_bytes")) & (F.col("modified") == F.col("previous_modified"))
                      & F.col("error_message").isNull(), F.lit(False))
    unchanged = joined.filter(same).select("id", "path", F.col("size").alias("bytes"), "modified", *_REUSED,
                                           F.col("previous_hash").alias("content_hash"),
                                           path_moved().alias("path_moved"), (~path_moved()).alias("as_before"))
    to_embed = joined.filter(~same).drop("previous_bytes", "previous_modified", "previous_path", *_REUSED)
    return ByListing(to_embed, unchanged, joined)


_REUSED = ("embedding", "keys", "width", "height")  # what a reused image takes from the previous run


def path_moved() -> Column:
    """Whether a row's ``path`` differs from its ``previous_path`` (a catalog moved or
    remounted, the ids unchanged): a reused row's carried pairs then take tonight's path."""
    return F.col("path") != F.col("previous_path")


def reused_rows(unchanged: DataFrame, previous: DataFrame) -> DataFrame:
    """Images the embed stage found unchanged by content (id, path, bytes, modified as
    read tonight) with the previous run's embedding, keys, size in pixels and content
    hash, and whether the path moved (:func:`path_moved`); ``as_before`` is false, since
    their size or modification time is not the previous run's."""
    before = previous.select("id", *_REUSED, "content_hash", F.col("path").alias("previous_path"))
    return unchanged.join(before, "id").select(*unchanged.columns, *_REUSED, "content_hash",
                                              path_moved().alias("path_moved"), F.lit(False).alias("as_before"))


# What a `neardup pairs` row takes from its table, where the table has it (null where not), besides its vector.
_TABLE_FACTS = ("width", "height", "bytes", "modified")


def match_previous_vectors(rows: DataFrame, previous: DataFrame) -> DataFrame:
    """``neardup pairs``: tonight's ``rows`` joined once with the previous run's
    ``embeddings/`` on id. A row is ``reused`` when that run holds its id with the same
    vector bytes (content hash). The same join says what later stages would otherwise join
    every row again for: whether the id was there (``was_there``: the changed and deleted
    counts), whether a reused row's path moved (``path_moved``), and whether its
    ``embeddings/`` row is that run's as it was (``as_before``: path, size and time equal,
    nulls included). The keys stay where they are: they are 880 bytes a row at 220 tables,
    and taking them into this join made it shuffle twice the bytes at 1M rows; the
    incremental pairing reads them from that run's files (:func:`previous_keys`)."""
    before = previous.select("id", F.col("content_hash").alias("previous_hash"), F.col("path").alias("previous_path"),
                             *(F.col(f).alias(f"previous_{f}") for f in _TABLE_FACTS))
    reused = F.coalesce(F.col("content_hash") == F.col("previous_hash"), F.lit(False))
    as_before = functools.reduce(Column.__and__, (F.col(f).eqNullSafe(F.col(f"previous_{f}"))
                                                  for f in ("path", *_TABLE_FACTS)))
    return (rows.join(before, "id", "left").withColumn("reused", reused)
            .withColumn("was_there", F.col("previous_hash").isNotNull())
            .withColumn("path_moved", F.col("reused") & path_moved())
            .withColumn("as_before", F.col("reused") & as_before)
            .drop("previous_hash", "previous_path", *(f"previous_{f}" for f in _TABLE_FACTS)))


def reused_vectors(rows: DataFrame) -> DataFrame:
    """``neardup pairs``: the rows whose vector the previous run holds unchanged (same id
    and content hash; :func:`match_previous_vectors`), without keys (:func:`previous_keys`)."""
    return rows.select("id", "path", "embedding", "width", "height", "bytes", "modified", "content_hash")


def previous_keys(previous: DataFrame, gone: DataFrame | None) -> DataFrame:
    """id, keys of the previous run's ``embeddings/`` rows that are not ``gone`` (deleted
    or changed; None: none is): every reused row's keys, read where they lie (a reused
    row's vector is that run's, so its keys are too). ``gone`` is few: broadcast."""
    keys = previous.select("id", "keys")
    return keys if gone is None else keys.join(F.broadcast(gone.select("id")), "id", "left_anti")


def with_previous_keys(reused: DataFrame, keys: DataFrame) -> DataFrame:
    """The ``reused`` rows (:func:`reused_vectors`) with their ``keys`` (:func:`previous_keys`),
    joined on id: for what needs both in one row (embeddings/ on a night that does not only
    add; the pairing in one task, for data that small)."""
    return reused.join(keys, "id")


class IncrementalPairs(NamedTuple):
    result: PairingResult | None  # None: a touched bucket is oversized; pair in full instead
    touched_buckets: int
    largest_touched: int
    found: DataFrame | None = None  # PAIR_SCHEMA: tonight's pairs that involve a fresh row (persisted)
    lost: DataFrame | None = None  # id_a, id_b, cosine: last night's pairs that involve a gone row (persisted)
    matched_before: DataFrame | pa.Table | None = None  # id_a, id_b, inliers of the carried pairs last night matched
    settled: bool = False  # pairs/ was written final, with verdicts: nothing for the verify stage to match


def pair_incrementally(fresh: DataFrame, reused_keys: DataFrame, reused_vectors: DataFrame, gone: DataFrame,
                       previous: Previous, tables: LshTables, max_bucket_size: int, cosine_threshold: float, path: str,
                       accept_cosine: float | None = None, chunk_bytes: int = 64 * 2**20,
                       fetch: Callable[[pa.Array], DataFrame] | None = None, *, paths_moved: bool
                       ) -> IncrementalPairs:
    """Tonight's pairs from last night's, for data the full pairing would shuffle: the
    previous pairs between images still here and unchanged, and the pairs that involve a
    fresh (new or changed) image, found in the buckets the fresh images hash to. Written to
    ``path`` like the pairing stage writes.

    Args:
        fresh: the rows embedded tonight (new or changed): id, path, embedding, keys.
        reused_keys: id, keys of every reused row (for ``neardup pairs``, last night's
            ``embeddings/`` less ``gone``: read where it lies, not joined to tonight's rows).
        reused_vectors: id, path, embedding of every reused row (tonight's path); with
            ``fetch``, only id and path are read from it.
        gone: id, keys of the previous run's rows that are deleted or changed.
        previous: the previous run's datasets (its pairs/ and the paths in its embeddings/).
        accept_cosine: None, or the cosine at or above which a pair needs no geometric
            verification (-1 when nothing is verified): then, if every pair found tonight
            is at or above it, pairs/ is written final (:func:`_write_pairs`).
        chunk_bytes: the most bytes of fresh rows sent to every task at a time
            (``pairs.partition_mb``).
        fetch: where tonight's rows were read without their vectors: ids -> those rows'
            id, path, embedding (``spark.listing.UserEmbeddings.fetch``), which then brings
            the candidates' vectors.
        paths_moved: whether a reused row's path differs from last night's (then the
            carried pairs are named again: :func:`_carried`).

    Exact (what a full run with the same tables gives) while no bucket the change touches
    holds more than ``max_bucket_size`` rows, before or after: then a pair's buckets
    depend on its two rows only. Otherwise nothing is written and ``result`` is None.
    """
    spark = fresh.sparkSession
    num_tables, dim = tables.num_tables, tables.dim
    fresh_keys = key_matrix(fresh.select("keys").toArrow().column("keys"), num_tables)
    gone_keys = key_matrix(gone.select("keys").toArrow().column("keys"), num_tables)
    touched = touched_codes(fresh_keys, gone_keys)
    keys = fresh.select("id", "keys", F.lit(True).alias("fresh")).unionByName(
        reused_keys.select("id", "keys", F.lit(False).alias("fresh")))
    names = fresh.select("id", "path").unionByName(reused_vectors.select("id", "path"))
    vectors = (fetch if fetch is not None else
               fresh.select("id", "path", "embedding").unionByName(reused_vectors.select("id", "path", "embedding")))
    # Every row's keys meet the fresh rows they share a bucket with where they lie: the
    # fresh rows (ids, paths, vectors, keys) go to every task, about chunk_bytes of them at
    # a time (each chunk one pass over the keys), and nothing is shuffled. The first pass
    # also counts the rows of each touched bucket; only if none is oversized do the others
    # run. Each pass gives candidates (id, fresh partner, tables shared), kept, whose vectors
    # a join then brings to be scored (broadcast where they are few, as they are at 1 %):
    # the passes read keys, not vectors.
    chunks = max(1, min(len(fresh_keys), -(-len(fresh_keys) * (dim * 4 + num_tables * 8 + 200) // chunk_bytes)))
    tally = Tally(spark)
    shipped: list[Broadcast] = []
    met: list[DataFrame] = []
    counted: list[int] = []  # each chunk's candidates

    def meet(chunk: int, codes: np.ndarray | None = None) -> DataFrame:
        """The chunk's candidates, found, kept and counted; then scored (not yet run)."""
        rows = fresh.filter(F.abs(F.xxhash64("id")) % chunks == chunk)
        candidates, sent = _fresh_candidates(keys, rows, num_tables, dim, tally, f"candidates-{chunk}", codes)
        shipped.extend(sent)
        met.append(candidates.persist(StorageLevel.MEMORY_AND_DISK))
        candidates.count()
        counted.append(sum(v[0] for v in tally.values(f"candidates-{chunk}")))
        return _score_candidates(vectors, candidates, sent[0], num_tables, dim, cosine_threshold,
                                 broadcast=counted[-1] * _CANDIDATE_BYTES <= chunk_bytes)

    scored = [meet(0, touched)]
    now = np.zeros(len(touched), np.int64)
    for hit, rows_in in tally.values("touched"):
        now[hit] += rows_in
    largest = largest_touched(now, touched, fresh_keys, gone_keys)
    if largest <= max_bucket_size:
        scored += [meet(chunk) for chunk in range(1, chunks)]
        found = functools.reduce(DataFrame.unionByName, scored).persist(StorageLevel.MEMORY_AND_DISK)
        found.count()
    for frame in met:
        frame.unpersist()
    for broadcast in shipped:
        broadcast.unpersist()
    if largest > max_bucket_size:
        return IncrementalPairs(None, len(touched), largest)
    count, settled = _write_pairs(previous, gone, names, found, path, accept_cosine, broadcast=False,
                                  paths_moved=paths_moved)
    return IncrementalPairs(PairingResult(count, sum(counted), None, {"incremental": True, "fresh_chunks": chunks}),
                            len(touched), largest, found, _lost(previous.pairs, gone),
                            _matched_before(previous, gone), settled)


# A row, a fresh row (its position in the chunk), and the tables they share a key in.
_CANDIDATE_SCHEMA = "id string, partner int, tables int"
_CANDIDATE_BYTES = 64  # about what a candidate takes in a broadcast join's table, for ids of up to 30 bytes


def _fresh_candidates(keys: DataFrame, fresh_rows: DataFrame, num_tables: int, dim: int, tally: Tally, name: str,
                      touched: np.ndarray | None = None) -> tuple[DataFrame, list[Broadcast]]:
    """Tonight's candidate pairs between ``fresh_rows`` (collected and broadcast) and every
    row of ``keys`` (id, keys, fresh), each found in the task that holds the row
    (_CANDIDATE_SCHEMA, not yet run; each pair once), and the broadcasts, to release once
    they have run: the first (ids, paths, vectors and index of ``fresh_rows``) is read by
    :func:`_score_candidates` too. The candidates are counted, as ``name``.
    With ``touched`` (sorted bucket codes), each task also records how many of its rows
    each touched bucket holds (found in the same search as the partners,
    :func:`incremental.fresh_partners`), as "touched": (positions in ``touched``, rows)."""
    spark = keys.sparkSession
    fresh = fresh_rows.select("id", "path", "embedding", "keys").toArrow()
    fresh_keys = key_matrix(fresh.column("keys"), num_tables)
    # The index is built here, once, not in each task (0.3 s for 10,000 rows of 220 tables:
    # 20 s of the 1M night 2's 68 tasks); a Python worker loads a broadcast once.
    shipped = spark.sparkContext.broadcast((fresh.column("id").combine_chunks(), fresh.column("path").combine_chunks(),
                                            matrix(fresh.column("embedding"), dim), index_fresh(fresh_keys)))
    codes = None if touched is None else spark.sparkContext.broadcast(touched)

    def find(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        from neardup_core.incremental import fresh_partners

        ids_f, _, _, index = shipped.value
        counts = None if codes is None else np.zeros(len(codes.value), np.int64)
        candidates = 0
        for batch in batches:
            found = fresh_partners(key_matrix(batch.column("keys"), num_tables), index,
                                   None if codes is None else codes.value)
            if counts is not None:
                counts += found.touched
            rows, partner, shared = found.rows, found.fresh, found.tables
            ids = batch.column("id")
            # A pair of two fresh rows is met from both ends (and a fresh row meets itself):
            # kept where this end's id is the smaller.
            mine = batch.column("fresh").to_numpy(zero_copy_only=False).astype(bool)[rows]
            if mine.any():
                lower = pc.less(ids.take(pa.array(rows)), ids_f.take(pa.array(partner))).to_numpy(zero_copy_only=False)
                keep = ~mine | lower
                rows, partner, shared = rows[keep], partner[keep], shared[keep]
            candidates += len(rows)
            if len(rows):
                yield pa.RecordBatch.from_pydict({"id": ids.take(pa.array(rows)),
                                                  "partner": pa.array(partner, pa.int32()),
                                                  "tables": pa.array(shared, pa.int32())})
        tally.record(name, (candidates,))
        if counts is not None:
            hit = np.flatnonzero(counts)
            tally.record_arrays("touched", hit, counts[hit])

    found = keys.select("id", "keys", "fresh").mapInArrow(find, _CANDIDATE_SCHEMA)
    return found, [shipped] + ([] if codes is None else [codes])


def _score_candidates(vectors: DataFrame | Callable[[pa.Array], DataFrame], candidates: DataFrame,
                      shipped: Broadcast, num_tables: int, dim: int, cosine_threshold: float, broadcast: bool
                      ) -> DataFrame:
    """The ``candidates`` (:func:`_fresh_candidates`) scored (PAIR_SCHEMA, not yet run):
    each row's vector and path brought from ``vectors`` (id, path, embedding; or a function
    from the candidates' distinct ids, collected on the driver, to those rows) by a join,
    and its fresh partner's from ``shipped``. ``broadcast``: the candidates are few enough
    to go to every task (the caller bounds them as it bounds the fresh rows), and the
    vectors are read where they lie; else both sides are shuffled by id (a hint: Spark
    cannot size a fetch before it runs, and would broadcast its vectors)."""
    if callable(vectors):
        vectors = vectors(candidates.select("id").distinct().toArrow().column("id").combine_chunks())

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import near_pairs, ordered_by_id, pair_cosines

        ids_f, paths_f, x_f, _ = shipped.value
        for batch in batches:
            rows = np.arange(batch.num_rows)
            partner = batch.column("partner").to_numpy(zero_copy_only=False)
            cosines = pair_cosines(matrix(batch.column("embedding"), dim), rows, partner, vectors_b=x_f)
            near = near_pairs(rows, partner, cosines, batch.column("tables").to_numpy(zero_copy_only=False),
                              num_tables, cosine_threshold)
            if len(near.a) == 0:
                continue
            a, b = pa.array(near.a), pa.array(near.b)
            named = ordered_by_id(batch.column("id").take(a), ids_f.take(b), batch.column("path").take(a),
                                  paths_f.take(b))
            yield pa.RecordBatch.from_pydict({**named, "cosine": near.cosine, "jaccard": near.jaccard,
                                              "tables_matched": near.tables_matched})

    met = vectors.select("id", "path", "embedding").join(
        F.broadcast(candidates) if broadcast else candidates.hint("shuffle_merge"), "id")
    return met.select("id", "path", "embedding", "partner", "tables").mapInArrow(score, PAIR_SCHEMA)


def pair_incrementally_in_one_task(keyed: DataFrame, gone: DataFrame, previous: Previous, tables: LshTables,
                                   max_bucket_size: int, cosine_threshold: float, path: str,
                                   accept_cosine: float | None = None, threads: int = 1, *,
                                   paths_moved: bool, max_driver_pairs: int = 0) -> IncrementalPairs:
    """As :func:`pair_incrementally`, for data the full pairing would pair in one task:
    the fresh rows' candidates found and scored in one task (:func:`incremental.fresh_candidates`,
    no shuffle; scored on up to ``threads`` threads, as the task runs alone), and the
    carried pairs filtered by broadcast joins, or on the driver where last night's pairs
    and rejected pairs are local and at most ``max_driver_pairs`` (:func:`_carried_table`)."""
    spark = keyed.sparkSession
    num_tables, dim = tables.num_tables, tables.dim
    gone_keys = spark.sparkContext.broadcast(key_matrix(gone.select("keys").toArrow().column("keys"), num_tables))
    tally = Tally(spark)

    def find(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.incremental import fresh_candidates
        from neardup_core.pairing import ordered_by_id, score_row_pairs

        batches = list(batches)  # Spark's own list field names and nullability
        table = pa.Table.from_batches(batches) if batches else _ONE_TASK_INPUT.empty_table()
        keys = key_matrix(table.column("keys"), num_tables)
        fresh = table.column("fresh").to_numpy(zero_copy_only=False).astype(bool)
        found = fresh_candidates(keys, fresh, gone_keys.value, max_bucket_size)
        tally.record("touched", (found.touched_buckets, found.largest_touched, found.a is not None))
        if found.a is None:
            return
        near = score_row_pairs(matrix(table.column("embedding"), dim), keys, found.a, found.b, cosine_threshold,
                               threads=min(threads, usable_cores()))
        tally.record("scored", (len(found.a),))
        a, b = pa.array(near.a), pa.array(near.b)
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

    count, settled = _write_pairs(previous, gone, keyed, found, path, accept_cosine, broadcast=True,
                                  paths_moved=paths_moved, max_driver_pairs=max_driver_pairs)
    return IncrementalPairs(PairingResult(count, tally.values("scored")[0][0], None,
                                          {"incremental": True, "rows": 1}),
                            touched, largest, found, _lost(previous.pairs, gone),
                            _matched_before(previous, gone, max_driver_pairs), settled)


def _write_pairs(previous: Previous, gone: DataFrame, names: DataFrame, found: DataFrame, path: str,
                 accept_cosine: float | None, broadcast: bool, paths_moved: bool, max_driver_pairs: int = 0
                 ) -> tuple[int, bool]:
    """Tonight's pairs: last night's between rows still here and unchanged, and ``found``,
    written to ``path`` (sorted by id_a, id_b if settled); ``names``: tonight's rows' id and
    path, which name the carried pairs where a path moved. Returns (pairs written, settled).

    Settled (``accept_cosine`` given, and every found pair at or above it): the pairs are
    final, so the verify stage, which would find nothing to match, need not rewrite them:
    the carried pairs keep last night's verdict columns and the found ones are accepted on
    the embedding, as that stage would label them. Otherwise: the pairing columns only.
    """
    settled = accept_cosine is not None and found.filter(F.col("cosine") < F.lit(accept_cosine)).isEmpty()
    if broadcast and not settled and not paths_moved:
        table = _carried_table(previous, gone, max_driver_pairs)
        if table is not None:  # few found pairs beside the carried ones, unsorted: verify sorts them
            found = found.toArrow().select(table.column_names)
            write_table(names.sparkSession, pa.concat_tables([table.cast(_either_null(table.schema, found.schema)),
                                                             found.cast(_either_null(found.schema, table.schema))]),
                        path)
            return table.num_rows + found.num_rows, settled
    carried = _carried(previous, gone, names, broadcast, settled, paths_moved)
    if settled:
        found = accepted_on_embedding(found)
    pairs = carried.unionByName(found)
    # Sorted in one task where the pairing is one task; unsorted where the verify stage
    # rewrites them, sorted.
    (sorted_by(pairs, PAIR_KEY, one_task=broadcast) if settled else pairs).write.parquet(path)
    return names.sparkSession.read.parquet(path).count(), settled  # the count: from the files' footers


def _carried(previous: Previous, gone: DataFrame, names: DataFrame, broadcast: bool, settled: bool,
             paths_moved: bool) -> DataFrame:
    """Last night's pairs between rows still here and unchanged, and the pairs it rejected
    between them (tonight's verification decides them again, as a full run would), named
    with tonight's paths (joined only where a reused row's path moved: ``paths_moved``);
    ``settled`` (last night had no borderline pair):
    last night's pairs with their verdict columns."""
    columns = list(_PAIR_COLUMNS)
    if settled:
        columns += ["exact", "near_copy", "inliers", "verified"]
    before = previous.pairs.select(*columns)
    if previous.rejected is not None and not settled:
        before = before.unionByName(previous.rejected.select(*columns))
    carried = _between_unchanged(before, gone)
    if not paths_moved:
        return carried.select(*columns)
    hint = F.broadcast if broadcast else (lambda frame: frame)
    named = hint(names.select("id", "path"))
    return (carried.drop("path_a", "path_b").join(named.toDF("id_a", "path_a"), "id_a")
            .join(named.toDF("id_b", "path_b"), "id_b").select(*columns))


def _carried_table(previous: Previous, gone: DataFrame, max_rows: int, columns: tuple[str, ...] = _PAIR_COLUMNS
                   ) -> pa.Table | None:
    """What :func:`_carried` gives where last night's paths hold (no path moved) and its
    pairs are not settled, as one Arrow table of ``columns`` read by PyArrow from the
    previous run's local folder: its pairs and rejected pairs, less those that involve a
    row of ``gone``. None where that folder is not local or holds over ``max_rows`` of them
    (footers' counts). Spark took 3.9 s to write the 836,599 pairs of the 5,000-image
    benchmark's night 2 this way (a py-spy profile)."""
    names = ("pairs", "rejected_pairs") if previous.rejected is not None else ("pairs",)
    datasets = [local_dataset(f"{previous.path}/{name}") for name in names] if previous.path else [None]
    if any(dataset is None for dataset in datasets) or sum(d.count_rows() for d in datasets) > max_rows:
        return None
    tables = [read_local(dataset, list(columns)) for dataset in datasets]
    table = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
    gone_ids = gone.select("id").toArrow().column("id").combine_chunks()
    involved = pc.or_(pc.is_in(table.column("id_a"), value_set=gone_ids),
                      pc.is_in(table.column("id_b"), value_set=gone_ids))
    return table.filter(pc.invert(involved))


def _either_null(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    """``schema`` with each field nullable where it or ``other``'s field of that name is:
    the schema Spark gives the union of both."""
    return pa.schema([field.with_nullable(field.nullable or other.field(field.name).nullable) for field in schema])


def _matched_before(previous: Previous, gone: DataFrame, max_driver_pairs: int = 0) -> DataFrame | pa.Table | None:
    """The inlier counts last night found for the pairs carried over (both images
    unchanged, so matching them again would give the same counts): id_a, id_b, inliers,
    as a table read by PyArrow where last night's pairs are local and at most
    ``max_driver_pairs`` (:func:`_carried_table`; Spark took 1.4 s to hand the verify stage
    these 1,700 rows of 836,599 pairs), else as a DataFrame; None for a run made without
    verification."""
    if "inliers" not in previous.pairs.columns:
        return None
    table = _carried_table(previous, gone, max_driver_pairs, ("id_a", "id_b", "inliers"))
    if table is not None:
        return table.filter(pc.is_valid(table.column("inliers")))
    matched = previous.pairs.select("id_a", "id_b", "inliers")
    if previous.rejected is not None:
        matched = matched.unionByName(previous.rejected.select("id_a", "id_b", "inliers"))
    return _between_unchanged(matched.where(F.col("inliers").isNotNull()), gone)


def _between_unchanged(pairs: DataFrame, gone: DataFrame) -> DataFrame:
    """The ``pairs`` (id_a, id_b, ...) that involve no row of ``gone`` (few: broadcast)."""
    gone_ids = F.broadcast(gone.select("id"))
    return (pairs.join(gone_ids.toDF("id_a"), "id_a", "left_anti")
            .join(gone_ids.toDF("id_b"), "id_b", "left_anti"))


def _lost(previous_pairs: DataFrame, gone: DataFrame) -> DataFrame:
    """Last night's pairs that involve a deleted or changed row: the only ones that can be
    missing tonight. Persisted (few, and ``changes/`` reads them twice; each read would
    scan last night's pairs/ again)."""
    gone_ids = F.broadcast(gone.select("id", F.lit(True).alias("gone")))
    return (previous_pairs.select("id_a", "id_b", "cosine")
            .join(gone_ids.toDF("id_a", "gone_a"), "id_a", "left").join(gone_ids.toDF("id_b", "gone_b"), "id_b", "left")
            .where(F.col("gone_a") | F.col("gone_b")).select("id_a", "id_b", "cosine")
            .persist(StorageLevel.MEMORY_AND_DISK))


def changes(previous: Previous, previous_ids: DataFrame, pairs: DataFrame, groups: DataFrame,
            current_ids: DataFrame, found: IncrementalPairs | None = None) -> DataFrame:
    """``changes/``: pairs added and removed since the previous run, and images whose
    action changed where either side is a drop (an image without a pair is kept; one not
    in the catalog has no action).

    With ``found`` (pairs found incrementally and written final: no exact copies and no
    borderline pair on either night, so no pair carried over can come or go), the pairs
    are compared only where they can differ: a pair added involves a fresh row, a pair
    removed a deleted or changed one.
    """
    key = ["id_a", "id_b"]
    if found is not None and found.found is not None:
        tonight, before = found.found, found.lost
    else:
        tonight, before = pairs, previous.pairs
    # One join for both directions (two anti-joins shuffled both nights' pairs twice).
    both = tonight.select(*key, F.col("cosine").alias("now")).join(
        before.select(*key, F.col("cosine").alias("before")), key, "full")
    pairs_changed = both.where(F.col("now").isNull() | F.col("before").isNull()).select(
        F.when(F.col("before").isNull(), "pair_added").otherwise("pair_removed").alias("change"), *key,
        F.coalesce("now", "before").alias("cosine"))

    # Only an image dropped on one night or the other can have changed its action to or from
    # a drop: the catalogs' ids are joined for those only (a join of both nights' every id
    # took 2.4 s at 1M vectors in the event log).
    dropped = previous.groups.where(F.col("action") == "drop").select("id").union(
        groups.where(F.col("action") == "drop").select("id"))

    def actions(ids: DataFrame, grouped: DataFrame, suffix: str) -> DataFrame:
        listed = ids.join(dropped, "id", "left_semi")
        return listed.join(grouped.select("id", "action", "kept_id"), "id", "left").select(
            "id", F.coalesce("action", F.lit("keep")).alias(f"action{suffix}"), F.col("kept_id").alias(f"kept{suffix}"))

    both = actions(previous_ids, previous.groups, "_before").join(actions(current_ids, groups, ""), "id", "full")
    moved = both.where(~F.col("action_before").eqNullSafe(F.col("action"))
                       & ((F.col("action_before") == "drop") | (F.col("action") == "drop"))).select(
        F.lit("action_changed").alias("change"), "id", F.col("action_before").alias("previous_action"), "action",
        F.col("kept").alias("kept_id"))
    return pairs_changed.unionByName(moved, allowMissingColumns=True).select(
        *[F.col(name).cast(kind) for name, kind in (f.split() for f in CHANGES_SCHEMA.split(", "))])


def changes_table(previous: Previous, pairs: str, groups: str, embeddings: str) -> pa.Table | None:
    """:func:`changes` on the driver, as one Arrow table in the order changes/ is written
    (change, id_a, id_b, id): both nights' ``pairs``, ``groups`` and ``embeddings`` ids
    read by PyArrow, the pairs compared as integer codes. None (nothing read) where a
    folder is not local. Holds both nights' pairs (their ids and cosines, about 100 bytes a
    pair), so call it where they fit the groups stage's one task; for 836,599 pairs it
    took about 1 s, where the Spark join took 3.8 s (scratch timings, one session)."""
    folders = [f"{previous.path}/{name}" for name in ("pairs", "groups", "embeddings")] if previous.path else []
    datasets = [local_dataset(folder) for folder in (*folders, pairs, groups, embeddings)]
    if len(datasets) < 6 or any(dataset is None for dataset in datasets):
        return None
    pairs_before, groups_before, ids_before, pairs_now, groups_now, ids_now = datasets
    key = ["id_a", "id_b"]
    before, now = (read_local(dataset, [*key, "cosine"]) for dataset in (pairs_before, pairs_now))
    ids = pc.unique(pa.chunked_array([chunk for table in (before, now) for name in key
                                      for chunk in table.column(name).chunks], pa.string()))

    def codes(table: pa.Table) -> np.ndarray:
        a, b = (pc.index_in(table.column(name), value_set=ids).to_numpy().astype(np.int64) for name in key)
        return a * len(ids) + b

    code_before, code_now = codes(before), codes(now)
    added, removed = now.filter(~isin(code_now, code_before)), before.filter(~isin(code_before, code_now))

    # As in changes(): only an image dropped on either night can have changed its action to or from a drop.
    grouped = [read_local(dataset, ["id", "action", "kept_id"]) for dataset in (groups_before, groups_now)]
    dropped = pc.unique(pa.chunked_array(
        [chunk for table in grouped for chunk in table.filter(pc.field("action") == "drop").column("id").chunks],
        pa.string()))

    def actions(ids: pa_dataset.Dataset, table: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        """Each dropped id's action on one night (keep where in no group; null where not in
        its catalog), and its kept id (null where in no group: a grouped id is listed)."""
        listed = pc.is_in(dropped, value_set=read_local(ids, ["id"]).column("id"))
        at = pc.index_in(dropped, value_set=table.column("id"))
        return (pc.if_else(listed, pc.coalesce(pc.take(table.column("action"), at), "keep"),
                           pa.scalar(None, pa.string())),
                pc.take(table.column("kept_id"), at))

    (action_before, _), (action, kept) = actions(ids_before, grouped[0]), actions(ids_now, grouped[1])
    differ = pc.or_(pc.fill_null(pc.not_equal(action_before, action), False),
                    pc.xor(pc.is_null(action_before), pc.is_null(action)))
    either_drops = pc.or_(pc.fill_null(pc.equal(action_before, "drop"), False),
                          pc.fill_null(pc.equal(action, "drop"), False))
    moved = pc.and_(differ, either_drops)

    def rows(change: str, columns: dict[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
        length = len(next(iter(columns.values())))
        return pa.table({field.name: columns.get(field.name, pa.repeat(change, length) if field.name == "change"
                                                 else pa.nulls(length, field.type))
                         for field in _CHANGES_ARROW_SCHEMA}, schema=_CHANGES_ARROW_SCHEMA)

    table = pa.concat_tables([
        rows("pair_added", {name: added.column(name) for name in (*key, "cosine")}),
        rows("pair_removed", {name: removed.column(name) for name in (*key, "cosine")}),
        rows("action_changed", {"id": dropped.filter(moved), "previous_action": action_before.filter(moved),
                                "action": action.filter(moved), "kept_id": kept.filter(moved)}),
    ])
    return table.sort_by([(name, "ascending") for name in ("change", "id_a", "id_b", "id")])
