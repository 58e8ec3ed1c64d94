"""Candidate pairs inside LSH buckets and their scores. Pure NumPy.

Rows arrive as (table, bucket key, id, all L keys of the row), sorted by
(table, key, id). Every pair of rows in one bucket is a candidate; a pair that collides in
several tables is emitted only from the *first* table in which it collides, which both
rows can tell from their key vectors. So each pair comes out exactly once with no global
``distinct``, and its ``tables_matched`` is known on the spot.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np


class SortedBuckets(NamedTuple):
    """A chunk of rows sorted by (table, key, id); ``keys`` is (n, L) int64."""

    table: np.ndarray
    key: np.ndarray
    ids: np.ndarray
    keys: np.ndarray


class Candidates(NamedTuple):
    id_a: np.ndarray
    id_b: np.ndarray
    tables_matched: np.ndarray


def run_lengths(*columns: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive equal rows over the given aligned columns."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n - 1, dtype=bool)
    for col in columns:
        change |= col[1:] != col[:-1]
    bounds = np.concatenate(([0], np.flatnonzero(change) + 1, [n]))
    return np.diff(bounds)


def pairs_within_runs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, with i and j in the same run.

    Args:
        lengths: run lengths of a sorted array; runs are consecutive.

    Returns:
        (left, right) int64 arrays of sum(s * (s - 1) / 2) pairs, ordered by left then
        right. Memory is proportional to that count: bound the run lengths first.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    run_end = np.repeat(np.cumsum(lengths), lengths)  # exclusive end of each row's run
    partners = run_end - np.arange(n) - 1  # rows after i in its run
    total = int(partners.sum())
    left = np.repeat(np.arange(n, dtype=np.int64), partners)
    first_of_left = np.repeat(np.cumsum(partners) - partners, partners)
    right = left + 1 + (np.arange(total, dtype=np.int64) - first_of_left)
    return left, right


def candidates_in_buckets(chunk: SortedBuckets) -> Candidates:
    """Candidate pairs of one chunk whose buckets are all complete.

    A pair is emitted from table t only if t is the first table where the two rows'
    keys agree; ``tables_matched`` counts all tables where they agree.
    """
    lengths = run_lengths(chunk.table, chunk.key)
    left, right = pairs_within_runs(lengths)
    agree = chunk.keys[left] == chunk.keys[right]
    keep = agree.argmax(axis=1) == chunk.table[left]
    left, right = left[keep], right[keep]
    a, b = chunk.ids[left], chunk.ids[right]
    # Rows are sorted by id inside a bucket, so a < b already; swap defensively if the
    # caller's sort order differed (e.g. a collation unlike Python's).
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    return Candidates(a, b, agree[keep].sum(axis=1).astype(np.int32))


def candidates_from_sorted_chunks(chunks: Iterable[SortedBuckets]) -> Iterator[Candidates]:
    """Stream candidates over chunks of one sorted partition.

    A bucket may straddle two chunks (Arrow batches cut at a fixed row count), so the
    last bucket of each chunk is held back and prepended to the next one.
    """
    carry: SortedBuckets | None = None
    for chunk in chunks:
        if carry is not None:
            chunk = SortedBuckets(*(np.concatenate((c, x)) for c, x in zip(carry, chunk)))
        n = len(chunk.ids)
        if n == 0:
            continue
        in_last = (chunk.table == chunk.table[-1]) & (chunk.key == chunk.key[-1])
        # Sorted, so the last bucket is a suffix; its length is the count of trailing Trues.
        tail_start = 0 if in_last.all() else n - int(np.argmin(in_last[::-1]))
        complete = SortedBuckets(*(c[:tail_start] for c in chunk))
        carry = SortedBuckets(*(c[tail_start:] for c in chunk))
        if tail_start:
            yield candidates_in_buckets(complete)
    if carry is not None and len(carry.ids):
        yield candidates_in_buckets(carry)


def jaccard(tables_matched: np.ndarray, num_tables: int) -> np.ndarray:
    """Jaccard index of two rows' sets of (table, key) tokens: m / (2L - m)."""
    m = np.asarray(tables_matched, dtype=np.float64)
    return m / (2 * num_tables - m)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact cosine of each row of ``a`` with the same row of ``b``, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dots = np.einsum("ij,ij->i", a, b)
    norms = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / norms, 0.0)
    return np.clip(cos, -1.0, 1.0)
