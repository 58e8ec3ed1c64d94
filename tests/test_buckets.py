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


def test_effective_keys_never_collide_across_depths():
    rng = np.random.default_rng(1)
    n, tables, split_bits = 400, 3, 6
    keys = rng.integers(0, 8, (n, tables))
    subkeys = rng.integers(0, 2**split_bits, (n, tables))
    split_t, split_k, split_d = np.array([0, 1, 2, 0]), np.array([3, 3, 5, 4]), np.array([1, 6, 2, 3])
    eff = lsh.effective_keys(keys, subkeys, split_bits, split_t, split_k, split_d)
    depth = {(t, k): d for t, k, d in zip(split_t.tolist(), split_k.tolist(), split_d.tolist())}
    for t in range(tables):
        # Same effective key <=> same coarse key and, where split, same sub-key prefix.
        for i, j in itertools.combinations(range(n), 2):
            d = depth.get((t, keys[i, t]), 0)
            same = keys[i, t] == keys[j, t] and (subkeys[i, t] >> (split_bits - d)) == (subkeys[j, t] >> (split_bits - d))
            assert (eff[i, t] == eff[j, t]) == same


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
            got = [p for left, right in pairing.pair_blocks(partners, max_pairs) for p in zip(left.tolist(), right.tolist())]
            assert got == expected


def kernel_candidates(keys: np.ndarray, window: int | None) -> np.ndarray:
    """What the Spark stage computes: rows exploded per table, sorted, paired by the
    kernel. Pairs as sorted codes a * n + b."""
    n, tables = keys.shape
    table = np.repeat(np.arange(tables), n)
    key = keys.T.reshape(-1)
    row = np.tile(np.arange(n), tables)
    order = np.lexsort((row, key, table))
    chunk = pairing.SortedBuckets(table[order], key[order], row[order], keys[row[order]])
    found = [c.id_a * n + c.id_b for c in pairing.candidates_from_sorted_chunks([chunk], window=window)]
    codes = np.concatenate(found)
    assert len(np.unique(codes)) == len(codes)  # each pair once
    return np.sort(codes)


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
    planes = lsh.hyperplanes(9, tables, bits + split_bits, dim)
    keys, subkeys = lsh.signature_keys(x, planes, tables, split_bits)
    largest = max(np.unique(keys[:, t], return_counts=True)[1].max() for t in range(tables))
    assert largest > 750  # the planted giant

    tt, kk, ss = np.repeat(np.arange(tables), len(x)), keys.T.reshape(-1), subkeys.T.reshape(-1)
    combos, counts = np.unique(np.stack([tt, kk, ss]), axis=1, return_counts=True)
    big = {(t, k) for t in range(tables) for k, c in zip(*np.unique(keys[:, t], return_counts=True)) if c > limit}
    mask = np.array([(t, k) in big for t, k in zip(combos[0].tolist(), combos[1].tolist())])
    plan = split_depths(combos[0][mask], combos[1][mask], combos[2][mask], counts[mask], split_bits, limit)
    eff = lsh.effective_keys(keys, subkeys, split_bits, plan.table, plan.key, plan.depth)
    for t in range(tables):
        _, sizes = np.unique(eff[:, t], return_counts=True)
        assert sizes.max() <= max(limit, plan.largest_after.max())
    assert plan.still_oversized.mean() < 0.25  # most giants split to size; the rest are windowed

    i, j = np.triu_indices(len(x), 1)
    cos = np.einsum("ij,ij->i", x[i], x[j])
    truth = i[cos >= 0.9] * len(x) + j[cos >= 0.9]
    unsplit = kernel_candidates(keys, window=None)
    split = kernel_candidates(eff, window=limit)
    assert np.isin(truth, unsplit).all()  # without a limit every true pair is a candidate here
    recall = np.isin(truth, split).mean()
    assert recall >= 0.78, recall  # measured 0.803 with these seeds
    assert len(split) < 0.4 * len(unsplit)  # and the work it saves (measured 0.35)


def test_unsplittable_bucket_is_bounded_by_the_window():
    """Identical vectors share every bit: pairing each with its next window - 1 rows."""
    n, window, tables = 1000, 50, 2
    chunk = pairing.SortedBuckets(table=np.zeros(n, np.int64), key=np.zeros(n, np.int64),
                                  ids=np.arange(n, dtype=np.int64), keys=np.zeros((n, tables), np.int64))
    found = list(pairing.candidates_from_sorted_chunks([chunk], window=window))
    pairs = sum(len(c.id_a) for c in found)
    assert pairs == sum(min(window - 1, n - 1 - i) for i in range(n))  # ~ n * window, not n^2 / 2
    assert all((c.id_b - c.id_a < window).all() for c in found)
