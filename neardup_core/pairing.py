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


def partners_per_row(lengths: np.ndarray, window: int | None = None) -> np.ndarray:
    """For each row of consecutive runs, how many later rows of its run it pairs with:
    all of them, or with a ``window`` at most ``window - 1`` (the next rows in order).
    A window bounds a run of n rows to n * (window - 1) pairs instead of n * (n - 1) / 2."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    run_end = np.repeat(np.cumsum(lengths), lengths)  # exclusive end of each row's run
    partners = run_end - np.arange(n) - 1
    return partners if window is None else np.minimum(partners, window - 1)


def pairs_from_partners(partners: np.ndarray, start: int = 0, stop: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, i + 1 .. i + partners[i]) for rows ``start`` to ``stop``, ordered
    by left then right. Memory is proportional to their number."""
    stop = len(partners) if stop is None else stop
    counts = np.asarray(partners[start:stop], dtype=np.int64)
    total = int(counts.sum())
    left = np.repeat(np.arange(start, stop, dtype=np.int64), counts)
    first_of_left = np.repeat(np.cumsum(counts) - counts, counts)
    right = left + 1 + (np.arange(total, dtype=np.int64) - first_of_left)
    return left, right


def pairs_within_runs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, with i and j in the same run (reference for tests)."""
    return pairs_from_partners(partners_per_row(lengths))


def pair_blocks(partners: np.ndarray, max_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`pairs_from_partners` over all rows, in blocks of about ``max_pairs`` pairs
    (a single row with more partners makes a block of its own)."""
    ends = np.cumsum(partners)
    start, n = 0, len(partners)
    while start < n:
        done = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, done + max_pairs, side="right")), start + 1)
        yield pairs_from_partners(partners, start, min(stop, n))
        start = stop


def candidates_in_buckets(chunk: SortedBuckets, window: int | None = None,
                          max_pairs: int = 1 << 18) -> Iterator[Candidates]:
    """Candidate pairs of one chunk whose buckets are all complete, in blocks.

    A pair is emitted from table t only if t is the first table where the two rows'
    keys agree; ``tables_matched`` counts all tables where they agree. With a
    ``window``, a bucket longer than it pairs each row only with the next window - 1.

    Memory: O(max_pairs * L) per block, whatever the bucket sizes.
    """
    partners = partners_per_row(run_lengths(chunk.table, chunk.key), window)
    for left, right in pair_blocks(partners, max_pairs):
        agree = chunk.keys[left] == chunk.keys[right]
        keep = agree.argmax(axis=1) == chunk.table[left]
        left, right = left[keep], right[keep]
        a, b = chunk.ids[left], chunk.ids[right]
        # Rows are sorted by id inside a bucket, so a < b already; swap defensively if the
        # caller's sort order differed (e.g. a collation unlike Python's).
        swap = a > b
        yield Candidates(np.where(swap, b, a), np.where(swap, a, b), agree[keep].sum(axis=1).astype(np.int32))


def candidates_from_sorted_chunks(chunks: Iterable[SortedBuckets], window: int | None = None
                                  ) -> Iterator[Candidates]:
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
            yield from candidates_in_buckets(complete, window)
    if carry is not None and len(carry.ids):
        yield from candidates_in_buckets(carry, window)


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
