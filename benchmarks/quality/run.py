"""Detection quality on the labelled near-duplicate set, with two peers beside the job.

Builds the set (build_set.py) unless it is there, runs `neardup run` on it with the
embedded defaults (plus any --set), and scores, on the same images:
- the job's pairs/ at its configured threshold;
- exact brute-force cosine over the job's own embeddings at the same threshold (what LSH
  loses is the difference);
- imagehash PHash at Hamming distance <= 10, the usual threshold of single-machine dedup
  tools (imagededup's default), over all pairs;
and the precision-recall curve over `cosine`, read from `neardup pairs` rerun on the
job's embeddings with a low threshold. Prints tables; writes results.json, curve.csv and
curve.png into {--work}/seed-{--seed}/, beside the set and the job's outputs.

    python benchmarks/quality/run.py [--work bench-quality] [--seed 4] [--set KEY=VALUE ...]

Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import build_set

from neardup_core.evaluation import Truth, pair, pairs_within, pr_curve, recall_by_transform, score_pairs

PHASH_MAX_DISTANCE = 10
CURVE_FLOOR = 0.5  # the curve's pairs run keeps cosine >= this
CURVE_THRESHOLDS = [round(t, 3) for t in np.arange(0.5, 0.951, 0.025)]


def load_truth(set_dir: str) -> tuple[Truth, list[dict]]:
    with open(os.path.join(set_dir, "truth.csv")) as f:
        rows = list(csv.DictReader(f))
    truth = Truth.from_rows(
        (r["file"], r["group"] if r["role"] != "ambiguous" else None,
         r["group"] if r["role"] == "ambiguous" else None,
         r["transform"].split(":")[0]) for r in rows)
    return truth, rows


def hard_negative_pairs(set_dir: str) -> set:
    """Pairs of different photos of one kind of subject (hard_negatives.csv)."""
    sets: dict[str, list[str]] = {}
    with open(os.path.join(set_dir, "hard_negatives.csv")) as f:
        for r in csv.DictReader(f):
            sets.setdefault(r["set"], []).append(r["file"])
    return pairs_within(sets.values())


def neardup(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neardup_core.cli", *args], check=True,
                   env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    return time.perf_counter() - start


def read_pairs(out: str) -> list[tuple[str, str, float]]:
    table = pq.read_table(os.path.join(out, "pairs"), columns=["id_a", "id_b", "cosine"]).to_pydict()
    return [(os.path.basename(a), os.path.basename(b), c)
            for a, b, c in zip(table["id_a"], table["id_b"], table["cosine"])]


def read_embeddings(out: str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(os.path.join(out, "embeddings"), columns=["id", "embedding"]).to_pydict()
    ids = [os.path.basename(i) for i in table["id"]]
    return ids, np.asarray(table["embedding"], dtype=np.float64)


def exact_pairs(ids: list[str], vectors: np.ndarray, threshold: float) -> list[tuple[str, str, float]]:
    """Every pair with cosine >= threshold, in float64 (the set is small: one matrix)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return [(ids[a], ids[b], float(sims[a, b])) for a, b in zip(i, j)]


def phash_pairs(set_dir: str, files: list[str], max_distance: int) -> tuple[list, float]:
    import imagehash
    from PIL import Image, ImageOps

    start = time.perf_counter()
    hashes = []
    for name in files:
        with Image.open(os.path.join(set_dir, "images", name)) as im:
            hashes.append(imagehash.phash(ImageOps.exif_transpose(im).convert("RGB")).hash.reshape(-1))
    seconds = time.perf_counter() - start
    bits = np.array(hashes, dtype=bool)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
    return [(files[a], files[b], -float(distance[a, b])) for a, b in zip(i, j)], seconds


def report(name: str, pairs, truth: Truth, hard: set) -> dict:
    s = score_pairs([(a, b) for a, b, _ in pairs], truth)
    hard_fp = len({pair(a, b) for a, b, _ in pairs} & hard)
    print(f"{name:<34} {s.precision:9.3f} {s.recall:7.3f} {s.f1:6.3f} {s.true_positives:5d} "
          f"{s.false_positives:5d} {s.false_negatives:5d} {s.ambiguous:5d} {hard_fp:4d}/{len(hard)}")
    return {**s._asdict(), "hard_negative_false_positives": hard_fp, "hard_negative_pairs": len(hard),
            "by_transform": recall_by_transform([(a, b) for a, b, _ in pairs], truth)}


def plot(curve_rows: list, default_threshold: float, out_png: str, peers: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.plot([p.recall for p in curve_rows], [p.precision for p in curve_rows], "-o", ms=3,
            label="neardup, cosine threshold swept")
    for p in curve_rows:
        if abs(p.threshold - default_threshold) < 1e-9 or p.threshold in (0.6, 0.7, 0.9):
            ax.annotate(f"{p.threshold:g}", (p.recall, p.precision), textcoords="offset points", xytext=(4, 4))
    for label, (r, pr, style) in peers.items():
        ax.plot([r], [pr], style, ms=8, label=label)
    ax.set_xlabel("recall (pairs)")
    ax.set_ylabel("precision (pairs)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Near-duplicate pairs on the quality benchmark set")
    fig.tight_layout()
    fig.savefig(out_png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-quality")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--rebuild", action="store_true", help="build the set again even if it is there")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override for the job (default: none, the embedded defaults)")
    args = parser.parse_args()
    work = os.path.join(args.work, f"seed-{args.seed}")
    set_dir = os.path.join(work, "set")
    if args.rebuild or not os.path.exists(os.path.join(set_dir, "set.json")):
        print(json.dumps(build_set.build(set_dir, args.seed, build_set.default_cache())))
    truth, rows = load_truth(set_dir)
    hard = hard_negative_pairs(set_dir)
    overrides = [x for kv in args.set for x in ("--set", kv)]
    out = os.path.join(work, "run")
    run_seconds = neardup(["run", "--input", os.path.join(set_dir, "images"), "--output", out, "--overwrite",
                           *overrides])
    with open(os.path.join(out, "_manifest.json")) as f:
        manifest = json.load(f)
    threshold = manifest["config"]["pairs"]["cosine_threshold"]
    curve_out = os.path.join(work, "curve-run")
    neardup(["pairs", "--embeddings", os.path.join(out, "embeddings"), "--output", curve_out, "--overwrite",
             *overrides, "--set", f"pairs.cosine_threshold={CURVE_FLOOR}"])

    job = read_pairs(out)
    ids, vectors = read_embeddings(out)
    exact = exact_pairs(ids, vectors, threshold)
    files = [r["file"] for r in rows]
    phash, phash_seconds = phash_pairs(set_dir, files, PHASH_MAX_DISTANCE)

    print(f"\n{len(files)} images, {len(truth.positives)} true pairs, {len(hard)} hard-negative pairs; "
          f"job {run_seconds:.1f} s, {manifest['counts']}")
    print(f"\n{'method':<34} {'precision':>9} {'recall':>7} {'F1':>6} {'TP':>5} {'FP':>5} {'FN':>5} "
          f"{'amb':>5} hard-neg FP")
    results = {
        "images": len(files), "true_pairs": len(truth.positives), "threshold": threshold,
        "job_seconds": run_seconds, "phash_seconds": phash_seconds, "overrides": args.set,
        "job": report(f"neardup (LSH, cosine >= {threshold:g})", job, truth, hard),
        "exact": report(f"exact cosine >= {threshold:g}, same emb.", exact, truth, hard),
        "phash": report(f"PHash, Hamming <= {PHASH_MAX_DISTANCE}", phash, truth, hard),
    }
    print("\nrecall by transform (found/total true pairs with a copy made that way):")
    transforms = sorted(results["job"]["by_transform"])
    print(f"{'transform':<12}" + "".join(f"{m:>16}" for m in ("neardup", "exact", "phash")))
    for t in transforms:
        print(f"{t:<12}" + "".join(
            f"{results[m]['by_transform'][t][0]:>7d}/{results[m]['by_transform'][t][1]:<3d} "
            f"{results[m]['by_transform'][t][0] / results[m]['by_transform'][t][1]:.2f}"
            for m in ("job", "exact", "phash")))

    curve = pr_curve(read_pairs(curve_out), truth, CURVE_THRESHOLDS)
    print("\nprecision-recall over cosine (neardup pairs rerun at threshold 0.5 on the same embeddings):")
    print(f"{'cosine >=':>9} {'pairs':>6} {'precision':>9} {'recall':>7} {'F1':>6}")
    for p in sorted(curve):
        print(f"{p.threshold:9.3f} {p.reported:6d} {p.precision:9.3f} {p.recall:7.3f} {p.f1:6.3f}")
    with open(os.path.join(work, "curve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cosine_threshold", "pairs", "precision", "recall", "f1"])
        w.writerows(sorted(curve))
    results["curve"] = [p._asdict() for p in sorted(curve)]
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(sorted(curve), threshold, os.path.join(work, "curve.png"), {
        f"neardup default (cosine >= {threshold:g})": (results["job"]["recall"], results["job"]["precision"], "r*"),
        f"PHash, Hamming <= {PHASH_MAX_DISTANCE}": (results["phash"]["recall"], results["phash"]["precision"], "ks"),
    })
    print(f"\nwrote {work}/results.json, curve.csv, curve.png")


if __name__ == "__main__":
    main()
