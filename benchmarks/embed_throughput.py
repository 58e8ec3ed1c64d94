"""Where the embed stage's time goes, side by side in one run: the model alone, decoding
alone, the embed stage of `neardup run`, and the whole run, for the FP32 export and its
INT8 copy (embed.cpu_precision: auto, the default, quantizes it from the shipped ranges;
int8 measures them on opencv-doc's photos).

    python benchmarks/embed_throughput.py [--images 3000] [--sample 256] [--variants fp32 auto]
        [--set KEY=VALUE ...]

One catalog of --images JPEGs of about 1000 px (job_throughput.build_catalog) serves every
row. "model only" feeds --sample decoded images to the model file the job ships, in one
process with one intra-op thread per core, batches of embed.batch_size; "decode only" is
the job's decode (border trimming, grayscale, resize) of the same sample on one core, and
the cores' worth of it; "bound" is what both cores could do if every core decoded and ran
the model with nothing else: 1 / (1/model + 1/(decode x cores)). The embed stage and the
whole run come from one `neardup run` per variant (its _manifest.json), with geometric
verification off (on this catalog of crops of 15 photos a quarter of all pairs are
borderline and verifying them would take many times the rest; docs/quality.md), JVM start
included in the whole run. A variant is a precision, optionally with overrides after a
colon: `fp32:embed.decode_threads=0`.

Rates on a shared machine move from run to run; compare the columns of one run. Prints
measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job_throughput import build_catalog, run_job

from neardup_core.config import EmbedConfig, load_config
from neardup_core.embed import get_embedder, prepare_model
from neardup_core.embed.batch import decode_for_model

MAX_PIXELS = 64_000_000


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_rate(fn, n: int, repeats: int) -> float:
    return n / min(timed(fn) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--sample", type=int, default=256, help="images for the model-only and decode-only rates")
    ap.add_argument("--variants", nargs="+", default=["fp32", "auto"],
                    help="embed.cpu_precision, optionally :KEY=VALUE,KEY=VALUE overrides")
    ap.add_argument("--set", action="append", default=[], help="overrides for every job run")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    embed = EmbedConfig()
    work = tempfile.mkdtemp(prefix="neardup-embed-bench-")
    try:
        catalog, out = os.path.join(work, "catalog"), os.path.join(work, "out")
        os.makedirs(catalog)
        build_catalog(catalog, args.images)
        files = sorted(glob.glob(os.path.join(catalog, "*.jpg")))[: args.sample]
        blobs = []
        for name in files:
            with open(name, "rb") as fh:
                blobs.append(fh.read())
        decoded = {}  # model config -> (decode rate, pixels): a variant may prepare images otherwise

        def decode_for(model):
            if model not in decoded:
                rate = best_rate(lambda: [decode_for_model(b, model, MAX_PIXELS) for b in blobs], len(blobs),
                                 args.repeats)
                decoded[model] = rate, np.stack([decode_for_model(b, model, MAX_PIXELS) for b in blobs])
            return decoded[model]

        print(f"{args.images} JPEGs of ~1000 px; default model, {cores} cores, embed.batch_size {embed.batch_size}; "
              f"model-only and decode-only on {len(blobs)} of them, best of {args.repeats}")
        print("| variant | model only | decode only, 1 core | bound | embed stage | stage / model | list stage "
              "| whole run | whole run images/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for variant in args.variants:
            precision, _, extra = variant.partition(":")
            overrides = [f"embed.cpu_precision={precision}", "pairs.accept_cosine=-1", *args.set,
                         *filter(None, extra.split(","))]
            cfg = load_config(None, overrides)  # the model the job will run, prepared as it will
            decode, pixels = decode_for(cfg.model)
            prepared = prepare_model(cfg.model, cfg.embed)
            embedder = get_embedder(prepared.file, "onnxruntime", None, cfg.model,
                                    dataclasses.replace(cfg.embed, threads_per_task=cores))
            embedder.embed(pixels[: cfg.embed.batch_size])  # warm-up

            def model_only(embedder=embedder, batch=cfg.embed.batch_size, pixels=pixels):
                for i in range(0, len(pixels), batch):
                    embedder.embed(pixels[i:i + batch])

            only = best_rate(model_only, len(pixels), args.repeats)
            bound = 1 / (1 / only + 1 / (decode * cores))
            wall, manifest = run_job(catalog, out, overrides)
            stage = {s["name"]: s for s in manifest["stages"]}
            assert stage["load-model"]["model_file"] == prepared.file, "the job ran another model than measured"
            rate = args.images / stage["embed"]["seconds"]
            name = f"{variant} ({prepared.precision or 'fp32'})"
            print(f"| {name} | {only:.1f} | {decode:.1f} | {bound:.1f} | {rate:.1f} | {rate / only:.2f} | "
                  f"{stage['list']['seconds']:.1f} s | {wall:.1f} s | {args.images / wall:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
