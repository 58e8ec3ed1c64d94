"""Splitting oversized buckets and bounding what cannot be split, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neardup_core import lsh, pairing
from neardup_core.buckets import split_depths


def brute_split(table, key, subkey, count, split_bits, limit):
    """Per (table, key): the smallest depth whose prefix groups all fit, by direct counting."""
    out = {}
    for (t, k) in sorted(set(zip(table.tolist(), key.tolist()))):
        mask = (table == t) & (key == k)
        for d in range(1, split_bits + 1):
            sizes = {}
            for s, c in zip(subkey[mask].tolist(), count[mask].tolist()):
                sizes[s >> (split_bits - d)] = sizes.get(s >> (split_bits - d), 0) + c
            if max(sizes.values()) <= limit:
                out[(t, k)] = (d, False, max(sizes.values()))
                break
        else:
            out[(t, k)] = (split_bits, True, max(sizes.values()))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_split_depths_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    split_bits, limit = 4, 50
    entries = [(t, k, s, int(rng.integers(1, 40))) for t in range(3) for k in rng.integers(0, 1000, 3)
               for s in rng.choice(16, size=int(rng.integers(1, 16)), replace=False)]
    table, key, subkey, count = (np.array(c) for c in zip(*entries))
    perm = rng.permutation(len(table))
    plan = split_depths(table[perm], key[perm], subkey[perm], count[perm], split_bits, limit)
    got = {(t, k): (d, bool(o), m) for t, k, d, o, m in
           zip(plan.table.tolist(), plan.key.tolist(), plan.depth.tolist(), plan.still_oversized, plan.largest_after)}
    assert got == brute_split(table, key, subkey, count, split_bits, limit)


def brute_split_pairs(keys, subkeys, split_bits, limit):
    """Pairs sharing a bucket after splitting, by the definition: a bucket over ``limit``
    rows is split by the smallest prefix depth of the sub-key at which every part fits
    (full depth if none does; those parts are not windowed here, so keep them small)."""
    n, tables = keys.shape
    out = {}
    for t in range(tables):
        for k in set(keys[:, t].tolist()):
            members = np.flatnonzero(keys[:, t] == k)
            depth = 0
            if len(members) > limit:
                for depth in range(1, split_bits + 1):
                    _, sizes = np.unique(subkeys[members, t] >> (split_bits - depth), return_counts=True)
                    if sizes.max() <= limit:
                        break
            for i, j in itertools.combinations(members.tolist(), 2):
                if subkeys[i, t] >> (split_bits - depth) == subkeys[j, t] >> (split_bits - depth):
                    out[(i, j)] = out.get((i, j), 0) + 1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_split_buckets_pair_as_the_definition_says(seed):
    rng = np.random.default_rng(seed)
    n, tables, split_bits, limit = 300, 3, 5, 40
    keys = rng.integers(0, 4, (n, tables))  # buckets of ~75 rows: all oversized
    subkeys = rng.integers(0, 2**split_bits, (n, tables))
    stats, blocks = pairing.bucket_pairs(*entries_of(keys, subkeys), limit, split_bits)
    a, b = (np.concatenate(c) for c in zip(*blocks))
    a, b, m = pairing.merge_copies(a, b)
    assert dict(zip(zip(a.tolist(), b.tolist()), m.tolist())) == brute_split_pairs(keys, subkeys, split_bits, limit)
    assert stats.oversized == stats.split == 12 and stats.windowed == 0


def entries_of(keys, subkeys):
    n, tables = keys.shape
    return (np.tile(np.arange(tables), n), keys.reshape(-1), subkeys.reshape(-1), np.repeat(np.arange(n), tables))


def test_pair_blocks_and_windows_match_brute_force():
    lengths = np.array([1, 5, 2, 9, 3, 1, 12])
    for window in (None, 2, 4, 100):
        expected = []
        start = 0
        for length in lengths:
            for i in range(start, start + length):
                for j in range(i + 1, start + length):
                    if window is None or j - i < window:
                        expected.append((i, j))
            start += length
        partners = pairing.partners_per_row(lengths, window)
        for max_pairs in (1, 3, 7, 1000):
            got = [p for left, right in pairing.pair_blocks(partners, max_pairs)
                   for p in zip(left.tolist(), right.tolist())]
            assert got == expected


def kernel_candidates(keys: np.ndarray, subkeys: np.ndarray, split_bits: int, limit: int):
    """What the pairing tasks compute, as sorted codes a * n + b of distinct pairs, and the stats."""
    n = len(keys)
    stats, blocks = pairing.bucket_pairs(*entries_of(keys, subkeys), limit, split_bits)
    a, b = (np.concatenate(c) for c in zip(*blocks))
    a, b, _ = pairing.merge_copies(a, b)
    return np.sort(a * n + b), stats


def test_planted_giant_bucket_is_split_and_loses_few_true_pairs():
    """1500 vectors around one point share a bucket in most tables at k=4. Split to at
    most 150 rows by 10 more bits (the rest paired within a window of 150), the job's
    kernel does a third of the work and keeps 80 % of the pairs at cosine >= 0.9.
    The loss is real (each split bit separates a 0.9 pair with probability 0.14); the
    README states it."""
    rng = np.random.default_rng(7)
    dim, tables, bits, split_bits, limit = 32, 8, 4, 10, 150
    centre = rng.standard_normal(dim)
    blob = centre + 0.6 * rng.standard_normal((1500, dim))
    rest = rng.standard_normal((1000, dim))
    x = np.vstack([blob, rest])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keys, subkeys = lsh.signature_keys(x, lsh.LshTables.draw(9, tables, bits, split_bits, dim))
    largest = max(np.unique(keys[:, t], return_counts=True)[1].max() for t in range(tables))
    assert largest > 750  # the planted giant

    i, j = np.triu_indices(len(x), 1)
    cos = np.einsum("ij,ij->i", x[i], x[j])
    truth = i[cos >= 0.9] * len(x) + j[cos >= 0.9]
    unsplit, _ = kernel_candidates(keys, subkeys, split_bits, limit=len(x))
    split, stats = kernel_candidates(keys, subkeys, split_bits, limit)
    assert stats.oversized > 0 and stats.windowed < 0.25 * stats.oversized  # most giants split to size
    assert np.isin(truth, unsplit).all()  # without a limit every true pair is a candidate here
    recall = np.isin(truth, split).mean()
    assert recall >= 0.78, recall  # measured 0.803 with these seeds
    assert len(split) < 0.4 * len(unsplit)  # and the work it saves (measured 0.35)


def test_unsplittable_bucket_is_bounded_by_the_window():
    """Identical vectors share every bit: pairing each with its next window - 1 rows."""
    n, window, split_bits = 1000, 50, 4
    zeros = np.zeros((n, 1), np.int64)
    stats, blocks = pairing.bucket_pairs(*entries_of(zeros, zeros), window, split_bits)
    pairs = sum(len(a) for a, _ in blocks)
    assert pairs == sum(min(window - 1, n - 1 - i) for i in range(n))  # ~ n * window, not n^2 / 2
    assert (stats.oversized, stats.windowed, stats.windowed_largest_rows) == (1, 1, n)


def test_windowed_pairs_do_not_depend_on_the_order_entries_arrive_in():
    """Entries reach a pairing task in whatever order the shuffle delivers them; a bucket
    that must be windowed still pairs the same rows (so reruns give the same pairs)."""
    rng = np.random.default_rng(3)
    n, tables, window = 300, 2, 20
    keys = np.zeros((n, tables), np.int64)
    subkeys = rng.integers(0, 2, size=(n, tables)).astype(np.int64)  # 150-row halves: still over 20
    table = np.tile(np.arange(tables), n)
    row = np.repeat(np.arange(n), tables)
    runs = []
    for seed in (0, 1):
        perm = np.random.default_rng(seed).permutation(n * tables)
        stats, blocks = pairing.bucket_pairs(table[perm], keys.reshape(-1)[perm], subkeys.reshape(-1)[perm],
                                             row[perm], window, 1)
        a, b = (np.concatenate(c) for c in zip(*blocks))
        runs.append(sorted(zip(a.tolist(), b.tolist())))
    assert stats.windowed == tables
    assert runs[0] == runs[1]
