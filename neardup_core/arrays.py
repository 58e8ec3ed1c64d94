"""NumPy helpers the kernels share."""

from __future__ import annotations

import numpy as np


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-d integer array, ascending: ``np.unique(values)``, found
    by one sort and a comparison of neighbours. The NumPy installed here (2.4.6) finds
    them through a hash table when ``np.unique`` is asked for nothing else (since 2.3),
    then sorts them: 2.2 s for 2.2M distinct random int64 on this machine, against 0.03 s
    for this (and 0.04 s for ``np.unique`` with ``return_counts``, which sorts)."""
    ordered = np.sort(np.asarray(values).reshape(-1))
    keep = np.empty(len(ordered), bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def isin(values: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``np.isin(values, others)`` for 1-d integer arrays, by one sort of ``others`` and a
    binary search. NumPy 2.4.6 sorts both together (a stable sort) unless the values'
    range is small: 1.1-1.2 s for 837,000 random int64 against as many on this machine,
    against 0.1-0.25 s for this."""
    values = np.asarray(values)
    ordered = np.sort(np.asarray(others).reshape(-1))
    if len(ordered) == 0:
        return np.zeros(values.shape, bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[at] == values
