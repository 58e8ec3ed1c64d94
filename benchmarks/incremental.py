"""Incremental runs against full runs, in one script on the same machine.

    python benchmarks/incremental.py [--repeat N] images [--images 5000] [--set KEY=VALUE ...]
    python benchmarks/incremental.py [--repeat N] vectors [--vectors 1000000] [--dim 256]

images: builds a catalog of N real-photo-derived JPEGs (benchmarks/job_throughput.py),
runs `neardup run` in full; then adds 1 %, changes 0.5 % and deletes 0.5 % of the files,
and runs `neardup run --previous` and a full run (with the previous LSH plan) on the new
catalog, one after the other, N times (default 1). vectors: the same with `neardup pairs` on
seeded synthetic embeddings (benchmarks/pairing_scale.py), 1 % new vectors. Prints each run's
wall time (the whole command: JVM start, model, listing, writing), what it embedded or reused,
and whether the incremental run's pairs, groups and decisions equal the full run's. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from job_throughput import build_catalog
from pairing_scale import synthetic

SETTINGS: list[str] = []  # --set KEY=VALUE given to the script: passed to every run


def run(args: list[str], driver_memory: str) -> float:
    cmd = [sys.executable, "-m", "neardup_core.cli", *args, "--set",
           f"spark.conf={{spark.driver.memory: {driver_memory}}}", *(f for s in SETTINGS for f in ("--set", s))]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, PYSPARK_PYTHON=sys.executable), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        tail = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("\tat "))[-3000:]
        sys.exit(f"exit {done.returncode} after {time.perf_counter() - start:.1f} s: {' '.join(args)}\n{tail}")
    return time.perf_counter() - start


def manifest(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "_manifest.json")) as fh:
        return json.load(fh)


def same_plan(run_dir: str) -> list[str]:
    lsh = manifest(run_dir)["lsh"]
    return ["--set", f"lsh.num_tables={lsh['num_tables']}", "--set", f"lsh.bits_per_table={lsh['bits_per_table']}"]


def identical(a: str, b: str) -> bool:
    """Same pairs (ids, tables matched; cosines to 1e-6) and the same groups and decisions."""
    ok = True
    for name, key in (("pairs", ["id_a", "id_b"]), ("groups", ["id"])):
        x = pd.read_parquet(os.path.join(a, name)).sort_values(key, ignore_index=True)
        y = pd.read_parquet(os.path.join(b, name)).sort_values(key, ignore_index=True)
        ok &= x.drop(columns="cosine").equals(y.drop(columns="cosine"))
        ok &= len(x) == len(y) and bool(np.allclose(x.cosine.fillna(0), y.cosine.fillna(0), atol=1e-6))
    return ok


def report(label: str, seconds: float, run_dir: str) -> None:
    counts = manifest(run_dir)["counts"]
    extra = manifest(run_dir).get("incremental") or {}
    stages = ", ".join(f"{s['name']} {s['seconds']:.1f}" for s in manifest(run_dir)["stages"])
    print(f"| {label} | {seconds:.1f} | {counts['embedded']:,} | {counts['reused']:,} | {counts['changed']:,} | "
          f"{counts['deleted']:,} | {counts['pairs']:,} | {extra.get('pairing', '-')} | {stages} |", flush=True)


def header() -> None:
    print("| run | seconds | embedded | reused | changed | deleted | pairs | pairing | stage seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")


def images(args: argparse.Namespace, work: str) -> None:
    catalog = os.path.join(work, "catalog")
    os.makedirs(catalog)
    n = args.images
    build_catalog(catalog, n)
    header()
    night1 = os.path.join(work, "night1")
    report("night 1, full", run(["run", "--input", catalog, "--output", night1], args.driver_memory), night1)
    rng = np.random.default_rng(1)
    files = sorted(os.listdir(catalog))
    picked = rng.permutation(len(files))
    deleted, changed = picked[: n // 200], picked[n // 200: n // 100]
    for i in deleted:
        os.remove(os.path.join(catalog, files[i]))
    extra = os.path.join(work, "extra")
    os.makedirs(extra)
    build_catalog(extra, n // 100 + len(changed), seed=2)  # other crops: new images
    made = sorted(os.listdir(extra))
    for i, name in zip(changed, made):
        shutil.move(os.path.join(extra, name), os.path.join(catalog, files[i]))
    for name in made[len(changed):]:
        shutil.move(os.path.join(extra, name), os.path.join(catalog, f"new-{name}"))
    compare(work, [["run", "--input", catalog, "--previous", night1],
                   ["run", "--input", catalog, *same_plan(night1)]], args)


def vectors(args: argparse.Namespace, work: str) -> None:
    n = args.vectors
    x = synthetic(n + n // 100, args.dim)
    ids = np.array([f"v{i:08d}" for i in range(len(x))])

    def table(path: str, rows: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(x[rows].reshape(-1))
        vec = pa.FixedSizeListArray.from_arrays(flat, args.dim).cast(pa.list_(pa.float32()))
        pq.write_table(pa.table({"id": ids[rows], "embedding": vec}), path)

    common = ["--set", f"pairs.cosine_threshold={args.threshold}"]
    table(os.path.join(work, "a.parquet"), np.arange(n))
    table(os.path.join(work, "b.parquet"), np.arange(n + n // 100))
    header()
    night1 = os.path.join(work, "night1")
    report("night 1, full", run(["pairs", "--embeddings", os.path.join(work, "a.parquet"), "--output", night1,
                                 *common], args.driver_memory), night1)
    tonight = ["pairs", "--embeddings", os.path.join(work, "b.parquet"), *common]
    compare(work, [[*tonight, "--previous", night1], [*tonight, *same_plan(night1)]], args)


def compare(work: str, night2: list[list[str]], args: argparse.Namespace) -> None:
    """Night 2 incrementally, then in full (the two commands of ``night2``, without
    --output), ``args.repeat`` times in turn: the machines these run on change speed from
    one minute to the next, so each ratio is of two runs side by side, and the median is
    printed with them."""
    ratios, same = [], True
    for turn in range(1, args.repeat + 1):
        incremental_dir, full_dir = os.path.join(work, f"night2-{turn}"), os.path.join(work, f"full-{turn}")
        incremental = run([*night2[0], "--output", incremental_dir], args.driver_memory)
        report(f"night 2, incremental ({turn})", incremental, incremental_dir)
        seconds = run([*night2[1], "--output", full_dir], args.driver_memory)
        report(f"night 2, full, same plan ({turn})", seconds, full_dir)
        ratios.append(incremental / seconds)
        same &= identical(incremental_dir, full_dir)
    print(f"incremental / full: {', '.join(f'{r:.2f}' for r in ratios)}"
          + (f" (median {float(np.median(ratios)):.2f})" if len(ratios) > 1 else "")
          + f"; identical pairs, groups and decisions: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    im = sub.add_parser("images")
    im.add_argument("--images", type=int, default=5000)
    ve = sub.add_parser("vectors")
    ve.add_argument("--vectors", type=int, default=1_000_000)
    ve.add_argument("--dim", type=int, default=256)
    ve.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--repeat", type=int, default=1,
                   help="night 2 incrementally and in full this many times in turn (a ratio for each pair)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run, e.g. pairs.accept_cosine=0 (no geometric verification)")
    p.add_argument("--work", help="keep the catalogs and runs in this new folder (default: a temporary one)")
    args = p.parse_args()
    SETTINGS.extend(args.set)
    print(f"{os.cpu_count()} cores; {' '.join(sys.argv[1:])}", flush=True)
    if args.work:
        os.makedirs(args.work)
        (images if args.kind == "images" else vectors)(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="neardup-incremental-") as work:
        (images if args.kind == "images" else vectors)(args, work)


if __name__ == "__main__":
    main()
