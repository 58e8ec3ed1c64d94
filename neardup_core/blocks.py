"""Packed blocks: how the pairing stage moves data between Spark tasks. Pure NumPy.

The pairing stage shuffles three kinds of records, hundreds of millions of them at
catalog scale: bucket entries (one per row and table), candidate pairs, and vectors.
As one Spark row each, every record would pay for Spark's row format, its sort and a
per-value Arrow conversion. Instead each task packs the records bound for one
partition into one binary block (a NumPy structured array's bytes), and Spark only
routes blocks to the partition they name (``DataFrame.repartitionById``). The receiving
task unpacks them into arrays again. A block row is (part, kind, blob).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

# Block kinds.
ENTRIES = 0  # ENTRY records: one per (row, table)
PAIRS = 1  # PAIR records: a candidate pair, once per table it collides in
VECTORS = 2  # vector_dtype records: a row and its embedding
HALVES = 3  # half_dtype records: a merged pair with the first row's embedding

ENTRY = np.dtype([("table", "<i2"), ("subkey", "<i2"), ("key", "<i8"), ("row", "<i8")])
PAIR = np.dtype([("a", "<i8"), ("b", "<i8")])


def vector_dtype(dim: int) -> np.dtype:
    return np.dtype([("row", "<i8"), ("vec", "<f4", (dim,))])


def half_dtype(dim: int) -> np.dtype:
    return np.dtype([("a", "<i8"), ("b", "<i8"), ("matched", "<i4"), ("vec_a", "<f4", (dim,))])


def bucket_entries(rows: np.ndarray, keys: np.ndarray, subkeys: np.ndarray) -> np.ndarray:
    """ENTRY records, one per (row, table), from (n,) row numbers and (n, L) keys and sub-keys."""
    n, tables = keys.shape
    entries = np.empty(n * tables, dtype=ENTRY)
    entries["table"] = np.tile(np.arange(tables, dtype=np.int16), n)
    entries["key"], entries["subkey"] = keys.reshape(-1), subkeys.reshape(-1)
    entries["row"] = np.repeat(rows, tables)
    return entries


def vector_index(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted row numbers, their vectors) of vector_dtype records, for :func:`lookup`."""
    order = np.argsort(records["row"])
    return records["row"][order], records["vec"][order]


def lookup(sorted_rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` rows in ``sorted_rows``; every one must be there."""
    at = np.minimum(np.searchsorted(sorted_rows, wanted), max(len(sorted_rows) - 1, 0))
    if len(wanted) and (len(sorted_rows) == 0 or not np.array_equal(sorted_rows[at], wanted)):
        raise RuntimeError("a candidate pair names a row whose vector is not in its partition")
    return at


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SECOND = np.uint64(0xC2B2AE3D27D4EB4F)


def spread(values: np.ndarray, n_parts: int) -> np.ndarray:
    """Partition 0..n_parts-1 of each int64 value, by a multiplicative hash (so that
    consecutive row numbers and keys spread evenly)."""
    mixed = np.asarray(values, dtype=np.int64).view(np.uint64) * _GOLDEN
    return ((mixed >> np.uint64(32)) % np.uint64(n_parts)).astype(np.int32)


def bucket_part(table: np.ndarray, key: np.ndarray, n_parts: int) -> np.ndarray:
    """The partition of each (table, key) bucket: every entry of a bucket goes to one task."""
    mixed = np.asarray(key, dtype=np.int64).view(np.uint64) ^ (np.asarray(table, dtype=np.uint64) * _SECOND)
    return spread(mixed.view(np.int64), n_parts)


def route(records: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Groups ``records`` by destination: (part of each block, the blocks' bytes), one
    block per distinct part."""
    if len(records) == 0:
        return np.zeros(0, np.int32), []
    # A stable sort of 16-bit integers is a radix sort: linear time.
    order = np.argsort(parts.astype(np.uint16) if parts.max() < 1 << 16 else parts, kind="stable")
    parts = parts[order]
    starts = np.flatnonzero(np.concatenate(([True], parts[1:] != parts[:-1])))
    ends = np.append(starts[1:], len(parts))
    records = records[order]
    return parts[starts], [records[s:e].tobytes() for s, e in zip(starts, ends)]


def unpack(blobs: Iterable[bytes], dtype: np.dtype) -> np.ndarray:
    """The records of several blocks of one kind, as one structured array."""
    arrays = [np.frombuffer(blob, dtype=dtype) for blob in blobs]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of at most ``size`` over range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
