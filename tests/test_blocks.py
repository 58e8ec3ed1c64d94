"""Packed blocks: what a task packs for a partition is what that partition unpacks."""

import numpy as np
import pytest

from neardup_core import blocks


@pytest.mark.parametrize("n,parts", [(0, 3), (1, 1), (7, 3), (1000, 13), (5000, 70000)])
def test_route_then_unpack_gives_every_record_to_its_partition(n, parts):
    rng = np.random.default_rng(n)
    records = np.zeros(n, dtype=blocks.vector_dtype(5))
    records["row"] = rng.integers(0, 2**40, n)
    records["vec"] = rng.standard_normal((n, 5)).astype(np.float32)
    dest = blocks.spread(records["row"], parts)
    assert ((dest >= 0) & (dest < parts)).all()
    names, blobs = blocks.route(records, dest)
    assert len(set(names.tolist())) == len(names)  # one block per partition
    got = {int(p): blocks.unpack([blob], records.dtype) for p, blob in zip(names, blobs)}
    for p in range(parts):
        expected = records[dest == p]
        mine = got.get(p, np.zeros(0, records.dtype))
        np.testing.assert_array_equal(np.sort(mine, order="row"), np.sort(expected, order="row"))


def test_a_bucket_goes_to_one_partition_and_buckets_spread():
    rng = np.random.default_rng(1)
    table = rng.integers(0, 50, 200_000)
    key = rng.integers(0, 1 << 20, 200_000)
    part = blocks.bucket_part(table, key, 16)
    again = blocks.bucket_part(table.copy(), key.copy(), 16)
    np.testing.assert_array_equal(part, again)
    counts = np.bincount(part, minlength=16)
    assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()


def test_consecutive_row_numbers_spread_evenly():
    counts = np.bincount(blocks.spread(np.arange(100_000), 7), minlength=7)
    assert counts.max() < 1.05 * counts.mean()
