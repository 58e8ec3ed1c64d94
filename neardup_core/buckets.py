"""Oversized buckets: how deep to split each one. Pure NumPy.

A bucket with more than ``max_bucket_size`` rows would cost quadratic work. Given, for
each oversized bucket, the row counts of its sub-buckets at the full ``split_bits``, the
smallest depth d whose 2**d sub-buckets all fit is found here by summing counts over
sub-key prefixes; no second pass over the entries is needed.
A bucket whose rows still share one sub-bucket at full depth (near-identical vectors)
cannot be split by hashing; pairing then bounds its work with a window
(:func:`pairing.partners_per_row`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


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


class SplitPlan(NamedTuple):
    table: np.ndarray  # int64, one entry per oversized bucket
    key: np.ndarray
    depth: np.ndarray  # 1..split_bits; split_bits where even that left a sub-bucket too large
    still_oversized: np.ndarray  # bool: the bucket's largest sub-bucket is over the limit at full depth
    largest_after: np.ndarray  # rows in the bucket's largest sub-bucket at the chosen depth


def split_depths(table: np.ndarray, key: np.ndarray, subkey: np.ndarray, count: np.ndarray,
                 split_bits: int, max_bucket_size: int) -> SplitPlan:
    """Smallest split depth per oversized bucket.

    Args:
        table, key, subkey, count: one entry per (table, key, sub-key) of the oversized
            buckets, with its row count; any order.
        split_bits: bits in a sub-key.
        max_bucket_size: the most rows a bucket may keep.

    Returns:
        A :class:`SplitPlan`, one entry per distinct (table, key). Memory and time are
        O(entries * split_bits).
    """
    order = np.lexsort((subkey, key, table))
    table, key, subkey, count = (np.asarray(a, dtype=np.int64)[order] for a in (table, key, subkey, count))
    bucket_lengths = run_lengths(table, key)
    starts = np.concatenate(([0], np.cumsum(bucket_lengths)[:-1])).astype(np.int64)
    buckets = len(bucket_lengths)
    depth = np.full(buckets, split_bits, dtype=np.int64)
    largest = np.zeros(buckets, dtype=np.int64)
    decided = np.zeros(buckets, dtype=bool)
    bucket_of_entry = np.repeat(np.arange(buckets), bucket_lengths)
    for d in range(1, split_bits + 1):
        prefix = subkey >> (split_bits - d)
        runs = run_lengths(table, key, prefix)
        run_starts = np.concatenate(([0], np.cumsum(runs)[:-1])).astype(np.int64)
        sizes = np.add.reduceat(count, run_starts) if len(count) else np.zeros(0, np.int64)
        biggest = np.zeros(buckets, dtype=np.int64)
        np.maximum.at(biggest, bucket_of_entry[run_starts], sizes)
        newly = ~decided & (biggest <= max_bucket_size)
        depth[newly], largest[newly] = d, biggest[newly]
        decided |= newly
        largest[~decided] = biggest[~decided]
    return SplitPlan(table[starts], key[starts], depth, ~decided, largest)
