"""The Spark stages. Each turns Arrow batches into arrays, calls a pure function, and
turns the result back; the maths lives in :mod:`lsh`, :mod:`pairing` and :mod:`embed`.

Every stage is a function from DataFrame to DataFrame; the job in :mod:`neardup_core.job`
decides when they run and what is written. A stage that counts something for the
manifest (buckets, candidates) adds it to a :class:`Tally` passed in.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import blocks
from .config import EmbedConfig, InputConfig, ModelConfig, SparkConfig
from .pairing import jaccard
from .sources import InputError, extension_glob, is_local, local_path

EMBEDDED_SCHEMA = "id string, path string, embedding array<float>, error_stage string, error_message string"
KEYED_SCHEMA = "id string, path string, embedding array<float>, keys array<bigint>"
BLOCK_SCHEMA = "part int, kind int, blob binary"  # see neardup_core.blocks
SCORED_SCHEMA = "row_a bigint, row_b bigint, cosine double, jaccard double, tables_matched int"
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
        import pyarrow.compute as pc

        from neardup_core.embed.batch import check_vector_column

        for batch in batches:
            vectors, reasons = check_vector_column(batch.column("vector"), dim)
            stages = pc.if_else(reasons.is_valid(), pa.scalar("embedding"), pa.scalar(None, pa.string()))
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("path"), vectors, stages, reasons],
                names=["id", "path", "embedding", "error_stage", "error_message"])

    return rows.mapInArrow(run, EMBEDDED_SCHEMA)


def sample_embeddings(embedded: DataFrame, rows: int, size: int, seed: int) -> np.ndarray:
    """About ``size`` embeddings drawn at random from ``rows`` rows, as (n, dim) float32."""
    fraction = min(1.0, 1.2 * size / max(rows, 1))
    picked = embedded.select("embedding").sample(fraction=fraction, seed=seed).limit(size).toArrow()
    return _matrix(picked.column("embedding").combine_chunks()).astype(np.float32)


def executor_cores(spark: SparkSession) -> int:
    """Cores of one executor: ``spark.executor.cores``, or in local mode all the
    session's cores; 1 when neither says."""
    configured = spark.conf.get("spark.executor.cores", None)
    if configured:
        return int(configured)
    return spark.sparkContext.defaultParallelism if spark.sparkContext.master.startswith("local") else 1


def number_rows(embedded: DataFrame) -> DataFrame:
    """Adds ``row``, a unique int64 that stands for the id in the pairing stage. Stable
    across the stage's passes as long as ``embedded`` is read from a persisted frame."""
    return embedded.select(F.monotonically_increasing_id().alias("row"), "id", "path", "embedding")


def bucket_entries(numbered: DataFrame, planes_broadcast, num_tables: int, split_bits: int,
                   bucket_parts: int) -> DataFrame:
    """Hashes each row (:func:`lsh.signature_keys`) and emits its L bucket entries
    (table, key, sub-key, row), packed into one block per destination task; a bucket's
    entries all go to one task (:func:`blocks.bucket_part`). Block rows: part, kind, blob."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import signature_keys

        planes = planes_broadcast.value
        for batch in batches:
            keys, subkeys = signature_keys(_matrix(batch.column("embedding"), planes.shape[1]), planes,
                                           num_tables, split_bits)
            entries = blocks.bucket_entries(batch.column("row").to_numpy(), keys, subkeys)
            yield _block_batch(*blocks.route(entries, blocks.bucket_part(entries["table"], entries["key"],
                                                                         bucket_parts)), blocks.ENTRIES)

    return numbered.select("row", "embedding").mapInArrow(run, BLOCK_SCHEMA)


def vector_blocks(numbered: DataFrame, dim: int, row_parts: int) -> DataFrame:
    """Each row's embedding packed with its row number, one block per destination task
    (:func:`blocks.spread` of the row number)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:

        for batch in batches:
            records = np.empty(batch.num_rows, dtype=blocks.vector_dtype(dim))
            records["row"] = batch.column("row").to_numpy()
            records["vec"] = _matrix(batch.column("embedding"), dim)
            yield _block_batch(*blocks.route(records, blocks.spread(records["row"], row_parts)), blocks.VECTORS)

    return numbered.select("row", "embedding").mapInArrow(run, BLOCK_SCHEMA)


def bucket_candidates(entries: DataFrame, bucket_parts: int, row_parts: int, max_bucket_size: int,
                      split_bits: int, tally: Tally) -> DataFrame:
    """Each task takes whole buckets and pairs their rows (:func:`pairing.bucket_pairs`),
    emitting the pairs in blocks bound for the task of their first row, and adds what it
    found (:class:`pairing.BucketStats`) to ``tally`` under "buckets". A pair comes once
    per table it collides in."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import bucket_pairs

        found = blocks.unpack((blob for _, blob in _blocks(batches)), blocks.ENTRY)
        stats, pair_blocks = bucket_pairs(found["table"], found["key"], found["subkey"], found["row"],
                                          max_bucket_size, split_bits)
        del found
        for a, b in pair_blocks:
            pairs = np.empty(len(a), dtype=blocks.PAIR)
            pairs["a"], pairs["b"] = a, b
            yield _block_batch(*blocks.route(pairs, blocks.spread(a, row_parts)), blocks.PAIRS)
        tally.record("buckets", tuple(stats))

    return entries.repartitionById(bucket_parts, "part").mapInArrow(run, BLOCK_SCHEMA)


def attach_first_rows(candidates: DataFrame, vectors: DataFrame, dim: int, row_parts: int,
                      max_records: int = 65536) -> DataFrame:
    """First scoring step, in the task of each pair's first row: the copies of a pair
    (one per table it collides in) are merged and counted (:func:`pairing.merge_copies`),
    and the first row's vector is attached. Emits blocks bound for the second row's task."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import merge_copies

        by_kind = _blobs_by_kind(batches)
        rows, vecs = blocks.vector_index(blocks.unpack(by_kind.get(blocks.VECTORS, []), blocks.vector_dtype(dim)))
        pairs = blocks.unpack(by_kind.get(blocks.PAIRS, []), blocks.PAIR)
        a, b, matched = merge_copies(pairs["a"], pairs["b"])
        del pairs, by_kind
        for part in blocks.chunks(len(a), max_records):
            half = np.empty(part.stop - part.start, dtype=blocks.half_dtype(dim))
            half["a"], half["b"], half["matched"] = a[part], b[part], matched[part]
            half["vec_a"] = vecs[blocks.lookup(rows, a[part])]
            yield _block_batch(*blocks.route(half, blocks.spread(half["b"], row_parts)), blocks.HALVES)

    return candidates.unionByName(vectors).repartitionById(row_parts, "part").mapInArrow(run, BLOCK_SCHEMA)


def score_halves(halves: DataFrame, vectors: DataFrame, dim: int, row_parts: int, num_tables: int,
                 cosine_threshold: float, tally: Tally) -> DataFrame:
    """Second scoring step, in the task of each pair's second row: exact cosine (float64)
    and LSH Jaccard. Adds the number of pairs scored to ``tally`` under "scored", and
    returns the pairs at ``cosine >= cosine_threshold``, each once, in SCORED_SCHEMA."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import rowwise_cosine

        by_kind = _blobs_by_kind(batches)
        rows, vecs = blocks.vector_index(blocks.unpack(by_kind.get(blocks.VECTORS, []), blocks.vector_dtype(dim)))
        scored = 0
        for blob in by_kind.get(blocks.HALVES, []):
            half = np.frombuffer(blob, dtype=blocks.half_dtype(dim))
            cosine = rowwise_cosine(half["vec_a"], vecs[blocks.lookup(rows, half["b"])])
            scored += len(half)
            near = cosine >= cosine_threshold
            yield _scored_batch(half["a"][near], half["b"][near], cosine[near], half["matched"][near], num_tables)
        tally.record("scored", (scored,))

    return halves.unionByName(vectors).repartitionById(row_parts, "part").mapInArrow(run, SCORED_SCHEMA)


def pair_in_one_task(numbered: DataFrame, planes_broadcast, num_tables: int, split_bits: int,
                     max_bucket_size: int, cosine_threshold: float, tally: Tally, threads: int) -> DataFrame:
    """The whole pairing stage in one task, with no shuffle, for data that fits one:
    hash (:func:`lsh.signature_keys`, on up to ``threads`` threads: the task runs
    alone), pair (:func:`pairing.candidates_of_vectors`, the same bucket kernel as the
    shuffled stage), score, and name. Tallies what :func:`bucket_candidates` and
    :func:`score_halves` would, and "pairs", and returns what :func:`name_pairs` would,
    in one partition sorted by id_a, id_b."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.pairing import candidates_of_vectors, pair_cosines

        planes = planes_broadcast.value
        table = pa.Table.from_batches(list(batches), schema=_ONE_TASK_INPUT)
        x = _matrix(table.column("embedding").combine_chunks(), planes.shape[1])
        stats, a, b, matched = candidates_of_vectors(x, planes, num_tables, split_bits, max_bucket_size,
                                                     threads=min(threads, _usable_cores()))
        cosine = pair_cosines(x, a, b)
        near = cosine >= cosine_threshold
        tally.record("buckets", tuple(stats))
        tally.record("scored", (len(a),))
        tally.record("pairs", (int(near.sum()),))
        yield from _named_batch(table, a[near], b[near], cosine[near], matched[near], num_tables).to_batches()

    return numbered.select("id", "path", "embedding").coalesce(1).mapInArrow(run, PAIR_SCHEMA)


_ONE_TASK_INPUT = pa.schema([("id", pa.string()), ("path", pa.string()), ("embedding", pa.list_(pa.float32()))])


def _named_batch(table: pa.Table, a: np.ndarray, b: np.ndarray, cosine: np.ndarray, matched: np.ndarray,
                 num_tables: int) -> pa.Table:
    """Pairs of rows a, b of ``table`` (id, path) with their scores, as :func:`name_pairs`
    writes them: ordered so that id_a < id_b, sorted by id_a, id_b."""
    import pyarrow.compute as pc

    ids, paths = table.column("id"), table.column("path")
    id_x, id_y = ids.take(a), ids.take(b)
    swap = pc.greater(id_x, id_y)
    named = pa.table({
        "id_a": pc.if_else(swap, id_y, id_x), "id_b": pc.if_else(swap, id_x, id_y),
        "path_a": pc.if_else(swap, paths.take(b), paths.take(a)),
        "path_b": pc.if_else(swap, paths.take(a), paths.take(b)),
        "cosine": pa.array(cosine, pa.float64()), "jaccard": pa.array(jaccard(matched, num_tables)),
        "tables_matched": pa.array(matched, pa.int32())})
    return named.sort_by([("id_a", "ascending"), ("id_b", "ascending")]).combine_chunks()


def name_pairs(scored: DataFrame, numbered: DataFrame) -> DataFrame:
    """Scored pairs with their rows' ids and paths, ordered so that id_a < id_b."""
    names = numbered.select("row", "id", "path")
    a = names.toDF("row_a", "id_x", "path_x")
    b = names.toDF("row_b", "id_y", "path_y")
    joined = scored.join(a, "row_a").join(b, "row_b")
    swap = F.col("id_x") > F.col("id_y")
    return joined.select(
        F.when(swap, F.col("id_y")).otherwise(F.col("id_x")).alias("id_a"),
        F.when(swap, F.col("id_x")).otherwise(F.col("id_y")).alias("id_b"),
        F.when(swap, F.col("path_y")).otherwise(F.col("path_x")).alias("path_a"),
        F.when(swap, F.col("path_x")).otherwise(F.col("path_y")).alias("path_b"),
        "cosine", "jaccard", "tables_matched")


def keyed_embeddings(numbered: DataFrame, planes_broadcast, num_tables: int, split_bits: int) -> DataFrame:
    """id, path, embedding and the row's bucket key in each table (before splitting),
    for the ``embeddings/`` output."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core.lsh import signature_keys

        planes = planes_broadcast.value
        for batch in batches:
            keys, _ = signature_keys(_matrix(batch.column("embedding"), planes.shape[1]), planes, num_tables,
                                     split_bits, subkeys=False)
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("path"), batch.column("embedding"), _list_column(keys)],
                names=["id", "path", "embedding", "keys"])

    return numbered.select("id", "path", "embedding").mapInArrow(run, KEYED_SCHEMA)


class Tally:
    """Small per-task results sent back to the driver beside a stage's rows (Spark
    accumulator): what the bucket tasks found, how many pairs were scored.

    Each task records under (name, partition), so a task that runs again (a retry, or a
    stage recomputed after a lost shuffle file) replaces its earlier record instead of
    adding to it, and each partition is counted once. Read :meth:`values` after the
    action that ran the tasks.
    """

    def __init__(self, spark: SparkSession):
        self._acc = spark.sparkContext.accumulator({}, _MergeRecords())

    def record(self, name: str, values: tuple) -> None:
        """In a task: this task's values for ``name``."""
        from pyspark import TaskContext

        self._acc.add({(name, TaskContext.get().partitionId()): tuple(int(v) for v in values)})

    def values(self, name: str) -> list[tuple]:
        """On the driver: one tuple per partition that recorded ``name``."""
        return [v for (key, _), v in sorted(self._acc.value.items()) if key == name]


class _MergeRecords(AccumulatorParam):
    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, value1: dict, value2: dict) -> dict:
        value1.update(value2)
        return value1


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _scored_batch(a: np.ndarray, b: np.ndarray, cosine: np.ndarray, matched: np.ndarray, num_tables: int
                  ) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(a, pa.int64()), pa.array(b, pa.int64()), pa.array(cosine, pa.float64()),
         pa.array(jaccard(matched, num_tables)), pa.array(matched, pa.int32())],
        names=["row_a", "row_b", "cosine", "jaccard", "tables_matched"])


def _block_batch(parts: np.ndarray, blobs: list[bytes], kind: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(parts, pa.int32()), pa.array(np.full(len(parts), kind, np.int32)), pa.array(blobs, pa.binary())],
        names=["part", "kind", "blob"])


def _blocks(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, bytes]]:
    for batch in batches:
        yield from zip(batch.column("kind").to_pylist(), batch.column("blob").to_pylist())


def _blobs_by_kind(batches: Iterator[pa.RecordBatch]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for kind, blob in _blocks(batches):
        out.setdefault(kind, []).append(blob)
    return out


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

