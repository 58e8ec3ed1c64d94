"""Scoring candidate pairs (exact float64 cosines of rows a[i], b[i]): the job's kernel
(neardup_core.pairing.pair_cosines: 128-row blocks, each row's length computed once, on 1
and 2 threads) against the way it scored before (rowwise_cosine on 4,096 gathered pairs at a
time, three dot products per pair), on the same pairs in the same process; and whether all
give the same values, bit for bit.

    python benchmarks/score_kernel.py [--rows 5000] [--dim 1280] [--pairs 156000 1000000]

Seeded float32 vectors; the pairs are drawn at random and sorted by their first row, as the
candidate kernels give them. 5,000 x 1280 and 156,000 pairs is the size of the fresh
images' candidates in benchmarks/incremental.py's 5,000-image run. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neardup_core.pairing import pair_cosines, rowwise_cosine


def before(x: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The kernel as it was: 4,096 pairs gathered, converted and scored at a time."""
    return np.concatenate([rowwise_cosine(x[a[s:s + chunk]], x[b[s:s + chunk]], block_rows=chunk)
                           for s in range(0, len(a), chunk)] or [np.zeros(0)])


def best_of(runs: int, fn, *args, **kwargs) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--pairs", type=int, nargs="+", default=[156_000, 1_000_000])
    p.add_argument("--runs", type=int, default=3, help="best of this many")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    print(f"{os.cpu_count()} cores; {args.rows:,} x {args.dim} float32 vectors; seconds, best of {args.runs}")
    print("| pairs | before (4,096-pair blocks) | pair_cosines, 1 thread | 2 threads | before / 1 thread | "
          "before / 2 threads | same values |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n in args.pairs:
        a = np.sort(rng.integers(0, args.rows, n))
        b = rng.integers(0, args.rows, n)
        t0, ref = best_of(args.runs, before, x, a, b)
        t1, one = best_of(args.runs, pair_cosines, x, a, b)
        t2, two = best_of(args.runs, pair_cosines, x, a, b, threads=2)
        same = np.array_equal(ref, one) and np.array_equal(ref, two)
        print(f"| {n:,} | {t0:.2f} | {t1:.2f} | {t2:.2f} | {t0 / t1:.1f} | {t0 / t2:.1f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
