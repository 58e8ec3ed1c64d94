"""Choosing LSH parameters from what a user knows: a cosine threshold and a recall target.

Random-hyperplane hashing (Charikar 2002): a random hyperplane separates two vectors at
angle theta with probability theta / pi. A table of k bits puts a pair in one bucket when
all k agree; a pair is a candidate when it shares a bucket in at least one of L tables.
One small function per formula; everything here is pure NumPy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import blocks
from .config import MAX_BITS_PER_TABLE, MAX_TABLES, LshConfig

# Plans are priced in core-seconds of the pairing stage, from unit costs measured on the
# development machine (x86, 2 cores, NumPy with OpenBLAS, Spark local mode; see the
# docs/performance.md, "Pairing at scale"). Only their ratios steer the choice; the estimate is printed
# by `neardup plan` and kept in the manifest beside what the run took.
PROJECTION_SECONDS = 3.6e-11  # one multiply-add of hashing (float32, one core, packing included)
ENTRY_SECONDS = 0.75e-6  # one bucket entry: packed, shuffled, sorted into its bucket and paired
CANDIDATE_SECONDS = 2e-6  # one candidate pair: merged with its copies, looked up, scored
CANDIDATE_BYTE_SECONDS = 12.5e-9  # per byte a candidate carries to its second row's task

# Bytes in the packed records of neardup_core.blocks: a bucket entry is table, sub-key,
# key, row (20); each copy of a candidate pair leaves its bucket as two row numbers (16);
# each distinct candidate goes on to its second row's task with a count and its first
# row's float32 vector (20 + 4 * dim).
BUCKET_ENTRY_BYTES = blocks.ENTRY.itemsize
PAIR_COPY_BYTES = blocks.PAIR.itemsize
HALF_PAIR_BYTES = blocks.half_dtype(0).itemsize


def vector_bytes(dim: int) -> int:
    """Bytes of one packed row and its float32 vector (8 + 4 * dim)."""
    return blocks.vector_dtype(dim).itemsize


def bit_collision_probability(cosine: np.ndarray | float) -> np.ndarray:
    """P(one random hyperplane puts both vectors on the same side) = 1 - theta / pi."""
    return 1.0 - np.arccos(np.clip(cosine, -1.0, 1.0)) / np.pi


def table_collision_probability(cosine: np.ndarray | float, bits: int) -> np.ndarray:
    """P(a pair shares the bucket of one table of ``bits`` hyperplanes) = p ** k."""
    return bit_collision_probability(cosine) ** bits


def candidate_probability(cosine: np.ndarray | float, bits: int, tables: int) -> np.ndarray:
    """P(a pair shares a bucket in at least one of ``tables`` tables) = 1 - (1 - p**k) ** L."""
    return candidate_probability_of_bit(bit_collision_probability(cosine), bits, tables)


def candidate_probability_of_bit(p: np.ndarray | float, bits: int, tables: int) -> np.ndarray:
    """:func:`candidate_probability` from p, the :func:`bit_collision_probability`: what a
    planner pricing many (k, L) computes once."""
    return -np.expm1(tables * np.log1p(-np.minimum(np.asarray(p) ** bits, 1 - 1e-16)))


def tables_for_recall(cosine: float, bits: int, target_recall: float) -> int:
    """The fewest tables at which a pair at ``cosine`` is a candidate with probability
    >= ``target_recall``: L = ceil(log(1 - recall) / log(1 - p**k))."""
    p = float(table_collision_probability(cosine, bits))
    if p >= 1.0:
        return 1
    if p <= 0.0:
        return math.inf
    return max(1, math.ceil(math.log1p(-target_recall) / math.log1p(-p) - 1e-9))


def sample_pair_cosines(sample: np.ndarray, max_pairs: int = 2_000_000, seed: int = 0,
                        block: int = 100_000) -> np.ndarray:
    """Cosines of the pairs of a sample of embeddings (rows of unit length): all pairs, or
    ``max_pairs`` of them drawn at random. They stand for the catalog's pair distribution.

    Memory: the result plus O(block * dim) floats at a time.
    """
    n = len(sample)
    if n < 2:
        return np.zeros(0)
    x = np.asarray(sample, dtype=np.float64)
    if n * (n - 1) // 2 <= max_pairs:
        rows = max(1, block // n)
        parts = []
        for start in range(0, n - 1, rows):
            gram = x[start:start + rows] @ x.T  # (rows, n)
            i, j = np.nonzero(np.arange(n)[None, :] > np.arange(start, start + len(gram))[:, None])
            parts.append(gram[i, j])
        return np.concatenate(parts)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, max_pairs)
    j = (i + rng.integers(1, n, max_pairs)) % n
    return np.concatenate([np.einsum("ij,ij->i", x[i[s:s + block]], x[j[s:s + block]])
                           for s in range(0, max_pairs, block)])


def expected_candidates(pair_cosines: np.ndarray, items: int, bits: int, tables: int,
                        bit_probabilities: np.ndarray | None = None) -> float:
    """Expected candidate pairs among ``items`` vectors whose pairs' cosines are
    distributed like ``pair_cosines``: C(items, 2) * mean P(candidate). ``bit_probabilities``:
    their :func:`bit_collision_probability`, if already computed."""
    if len(pair_cosines) == 0:
        return 0.0
    p = bit_collision_probability(pair_cosines) if bit_probabilities is None else bit_probabilities
    return items * (items - 1) / 2 * float(np.mean(candidate_probability_of_bit(p, bits, tables)))


def shuffle_bytes_per_item(tables: int) -> float:
    """Bytes the bucketing shuffle moves per item, before compression: one entry per
    table. Embeddings, ids and the other tables' keys are never in this shuffle."""
    return tables * BUCKET_ENTRY_BYTES


def candidate_shuffle_bytes(candidates: float, dim: int) -> float:
    """Bytes the two scoring steps move for ``candidates`` pairs of ``dim``-float32
    embeddings (copies of a pair from several tables are rare and not counted)."""
    return candidates * (PAIR_COPY_BYTES + HALF_PAIR_BYTES + 4 * dim)


def pairing_seconds(items: int, dim: int, bits: int, tables: int, split_bits: int, candidates: float) -> float:
    """Estimated core-seconds of the pairing stage: hashing (items * planes * dim
    multiply-adds), bucket entries (items * tables), and scoring candidates."""
    planes = tables * (bits + split_bits)
    return (items * planes * dim * PROJECTION_SECONDS + items * tables * ENTRY_SECONDS
            + candidates * (CANDIDATE_SECONDS + (HALF_PAIR_BYTES + 4 * dim) * CANDIDATE_BYTE_SECONDS))


# Bytes the one-task pairing holds per candidate pair at its peak: the copies as two row
# numbers, their sort order, the merged pair, its count and its cosine.
ONE_TASK_CANDIDATE_BYTES = 64


def one_task_bytes(items: int, dim: int, tables: int, candidates: float) -> float:
    """Memory of pairing ``items`` vectors in one task (``spark.pairing``'s one-task path):
    the vectors twice (Arrow's column and the matrix), each row's key in every table and
    as much again for the tables being bucketed and hashed, and the candidates. At 100,000
    x 256 and 137 tables: 424 MB; 360 MB measured above the process's size before it."""
    return items * (8 * dim + 16 * tables) + candidates * ONE_TASK_CANDIDATE_BYTES


def pairing_tasks(items: int, dim: int, tables: int, candidates: float, task_bytes: int, min_tasks: int,
                  one_task_limit: int = 0) -> tuple[int, int] | None:
    """Tasks for the bucket step and for the two scoring steps of the shuffled pairing
    stage, so that each task holds about ``task_bytes`` of packed data and there are at
    least ``min_tasks`` of each; or None when pairing everything in one task holds at most
    ``one_task_limit`` bytes (:func:`one_task_bytes`): then one task pairs everything, and
    the shuffled stage's fixed cost (three shuffles, a dozen Spark jobs) is not paid. At
    100,000 x 256 on 2 cores that stage took 17.2 s and the one task 6.3 s.

    The bucket step holds ``items * shuffle_bytes_per_item(tables)``; the scoring steps
    hold the vectors and, for each of ``candidates`` pairs, a half pair with its first
    row's vector.
    """
    if one_task_bytes(items, dim, tables, candidates) <= one_task_limit:
        return None
    entry_bytes = items * shuffle_bytes_per_item(tables)
    row_bytes = items * vector_bytes(dim) + candidates * (HALF_PAIR_BYTES + 4 * dim)
    return max(min_tasks, math.ceil(entry_bytes / task_bytes)), max(min_tasks, math.ceil(row_bytes / task_bytes))


class LshPlan(NamedTuple):
    bits_per_table: int
    num_tables: int
    recall_at_threshold: float  # P(candidate) for a pair exactly at the threshold
    expected_candidates: float
    bucket_shuffle_bytes: float  # items * shuffle_bytes_per_item
    candidate_shuffle_bytes: float
    cost: float  # estimated core-seconds (pairing_seconds): what the plan minimises


def price_plan(bits: int, tables: int, cosine_threshold: float, candidates: float, items: int, dim: int,
               split_bits: int = 0) -> LshPlan:
    """The plan (``bits``, ``tables``) for ``items`` vectors of ``dim`` floats that make
    about ``candidates`` candidate pairs: its recall at ``cosine_threshold``, shuffle bytes
    and cost (:func:`pairing_seconds`)."""
    return LshPlan(bits, tables, float(candidate_probability(cosine_threshold, bits, tables)), candidates,
                   items * shuffle_bytes_per_item(tables), candidate_shuffle_bytes(candidates, dim),
                   pairing_seconds(items, dim, bits, tables, split_bits, candidates))


def scaled_candidates(candidates: float, items: int, to_items: int) -> float:
    """A plan's expected candidate pairs for ``items`` vectors, for ``to_items`` vectors
    distributed alike: they grow with the pairs, C(n, 2)."""
    return candidates * to_items * (to_items - 1) / max(items * (items - 1), 1)


def plan_lsh(cosine_threshold: float, target_recall: float, pair_cosines: np.ndarray, items: int, dim: int,
             bits: int | None = None, tables: int | None = None, max_tables: int = 256,
             max_bits: int = 48, split_bits: int = 0, threads: int = 1) -> LshPlan:
    """The cheapest (bits, tables) whose recall at ``cosine_threshold`` is >= ``target_recall``.

    For each k, the fewest tables that reach the recall (:func:`tables_for_recall`); the
    cost of a choice is its estimated time (:func:`pairing_seconds`): hashing with
    L * (k + ``split_bits``) planes, L bucket entries per item, and the candidates, whose
    number is estimated from ``pair_cosines`` (a sample of the catalog's pairs, so
    clustered real embeddings are priced as they are). A given ``bits`` or
    ``tables`` is kept and only the other is chosen; with both given, the plan just
    prices them (its recall may then fall short of the target). ``threads``: how many
    choices are priced at once; the plan is the same for any number.

    Raises:
        ValueError: no choice within the limits reaches the target.
    """
    same_side = bit_collision_probability(pair_cosines)  # once, not once per plan priced

    def priced(k: int, n_tables: int) -> LshPlan:
        return price_plan(k, n_tables, cosine_threshold,
                          expected_candidates(pair_cosines, items, k, n_tables, same_side), items, dim, split_bits)

    if bits is not None and tables is not None:
        return priced(bits, tables)
    if tables is not None:
        # More bits, fewer candidates: the most bits that still reach the recall.
        reaching = [k for k in range(1, max_bits + 1)
                    if candidate_probability(cosine_threshold, k, tables) >= target_recall]
        if not reaching:
            raise ValueError(f"lsh.num_tables={tables} cannot reach lsh.target_recall={target_recall} at "
                             f"pairs.cosine_threshold={cosine_threshold} with any bits_per_table; use more tables")
        return priced(max(reaching), tables)
    choices = []
    for k in [bits] if bits is not None else range(1, max_bits + 1):
        n_tables = tables_for_recall(cosine_threshold, k, target_recall)
        if n_tables > max_tables:
            if bits is not None:
                raise ValueError(f"lsh.bits_per_table={bits} needs {n_tables} tables for lsh.target_recall="
                                 f"{target_recall} at pairs.cosine_threshold={cosine_threshold}; "
                                 f"the limit is {max_tables}")
            break  # more bits need still more tables
        choices.append((k, n_tables))
    if not choices:
        raise ValueError(
            f"no LSH plan reaches lsh.target_recall={target_recall} at pairs.cosine_threshold="
            f"{cosine_threshold} with at most {max_tables} tables; lower one of them"
        )
    # Each choice's price is a pass over all the sampled cosines (about 40 ms for 2M), and
    # NumPy releases the GIL in it: the choices are priced on ``threads`` threads.
    if threads > 1 and len(choices) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(choices))) as pool:
            plans = list(pool.map(lambda choice: priced(*choice), choices))
    else:
        plans = [priced(*choice) for choice in choices]
    return min(plans, key=lambda plan: plan.cost)  # the first of equal costs, the fewest bits


def unit_pair_cosines(sample: np.ndarray) -> np.ndarray:
    """:func:`sample_pair_cosines` of a sample whose rows may be of any length."""
    x = np.asarray(sample, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return sample_pair_cosines(x / np.where(norms > 0, norms, 1.0))


def plan_for(lsh: LshConfig, cosine_threshold: float, pair_cosines: np.ndarray, items: int,
             dim: int, threads: int = 1) -> LshPlan:
    """The plan for ``items`` embeddings whose pairs' cosines are distributed like
    ``pair_cosines`` (:func:`unit_pair_cosines` of a random sample): ``auto`` keys of
    ``lsh`` chosen by :func:`plan_lsh` (on ``threads`` threads), given ones kept.

    Raises:
        ValueError: no plan reaches ``lsh.target_recall`` within the limits.
    """
    return plan_lsh(cosine_threshold, lsh.target_recall, pair_cosines, items, dim,
                    bits=None if lsh.bits_per_table == "auto" else lsh.bits_per_table,
                    tables=None if lsh.num_tables == "auto" else lsh.num_tables,
                    max_tables=MAX_TABLES, max_bits=MAX_BITS_PER_TABLE, split_bits=lsh.split_bits,
                    threads=threads)
