"""Random-hyperplane LSH for cosine similarity (Charikar, 2002). Pure NumPy.

Each of ``num_tables`` tables owns ``bits_per_table`` random hyperplanes through the
origin. An embedding's bit for a plane is the sign of its projection on the plane's
normal; a table's bucket key packs its bits into one non-negative int64. Two vectors at
angle theta agree on one bit with probability ``1 - theta / pi``.

The hyperplanes are drawn on the driver from a seed and shipped to the executors as data,
so every executor hashes with the same planes whatever NumPy version it runs.

Each table may own ``split_bits`` more planes than its key uses. They give every row a
*sub-key* per table, which splits a bucket that grew past ``lsh.max_bucket_size`` into
smaller ones by more bits of the same signature (:func:`effective_keys`).
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
    if planes.shape[0] % num_tables:
        raise ValueError(f"{planes.shape[0]} planes do not split into {num_tables} tables")
    return signature_keys(embeddings, planes, num_tables, split_bits=0)[0]


def signature_keys(embeddings: np.ndarray, planes: np.ndarray, num_tables: int,
                   split_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket keys and split sub-keys, each (n, num_tables) int64.

    ``planes`` has ``num_tables * (k + split_bits)`` rows, table-major; in each table the
    first k planes make the key and the next ``split_bits`` the sub-key.
    """
    bits_and_split = planes.shape[0] // num_tables
    k = bits_and_split - split_bits
    if k < 1:
        raise ValueError(f"{planes.shape[0]} planes leave no key bits for {num_tables} tables "
                         f"with {split_bits} split bits")
    x = np.asarray(embeddings, dtype=np.float64).reshape(-1, planes.shape[1])
    bits = ((x @ planes.T) > 0).reshape(len(x), num_tables, bits_and_split).astype(np.int64)
    key_weights = np.left_shift(np.int64(1), np.arange(k, dtype=np.int64))
    # Sub-key bits most significant first, so its top d bits are the first d split planes.
    split_weights = np.left_shift(np.int64(1), np.arange(split_bits - 1, -1, -1, dtype=np.int64))
    return bits[:, :, :k] @ key_weights, bits[:, :, k:] @ split_weights


DEPTH_SHIFT = 58  # keys use at most 48 + 10 bits below this; the depth sits above


def effective_keys(keys: np.ndarray, subkeys: np.ndarray, split_bits: int, split_tables: np.ndarray,
                   split_keys: np.ndarray, split_depth: np.ndarray) -> np.ndarray:
    """The keys rows are bucketed by: a bucket listed in (``split_tables``, ``split_keys``)
    is split by the first ``split_depth`` bits of each row's sub-key.

    A split key is ``depth << 58 | key << depth | top depth bits of the sub-key``, so it
    can never equal an unsplit key or a key split to another depth.

    Args:
        keys, subkeys: (n, L) from :func:`signature_keys`.
        split_tables, split_keys, split_depth: one entry per bucket to split, any order.

    Returns:
        (n, L) int64.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if len(split_tables) == 0:
        return keys.copy()
    n, tables = keys.shape
    # Look each (table, key) up in the sorted list of split buckets.
    token = (np.arange(tables, dtype=np.int64)[None, :] << 48) | keys  # keys < 2**48, tables < 256
    wanted = (np.asarray(split_tables, dtype=np.int64) << 48) | np.asarray(split_keys, dtype=np.int64)
    order = np.argsort(wanted)
    wanted, depths = wanted[order], np.asarray(split_depth, dtype=np.int64)[order]
    at = np.minimum(np.searchsorted(wanted, token), len(wanted) - 1)
    depth = np.where(wanted[at] == token, depths[at], 0)
    prefix = np.asarray(subkeys, dtype=np.int64) >> (split_bits - depth)
    return np.where(depth > 0, (depth << DEPTH_SHIFT) | (keys << depth) | prefix, keys)
