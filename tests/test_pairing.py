import itertools

import numpy as np
import pytest

from neardup_core import pairing


def brute_force_pairs(ids, keys):
    """Every pair sharing a key in any table, with how many tables they share."""
    out = {}
    for i, j in itertools.combinations(range(len(ids)), 2):
        m = int((keys[i] == keys[j]).sum())
        if m:
            a, b = sorted((ids[i], ids[j]))
            out[(a, b)] = m
    return out


def sorted_bucket_rows(ids, keys):
    """What the Spark stage feeds the kernel: one row per (table, key, id), sorted."""
    n, num_tables = keys.shape
    rows = sorted((t, int(keys[i, t]), ids[i], i) for i in range(n) for t in range(num_tables))
    order = np.array([r[3] for r in rows], dtype=np.int64)
    return pairing.SortedBuckets(
        table=np.array([r[0] for r in rows], dtype=np.int32),
        key=np.array([r[1] for r in rows], dtype=np.int64),
        ids=np.array([r[2] for r in rows], dtype=object),
        keys=keys[order],
    )


def split(chunk, sizes):
    start = 0
    for size in sizes:
        yield pairing.SortedBuckets(*(c[start:start + size] for c in chunk))
        start += size
    yield pairing.SortedBuckets(*(c[start:] for c in chunk))


def collect(found):
    out = {}
    for c in found:
        for a, b, m in zip(c.id_a, c.id_b, c.tables_matched):
            assert (a, b) not in out, f"pair {(a, b)} emitted twice"
            out[(a, b)] = int(m)
    return out


@pytest.mark.parametrize("lengths", [[], [1], [2], [3], [1, 1, 1], [4, 1, 2, 5], [7]])
def test_pairs_within_runs_is_every_pair_in_each_run(lengths):
    left, right = pairing.pairs_within_runs(np.array(lengths, dtype=np.int64))
    expected, start = [], 0
    for s in lengths:
        expected += list(itertools.combinations(range(start, start + s), 2))
        start += s
    assert list(zip(left.tolist(), right.tolist())) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 9, 40, 151])
@pytest.mark.parametrize("num_tables,n_keys", [(1, 2), (3, 3), (5, 20)])
def test_candidates_match_brute_force(n, num_tables, n_keys):
    rng = np.random.default_rng(n * 31 + num_tables)
    keys = rng.integers(0, n_keys, size=(n, num_tables)).astype(np.int64)
    ids = [f"img{i:04d}" for i in rng.permutation(n)]
    found = collect(pairing.candidates_from_sorted_chunks([sorted_bucket_rows(ids, keys)]))
    assert found == brute_force_pairs(ids, keys)
    assert all(a < b for a, b in found)


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 64])
def test_buckets_split_across_chunks_give_the_same_pairs(cut):
    rng = np.random.default_rng(cut)
    n, num_tables = 60, 4
    keys = rng.integers(0, 3, size=(n, num_tables)).astype(np.int64)  # big buckets straddle cuts
    ids = [f"{i:03d}" for i in range(n)]
    rows = sorted_bucket_rows(ids, keys)
    sizes = [cut] * (len(rows.ids) // cut)
    assert collect(pairing.candidates_from_sorted_chunks(split(rows, sizes))) == brute_force_pairs(ids, keys)


def test_empty_chunks_are_harmless():
    keys = np.array([[1, 2], [1, 3]], dtype=np.int64)
    rows = sorted_bucket_rows(["a", "b"], keys)
    found = collect(pairing.candidates_from_sorted_chunks(split(rows, [0, 1, 0, 2, 0])))
    assert found == {("a", "b"): 1}


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
