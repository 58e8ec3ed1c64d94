"""Random-hyperplane LSH for cosine similarity (Charikar, 2002). Pure NumPy.

Each of ``num_tables`` tables owns ``bits_per_table`` random hyperplanes through the
origin. An embedding's bit for a plane is the sign of its projection on the plane's
normal; a table's bucket key packs its bits into one non-negative int64. Two vectors at
angle theta agree on one bit with probability ``1 - theta / pi``.

The hyperplanes are drawn on the driver from a seed and shipped to the executors as data,
so every executor hashes with the same planes whatever NumPy version it runs.
"""

from __future__ import annotations

import numpy as np


def hyperplanes(seed: int, num_tables: int, bits_per_table: int, dim: int) -> np.ndarray:
    """Normals of the hyperplanes, one row per (table, bit), table-major.

    Args:
        seed: the same seed gives the same planes, so two runs give the same keys.
        num_tables, bits_per_table: L and k; 1 <= k <= 63 so that a key fits an int64.
        dim: embedding dimension.

    Returns:
        float64 array of shape (num_tables * bits_per_table, dim).
    """
    if not 1 <= bits_per_table <= 63:
        raise ValueError(f"bits_per_table must be in 1..63, got {bits_per_table}")
    if num_tables < 1 or dim < 1:
        raise ValueError(f"num_tables and dim must be positive, got {num_tables} and {dim}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_tables * bits_per_table, dim))


def bucket_keys(embeddings: np.ndarray, planes: np.ndarray, num_tables: int) -> np.ndarray:
    """One bucket key per table for each embedding.

    Args:
        embeddings: (n, dim) array, any float dtype; projections are taken in float64 so
            that the signs do not depend on the input precision.
        planes: (num_tables * bits_per_table, dim) from :func:`hyperplanes`.
        num_tables: L; the planes' rows are split into L consecutive groups.

    Returns:
        int64 array (n, num_tables); bit j of key t is 1 when the projection on plane
        ``t * bits_per_table + j`` is positive. Memory: O(n * L * k) booleans.
    """
    n_planes, dim = planes.shape
    if n_planes % num_tables:
        raise ValueError(f"{n_planes} planes do not split into {num_tables} tables")
    x = np.asarray(embeddings, dtype=np.float64).reshape(-1, dim)
    bits = (x @ planes.T) > 0
    k = n_planes // num_tables
    weights = np.left_shift(np.int64(1), np.arange(k, dtype=np.int64))
    return bits.reshape(len(x), num_tables, k).astype(np.int64) @ weights
