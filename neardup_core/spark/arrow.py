"""Arrow <-> NumPy conversions that the Spark stages share. No Spark here."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from ..lsh import pack_keys, unpack_keys


def matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """A list<number> Arrow column of rows of ``width`` values as an (n, width) NumPy view.

    Raises:
        ValueError: the column does not hold n * width values.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    n = len(column)
    if len(values) != n * width:
        raise ValueError(f"expected {n} rows of {width} values, got {len(values)} values")
    return values.reshape(n, width)


def list_column(matrix: np.ndarray) -> pa.Array:
    """An (n, width) array as an Arrow list column, without per-row Python."""
    n, width = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).reshape(-1)))


def key_column(keys: np.ndarray, bits_per_table: int) -> pa.Array:
    """(n, L) bucket keys as a binary column, one value of packed keys a row
    (:func:`lsh.pack_keys`), without per-row Python."""
    packed = pack_keys(keys, bits_per_table)
    n, row_bytes = packed.shape
    offsets = np.arange(0, (n + 1) * row_bytes, row_bytes, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(packed)])


def key_matrix(column: pa.Array | pa.ChunkedArray, num_tables: int) -> np.ndarray:
    """A binary column of packed keys (:func:`key_column`) as (n, num_tables) int64.

    Raises:
        ValueError: a value is null or is not ``num_tables`` keys.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if column.null_count:
        raise ValueError(f"{column.null_count} of {n} rows have no keys")
    if n == 0:
        return np.zeros((0, num_tables), dtype=np.int64)
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], offset_type)[column.offset:column.offset + n + 1]
    lengths = np.diff(offsets)
    if lengths.min() != lengths.max():
        raise ValueError(f"rows of packed keys differ in length ({lengths.min()} to {lengths.max()} bytes)")
    data = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    return unpack_keys(data.reshape(n, int(lengths[0])), num_tables)


def optional_list_column(vectors: list[np.ndarray | None], width: int) -> pa.Array:
    """Vectors of ``width`` float32 values, None for a row without one, as an Arrow
    list<float> column (null where None), in one copy: no per-value Python (pa.array on a
    list of arrays costs 0.12 ms per 1,280-value vector, this 0.002)."""
    present = np.array([v is not None for v in vectors], dtype=bool)
    values = (np.concatenate([v for v in vectors if v is not None]).astype(np.float32, copy=False)
              if present.any() else np.zeros(0, np.float32))
    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    np.cumsum(np.where(present, width, 0), out=offsets[1:])
    if len(values) != offsets[-1]:
        raise ValueError(f"expected vectors of {width} values, got {len(values)} values for {present.sum()} vectors")
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(~present))


BLOCK_SCHEMA = "part int, kind int, blob binary"  # packed records, see neardup_core.blocks


def block_batch(parts: np.ndarray, blobs: list[bytes], kind: int) -> pa.RecordBatch:
    """Rows of BLOCK_SCHEMA: one packed block per destination partition."""
    return pa.RecordBatch.from_arrays(
        [pa.array(parts, pa.int32()), pa.array(np.full(len(parts), kind, np.int32)), pa.array(blobs, pa.binary())],
        names=["part", "kind", "blob"])


def blobs_by_kind(batches: Iterator[pa.RecordBatch]) -> dict[int, list[bytes]]:
    """A task's blocks (BLOCK_SCHEMA batches), grouped by kind."""
    out: dict[int, list[bytes]] = {}
    for batch in batches:
        for kind, blob in zip(batch.column("kind").to_pylist(), batch.column("blob").to_pylist()):
            out.setdefault(kind, []).append(blob)
    return out
