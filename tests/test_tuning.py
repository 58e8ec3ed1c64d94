"""LSH planning formulas against simulation and brute force, on seeded data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neardup_core import lsh, tuning

from .references import bucket_keys


def pairs_at_cosine(rng, n: int, dim: int, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """n random unit vectors a and n unit vectors b with a_i . b_i == cosine exactly."""
    a = rng.standard_normal((n, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    r = rng.standard_normal((n, dim))
    r -= np.sum(r * a, axis=1, keepdims=True) * a
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return a, cosine * a + math.sqrt(1 - cosine**2) * r


def collides(a: np.ndarray, b: np.ndarray, planes: np.ndarray, tables: int) -> np.ndarray:
    return (bucket_keys(a, planes, tables) == bucket_keys(b, planes, tables)).any(axis=1)


@pytest.mark.parametrize("cosine, bits, tables", [(0.5, 3, 4), (0.8, 6, 8), (0.9, 12, 20), (0.97, 20, 6)])
def test_candidate_probability_matches_simulation(cosine, bits, tables):
    rng = np.random.default_rng(11)
    trials = 4000
    a, b = pairs_at_cosine(rng, trials, 48, cosine)
    # Fresh hyperplanes per trial would be slow; 40 draws of planes x 100 pairs each.
    hits = [collides(a[i::40], b[i::40], lsh.hyperplanes(i, tables, bits, 48), tables) for i in range(40)]
    observed = np.concatenate(hits).mean()
    expected = float(tuning.candidate_probability(cosine, bits, tables))
    se = math.sqrt(expected * (1 - expected) / trials)
    assert abs(observed - expected) <= 4 * se + 0.01


def test_tables_for_recall_is_the_fewest_that_reach_it():
    for cosine in (0.7, 0.85, 0.95):
        for bits in (4, 10, 20):
            tables = tuning.tables_for_recall(cosine, bits, 0.99)
            assert tuning.candidate_probability(cosine, bits, tables) >= 0.99
            if tables > 1:
                assert tuning.candidate_probability(cosine, bits, tables - 1) < 0.99


def clustered(rng, n: int, dim: int, clusters: int, spread: float) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sample_pair_cosines_are_all_pairs_or_a_fair_draw():
    rng = np.random.default_rng(5)
    x = clustered(rng, 301, 16, 4, 0.8)
    i, j = np.triu_indices(301, 1)
    exact = np.einsum("ij,ij->i", x[i], x[j])
    np.testing.assert_allclose(np.sort(tuning.sample_pair_cosines(x, block=1000)), np.sort(exact), atol=1e-12)
    drawn = tuning.sample_pair_cosines(x, max_pairs=20_000, block=3000)
    assert len(drawn) == 20_000
    assert abs(drawn.mean() - exact.mean()) < 0.02


def test_expected_candidates_predict_the_real_count_on_clustered_data():
    rng = np.random.default_rng(8)
    x = clustered(rng, 2000, 32, 10, 0.9)
    bits, tables = 8, 6
    keys = bucket_keys(x, lsh.hyperplanes(3, tables, bits, 32), tables)
    i, j = np.triu_indices(len(x), 1)
    actual = int((keys[i] == keys[j]).any(axis=1).sum())
    predicted = tuning.expected_candidates(np.einsum("ij,ij->i", x[i], x[j]), len(x), bits, tables)
    assert actual == pytest.approx(predicted, rel=0.15)


def test_plan_is_the_cheapest_choice_that_reaches_the_recall():
    rng = np.random.default_rng(2)
    cosines = tuning.sample_pair_cosines(clustered(rng, 200, 64, 20, 1.0))
    plan = tuning.plan_lsh(0.85, 0.99, cosines, 100_000, 64)
    assert plan.recall_at_threshold >= 0.99
    # Oracle: every (k, L) up to the limits, priced the same way.
    best = min(
        (tuning.plan_lsh(0.85, 0.99, cosines, 100_000, 64, bits=k, tables=n).cost, k, n)
        for k in range(1, 49) for n in range(1, 257)
        if tuning.candidate_probability(0.85, k, n) >= 0.99
    )
    assert (plan.cost, plan.bits_per_table, plan.num_tables) == pytest.approx(best)
    # Priced on threads: the same plan, to the bit.
    for threads in (2, 3, 64):
        assert tuning.plan_lsh(0.85, 0.99, cosines, 100_000, 64, threads=threads) == plan


def test_planned_recall_holds_in_simulation():
    """The stated tolerance: observed recall at the threshold within 4 binomial standard
    errors of the plan's prediction, and at least the target minus that."""
    rng = np.random.default_rng(4)
    plan = tuning.plan_lsh(0.9, 0.99, tuning.sample_pair_cosines(clustered(rng, 500, 32, 5, 1.0)), 50_000, 32)
    a, b = pairs_at_cosine(rng, 3000, 32, 0.9)
    hits = np.concatenate([collides(a[i::30], b[i::30],
                                    lsh.hyperplanes(100 + i, plan.num_tables, plan.bits_per_table, 32),
                                    plan.num_tables) for i in range(30)])
    se = math.sqrt(plan.recall_at_threshold * (1 - plan.recall_at_threshold) / len(hits))
    assert abs(hits.mean() - plan.recall_at_threshold) <= 4 * se + 1e-3
    assert hits.mean() >= 0.99 - 4 * se - 1e-3


def test_given_bits_or_tables_are_kept():
    cosines = np.linspace(-0.2, 0.6, 1000)
    assert tuning.plan_lsh(0.8, 0.99, cosines, 10_000, 8, bits=10).bits_per_table == 10
    fixed = tuning.plan_lsh(0.8, 0.99, cosines, 10_000, 8, tables=30)
    assert fixed.num_tables == 30 and fixed.recall_at_threshold >= 0.99
    assert tuning.candidate_probability(0.8, fixed.bits_per_table + 1, 30) < 0.99  # the most bits that reach it
    priced = tuning.plan_lsh(0.8, 0.99, cosines, 10_000, 8, bits=20, tables=2)
    assert priced.recall_at_threshold < 0.99  # both given: priced as they are


def test_unreachable_targets_say_what_to_change():
    with pytest.raises(ValueError, match="lsh.num_tables=1 cannot reach"):
        tuning.plan_lsh(0.5, 0.999, np.zeros(10), 100, 8, tables=1)
    with pytest.raises(ValueError, match="lsh.bits_per_table=40 needs .* tables"):
        tuning.plan_lsh(0.5, 0.99, np.zeros(10), 100, 8, bits=40)


@pytest.mark.parametrize("items,dim,tables,candidates,task_mb", [
    (1, 4, 1, 0, 1), (1000, 256, 86, 5000, 64), (20_000, 256, 86, 45_000, 64), (100_000, 256, 137, 240_000, 64),
    (1_000_000, 256, 220, 5_243_733, 64), (50_000, 64, 30, 10**7, 16)])
@pytest.mark.parametrize("one_task_mb", [0, 512])
def test_pairing_tasks_hold_about_the_task_size(items, dim, tables, candidates, task_mb, one_task_mb):
    """Reference: the bytes each step holds, from the packed record sizes themselves; and
    the one-task path's memory, from the arrays it holds."""
    from neardup_core import blocks

    task_bytes, floor = task_mb * 2**20, 2
    tasks = tuning.pairing_tasks(items, dim, tables, candidates, task_bytes, floor, one_task_mb * 2**20)
    entries = items * tables * blocks.ENTRY.itemsize
    vectors = items * blocks.vector_dtype(dim).itemsize
    # float32 vectors twice; int64 keys of every table, and as much for bucketing; candidates
    one_task = items * (2 * 4 * dim + 2 * 8 * tables) + candidates * tuning.ONE_TASK_CANDIDATE_BYTES
    if one_task <= one_task_mb * 2**20:
        assert tasks is None
        return
    bucket_tasks, row_tasks = tasks
    assert bucket_tasks >= floor and row_tasks >= floor
    assert entries / bucket_tasks <= task_bytes and (bucket_tasks == floor or entries / (bucket_tasks - 1) > task_bytes)
    rows = vectors + candidates * blocks.half_dtype(dim).itemsize
    assert rows / row_tasks <= task_bytes and (row_tasks == floor or rows / (row_tasks - 1) > task_bytes)


def test_a_plan_priced_from_its_candidates_is_the_plan_and_scales_with_the_pairs():
    """An incremental run prices the previous plan from that run's estimate, not a sample."""
    rng = np.random.default_rng(3)
    plan = tuning.plan_lsh(0.9, 0.99, tuning.sample_pair_cosines(clustered(rng, 500, 32, 5, 1.0)), 50_000, 32,
                           split_bits=4)
    assert tuning.price_plan(plan.bits_per_table, plan.num_tables, 0.9, plan.expected_candidates, 50_000, 32,
                             4) == plan
    assert tuning.scaled_candidates(plan.expected_candidates, 50_000, 50_000) == plan.expected_candidates
    assert tuning.scaled_candidates(1000.0, 100, 201) == pytest.approx(1000.0 * 201 * 200 / (100 * 99))
    assert tuning.scaled_candidates(5.0, 1, 3) == 30.0  # no pairs before: no division by zero
