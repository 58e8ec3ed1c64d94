"""A Parquet table of vectors (``neardup pairs --embeddings``) read with PyArrow, in
slices that tasks read side by side. Pure: no Spark.

A file written by ``pyarrow.parquet.write_table`` holds up to 1Mi rows in one row group,
which Spark's reader gives to one task and holds whole in the JVM heap. Here the driver
plans :class:`Slice` units from the files' footers (:func:`plan_slices`), and each task
streams its slice (:func:`read_slice`) in batches of a bounded number of rows, so memory
does not depend on the row group's size. Parquet files written without a page index
(pyarrow's default) cannot be entered in the middle of a row group, so a slice's task
decodes the rows before its start and drops them: a row group cut in S slices costs
(S + 1) / 2 decodes of it in all, spread over S tasks; the wall time stays near one
decode of it while S is at most the cores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class Slice(NamedTuple):
    file: str  # as the table's PyArrow file system names it
    row_group: int
    start: int  # first row, within the row group
    stop: int  # one past the last row


class TableFiles(NamedTuple):
    fs: pafs.FileSystem
    files: list[str]  # in name order
    row_groups: list[list[int]]  # rows of each row group, per file
    schema: pa.Schema  # the first file's
    stamps: list[tuple[int | None, int | None]]  # each file's file_stamps when opened


def hidden(name: str) -> bool:
    """A file or folder that Spark's Parquet reader skips (``_SUCCESS``, ``.crc`` files)."""
    return name.startswith(("_", "."))


def open_table(path: str) -> TableFiles:
    """The Parquet files at ``path`` (a file, or a folder searched recursively without
    hidden names) and their row groups, from the footers.

    Raises:
        pyarrow.ArrowInvalid, OSError: PyArrow cannot open ``path`` or a file in it
            (the caller may fall back to another reader).
        FileNotFoundError: nothing there, or no files in the folder.
    """
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), _local(path))
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or folder: {path}")
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and not any(hidden(part) for part in f.path[len(root):].split("/")))
        if not files:
            raise FileNotFoundError(f"no Parquet files in {path}")
    row_groups, schema = [], None
    stamps = file_stamps(fs, files)
    for name in files:
        with fs.open_input_file(name) as fh:
            meta = pq.ParquetFile(fh).metadata
            if schema is None:
                schema = _instants(meta)
            row_groups.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    return TableFiles(fs, files, row_groups, schema, stamps)


def file_stamps(fs: pafs.FileSystem, files: list[str]) -> list[tuple[int | None, int | None]]:
    """Each file's size and modification time (ns; None where the file system has none):
    what says that a file read twice in a run was not rewritten between the reads."""
    return [(info.size, info.mtime_ns) for info in fs.get_file_info(files)]


def _instants(meta: pq.FileMetaData) -> pa.Schema:
    """The file's Arrow schema, where an INT96 time stamp (Spark's default) is marked UTC:
    it is an instant, as Spark reads it, though PyArrow reads it without a zone."""
    schema = meta.schema.to_arrow_schema()
    for i in range(len(meta.schema)):
        column = meta.schema.column(i)
        at = schema.get_field_index(column.path)
        if column.physical_type == "INT96" and at >= 0 and pa.types.is_timestamp(schema.field(at).type):
            schema = schema.set(at, schema.field(at).with_type(pa.timestamp("us", "UTC")))
    return schema


def _local(path: str) -> str:
    return path[len("file:"):] if path.startswith("file:") else path


def plan_slices(files: list[str], row_groups: list[list[int]], rows_per_slice: int,
                max_slices_per_group: int | None = None) -> list[Slice]:
    """Every row of the table in slices of at most ``rows_per_slice`` rows, each within
    one row group, cut in equal parts; empty row groups give no slice. With
    ``max_slices_per_group``, a row group is cut in at most that many slices (larger than
    ``rows_per_slice`` where it must be): a row group cut in S slices is decoded
    (S + 1) / 2 times in all (module docstring)."""
    if rows_per_slice < 1:
        raise ValueError(f"rows_per_slice must be >= 1, got {rows_per_slice}")
    if max_slices_per_group is not None and max_slices_per_group < 1:
        raise ValueError(f"max_slices_per_group must be >= 1, got {max_slices_per_group}")
    out = []
    for name, groups in zip(files, row_groups):
        for index, rows in enumerate(groups):
            parts = -(-rows // rows_per_slice)
            if max_slices_per_group is not None:
                parts = min(parts, max_slices_per_group)
            cuts = [rows * k // parts for k in range(parts + 1)] if parts else []
            out.extend(Slice(name, index, a, b) for a, b in zip(cuts, cuts[1:]))
    return out


def pack_slices(slices: list[Slice], rows_per_task: int) -> list[list[int]]:
    """Consecutive slices grouped into tasks of at most ``rows_per_task`` rows (a slice
    larger than that alone), so that many small files do not make as many tasks."""
    tasks: list[list[int]] = []
    rows = 0
    for index, piece in enumerate(slices):
        size = piece.stop - piece.start
        if not tasks or rows + size > rows_per_task:
            tasks.append([])
            rows = 0
        tasks[-1].append(index)
        rows += size
    return tasks


def read_slice(fs: pafs.FileSystem, piece: Slice, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The slice's rows of ``columns``, in batches of at most ``batch_rows`` rows.

    Memory: the column chunks are streamed through a 1 MiB buffer (no pre-buffering of
    the row group), plus O(batch_rows) decoded rows.
    """
    with fs.open_input_file(piece.file) as fh:
        reader = pq.ParquetFile(fh, buffer_size=1 << 20, pre_buffer=False, coerce_int96_timestamp_unit="us")
        at = 0
        for batch in reader.iter_batches(batch_size=batch_rows, row_groups=[piece.row_group], columns=columns,
                                         use_threads=False):
            end = at + batch.num_rows
            if end > piece.start:
                yield batch.slice(max(piece.start - at, 0), min(end, piece.stop) - max(at, piece.start))
            at = end
            if at >= piece.stop:
                return


def first_vector_length(table: TableFiles, column: str, batch_rows: int = 1024) -> int | None:
    """The length of the first non-null vector in file order (a binary value: its bytes
    / 4), or None when there is none."""
    for name, groups in zip(table.files, table.row_groups):
        for index in range(len(groups)):
            for batch in read_slice(table.fs, Slice(name, index, 0, groups[index]), [column], batch_rows):
                values = batch.column(0).drop_null()
                if len(values):
                    binary = pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)
                    return len(values[0].as_py()) // 4 if binary else len(values[0])
    return None


def vector_hashes(vectors: pa.Array, dim: int) -> pa.Array:
    """For each vector of a list<float32> column in which every non-null row holds ``dim``
    values (what ``embed.batch.check_vector_column`` gives), the 128-bit BLAKE2b of its
    float32 bytes in hex, as :func:`incremental.content_hash` computes it; null for a
    null row. One hash call per row over a contiguous matrix: the per-row cost is
    BLAKE2b's own (about 3 µs a 1 KiB vector here)."""
    values = np.ascontiguousarray(vectors.flatten().to_numpy(zero_copy_only=False), dtype="<f4")
    width = 4 * dim
    raw = memoryview(values).cast("B")
    digests = [hashlib.blake2b(raw[at:at + width], digest_size=16).hexdigest() for at in range(0, len(raw), width)]
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    out = np.full(len(vectors), None, dtype=object)
    out[valid] = digests
    return pa.array(out, pa.string())
