"""What the job reads: image files (a directory or a manifest) and, for ``neardup
pairs``, embeddings made elsewhere. Each is a DataFrame with one row per input."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import InputConfig
from ..sources import InputError, extension_glob, is_local, local_path, walk_directory
from ..vector_table import TableFiles, first_vector_length, open_table
from . import vector_table as vector_stage
from .jvm import indexed_paths

log = logging.getLogger("neardup")

# The rows the embed stage produces, and that `neardup pairs` reads into: the vector, or
# the reason there is none; and what the keep/drop priority reads (groups.keep).
# content_hash is of the file's bytes (of the vector's float32 bytes for `neardup pairs`);
# reused marks a file an incremental run found unchanged by that hash (no embedding then).
EMBEDDED_SCHEMA = ("id string, path string, embedding array<float>, width int, height int, bytes bigint, "
                   "modified timestamp, content_hash string, reused boolean, error_stage string, "
                   "error_message string")
IMAGE_FACTS = ("width", "height", "bytes", "modified", "content_hash")
_FACT_TYPES = {"width": "int", "height": "int", "bytes": "bigint", "modified": "timestamp"}


def list_inputs(spark: SparkSession, cfg: InputConfig, fmt: str, extra_columns: tuple[str, ...] = (),
                with_content: bool = True) -> DataFrame:
    """id, path, content (bytes, or null to read by path), size and modified (the file's
    bytes and time, where the listing knows them), error_message (set when the file is
    known to be unusable before reading it), and a manifest's ``extra_columns``.

    Args:
        with_content: read directory files in the listing; False leaves content null,
            so a file is read only if the embed stage needs it (an incremental run).

    Raises:
        InputError: a manifest without the id, path or extra columns.
    """
    if fmt == "directory":
        return _list_directory(spark, cfg, with_content)
    return _list_manifest(spark, cfg, fmt, extra_columns)


def _list_directory(spark: SparkSession, cfg: InputConfig, with_content: bool) -> DataFrame:
    if is_local(cfg.path):
        return _list_local_directory(spark, cfg)
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", extension_glob(cfg.extensions))
        .load(cfg.path)
    )
    # The length filter is pushed into the binaryFile reader, so files over the limit
    # are never read into memory; they are reported instead.
    modified = F.col("modificationTime").alias("modified")
    size = F.col("length").alias("size")
    content = F.col("content") if with_content else F.lit(None).cast("binary").alias("content")
    readable = files.filter(F.col("length") <= cfg.max_file_bytes).select(
        F.col("path").alias("id"), "path", content, size, modified, F.lit(None).cast("string").alias("error_message")
    )
    too_big = files.filter(F.col("length") > cfg.max_file_bytes).select(
        F.col("path").alias("id"),
        "path",
        F.lit(None).cast("binary").alias("content"),
        size,
        modified,
        F.format_string(f"file is %d bytes, above input.max_file_bytes={cfg.max_file_bytes}", "length")
        .alias("error_message"),
    )
    listing = readable.unionByName(too_big)
    # Spark's file scan silently skips zero-length files; the file index still lists
    # them (one count over file metadata to compare).
    paths = indexed_paths(files)
    if paths is not None:
        # The index writes URIs (file:///a%20b.jpg) where the scan writes paths
        # (file:/a b.jpg). url_decode would also turn '+' into a space, so escape it first.
        decoded = F.url_decode(F.regexp_replace("value", r"\+", "%2B"))
        paths = paths.select(F.regexp_replace(decoded, "^file:///", "file:/").alias("path"))
        empty = paths.join(files.select("path"), "path", "left_anti").select(
            F.col("path").alias("id"), "path", F.lit(None).cast("binary").alias("content"),
            F.lit(0).cast("bigint").alias("size"), F.lit(None).cast("timestamp").alias("modified"),
            F.lit("empty file").alias("error_message"))
        listing = listing.unionByName(empty)
    return listing


def _list_local_directory(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """A local directory, walked on the driver (:func:`sources.walk_directory`: hidden
    names, links, loops, special files and names Hadoop's ``Path`` cannot parse, such as
    ``12:30 shot.jpg``, all accounted for); the files are read by the embed stage."""
    found = walk_directory(local_path(cfg.path), cfg.extensions, cfg.max_file_bytes)
    ids = ["file:" + row.path for row in found]
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "path": pa.array(ids, pa.string()),
        "content": pa.nulls(len(found), pa.binary()),
        "size": pa.array([row.size for row in found], pa.int64()),
        "modified": pa.array([row.modified for row in found], pa.timestamp("us", tz="UTC")),
        "error_message": pa.array([row.error for row in found], pa.string()),
    })
    schema = "id string, path string, content binary, size bigint, modified timestamp, error_message string"
    if not found:
        return spark.createDataFrame([], schema)
    # From Arrow, not pandas: no Python object per row (docs/performance.md). Spark cuts a
    # local table into defaultParallelism partitions in name order; more need a shuffle.
    frame = spark.createDataFrame(table, schema)
    slices = max(spark.sparkContext.defaultParallelism, -(-len(found) // cfg.rows_per_partition))
    return frame.repartition(slices) if slices > spark.sparkContext.defaultParallelism else frame


def _list_manifest(spark: SparkSession, cfg: InputConfig, fmt: str, extra_columns: tuple[str, ...]) -> DataFrame:
    reader = spark.read
    if fmt == "csv":
        # RFC 4180 quoting: a quoted field may hold newlines and doubled quotes ("a ""b"""),
        # which Spark's defaults (one record a line, backslash escapes) would split or keep.
        reader = reader.option("header", "true").option("multiLine", "true").option("escape", '"')
    try:
        table = reader.format(fmt).load(cfg.path)
        table.schema  # noqa: B018 - a Parquet footer is read here: a directory of images fails now
    except Exception as err:  # AnalysisException, SparkException: not a manifest of this format
        first = " ".join(str(err).split())[:300] or type(err).__name__
        raise InputError(f"--input {cfg.path}: cannot read as a {fmt} manifest (input.format): {first}") from err
    missing = [c for c in (cfg.id_column, cfg.path_column) if c not in table.columns]
    if missing:
        raise InputError(
            f"--input {cfg.path}: manifest has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(table.columns)}); set input.id_column / input.path_column"
        )
    _require_columns(table, extra_columns, f"--input {cfg.path}: manifest")
    path = F.col(cfg.path_column).cast("string")
    if is_local(cfg.path):
        # Relative paths in a local manifest are relative to the manifest's directory.
        base = os.path.dirname(os.path.abspath(local_path(cfg.path)))
        path = F.when(path.rlike(r"^(/|[A-Za-z][A-Za-z0-9+.-]*:)"), path).otherwise(
            F.concat(F.lit(base + "/"), path)
        )
    return table.select(
        F.col(cfg.id_column).cast("string").alias("id"),
        path.alias("path"),
        F.lit(None).cast("binary").alias("content"),
        F.lit(None).cast("bigint").alias("size"),
        F.lit(None).cast("timestamp").alias("modified"),
        F.when(F.col(cfg.path_column).isNull() | (F.trim(F.col(cfg.path_column).cast("string")) == ""),
               F.lit("manifest row has no path"))
        .otherwise(F.lit(None).cast("string"))
        .alias("error_message"),
        *extra_columns,
    )


def _require_columns(table: DataFrame, columns: tuple[str, ...], what: str) -> None:
    """The groups.keep columns exist and hold values that sort (numbers, strings, times)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{what} has no column {', '.join(map(repr, missing))} named in groups.keep "
                         f"(columns: {', '.join(table.columns)})")
    for name in columns:
        kind = table.schema[name].dataType.simpleString()
        if kind.startswith(("array", "map", "struct", "binary")):
            raise InputError(f"{what}: column {name!r} named in groups.keep is {kind}, which does not sort; "
                             "use a number, a string, a date or a time")


def spread_manifest(listing: DataFrame, rows: int, rows_per_partition: int, min_partitions: int) -> DataFrame:
    """A manifest's rows over enough partitions that each holds at most about
    ``rows_per_partition`` (a manifest file is one partition however many images it names)."""
    return listing.repartition(max(min_partitions, -(-rows // rows_per_partition)))


def manifest_id_problem(listing: DataFrame, limit: int = 5) -> str | None:
    """Why the manifest's ids cannot identify its rows (missing or repeated), or None.
    One Spark job: the rows without an id are one group of the same count."""
    found = (listing.groupBy("id").count().filter(F.col("id").isNull() | (F.col("count") > 1))
             .orderBy(F.col("id").isNull().desc(), "id").limit(limit).collect())
    if found and found[0]["id"] is None:
        return f"{found[0]['count']} rows have no id"
    if found:
        return f"ids occur more than once, e.g. {', '.join(repr(row['id']) for row in found)}"
    return None


class UserEmbeddings(NamedTuple):
    rows: DataFrame  # EMBEDDED_SCHEMA
    dim: int  # length of every good vector (the first good row's)
    extras: DataFrame | None  # id and the table's extra_columns; None when there are none
    vector_bytes: int = 0  # all the table's vectors as float32 (0: not known)
    has_paths: bool = True  # the table has a path column (else each row's path is its id)
    # Where `rows` were read without their vectors (null): the ids of good rows -> their id,
    # path and embedding, read again (spark.vector_table.fetch_rows).
    fetch: Callable[[pa.Array], DataFrame] | None = None
    # Where PyArrow reads the table: the same read, of the table already opened, with null
    # vectors and a `fetch` (an incremental run needs few vectors).
    without_vectors: Callable[[], UserEmbeddings] | None = None


def read_embeddings(spark: SparkSession, path: str, id_column: str, embedding_column: str,
                    extra_columns: tuple[str, ...] = (), slice_rows: int = 500_000,
                    batch_rows: int = 10_000, slice_bytes: int = 64 << 20) -> UserEmbeddings:
    """Embeddings made elsewhere: a Parquet table with an id column and an embedding
    column (list of floats, or fixed-size binary holding little-endian float32).

    Returns the rows in the embed stage's schema, and the dimension: a row whose vector
    is missing, empty, of another length than the first good row's, or not finite
    becomes an error row (stage ``embedding``). ``path`` is the table's ``path`` column
    where it has one, else the id; ``width``, ``height``, ``bytes`` and ``modified`` are
    the table's where it has them (a run's own ``embeddings/`` does), else null.

    Where PyArrow reads the table, ``without_vectors()`` gives the same rows with a null
    ``embedding`` and a ``fetch`` that reads the vectors of the rows asked for (an
    incremental run needs few).

    The rows are read by PyArrow in Python tasks (:mod:`spark.vector_table`) into
    partitions of at most ``slice_rows`` rows and ``slice_bytes`` of float32 vectors, and
    at least one per core, ``batch_rows`` at a time (a row group in at most one slice per
    core, its rows spread by id where that makes a slice larger);
    where PyArrow cannot open the path (a scheme it has no file system for, such as
    ``s3a://``) or a column has a type it would not convert as Spark does, by Spark's
    reader, which holds a row group's column chunk whole in the JVM (the log says which).
    "The first good row" is the first in file-name order with the PyArrow reader.

    Raises:
        InputError: unreadable table or missing columns.
    """
    arrow, why_not = _arrow_table(path, id_column, embedding_column)
    if arrow is not None and not extra_columns:
        # Checked on the files' Arrow schema: Spark's reader is not needed (opening it runs
        # a Spark job that reads a footer: 1.6 s at 100,000 rows).
        _check_vector_kind(path, embedding_column, _spark_kind(arrow.schema.field(embedding_column).type))
        return _read_by_arrow(spark, path, arrow, id_column, embedding_column, None, slice_rows, batch_rows,
                              slice_bytes)
    try:
        table = spark.read.parquet(path)
    except Exception as err:  # AnalysisException and friends: no such path, not Parquet
        raise InputError(f"--embeddings {path}: cannot read as Parquet: {str(err).splitlines()[0]}") from err
    missing = [c for c in (id_column, embedding_column) if c not in table.columns]
    if missing:
        raise InputError(f"--embeddings {path}: no column {', '.join(map(repr, missing))} "
                         f"(columns: {', '.join(table.columns)}); set input.id_column / input.embedding_column")
    kind = table.schema[embedding_column].dataType.simpleString()
    _check_vector_kind(path, embedding_column, kind)
    _require_columns(table, extra_columns, f"--embeddings {path}")
    extras = table.select(F.col(id_column).cast("string").alias("id"), *extra_columns)
    if arrow is not None:
        return _read_by_arrow(spark, path, arrow, id_column, embedding_column, extras, slice_rows, batch_rows,
                              slice_bytes)
    log.info("--embeddings %s: read by Spark's reader, %s", path, why_not)
    path_col = F.col("path").cast("string") if "path" in table.columns else F.col(id_column).cast("string")
    facts = [(F.col(name) if name in table.columns else F.lit(None)).cast(_FACT_TYPES[name]).alias(name)
             for name in _FACT_TYPES]
    rows = table.select(F.col(id_column).cast("string").alias("id"), path_col.alias("path"),
                        F.col(embedding_column).alias("vector"), *facts)
    first = rows.filter(F.col("vector").isNotNull()).select("vector").first()
    dim = None if first is None else len(first["vector"]) // 4 if kind == "binary" else len(first["vector"])
    _check_first_vector(path, dim)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        from neardup_core.embed.batch import check_vector_column
        from neardup_core.vector_table import vector_hashes

        for batch in batches:
            vectors, reasons = check_vector_column(batch.column("vector"), dim)
            stages = pc.if_else(reasons.is_valid(), pa.scalar("embedding"), pa.scalar(None, pa.string()))
            # An incremental `neardup pairs` compares vectors by the hash of their float32 bytes.
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("path"), vectors, *(batch.column(name) for name in _FACT_TYPES),
                 vector_hashes(vectors, dim), pa.array([False] * len(vectors)), stages, reasons],
                names=["id", "path", "embedding", *IMAGE_FACTS, "reused", "error_stage", "error_message"])

    return UserEmbeddings(rows.mapInArrow(run, EMBEDDED_SCHEMA), dim, extras, 0, "path" in table.columns)


def _check_first_vector(path: str, dim: int | None) -> None:
    if dim is None:
        raise InputError(f"--embeddings {path}: no rows with an embedding")
    if dim == 0:
        raise InputError(f"--embeddings {path}: the first embedding is empty")


_VECTOR_KINDS = ("binary", "array<float>", "array<double>")


def _check_vector_kind(path: str, column: str, kind: str) -> None:
    """The vector column's type (as Spark names it) is one this job reads, else InputError."""
    if kind not in _VECTOR_KINDS:
        raise InputError(f"--embeddings {path}: column {column!r} is {kind}; expected a list of floats or binary "
                         "float32")


def _spark_kind(kind: pa.DataType) -> str:
    """An Arrow column type as Spark's reader names it, for the vector column's check."""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_floating(kind.value_type):
        return {pa.float32(): "array<float>", pa.float64(): "array<double>"}.get(kind.value_type, str(kind))
    return str(kind)


def _read_by_arrow(spark: SparkSession, path: str, arrow: TableFiles, id_column: str, embedding_column: str,
                   extras: DataFrame | None, slice_rows: int, batch_rows: int, slice_bytes: int) -> UserEmbeddings:
    dim = first_vector_length(arrow, embedding_column)
    _check_first_vector(path, dim)
    total = sum(map(sum, arrow.row_groups))
    cores = spark.sparkContext.defaultParallelism
    per_slice = max(1, min(slice_rows, slice_bytes // (4 * dim), -(-total // cores)))

    def read(vectors: bool) -> UserEmbeddings:
        rows, tasks = vector_stage.read_rows(spark, arrow, id_column, embedding_column, dim, per_slice, batch_rows,
                                             cores, vectors)
        if vectors:
            log.info("--embeddings %s: %d rows in %d files, read by PyArrow in %d tasks", path, total,
                     len(arrow.files), tasks)
        else:
            log.info("--embeddings %s: read for the vectors' hashes; the vectors themselves only where needed", path)
        return UserEmbeddings(rows, dim, extras, total * dim * 4, "path" in arrow.schema.names,
                              None if vectors else fetch, (lambda: read(False)) if vectors else None)

    def fetch(ids: pa.Array) -> DataFrame:
        return vector_stage.fetch_rows(spark, arrow, id_column, embedding_column, dim, ids, per_slice, batch_rows,
                                       cores)

    return read(True)


def _arrow_table(path: str, id_column: str, embedding_column: str) -> tuple[TableFiles | None, str]:
    """The table's files for the PyArrow reader, or (None, why Spark's reader reads it)."""
    try:
        table = open_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:  # no file system for the scheme, no libhdfs...
        return None, f"as PyArrow cannot open it ({' '.join(str(err).split())[:200]})"
    why = vector_stage.unreadable_columns(table, id_column, embedding_column)
    if why:
        return None, "as " + "; ".join(why)
    return table, ""
