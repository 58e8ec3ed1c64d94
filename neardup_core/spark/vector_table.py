"""``neardup pairs --embeddings``: the table's rows read by PyArrow in Python tasks, one
task per slice of a row group (:mod:`neardup_core.vector_table`), checked and hashed in
the same pass, so no row group is held whole in the JVM and the rows are spread over the
cores from the read on."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..vector_table import Slice, TableFiles, pack_slices, plan_slices, read_slice

# The embed stage's rows (spark.listing.EMBEDDED_SCHEMA), with `modified` as microseconds.
_READ_SCHEMA = ("id string, path string, embedding array<float>, width int, height int, bytes bigint, "
                "modified bigint, content_hash string, reused boolean, error_stage string, error_message string")
_INT32 = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16())
_INT64 = (*_INT32, pa.int64(), pa.uint32())
# The types each fact may have in the table to be read here: those whose cast to the
# fact's type is exact and the same as Spark's (int64 ids as text, etc.).
_FACTS = {"width": _INT32, "height": _INT32, "bytes": _INT64}


def unreadable_columns(table: TableFiles, id_column: str, embedding_column: str) -> list[str]:
    """The columns this reader would not read as Spark's reader does (a reason each):
    empty when :func:`read_rows` can read the table."""
    schema = table.schema
    why = []
    for name in (id_column, embedding_column):
        if schema.get_field_index(name) < 0:
            why.append(f"{name!r} is not a column of the first file (a partition column?)")
    kinds = {field.name: field.type for field in schema}
    if id_column in kinds and not (pa.types.is_string(kinds[id_column]) or pa.types.is_large_string(kinds[id_column])
                                   or pa.types.is_integer(kinds[id_column])):
        why.append(f"id column {id_column!r} is {kinds[id_column]}")
    if "path" in kinds and not (pa.types.is_string(kinds["path"]) or pa.types.is_large_string(kinds["path"])):
        why.append(f"path column is {kinds['path']}")
    for name, allowed in _FACTS.items():
        if name in kinds and kinds[name] not in allowed and not pa.types.is_null(kinds[name]):
            why.append(f"{name} column is {kinds[name]}")
    if "modified" in kinds and not (pa.types.is_null(kinds["modified"]) or (
            pa.types.is_timestamp(kinds["modified"]) and kinds["modified"].tz is not None)):
        why.append(f"modified column is {kinds['modified']} (only time stamps in UTC are read here)")
    return why


def read_rows(spark: SparkSession, table: TableFiles, id_column: str, embedding_column: str, dim: int,
              rows_per_slice: int, batch_rows: int, cores: int, vectors: bool = True) -> tuple[DataFrame, int]:
    """The table's rows in the embed stage's schema (``spark.listing.EMBEDDED_SCHEMA``):
    each vector checked (``embed.batch.check_vector_column``: a bad one is an error row,
    stage ``embedding``) and hashed (:func:`vector_table.vector_hashes`), in partitions
    of at most ``rows_per_slice`` rows; a task holds ``batch_rows`` rows at a time.
    Without ``vectors``, every row's ``embedding`` is null (checked and hashed all the
    same): the rows then cost Spark about 60 bytes each instead of ``4 * dim``, and
    :func:`fetch_rows` reads the vectors of the rows that need them.

    One task per slice of at most ``rows_per_slice`` rows (small slices, of small files,
    read together), and a row group in at most ``cores`` slices: cut in more, the tasks
    would decode it (S + 1) / 2 times (:mod:`neardup_core.vector_table`; 8.5 times for
    a 1M-row group in 16 slices, 20 s of 2 cores' time against 2.6 s for one read). Where
    that leaves a slice over ``rows_per_slice`` rows, the rows are spread by id as they are
    read (a shuffle, which adaptive execution coalesces to its advisory partition size, 64 MB
    unless set: a fixed count would make Spark shuffle them again for the join on id of an
    incremental run), and sorted by id in each partition (the order a later stage numbers
    them in does not depend on which task's rows arrived first).
    Returns the rows and the reading task count."""
    slices, tasks = _slices(table, rows_per_slice, cores)
    columns = _columns(table, id_column, embedding_column)
    fs = table.fs

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for unit in batches:
            for task in unit.column(0).to_pylist():
                for batch in (b for index in tasks[task] for b in read_slice(fs, slices[index], columns, batch_rows)):
                    rows = _embedded_rows(batch, id_column, embedding_column, dim)
                    if not vectors:
                        rows = rows.set_column(2, "embedding", pa.nulls(rows.num_rows, rows.schema.field(2).type))
                    yield rows

    units = spark.range(len(tasks), numPartitions=max(len(tasks), 1))
    rows = units.mapInArrow(run, _READ_SCHEMA).withColumn("modified", F.timestamp_micros("modified"))
    if any(piece.stop - piece.start > rows_per_slice for piece in slices):
        rows = rows.repartition("id").sortWithinPartitions("id")
    return rows, len(tasks)


def fetch_rows(spark: SparkSession, table: TableFiles, id_column: str, embedding_column: str, dim: int,
               ids: pa.Array, rows_per_slice: int, batch_rows: int, cores: int) -> DataFrame:
    """id, path, embedding of the table's good rows whose id is in ``ids`` (broadcast: the
    fresh rows' or the candidates' ids; every id only where a run falls back to needing
    every vector), read again by PyArrow in :func:`read_rows`' slices; only those rows
    leave the tasks. Each slice's ids are read first and looked up in one call. No ids:
    an empty frame, nothing read.

    Raises (in a task, so from the action that runs it):
        ValueError: a file's size or modification time is no longer what it was when
            ``table`` was opened (:func:`file_stamps`): the table changed during the run.
    """
    schema = "id string, path string, embedding array<float>"
    if len(ids) == 0:
        return spark.createDataFrame([], schema)
    slices, tasks = _slices(table, rows_per_slice, cores)
    columns = _columns(table, id_column, embedding_column)
    fs, stamp_of = table.fs, dict(zip(table.files, table.stamps))
    sent = spark.sparkContext.broadcast(ids)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        from neardup_core.vector_table import file_stamps

        for unit in batches:
            for task in unit.column(0).to_pylist():
                files = sorted({slices[index].file for index in tasks[task]})
                if file_stamps(fs, files) != [stamp_of[f] for f in files]:
                    raise ValueError(f"--embeddings: {', '.join(files)} changed during the run (size or time)")
                for index in tasks[task]:
                    slice_ids = pa.concat_arrays([b.column(0).cast(pa.string()) for b in
                                                  read_slice(fs, slices[index], [id_column], batch_rows)])
                    wanted = pc.is_in(slice_ids, value_set=sent.value)
                    if not pc.any(wanted).as_py():
                        continue
                    at = 0
                    for batch in read_slice(fs, slices[index], columns, batch_rows):
                        keep = wanted.slice(at, batch.num_rows)
                        at += batch.num_rows
                        if pc.any(keep).as_py():
                            rows = _embedded_rows(batch.filter(keep), id_column, embedding_column, dim,
                                                  hashes=False)
                            yield rows.filter(rows.column("error_stage").is_null()).select(["id", "path", "embedding"])

    units = spark.range(len(tasks), numPartitions=max(len(tasks), 1))
    return units.mapInArrow(run, schema)


def _slices(table: TableFiles, rows_per_slice: int, cores: int) -> tuple[list[Slice], list[list[int]]]:
    """The table's slices and the tasks that read them (:func:`read_rows`)."""
    slices = plan_slices(table.files, table.row_groups, rows_per_slice, max_slices_per_group=cores)
    return slices, pack_slices(slices, rows_per_slice)


def _columns(table: TableFiles, id_column: str, embedding_column: str) -> list[str]:
    """The columns :func:`_embedded_rows` reads."""
    present = set(table.schema.names)
    return list(dict.fromkeys([id_column, embedding_column,
                               *(c for c in ("path", *_FACTS, "modified") if c in present)]))


def _embedded_rows(batch: pa.RecordBatch, id_column: str, embedding_column: str, dim: int,
                   hashes: bool = True) -> pa.RecordBatch:
    """A batch of the table's rows (:func:`_columns`) as rows of _READ_SCHEMA; without
    ``hashes``, null content hashes (a fetch needs none)."""
    import pyarrow.compute as pc

    from neardup_core.embed.batch import check_vector_column
    from neardup_core.vector_table import vector_hashes

    n = batch.num_rows
    present = set(batch.schema.names)
    get = batch.column
    vectors, reasons = check_vector_column(get(embedding_column), dim)
    ids = get(id_column).cast(pa.string())
    facts = [get(name).cast(kind) if name in present else pa.nulls(n, kind)
             for name, kind in (("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()))]
    modified = (get("modified").cast(pa.timestamp("us", "UTC")).cast(pa.int64())
                if "modified" in present else pa.nulls(n, pa.int64()))
    stages = pc.if_else(reasons.is_valid(), pa.scalar("embedding"), pa.scalar(None, pa.string()))
    return pa.RecordBatch.from_arrays(
        [ids, get("path").cast(pa.string()) if "path" in present else ids, vectors, *facts,
         modified, vector_hashes(vectors, dim) if hashes else pa.nulls(n, pa.string()), pa.array([False] * n),
         stages, reasons],
        names=["id", "path", "embedding", "width", "height", "bytes", "modified", "content_hash",
               "reused", "error_stage", "error_message"])
