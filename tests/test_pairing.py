import collections
import itertools

import numpy as np
import pytest

from neardup_core import pairing

from .references import pairs_within_runs


def brute_force_pairs(ids, keys):
    """Every pair sharing a key in any table, with how many tables they share."""
    out = {}
    for i, j in itertools.combinations(range(len(ids)), 2):
        m = int((keys[i] == keys[j]).sum())
        if m:
            a, b = sorted((ids[i], ids[j]))
            out[(a, b)] = m
    return out


def entries_of(keys, subkeys=None):
    """What a pairing task holds: one entry per (row, table), shuffled."""
    n, num_tables = keys.shape
    rng = np.random.default_rng(n + num_tables)
    perm = rng.permutation(n * num_tables)
    table = np.tile(np.arange(num_tables), n)[perm]
    key = keys.reshape(-1)[perm]
    sub = (np.zeros_like(keys) if subkeys is None else subkeys).reshape(-1)[perm]
    row = np.repeat(np.arange(n), num_tables)[perm]
    return table, key, sub, row


def kernel_pairs(keys, max_bucket_size=10**6, subkeys=None, split_bits=0, max_pairs=1 << 20):
    """The kernel's pairs, copies merged: {(a, b): tables_matched}, and its stats."""
    stats, blocks = pairing.bucket_pairs(*entries_of(keys, subkeys), max_bucket_size, split_bits, max_pairs)
    found = list(blocks)
    a = np.concatenate([x for x, _ in found]) if found else np.zeros(0, np.int64)
    b = np.concatenate([y for _, y in found]) if found else np.zeros(0, np.int64)
    assert (a < b).all()
    assert stats.pair_copies == len(a)
    a, b, m = pairing.merge_copies(a, b)
    return dict(zip(zip(a.tolist(), b.tolist()), m.tolist())), stats


@pytest.mark.parametrize("lengths", [[], [1], [2], [3], [1, 1, 1], [4, 1, 2, 5], [7]])
def test_pairs_within_runs_is_every_pair_in_each_run(lengths):
    left, right = pairs_within_runs(np.array(lengths, dtype=np.int64))
    expected, start = [], 0
    for s in lengths:
        expected += list(itertools.combinations(range(start, start + s), 2))
        start += s
    assert list(zip(left.tolist(), right.tolist())) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 9, 40, 151])
@pytest.mark.parametrize("num_tables,n_keys", [(1, 2), (3, 3), (5, 20)])
@pytest.mark.parametrize("max_pairs", [1, 7, 1 << 20])
def test_candidates_match_brute_force(n, num_tables, n_keys, max_pairs):
    rng = np.random.default_rng(n * 31 + num_tables)
    keys = rng.integers(0, n_keys, size=(n, num_tables)).astype(np.int64)
    found, stats = kernel_pairs(keys, max_pairs=max_pairs)
    assert found == brute_force_pairs(list(range(n)), keys)
    assert stats.oversized == 0


def test_merge_copies_counts_each_pair():
    a = np.array([5, 1, 5, 1, 1, 2])
    b = np.array([9, 3, 9, 3, 4, 3])
    ma, mb, m = pairing.merge_copies(a, b)
    assert list(zip(ma.tolist(), mb.tolist(), m.tolist())) == [(1, 3, 2), (1, 4, 1), (2, 3, 1), (5, 9, 2)]


def test_keys_beyond_48_bits_and_negative_keys_sort_the_same():
    keys = np.array([[1 << 50], [-3], [1 << 50], [-3], [7]], dtype=np.int64)
    found, _ = kernel_pairs(keys)
    assert found == {(0, 2): 1, (1, 3): 1}


@pytest.mark.parametrize("num_tables", [1, 4, 20])
def test_jaccard_of_token_sets(num_tables):
    rng = np.random.default_rng(num_tables)
    for _ in range(20):
        a = rng.integers(0, 3, num_tables)
        b = rng.integers(0, 3, num_tables)
        sa, sb = set(enumerate(a)), set(enumerate(b))
        expected = len(sa & sb) / len(sa | sb)
        m = int((a == b).sum())
        assert pairing.jaccard(np.array([m]), num_tables)[0] == pytest.approx(expected)


@pytest.mark.parametrize("n,dim", [(1, 1), (2, 3), (33, 1280)])
def test_rowwise_cosine_matches_float64_reference(n, dim):
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((n, dim)).astype(np.float32)
    b = (a + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    expected = [float(np.dot(x, y) / (np.linalg.norm(x.astype(np.float64)) * np.linalg.norm(y.astype(np.float64))))
                for x, y in zip(a.astype(np.float64), b.astype(np.float64))]
    np.testing.assert_allclose(pairing.rowwise_cosine(a, b), expected, rtol=0, atol=1e-12)


def test_rowwise_cosine_of_zero_vector_is_zero():
    assert pairing.rowwise_cosine(np.zeros((1, 4)), np.ones((1, 4)))[0] == 0.0


def test_merge_copies_of_row_numbers_beyond_31_bits_sort_the_same():
    """Row numbers from monotonically_increasing_id (partition << 33) take the lexsort path."""
    rng = np.random.default_rng(2)
    small_a, small_b = rng.integers(0, 40, 500), rng.integers(40, 80, 500)
    big = np.array([3, 1 << 33, (1 << 33) + 5, 1 << 40] * 20, dtype=np.int64)
    for a, b in ((small_a, small_b), (big[small_a], big[small_b]), (small_a, big[small_b])):
        expected = sorted(collections.Counter(zip(a.tolist(), b.tolist())).items())
        ma, mb, m = pairing.merge_copies(a, b)
        assert list(zip(zip(ma.tolist(), mb.tolist()), m.tolist())) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 9, 151])
@pytest.mark.parametrize("num_tables,n_keys", [(1, 2), (5, 20), (19, 30)])
@pytest.mark.parametrize("tables_per_step,threads", [(8, 1), (1, 1), (3, 2), (64, 2)])
def test_all_candidates_in_one_process_match_brute_force(n, num_tables, n_keys, tables_per_step, threads):
    """The one-task path's kernel: hashing output in, distinct pairs with tables_matched
    out, whatever the tables bucketed per step and the threads."""
    rng = np.random.default_rng(n * 7 + num_tables)
    keys = rng.integers(0, n_keys, size=(n, num_tables)).astype(np.int64)
    stats, a, b, matched = pairing.all_candidates(keys, np.zeros_like(keys), 10**6, 0, threads, tables_per_step)
    assert (a < b).all() and (np.diff(a * n + b) > 0).all()  # sorted, each pair once
    assert dict(zip(zip(a.tolist(), b.tolist()), matched.tolist())) == brute_force_pairs(list(range(n)), keys)
    assert stats.pair_copies == int(matched.sum())


def test_all_candidates_splits_like_the_shuffled_kernel():
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 3, size=(400, 4)).astype(np.int64)  # buckets of ~130 rows
    subkeys = rng.integers(0, 16, size=(400, 4)).astype(np.int64)
    expected, expected_stats = kernel_pairs(keys, 40, subkeys, 4)
    for tables_per_step, threads in ((8, 1), (1, 2), (3, 2)):
        stats, a, b, matched = pairing.all_candidates(keys, subkeys, 40, 4, threads, tables_per_step)
        assert stats.oversized > 0 and stats == expected_stats
        assert dict(zip(zip(a.tolist(), b.tolist()), matched.tolist())) == expected


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_pair_cosines_match_float64_reference(chunk):
    rng = np.random.default_rng(chunk)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    a, b = rng.integers(0, 50, 200), rng.integers(0, 50, 200)
    x64 = x.astype(np.float64)
    expected = [x64[i] @ x64[j] / (np.linalg.norm(x64[i]) * np.linalg.norm(x64[j])) for i, j in zip(a, b)]
    np.testing.assert_allclose(pairing.pair_cosines(x, a, b, chunk), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pairs", [0, 1, 127, 128, 129, 1000])
@pytest.mark.parametrize("two_matrices", [False, True])
def test_pair_cosines_equal_gathered_rows_bit_for_bit(pairs, two_matrices):
    """Each row's length computed once, blocks of any size: the same float64 values as
    rowwise_cosine of the gathered rows, so an incremental run's cosines equal a full run's."""
    rng = np.random.default_rng(pairs)
    x = rng.standard_normal((300, 1280)).astype(np.float32)
    x[7] = 0.0  # a zero vector scores 0
    x_b = rng.standard_normal((40, 1280)).astype(np.float32) if two_matrices else x
    a, b = rng.integers(0, 300, pairs), rng.integers(0, len(x_b), pairs)
    a[:1] = 7
    want = pairing.rowwise_cosine(x[a], x_b[b], block_rows=10**6)
    for chunk in (1, 3, 128, 4096):
        got = pairing.pair_cosines(x, a, b, chunk, vectors_b=x_b if two_matrices else None)
        np.testing.assert_array_equal(got, want)
    threaded = pairing.pair_cosines(np.repeat(x, 2, axis=0), np.tile(a, 400), np.tile(b, 400), threads=3,
                                    vectors_b=np.repeat(x_b, 2, axis=0) if two_matrices else None)
    np.testing.assert_array_equal(threaded, np.tile(pairing.rowwise_cosine(x[a // 2], x_b[b // 2]), 400))
    for block_rows in (1, 5, 128):
        np.testing.assert_array_equal(pairing.rowwise_cosine(x[a], x_b[b], block_rows), want)


@pytest.mark.parametrize("giant", [0, 300])
def test_candidates_of_vectors_hash_sub_keys_only_when_a_bucket_needs_them(giant):
    """Hashing without sub-keys first (and again with them only for an oversized bucket)
    gives what hashing with them from the start gives."""
    from neardup_core import lsh

    rng = np.random.default_rng(giant)
    x = rng.standard_normal((400, 16))
    x[:giant] = x[0] + 0.05 * rng.standard_normal((giant, 16))  # one bucket of ~300 rows in most tables
    tables = lsh.LshTables.draw(3, 6, 5, 4, 16)
    keys, subkeys = lsh.signature_keys(x, tables)
    expected = pairing.all_candidates(keys, subkeys, 100, 4)
    found = pairing.candidates_of_vectors(x, tables, 100, threads=2)
    assert found[0] == expected[0] and (found[0].oversized > 0) == (giant > 0)
    for got, want in zip(found[1:], expected[1:]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threshold", [-1.0, 0.5, 0.9, 1.0])
def test_near_pairs_keep_exactly_the_pairs_at_the_threshold(threshold):
    rng = np.random.default_rng(1)
    n = 101
    a, b = rng.integers(0, 50, n), rng.integers(50, 100, n)
    cosine = np.round(rng.uniform(-1, 1, n), 1)  # ties at the threshold
    matched = rng.integers(1, 9, n).astype(np.int32)
    near = pairing.near_pairs(a, b, cosine, matched, 8, threshold)
    keep = [i for i in range(n) if cosine[i] >= threshold]
    np.testing.assert_array_equal(near.a, a[keep])
    np.testing.assert_array_equal(near.b, b[keep])
    np.testing.assert_array_equal(near.cosine, cosine[keep])
    assert near.tables_matched.dtype == np.int32 and list(near.tables_matched) == list(matched[keep])
    assert list(near.jaccard) == [m / (16 - m) for m in matched[keep]]


def test_pair_ends_are_ordered_by_the_byte_order_of_their_ids():
    import pyarrow as pa

    x = pa.array(["b", "a", "é", "Z", "same", "10"])
    y = pa.array(["a", "b", "e", "a", "same", "9"])
    named = pairing.ordered_by_id(x, y, pa.array([f"p{v}" for v in x.to_pylist()]),
                                  pa.array([f"p{v}" for v in y.to_pylist()]))
    for i, (u, v) in enumerate(zip(x.to_pylist(), y.to_pylist())):
        lo, hi = sorted([u, v], key=lambda s: s.encode())
        assert (named["id_a"][i].as_py(), named["id_b"][i].as_py()) == (lo, hi)
        assert (named["path_a"][i].as_py(), named["path_b"][i].as_py()) == (f"p{lo}", f"p{hi}")


def test_scores_from_keys_equal_the_bucket_path_when_nothing_splits():
    """tables_matched from the keys equals the copies merge_copies counts from buckets."""
    from neardup_core import lsh

    rng = np.random.default_rng(8)
    x = rng.standard_normal((80, 16))
    x[40:] = x[:40] + 0.3 * rng.standard_normal((40, 16))
    tables = lsh.LshTables.draw(2, 12, 4, 0, 16)
    keys, subkeys = lsh.signature_keys(x, tables)
    _, a, b, matched = pairing.all_candidates(keys, subkeys, 10**6, 0)
    expected = pairing.near_pairs(a, b, pairing.pair_cosines(x, a, b), matched, 12, 0.5)
    got = pairing.score_with_keys(x[a], x[b], keys[a], keys[b], 0.5)
    np.testing.assert_array_equal(got.a, np.flatnonzero(pairing.pair_cosines(x, a, b) >= 0.5))
    np.testing.assert_array_equal(got.tables_matched, expected.tables_matched)
    np.testing.assert_array_equal(got.cosine, expected.cosine)
    np.testing.assert_array_equal(got.jaccard, expected.jaccard)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("pairs", [0, 1, 5, 40])
def test_row_pairs_score_like_gathered_rows(chunk, pairs):
    rng = np.random.default_rng(chunk * 100 + pairs)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    x[5] = x[4]  # a pair at cosine 1
    keys = rng.integers(0, 3, size=(30, 6))
    a = rng.integers(0, 30, pairs)
    b = (a + 1 + rng.integers(0, 29, pairs)) % 30
    if pairs:
        a[0], b[0] = 4, 5
    got = pairing.score_row_pairs(x, keys, a, b, 0.1, chunk_pairs=chunk)
    want = pairing.score_with_keys(x[a], x[b], keys[a], keys[b], 0.1)
    np.testing.assert_array_equal(got.a, a[want.a])
    np.testing.assert_array_equal(got.b, b[want.b])
    np.testing.assert_array_equal(got.tables_matched, want.tables_matched)
    np.testing.assert_allclose(got.cosine, want.cosine, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.jaccard, want.jaccard, rtol=0, atol=1e-12)
    assert got.tables_matched.dtype == np.int32 and got.cosine.dtype == np.float64
    if pairs:
        assert (4, 5) in set(zip(got.a.tolist(), got.b.tolist()))
    # The shared tables counted by the caller instead of compared here: the same pairs.
    counted = pairing.score_row_pairs(x, keys, a, b, 0.1, chunk_pairs=chunk,
                                      tables_matched=(keys[a] == keys[b]).sum(axis=1))
    for column in got._fields:
        np.testing.assert_array_equal(getattr(counted, column), getattr(got, column))
