"""Near copies: images whose embeddings are nearly equal (the same picture re-encoded,
resized, stripped of its metadata), collapsed onto one representative before LSH pairing.
Pure NumPy.

A flood of near copies (one image re-encoded a thousand times) lands in one bucket per
table that no sub-key can split, and its true pairs grow as the square of the flood
(docs/design.md, "Near copies"). So, like exact copies (:mod:`spark.exact`), near copies
are found cheaply and only their representative is paired:

1. Each row gets a *fine key*: the signs of :func:`fine_bits` random projections (seeded),
   enough bits that unrelated rows rarely share one. Rows of a key are near each other
   with high probability; nearly equal rows share a key unless a hyperplane passes
   between them.
2. Inside each key, :func:`leader_clusters` walks the rows in priority order
   (``groups.keep``): an unassigned row becomes a representative and takes every later
   unassigned row with ``cosine >= copy_cosine`` to it as its copy. So every copy is within
   ``copy_cosine`` of its representative (no chains), and the representative ranks first.
   A cluster of fewer than ``pairs.copy_min_rows`` rows is left alone (paired as usual):
   only floods are collapsed, so ordinary catalogs keep every pair.
3. Only representatives (and rows that are nobody's copy) are paired by LSH.

Groups stay those of the full graph. A copy c of r has an edge to r. An edge from c to an
image x outside its cluster that r does not reach (cos(r, x) < threshold) can exist only if
the angle between r and x's representative s is at most ``theta_t + alpha_r + alpha_s``
(triangle inequality on angles: alpha is a cluster's largest angle between a member and its
representative, 0 for a row without copies). Such representative pairs are *at risk*
(:func:`at_risk`); for each, every member of one cluster is compared with every member of
the other (:func:`cross_edges`) and the edges at or above the threshold are kept. With
those edges, :func:`preserved_edges` has the components of the full graph (tested against
brute force).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# Fine keys: at least this many bits, and about 16 rows' worth of keys per row.
MIN_FINE_BITS = 16
MAX_FINE_BITS = 62
# Slack on angle comparisons (radians), for float rounding of the cosines.
ANGLE_SLACK = 1e-6


def fine_bits(items: int) -> int:
    """Bits of the fine key for ``items`` rows: log2(items) + 4, so two unrelated rows share
    a key with probability about 1 / (16 * items), at least :data:`MIN_FINE_BITS`."""
    return int(min(MAX_FINE_BITS, max(MIN_FINE_BITS, math.ceil(math.log2(max(items, 2))) + 4)))


def fine_planes(seed: int, bits: int, dim: int) -> np.ndarray:
    """(bits, dim) float32 Gaussian hyperplanes of the fine key, from ``seed``."""
    return np.random.default_rng([seed, 0x6E656172]).standard_normal((bits, dim)).astype(np.float32)


def fine_keys(vectors: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """int64 fine key of each row of ``vectors`` (n, dim): bit j is the sign of plane j."""
    signs = (np.asarray(vectors, np.float32) @ planes.T) >= 0
    weights = np.left_shift(np.int64(1), np.arange(planes.shape[0], dtype=np.int64))
    return (signs.astype(np.int64) * weights).sum(axis=1)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (a zero row stays zero)."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class Clusters(NamedTuple):
    representative: np.ndarray  # int64 per row: the row standing for it (itself for a representative)
    cosine: np.ndarray  # float64 per row: cosine to its representative (1 for a representative)


def leader_clusters(vectors: np.ndarray, copy_cosine: float, min_rows: int = 2) -> Clusters:
    """Near-copy clusters of rows given in priority order (row 0 first).

    Each row not yet taken becomes a representative and takes every later row not yet
    taken with cosine >= ``copy_cosine`` to it. A cluster of fewer than ``min_rows`` rows
    is then dissolved (each of its rows stands for itself): only floods are collapsed.
    Time O(n * representatives * dim), memory O(n * dim).
    """
    x = unit_rows(vectors)
    n = len(x)
    rep = np.full(n, -1, dtype=np.int64)
    cos = np.ones(n, dtype=np.float64)
    for i in range(n):
        if rep[i] >= 0:
            continue
        rep[i] = i
        rest = np.flatnonzero(rep[i + 1:] < 0) + i + 1
        if len(rest) == 0:
            break
        sims = x[rest] @ x[i]
        near = sims >= copy_cosine
        rep[rest[near]] = i
        cos[rest[near]] = sims[near]
    small = np.bincount(rep, minlength=n)[rep] < min_rows
    rows = np.arange(n)
    rep[small], cos[small] = rows[small], 1.0
    return Clusters(rep, cos)


def radius(cosine_to_representative: np.ndarray) -> float:
    """A cluster's alpha: the largest angle (radians) between a member and its
    representative, from the members' cosines to it."""
    lowest = float(np.min(cosine_to_representative)) if len(cosine_to_representative) else 1.0
    return math.acos(min(1.0, max(-1.0, lowest)))


def at_risk(cosine: np.ndarray, alpha_a: np.ndarray, alpha_b: np.ndarray, threshold: float) -> np.ndarray:
    """Which representative pairs below ``threshold`` may still have members with an edge:
    those with some radius whose angle is at most ``theta_t + alpha_a + alpha_b``."""
    cosine = np.asarray(cosine, np.float64)
    reach = math.acos(threshold) + np.asarray(alpha_a, np.float64) + np.asarray(alpha_b, np.float64)
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    return (cosine < threshold) & (reach > 0) & (angle <= reach + ANGLE_SLACK)


def lowest_cosine_at_risk(threshold: float, largest_alpha: float) -> float:
    """The smallest cosine an at-risk pair can have when no radius exceeds
    ``largest_alpha``: what the pairing step must keep to find them."""
    return math.cos(min(math.pi, math.acos(threshold) + 2 * largest_alpha + ANGLE_SLACK))


def cross_edges(a: np.ndarray, b: np.ndarray, threshold: float, block: int = 1024
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with cosine(a[i], b[j]) >= ``threshold``, with the cosine (float64),
    by blocked matrix products: memory O(block * len(b))."""
    xa, xb = unit_rows(a), unit_rows(b)
    found_i, found_j, found_c = [], [], []
    for start in range(0, len(xa), block):
        sims = xa[start:start + block] @ xb.T
        i, j = np.nonzero(sims >= threshold)
        found_i.append(i + start)
        found_j.append(j)
        found_c.append(sims[i, j])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.clip(np.concatenate(found_c), -1.0, 1.0))


def preserved_edges(vectors: np.ndarray, representative: np.ndarray, cosine_to_rep: np.ndarray,
                    pair_a: np.ndarray, pair_b: np.ndarray, pair_cosine: np.ndarray, threshold: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The edges the collapsed job keeps, as the Spark stages compute them, for rows of
    ``vectors``: each copy with its representative; the representatives' pairs at or above
    ``threshold`` (``pair_*``: pairs of representatives, as LSH found them, scored at
    least down to :func:`lowest_cosine_at_risk`); and the members' edges of every at-risk
    pair. For tests and small data; the job does the same in Spark."""
    representative = np.asarray(representative, np.int64)
    rows = np.arange(len(representative))
    copies = rows[representative != rows]
    edges_a, edges_b = [copies], [representative[copies]]
    pair_a, pair_b, pair_cosine = (np.asarray(v) for v in (pair_a, pair_b, pair_cosine))
    keep = pair_cosine >= threshold
    edges_a.append(pair_a[keep])
    edges_b.append(pair_b[keep])
    alpha = np.zeros(len(representative))
    for r in np.unique(representative[copies]):
        alpha[r] = radius(np.asarray(cosine_to_rep)[representative == r])
    risky = at_risk(pair_cosine, alpha[pair_a], alpha[pair_b], threshold)
    for r, s in zip(pair_a[risky], pair_b[risky]):
        members_r, members_s = rows[representative == r], rows[representative == s]
        i, j, _ = cross_edges(vectors[members_r], vectors[members_s], threshold)
        edges_a.append(members_r[i])
        edges_b.append(members_s[j])
    return np.concatenate(edges_a).astype(np.int64), np.concatenate(edges_b).astype(np.int64)
