"""A flood of duplicates through `neardup pairs`: 20 images x 1,000 copies (20,000 rows).

    python benchmarks/duplicate_flood.py [--images 20] [--copies 1000] [--dim 256]
                                         [--cases same near] [--noise 0.01] [--timeout 900]
                                         [--set KEY=VALUE ...]

Cases:
  - same: every copy has the same vector (the same file uploaded 1,000 times: the same
    bytes give the same content hash, so spark.exact collapses them before pairing);
  - near: every copy is the image's vector plus Gaussian noise of --noise per coordinate,
    renormalised (the same image re-encoded: different bytes, nearly equal vectors), which
    LSH buckets together in every table; spark.near collapses them onto representatives
    (`--set pairs.copy_cosine=1` turns that off, for comparison).
For each case it runs `neardup pairs` in Spark local mode (spark.master local[2]) and
prints the wall time, the pairs stage's seconds and shuffle bytes, the candidate pairs,
and whether the groups (connected components) equal those of exact search (blocked NumPy
matrix products over all rows). Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

THRESHOLD = 0.9


def flood(images: int, copies: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((images, dim))
    x = np.repeat(base, copies, axis=0)
    if noise:
        x = x + noise * rng.standard_normal(x.shape)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_components(x: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """Component label of each row under cosine >= threshold (union-find over blocked
    exact search; memory O(block * n))."""
    n = len(x)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, block):
        sims = x[start:start + block] @ x.T
        for i, j in zip(*np.nonzero(sims >= threshold)):
            a, b = find(start + i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


def same_partition(labels_a: dict, labels_b: dict) -> bool:
    groups_a, groups_b = {}, {}
    for k, v in labels_a.items():
        groups_a.setdefault(v, set()).add(k)
    for k, v in labels_b.items():
        groups_b.setdefault(v, set()).add(k)
    return sorted(map(sorted, groups_a.values())) == sorted(map(sorted, groups_b.values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--copies", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--cases", nargs="+", default=["same", "near"])
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    for case in args.cases:
        x = flood(args.images, args.copies, args.dim, args.noise if case == "near" else 0.0)
        ids = [f"img{i // args.copies:03d}-copy{i % args.copies:05d}" for i in range(len(x))]
        with tempfile.TemporaryDirectory() as tmp:
            pd.DataFrame({"id": ids, "embedding": list(x)}).to_parquet(os.path.join(tmp, "emb.parquet"))
            out = os.path.join(tmp, "out")
            cmd = [sys.executable, "-m", "neardup_core.cli", "pairs", "--embeddings", os.path.join(tmp, "emb.parquet"),
                   "--output", out, "--set", "spark.master=local[2]", "--set", f"pairs.cosine_threshold={THRESHOLD}"]
            for item in args.set:
                cmd += ["--set", item]
            started = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{case}: did not finish in {args.timeout} s")
                continue
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                print(f"{case}: exit {proc.returncode}: {proc.stderr[-1500:]}")
                continue
            with open(os.path.join(out, "_manifest.json")) as fh:
                manifest = json.load(fh)
            pairs_stage = next(s for s in manifest["stages"] if s["name"] == "pairs")
            near_stage = next((s for s in manifest["stages"] if s["name"] == "near-copies"), {})
            groups = pd.read_parquet(os.path.join(out, "groups"), columns=["id", "group_id"])
            got = dict(zip(groups.id, groups.group_id))
            got.update({i: i for i in ids if i not in got})  # images in no pair are their own group
            truth = exact_components(x, THRESHOLD)
            want = {ids[i]: ids[truth[i]] for i in range(len(ids))}
            counts = manifest["counts"]
            print(f"{case}: {len(x)} rows, wall {wall:.1f} s (pairs stage {pairs_stage['seconds']:.1f} s, "
                  f"shuffle {pairs_stage.get('shuffle_bytes', -1) / 1e6:.1f} MB), "
                  f"candidates {counts['candidate_pairs']}, pairs {counts['pairs']}, exact copies "
                  f"{counts.get('exact_copies', 0)}, near copies {counts.get('near_copies', 0)} "
                  f"(near-copies stage {near_stage.get('seconds', 0):.1f} s, "
                  f"{json.dumps(pairs_stage.get('near_copies'))}), the whole run's shuffle "
                  f"{manifest['spark'].get('shuffle_bytes_written', -1) / 1e6:.1f} MB, "
                  f"groups {counts['groups']} (largest {counts['largest_group']}), "
                  f"groups equal exact search: {same_partition(got, want)}; stage seconds "
                  + ", ".join(f"{st['name']} {st['seconds']:.1f}" for st in manifest["stages"]))


if __name__ == "__main__":
    main()
