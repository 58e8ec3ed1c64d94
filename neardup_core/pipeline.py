"""The Spark stages. Each turns Arrow batches into arrays, calls a pure function, and
turns the result back; the maths lives in :mod:`lsh`, :mod:`pairing` and :mod:`embed`.

Every stage is a function from DataFrame to DataFrame; the job in :mod:`neardup_core.job`
decides when they run and what is written.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .config import EmbedConfig, InputConfig, ModelConfig, SparkConfig
from .sources import InputError, extension_glob, is_local, local_path

EMBEDDED_SCHEMA = "id string, path string, embedding array<float>, error_stage string, error_message string"
HASHED_SCHEMA = "row bigint, id string, path string, embedding array<float>, keys array<bigint>, subkeys array<bigint>"
KEYED_SCHEMA = "row bigint, id string, path string, embedding array<float>, keys array<bigint>"
CANDIDATE_SCHEMA = "row_a bigint, row_b bigint, tables_matched int"
PAIR_SCHEMA = (
    "id_a string, id_b string, path_a string, path_b string, "
    "cosine double, jaccard double, tables_matched int"
)


def build_session(cfg: SparkConfig, embed: EmbedConfig, launched_by_spark_submit: bool) -> SparkSession:
    """The job's session. Locally it runs ``local[*]`` unless ``spark.master`` says
    otherwise; under spark-submit the master and resources come from spark-submit."""
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master is not None:
        builder = builder.master(cfg.master)
    elif not launched_by_spark_submit:
        builder = builder.master("local[*]")
    if not launched_by_spark_submit:
        # Local workers must run the interpreter that has our dependencies installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(embed.batch_size))
    # The stage log lines say where the job is; Spark's progress bar garbles them.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    # Spark packs files into read tasks as if each cost 4 MB more than its size; for
    # 100-500 kB images that makes ~30-image tasks whose fixed cost rivals their work.
    builder = builder.config("spark.sql.files.openCostInBytes", str(64 * 1024))
    if cfg.shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def list_inputs(spark: SparkSession, cfg: InputConfig, fmt: str) -> DataFrame:
    """id, path, content (bytes, or null to read by path), error_message (set when the
    file is known to be unusable before reading it)."""
    if fmt == "directory":
        return _list_directory(spark, cfg)
    return _list_manifest(spark, cfg, fmt)


def _list_directory(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", extension_glob(cfg.extensions))
        .load(cfg.path)
    )
    # The length filter is pushed into the binaryFile reader, so files over the limit
    # are never read into memory; they are reported instead.
    readable = files.filter(F.col("length") <= cfg.max_file_bytes).select(
        F.col("path").alias("id"), "path", "content", F.lit(None).cast("string").alias("error_message")
    )
    too_big = files.filter(F.col("length") > cfg.max_file_bytes).select(
        F.col("path").alias("id"),
        "path",
        F.lit(None).cast("binary").alias("content"),
        F.format_string(f"file is %d bytes, above input.max_file_bytes={cfg.max_file_bytes}", "length")
        .alias("error_message"),
    )
    listing = readable.unionByName(too_big)
    # Spark's file scan silently skips zero-length files; the file index still lists
    # them. The comparison costs one count over file metadata; the index's list stays in
    # the JVM (pulling millions of paths through py4j one by one would take minutes).
    indexed = files._jdf.inputFiles()
    if len(indexed) > files.count():
        jvm, jspark = spark.sparkContext._jvm, spark._jsparkSession
        seq = jvm.scala.collection.immutable.ArraySeq.unsafeWrapArray(indexed)
        paths = DataFrame(jspark.createDataset(seq, jvm.org.apache.spark.sql.Encoders.STRING()).toDF(), spark)
        # The index writes URIs (file:///a%20b.jpg) where the scan writes paths
        # (file:/a b.jpg). url_decode would also turn '+' into a space, so escape it first.
        decoded = F.url_decode(F.regexp_replace("value", r"\+", "%2B"))
        paths = paths.select(F.regexp_replace(decoded, "^file:///", "file:/").alias("path"))
        empty = paths.join(files.select("path"), "path", "left_anti").select(
            F.col("path").alias("id"), "path", F.lit(None).cast("binary").alias("content"),
            F.lit("empty file").alias("error_message"))
        listing = listing.unionByName(empty)
    return listing


def _list_manifest(spark: SparkSession, cfg: InputConfig, fmt: str) -> DataFrame:
    reader = spark.read.option("header", "true") if fmt == "csv" else spark.read
    table = reader.format(fmt).load(cfg.path)
    missing = [c for c in (cfg.id_column, cfg.path_column) if c not in table.columns]
    if missing:
        raise InputError(
            f"--input {cfg.path}: manifest has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(table.columns)}); set input.id_column / input.path_column"
        )
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
        F.when(F.col(cfg.path_column).isNull(), F.lit("manifest row has no path"))
        .otherwise(F.lit(None).cast("string"))
        .alias("error_message"),
    )


def manifest_id_problem(listing: DataFrame, limit: int = 5) -> str | None:
    """Why the manifest's ids cannot identify its rows (missing or repeated), or None."""
    missing = listing.filter(F.col("id").isNull()).count()
    if missing:
        return f"{missing} rows have no id"
    dups = listing.groupBy("id").count().filter(F.col("count") > 1).limit(limit).collect()
    if dups:
        return f"ids occur more than once, e.g. {', '.join(repr(row['id']) for row in dups)}"
    return None


def embed(listing: DataFrame, model: ModelConfig, embed_cfg: EmbedConfig, input_cfg: InputConfig,
          model_file: str) -> DataFrame:
    """Read, decode and embed each file.

    ``model_file`` is the driver's prepared model (:func:`embed.prepare_model`): an ONNX
    file is shipped to the executors with ``SparkContext.addFile``; for the TensorFlow
    backend each worker resolves ``model`` itself. Each task picks its backend and device
    from the GPUs Spark assigned it (:func:`embed.choose_backend`).

    Returns id, path, embedding, and for files that failed, error_stage and
    error_message instead of embedding.
    """
    shipped = None
    if embed_cfg.backend != "tensorflow":
        listing.sparkSession.sparkContext.addFile(model_file)
        shipped = os.path.basename(model_file)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles

        from neardup_core.embed import get_embedder
        from neardup_core.embed.batch import embed_batch
        from neardup_core.embed.models import resolve_model_path

        backend, device = task_backend(embed_cfg.backend)
        local_file = resolve_model_path(model) if shipped is None else SparkFiles.get(shipped)
        embedder = get_embedder(local_file, backend, device, model, embed_cfg)
        for batch in batches:
            result = embed_batch(
                paths=batch.column("path").to_pylist(),
                contents=batch.column("content").to_pylist(),
                prior_errors=batch.column("error_message").to_pylist(),
                embedder=embedder,
                input_cfg=input_cfg,
                model_cfg=model,
            )
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("id"),
                    batch.column("path"),
                    pa.array(result.embeddings, type=pa.list_(pa.float32())),
                    pa.array(result.error_stage, type=pa.string()),
                    pa.array(result.error_message, type=pa.string()),
                ],
                names=["id", "path", "embedding", "error_stage", "error_message"],
            )

    return listing.mapInArrow(run, EMBEDDED_SCHEMA)


def task_backend(configured: str) -> tuple[str, int | None]:
    """Inside a task: (backend, CUDA device) from the GPUs Spark assigned to this task."""
    from pyspark import TaskContext

    from neardup_core.embed import choose_backend

    gpus = TaskContext.get().resources().get("gpu")
    return choose_backend(configured, gpus.addresses if gpus else [])


def read_embeddings(spark: SparkSession, path: str, id_column: str, embedding_column: str) -> DataFrame:
    """Embeddings made elsewhere: a Parquet table with an id column and an embedding
    column (list of floats, or fixed-size binary holding little-endian float32).

    Returns the embed stage's schema (id, path, embedding, error_stage, error_message);
    a row whose vector is missing, empty, of another length than the first good row's,
    or not finite becomes an error row (stage ``embedding``). ``path`` is the table's
    ``path`` column where it has one, else the id.

    Raises:
        InputError: unreadable table or missing columns.
    """
    try:
        table = spark.read.parquet(path)
    except Exception as err:  # AnalysisException and friends: no such path, not Parquet
        raise InputError(f"--embeddings {path}: cannot read as Parquet: {str(err).splitlines()[0]}") from err
    missing = [c for c in (id_column, embedding_column) if c not in table.columns]
    if missing:
        raise InputError(f"--embeddings {path}: no column {', '.join(map(repr, missing))} "
                         f"(columns: {', '.join(table.columns)}); set input.id_column / input.embedding_column")
    kind = table.schema[embedding_column].dataType.simpleString()
    if kind not in ("binary", "array<float>", "array<double>"):
        raise InputError(f"--embeddings {path}: column {embedding_column!r} is {kind}; expected a list of "
                         "floats or binary float32")
    path_col = F.col("path").cast("string") if "path" in table.columns else F.col(id_column).cast("string")
    rows = table.select(F.col(id_column).cast("string").alias("id"), path_col.alias("path"),
                        F.col(embedding_column).alias("vector"))
    first = rows.filter(F.col("vector").isNotNull()).select("vector").first()
    if first is None:
        raise InputError(f"--embeddings {path}: no rows with an embedding")
    dim = len(first["vector"]) // 4 if kind == "binary" else len(first["vector"])
    if dim == 0:
        raise InputError(f"--embeddings {path}: the first embedding is empty")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.embed.batch import check_vectors

        for batch in batches:
            vectors, stages, messages = check_vectors(batch.column("vector").to_pylist(), dim)
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("path"), pa.array(vectors, type=pa.list_(pa.float32())),
                 pa.array(stages, pa.string()), pa.array(messages, pa.string())],
                names=["id", "path", "embedding", "error_stage", "error_message"])

    return rows.mapInArrow(run, EMBEDDED_SCHEMA)


def sample_embeddings(embedded: DataFrame, rows: int, size: int, seed: int) -> np.ndarray:
    """About ``size`` embeddings drawn at random from ``rows`` rows, as (n, dim) float32."""
    fraction = min(1.0, 1.2 * size / max(rows, 1))
    picked = embedded.select("embedding").sample(fraction=fraction, seed=seed).limit(size).toArrow()
    return _matrix(picked.column("embedding").combine_chunks()).astype(np.float32)


def hash_rows(embedded: DataFrame, planes_broadcast, num_tables: int, split_bits: int) -> DataFrame:
    """Adds ``row`` (a unique int64 that stands for the id in the shuffles), ``keys``
    (one bucket key per table) and ``subkeys`` (split bits per table)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import signature_keys

        planes = planes_broadcast.value
        for batch in batches:
            vectors = _matrix(batch.column("embedding"), planes.shape[1])
            keys, subkeys = signature_keys(vectors, planes, num_tables, split_bits)
            yield pa.RecordBatch.from_arrays(
                [batch.column("row"), batch.column("id"), batch.column("path"), batch.column("embedding"),
                 _list_column(keys), _list_column(subkeys)],
                names=["row", "id", "path", "embedding", "keys", "subkeys"])

    return (embedded.select("id", "path", "embedding").withColumn("row", F.monotonically_increasing_id())
            .select("row", "id", "path", "embedding").mapInArrow(run, HASHED_SCHEMA))


def oversized_buckets(hashed: DataFrame, max_bucket_size: int) -> list[tuple[int, int, int]]:
    """(table, key, rows) of every bucket with more than ``max_bucket_size`` rows.
    Aggregated map-side, so only distinct keys per partition are shuffled."""
    counts = (hashed.select(F.posexplode("keys").alias("table", "key")).groupBy("table", "key").count()
              .filter(F.col("count") > max_bucket_size).collect())
    return [(row["table"], row["key"], row["count"]) for row in counts]


def sub_bucket_counts(hashed: DataFrame, oversized: list[tuple[int, int, int]]) -> pa.Table:
    """Row counts per (table, key, subkey) inside the given buckets (a broadcast join
    keeps everything else out of the shuffle)."""
    spark = hashed.sparkSession
    wanted = spark.createDataFrame([(t, k) for t, k, _ in oversized], "table int, key bigint")
    entries = hashed.select(F.posexplode(F.arrays_zip("keys", "subkeys")).alias("table", "ks")).select(
        "table", F.col("ks.keys").alias("key"), F.col("ks.subkeys").alias("subkey"))
    return (entries.join(F.broadcast(wanted), ["table", "key"]).groupBy("table", "key", "subkey").count()
            .toArrow())


def apply_splits(hashed: DataFrame, split_broadcast, split_bits: int) -> DataFrame:
    """Replaces ``keys`` by the keys that rows are bucketed by (:func:`lsh.effective_keys`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import effective_keys

        split_table, split_key, split_depth = split_broadcast.value
        for batch in batches:
            keys = _matrix(batch.column("keys"))
            subkeys = _matrix(batch.column("subkeys"), keys.shape[1])
            yield pa.RecordBatch.from_arrays(
                [batch.column("row"), batch.column("id"), batch.column("path"), batch.column("embedding"),
                 _list_column(effective_keys(keys, subkeys, split_bits, split_table, split_key, split_depth))],
                names=["row", "id", "path", "embedding", "keys"])

    return hashed.mapInArrow(run, KEYED_SCHEMA)


def candidate_pairs(keyed: DataFrame, num_tables: int, max_bucket_size: int) -> DataFrame:
    """Each pair of rows sharing a bucket in any table, once: row_a < row_b, tables_matched.

    Only (table, key, row, keys) are shuffled, never ids or embeddings. Rows are sorted by
    bucket inside each partition, so one pass finds every bucket's pairs; a bucket still
    over ``max_bucket_size`` after splitting pairs each row with the next
    ``max_bucket_size - 1`` rows only (bounded work, counted in the manifest).
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import SortedBuckets, candidates_from_sorted_chunks

        chunks = (
            SortedBuckets(
                table=batch.column("table").to_numpy(),
                key=batch.column("key").to_numpy(),
                ids=batch.column("row").to_numpy(),
                keys=_matrix(batch.column("keys"), num_tables),
            )
            for batch in batches
        )
        for found in candidates_from_sorted_chunks(chunks, window=max_bucket_size):
            yield pa.RecordBatch.from_arrays(
                [pa.array(found.id_a, pa.int64()), pa.array(found.id_b, pa.int64()),
                 pa.array(found.tables_matched, pa.int32())],
                names=["row_a", "row_b", "tables_matched"],
            )

    exploded = keyed.select("row", "keys", F.posexplode("keys").alias("table", "key"))
    return (
        exploded.repartition("table", "key")
        .sortWithinPartitions("table", "key", "row")
        .select(F.col("table").cast("int"), "key", "row", "keys")
        .mapInArrow(run, CANDIDATE_SCHEMA)
    )


def score_pairs(candidates: DataFrame, keyed: DataFrame, num_tables: int) -> DataFrame:
    """Joins each candidate with both rows; adds exact cosine and LSH Jaccard; orders
    each pair so that id_a < id_b."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import jaccard, rowwise_cosine

        for batch in batches:
            if batch.num_rows == 0:
                continue
            a = _matrix(batch.column("embedding_a"))
            b = _matrix(batch.column("embedding_b"), a.shape[1])
            ids_a, ids_b = batch.column("id_a").to_numpy(zero_copy_only=False), batch.column("id_b").to_numpy(
                zero_copy_only=False)
            paths_a, paths_b = batch.column("path_a").to_numpy(zero_copy_only=False), batch.column(
                "path_b").to_numpy(zero_copy_only=False)
            swap = ids_a > ids_b
            matched = batch.column("tables_matched")
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.where(swap, ids_b, ids_a), pa.string()), pa.array(np.where(swap, ids_a, ids_b), pa.string()),
                 pa.array(np.where(swap, paths_b, paths_a), pa.string()),
                 pa.array(np.where(swap, paths_a, paths_b), pa.string()),
                 pa.array(rowwise_cosine(a, b)), pa.array(jaccard(matched.to_numpy(), num_tables)), matched],
                names=["id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched"],
            )

    side = keyed.select("row", "id", "path", "embedding")
    a = side.toDF("row_a", "id_a", "path_a", "embedding_a")
    b = side.toDF("row_b", "id_b", "path_b", "embedding_b")
    joined = candidates.join(a, "row_a").join(b, "row_b")
    return joined.select(
        "id_a", "id_b", "path_a", "path_b", "embedding_a", "embedding_b", "tables_matched"
    ).mapInArrow(run, PAIR_SCHEMA)


def _list_column(matrix: np.ndarray) -> pa.Array:
    """An (n, width) array as an Arrow list column, without per-row Python."""
    n, width = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).reshape(-1)))


def _matrix(column: pa.Array, width: int | None = None) -> np.ndarray:
    """A list<number> Arrow column of equal-length rows as an (n, width) NumPy view."""
    values = column.flatten().to_numpy(zero_copy_only=False)
    n = len(column)
    if width is None:
        width = len(values) // n if n else 0
    if len(values) != n * width:
        raise ValueError(f"expected {n} rows of {width} values, got {len(values)} values")
    return values.reshape(n, width)

