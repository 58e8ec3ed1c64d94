"""Candidate pairs inside LSH buckets, and their scores. Pure NumPy.

A pairing task holds every entry (table, bucket key, split sub-key, row) of the buckets
that hash to its partition, in any order. :func:`bucket_pairs` sorts them into buckets,
splits a bucket over ``max_bucket_size`` rows by the first bits of its rows' sub-keys
(the smallest depth at which every part fits, :func:`buckets.split_depths`), pairs each
row of a part that still does not fit only with its next ``max_bucket_size - 1`` rows,
and emits every pair of every bucket.

A pair that shares buckets in m tables is emitted m times, from m tasks. Its copies meet
in one partition at the first scoring step, which routes each pair by its first row (the
step must fetch that row's vector anyway); :func:`merge_copies` keeps one and counts m.
So each pair is scored once without a separate ``distinct`` pass, and no bucket entry
carries the other tables' keys (which would make the shuffle grow as N * L^2).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .buckets import run_lengths, split_depths
from .lsh import LshTables, signature_keys


class BucketStats(NamedTuple):
    """What one pairing task found; :meth:`merge` adds up tasks."""

    buckets: int = 0  # buckets of two rows or more
    oversized: int = 0  # buckets over max_bucket_size
    split: int = 0  # of those, split until every part fits
    windowed: int = 0  # of those, with a part still over it at full depth: paired within a window
    largest_rows: int = 0  # rows in the largest bucket before splitting
    max_split_depth: int = 0
    windowed_largest_rows: int = 0  # rows in the largest part paired within a window
    pair_copies: int = 0  # pairs emitted, counting each table a pair collides in

    def merge(self, other: BucketStats) -> BucketStats:
        sums = ("buckets", "oversized", "split", "windowed", "pair_copies")
        return BucketStats(*(a + b if name in sums else max(a, b)
                             for name, a, b in zip(self._fields, self, other)))


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


def group_buckets(table: np.ndarray, key: np.ndarray, subkey: np.ndarray, row: np.ndarray, max_bucket_size: int,
                  split_bits: int) -> tuple[np.ndarray, np.ndarray, BucketStats]:
    """Sort bucket entries into buckets, oversized ones split by sub-key prefix.

    Args:
        table, key, subkey, row: one entry per (row, table), any order; every entry of a
            bucket must be present (a task holds whole buckets).
        max_bucket_size: the most rows a bucket may keep.
        split_bits: bits in a sub-key; 0 turns splitting off.

    Returns:
        (order, lengths, stats): ``order`` sorts the entries bucket by bucket (split
        buckets part by part); ``lengths`` are the sizes of those groups in that order.
        Inside an oversized bucket entries are ordered by row, so the window of a part
        that cannot be split pairs the same rows whatever order the entries came in.
        Time O(n log n), memory O(n).
    """
    if len(key) and int(key.min()) >= 0 and int(key.max()) < 1 << 48:
        order = np.argsort((np.asarray(table, np.int64) << 48) | key)  # one sort key: faster than lexsort
    else:
        order = np.lexsort((key, table))
    t, k = table[order], key[order]
    lengths = run_lengths(t, k)
    big = lengths > max_bucket_size
    stats = BucketStats(buckets=int((lengths > 1).sum()), oversized=int(big.sum()),
                        largest_rows=int(lengths.max()) if len(lengths) else 0)
    if not big.any():
        return order, lengths, stats
    # Entries of the oversized buckets are contiguous runs of the sorted order.
    where = np.flatnonzero(np.repeat(big, lengths))
    bucket = np.repeat(np.arange(int(big.sum())), lengths[big])
    if split_bits:
        s = subkey[order[where]].astype(np.int64)
        by_sub = np.lexsort((s, bucket))
        runs = run_lengths(bucket[by_sub], s[by_sub])
        first = by_sub[np.cumsum(runs) - runs]
        plan = split_depths(bucket[first], np.zeros(len(first), np.int64), s[first], runs, split_bits,
                            max_bucket_size)
        depth = np.repeat(plan.depth, lengths[big])  # plan is per bucket, in bucket order
        prefix = s >> (split_bits - depth)
        still = plan.still_oversized
        stats = stats._replace(
            split=int((~still).sum()), windowed=int(still.sum()), max_split_depth=int(plan.depth.max()),
            windowed_largest_rows=int(plan.largest_after[still].max()) if still.any() else 0)
    else:
        prefix = np.zeros(len(where), np.int64)
        stats = stats._replace(windowed=stats.oversized, windowed_largest_rows=stats.largest_rows)
    within = np.lexsort((np.asarray(row)[order[where]], prefix, bucket))  # a reorder inside each bucket
    order[where] = order[where][within]
    part = np.zeros(len(order), dtype=np.int64)
    part[where] = prefix[within]
    lengths = run_lengths(t, k, part)  # t and k are unchanged by reordering inside buckets
    return order, lengths, stats


def bucket_pairs(table: np.ndarray, key: np.ndarray, subkey: np.ndarray, row: np.ndarray, max_bucket_size: int,
                 split_bits: int, max_pairs: int = 1 << 20
                 ) -> tuple[BucketStats, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Every pair of rows sharing a bucket (after splitting), as (a, b) with a < b, once per
    bucket they share; see :func:`group_buckets` for the arguments.

    Returns:
        (stats, blocks): ``blocks`` yields (a, b) arrays of about ``max_pairs`` pairs, so
        memory is O(n + max_pairs) whatever the bucket sizes; a bucket over
        ``max_bucket_size`` costs at most rows * (max_bucket_size - 1) pairs.
    """
    order, lengths, stats = group_buckets(table, key, subkey, row, max_bucket_size, split_bits)
    partners = partners_per_row(lengths, max_bucket_size)
    stats = stats._replace(pair_copies=int(partners.sum()))
    rows = np.asarray(row, dtype=np.int64)[order]

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for left, right in pair_blocks(partners, max_pairs):
            a, b = rows[left], rows[right]
            yield np.minimum(a, b), np.maximum(a, b)

    return stats, blocks()


def merge_copies(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (a, b) per distinct pair, sorted, with how many copies it had: the number of
    tables in which the pair shares a bucket (``tables_matched``)."""
    if len(a) and min(int(a.min()), int(b.min())) >= 0 and max(int(a.max()), int(b.max())) < 1 << 31:
        order = np.argsort((a.astype(np.int64) << 32) | b)  # one sort key: faster than lexsort, same order
    else:
        order = np.lexsort((b, a))
    a, b = a[order], b[order]
    counts = run_lengths(a, b)
    first = np.cumsum(counts) - counts
    return a[first], b[first], counts.astype(np.int32)


# Tables bucketed at a time by :func:`all_candidates`: 8 tables of 100,000 rows sort in
# cache; all 137 tables in one sort took 3.5 x as long (docs/performance.md). Results do
# not depend on it.
TABLES_PER_STEP = 8


def all_candidates(keys: np.ndarray, subkeys: np.ndarray, max_bucket_size: int, split_bits: int,
                   threads: int = 1, tables_per_step: int = TABLES_PER_STEP
                   ) -> tuple[BucketStats, np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct candidate pair of n rows hashed into L tables, in one process: the
    bucket step and the merge of copies together, for data that fits one task. A bucket
    lies in one table, so the tables are bucketed ``tables_per_step`` at a time, on up to
    ``threads`` threads (NumPy's sorts release the GIL); the merge makes the result the
    same whatever the steps and threads.

    Args:
        keys, subkeys: (n, L) from :func:`lsh.signature_keys`.
        max_bucket_size, split_bits: as for :func:`group_buckets`.

    Returns:
        (stats, a, b, tables_matched): row positions a < b, sorted, each pair once.
        Memory O(n * tables_per_step * threads + copies), beside the keys.
    """
    n, num_tables = keys.shape
    rows = np.arange(n, dtype=np.int64)

    def step(first: int) -> tuple[BucketStats, list[tuple[np.ndarray, np.ndarray]]]:
        last = min(first + tables_per_step, num_tables)
        stats, blocks = bucket_pairs(np.tile(np.arange(first, last), n), keys[:, first:last].reshape(-1),
                                     subkeys[:, first:last].reshape(-1), np.repeat(rows, last - first),
                                     max_bucket_size, split_bits)
        return stats, list(blocks)

    starts = range(0, num_tables, tables_per_step)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            steps = list(pool.map(step, starts))
    else:
        steps = [step(first) for first in starts]
    stats = BucketStats()
    for found, _ in steps:
        stats = stats.merge(found)
    found = [block for _, blocks in steps for block in blocks]
    a = np.concatenate([p[0] for p in found]) if found else np.zeros(0, np.int64)
    b = np.concatenate([p[1] for p in found]) if found else np.zeros(0, np.int64)
    del steps, found
    return (stats, *merge_copies(a, b))


def candidates_of_vectors(vectors: np.ndarray, tables: LshTables, max_bucket_size: int, threads: int = 1
                          ) -> tuple[BucketStats, np.ndarray, np.ndarray, np.ndarray]:
    """Hash n vectors (:func:`lsh.signature_keys`) and find every distinct candidate pair
    (:func:`all_candidates`): the whole bucket side of the pairing stage for data that
    fits one task. Sub-keys matter only for a bucket over ``max_bucket_size``, so the
    vectors are hashed without them, and hashed again with them only if such a bucket
    turns up (their planes are a third of the projections at k = 16, split_bits = 8).

    Returns:
        As :func:`all_candidates`: (stats, a, b, tables_matched), rows of ``vectors``.
    """
    keys, _ = signature_keys(vectors, tables, threads=threads, subkeys=False)
    # Zeros from calloc: pages of the zero page until written, so they cost no memory here.
    found = all_candidates(keys, np.zeros(keys.shape, np.int64), max_bucket_size, tables.split_bits, threads)
    if found[0].oversized and tables.split_bits:
        keys, subkeys = signature_keys(vectors, tables, threads=threads)
        found = all_candidates(keys, subkeys, max_bucket_size, tables.split_bits, threads)
    return found


# Rows converted to float64 at a time by the cosine kernels: a block of two 128 x 1280
# float64 matrices (2.6 MB) stays in cache; 4,096-row blocks did not, and scored 156,000
# pairs of 1280-d vectors 3.4 x slower (docs/performance.md). Results do not depend on it.
COSINE_BLOCK_ROWS = 128
# Fewer pairs than this per thread are scored on one thread: starting threads costs more.
PAIRS_PER_THREAD = 50_000


def squared_norms(vectors: np.ndarray, block_rows: int = COSINE_BLOCK_ROWS) -> np.ndarray:
    """Each row's squared length in float64, ``block_rows`` rows at a time: the same
    values :func:`rowwise_cosine` computes for a row, so cosines from them are identical."""
    out = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), block_rows):
        block = np.asarray(vectors[start:start + block_rows], dtype=np.float64)
        out[start:start + block_rows] = np.einsum("ij,ij->i", block, block)
    return out


def pair_cosines(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = COSINE_BLOCK_ROWS,
                 vectors_b: np.ndarray | None = None, squared: np.ndarray | None = None,
                 squared_b: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Exact cosine (float64) of rows a[i] and b[i] of ``vectors`` (``b`` into
    ``vectors_b`` where given), ``chunk`` pairs at a time, so memory is O(chunk * dim)
    however many pairs there are (per thread). Equal, bit for bit, to
    :func:`rowwise_cosine` of the gathered rows; each row's length is computed once
    (``squared``, ``squared_b``: its :func:`squared_norms`, if the caller has them), not
    once per pair. ``threads`` > 1: that many threads score consecutive shares of the
    pairs (NumPy releases the GIL), for a task that runs alone.
    """
    if vectors_b is None:
        vectors_b, squared_b = vectors, squared
    squared = squared_norms(vectors) if squared is None else squared
    if squared_b is None:
        squared_b = squared if vectors_b is vectors else squared_norms(vectors_b)
    out = np.empty(len(a), dtype=np.float64)
    if threads > 1 and len(a) >= threads * PAIRS_PER_THREAD:
        bounds = np.linspace(0, len(a), threads + 1).astype(np.int64)

        def share(i: int) -> None:
            lo, hi = bounds[i], bounds[i + 1]
            out[lo:hi] = pair_cosines(vectors, a[lo:hi], b[lo:hi], chunk, vectors_b, squared, squared_b)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(share, range(threads)))
        return out
    for start in range(0, len(a), chunk):
        ca, cb = a[start:start + chunk], b[start:start + chunk]
        dots = np.einsum("ij,ij->i", np.asarray(vectors[ca], np.float64), np.asarray(vectors_b[cb], np.float64))
        out[start:start + chunk] = _cosine(dots, np.sqrt(squared[ca] * squared_b[cb]))
    return out


def _cosine(dots: np.ndarray, norms: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(norms > 0, dots / norms, 0.0), -1.0, 1.0)


class ScoredPairs(NamedTuple):
    """Pairs at or above the cosine threshold with their scores, aligned arrays."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray  # float64
    jaccard: np.ndarray  # float64, see :func:`jaccard`
    tables_matched: np.ndarray  # int32


def near_pairs(a: np.ndarray, b: np.ndarray, cosine: np.ndarray, tables_matched: np.ndarray, num_tables: int,
               cosine_threshold: float) -> ScoredPairs:
    """The candidate pairs whose exact cosine is at least ``cosine_threshold``, scored:
    what both pairing paths keep and write."""
    near = cosine >= cosine_threshold
    matched = np.asarray(tables_matched)[near]
    return ScoredPairs(np.asarray(a)[near], np.asarray(b)[near], np.asarray(cosine, np.float64)[near],
                       jaccard(matched, num_tables), matched.astype(np.int32))


def score_with_keys(vec_a: np.ndarray, vec_b: np.ndarray, keys_a: np.ndarray, keys_b: np.ndarray,
                    cosine_threshold: float) -> ScoredPairs:
    """Candidate pairs given as both rows' vectors and keys (n, dim) and (n, L), scored as
    the bucket path scores them when no bucket is split: tables_matched is the number of
    tables with equal keys. ``a`` and ``b`` of the result are positions in the input."""
    index = np.arange(len(vec_a))
    matched = (np.asarray(keys_a) == np.asarray(keys_b)).sum(axis=1)
    return near_pairs(index, index, rowwise_cosine(vec_a, vec_b), matched, np.shape(keys_a)[1], cosine_threshold)


def score_row_pairs(x: np.ndarray, keys: np.ndarray, a: np.ndarray, b: np.ndarray, cosine_threshold: float,
                    chunk_pairs: int = 4096, x_b: np.ndarray | None = None, keys_b: np.ndarray | None = None,
                    threads: int = 1, tables_matched: np.ndarray | None = None) -> ScoredPairs:
    """:func:`score_with_keys` for pairs given as row positions ``a``, ``b`` into ``x``
    (n, dim) and ``keys`` (n, L) (``b`` into ``x_b`` and ``keys_b`` where given), a chunk
    of ``chunk_pairs`` pairs at a time: memory O(pairs + chunk_pairs x L), where gathering
    every pair's two rows at once would take O(pairs x dim). The cosines come
    from :func:`pair_cosines` (each row's length computed once; on ``threads`` threads).
    ``tables_matched``: each pair's shared tables where the caller has counted them
    (:func:`incremental.fresh_partners`); then the keys are not compared, and ``keys_b``
    is not needed. ``a`` and ``b`` of the result are row positions, like the input's."""
    x_b, keys_b = (x, keys) if x_b is None else (x_b, keys_b)
    cosines = pair_cosines(x, a, b, vectors_b=x_b, threads=threads)
    parts = []
    for start in range(0, len(a), chunk_pairs):
        ca, cb = a[start:start + chunk_pairs], b[start:start + chunk_pairs]
        matched = ((keys[ca] == keys_b[cb]).sum(axis=1) if tables_matched is None
                   else tables_matched[start:start + chunk_pairs])
        parts.append(near_pairs(ca, cb, cosines[start:start + chunk_pairs], matched, np.shape(keys)[1],
                                cosine_threshold))
    if not parts:
        return score_with_keys(x[:0], x[:0], keys[:0], keys[:0], cosine_threshold)
    return ScoredPairs(*(np.concatenate(column) for column in zip(*parts)))


def ordered_by_id(id_x: pa.Array, id_y: pa.Array, path_x: pa.Array, path_y: pa.Array) -> dict[str, pa.Array]:
    """The two ends of each pair named so that ``id_a < id_b`` (byte order of the UTF-8
    ids, as Spark compares strings): id_a, id_b, path_a, path_b."""
    swap = pc.greater(id_x, id_y)
    return {"id_a": pc.if_else(swap, id_y, id_x), "id_b": pc.if_else(swap, id_x, id_y),
            "path_a": pc.if_else(swap, path_y, path_x), "path_b": pc.if_else(swap, path_x, path_y)}


def jaccard(tables_matched: np.ndarray, num_tables: int) -> np.ndarray:
    """Jaccard index of two rows' sets of (table, key) tokens: m / (2L - m)."""
    m = np.asarray(tables_matched, dtype=np.float64)
    return m / (2 * num_tables - m)


def rowwise_cosine(a: np.ndarray, b: np.ndarray, block_rows: int = COSINE_BLOCK_ROWS) -> np.ndarray:
    """Exact cosine of each row of ``a`` with the same row of ``b``, in float64,
    ``block_rows`` rows at a time (:data:`COSINE_BLOCK_ROWS`)."""
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), block_rows):
        x = np.asarray(a[start:start + block_rows], dtype=np.float64)
        y = np.asarray(b[start:start + block_rows], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
        out[start:start + block_rows] = _cosine(np.einsum("ij,ij->i", x, y), norms)
    return out
