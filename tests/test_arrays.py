"""NumPy helpers against NumPy's own answer on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from neardup_core.arrays import distinct_sorted, isin


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 1000])
@pytest.mark.parametrize("spread", [1, 5, 1 << 40])
def test_distinct_sorted_is_np_unique(n, spread):
    values = np.random.default_rng(n * 7 + spread % 97).integers(-spread, spread, n, dtype=np.int64)
    got = distinct_sorted(values)
    np.testing.assert_array_equal(got, np.unique(values))
    assert got.dtype == np.int64


def test_distinct_sorted_flattens_and_keeps_the_input():
    values = np.array([[3, 1], [3, 2]], np.int64)
    np.testing.assert_array_equal(distinct_sorted(values), [1, 2, 3])
    np.testing.assert_array_equal(values, [[3, 1], [3, 2]])


@pytest.mark.parametrize("n,m", [(0, 0), (0, 3), (3, 0), (1, 1), (2, 3), (7, 1000), (1000, 7), (1000, 1000)])
@pytest.mark.parametrize("spread", [1, 5, 1 << 40])
def test_isin_is_np_isin(n, m, spread):
    rng = np.random.default_rng(n * 31 + m + spread % 97)
    values, others = (rng.integers(-spread, spread, size, dtype=np.int64) for size in (n, m))
    got = isin(values, others)
    np.testing.assert_array_equal(got, np.isin(values, others))
    assert got.dtype == bool and got.shape == values.shape
