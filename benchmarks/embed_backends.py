"""Images per second of the default model on each CPU backend, with and without decoding.

    python benchmarks/embed_backends.py [--images 256] [--batch-sizes 8 32 64] [--threads 2]

One process, like one Spark task that has the whole machine: "model only" feeds decoded
224x224 pixels; "decode + model" starts from JPEG bytes of about 1000 px (see
job_throughput.build_catalog) and includes Pillow decoding, the default border trimming
and grayscale, and resizing on one core. A first line gives decoding alone, with and
without trimming and grayscale.
Each cell is the best of --repeats timed passes over --images images, after a warm-up
batch. Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job_throughput import build_catalog

from neardup_core.config import EmbedConfig, ModelConfig
from neardup_core.decode import decode_image
from neardup_core.embed import get_embedder
from neardup_core.embed.batch import decode_for_model
from neardup_core.embed.models import resolve_model_path
from neardup_core.embed.onnx_export import onnx_model_path


def read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()

def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of each runtime")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = ModelConfig()
    saved = resolve_model_path(model)
    files = {"tensorflow": saved, "onnxruntime": onnx_model_path(saved, None, 224, os.path.expanduser(model.cache_dir))}
    with tempfile.TemporaryDirectory() as work:
        build_catalog(work, args.images)
        blobs = [read_file(p) for p in sorted(glob.glob(os.path.join(work, "*.jpg")))]
    size = model.input_size

    def decode(blob):  # as the job does with the default configuration
        return decode_for_model(blob, model, 64_000_000)

    pixels = np.stack([decode(b) for b in blobs])

    def decode_only(**options):
        return best_rate(lambda: [decode_image(b, size, 64_000_000, **options) for b in blobs], len(blobs),
                         args.repeats)

    plain, prepared = decode_only(), decode_only(trim_borders=True, grayscale=True)
    print(f"decode only, one core: {plain:.1f} images/s plain (RGB, no trimming), {prepared:.1f} images/s with "
          f"the default trimming and grayscale ({1000 / prepared - 1000 / plain:+.2f} ms per image)")

    print(f"{args.images} JPEGs of ~1000 px, default model (EfficientNet-Lite0, {size} px), "
          f"{args.threads} intra-op threads, {os.cpu_count()} cores; images/s, best of {args.repeats}")
    print("| backend | batch | model only | decode + model |")
    print("|---|---:|---:|---:|")
    for backend, path in files.items():
        embedder = get_embedder(path, backend, None, model, EmbedConfig(threads_per_task=args.threads))
        for batch in args.batch_sizes:
            embedder.embed(pixels[:batch])  # warm-up: graph tracing, memory arenas

            def model_only(embedder=embedder, batch=batch):
                for i in range(0, len(pixels), batch):
                    embedder.embed(pixels[i:i + batch])

            def decode_and_model(embedder=embedder, batch=batch):
                for i in range(0, len(blobs), batch):
                    embedder.embed(np.stack([decode(b) for b in blobs[i:i + batch]]))

            only = best_rate(model_only, len(pixels), args.repeats)
            full = best_rate(decode_and_model, len(blobs), args.repeats)
            print(f"| {backend} | {batch} | {only:.1f} | {full:.1f} |", flush=True)


if __name__ == "__main__":
    main()
