"""Which image preparation and pooling give the best pairs: the measurement behind the defaults.

For each labelled set (build_set.py, one per seed), embeds every image with the default
network (EfficientNet-Lite0, TensorFlow, features before pooling) under each preparation,
pools them several ways, optionally adds a flipped copy or centres on the set's mean, and
scores exact cosine over all pairs. Prints each variant's best F1 and its threshold per
set, and the F1 when the threshold found on one set is used on the other.

    python benchmarks/quality/variants.py [--work bench-quality] [--seeds 4 5]

Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import build_set
from run import load_truth

from neardup_core.decode import decode_image
from neardup_core.evaluation import pr_curve

THRESHOLDS = np.round(np.arange(0.3, 0.99, 0.01), 3)
PREPARATIONS = {  # name -> how the job's decoder (or a letterbox) makes model input
    "squash": dict(),
    "letterbox": None,
    "trim": dict(trim_borders=True),
    "grayscale": dict(grayscale=True),
    "trim+grayscale": dict(trim_borders=True, grayscale=True),
}


def letterbox(data: bytes, size: int) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(ImageOps.pad(im, (size, size), Image.Resampling.BILINEAR, color=(0, 0, 0)))


def feature_maps(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = pixels.astype(np.float32)
    return model.predict(x, batch_size=32, verbose=0), model.predict(x[:, :, ::-1], batch_size=32, verbose=0)


def pool(maps: np.ndarray, how: str) -> np.ndarray:
    if how == "avg":
        return maps.mean(axis=(1, 2))
    if how == "max":
        return maps.max(axis=(1, 2))
    return (np.clip(maps, 1e-6, None) ** 3).mean(axis=(1, 2)) ** (1 / 3)  # GeM, p = 3


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def curve(files, truth, vectors):
    sims = vectors @ vectors.T
    i, j = np.triu_indices(len(files), 1)
    return pr_curve(zip([files[a] for a in i], [files[b] for b in j], sims[i, j]), truth, THRESHOLDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 5])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from neardup_core.embed.efficientnet_lite import build_efficientnet_lite0

    net = build_efficientnet_lite0(include_top=False)
    maps_model = keras.Model(net.input, net.layers[-2].output)  # the head, before average pooling

    results: dict[tuple, dict[int, list]] = {}
    for seed in args.seeds:
        set_dir = os.path.join(args.work, f"seed-{seed}", "set")  # where run.py builds it
        if not os.path.exists(os.path.join(set_dir, "set.json")):
            build_set.build(set_dir, seed, build_set.default_cache())
        truth, rows = load_truth(set_dir)
        files = [r["file"] for r in rows]
        blobs = [Path(set_dir, "images", f).read_bytes() for f in files]
        for prep, options in PREPARATIONS.items():
            pixels = np.stack([letterbox(b, 224) if options is None else decode_image(b, 224, 10**9, **options)
                               for b in blobs])
            maps, flipped = feature_maps(maps_model, pixels)
            for how in ("avg", "gem3", "max"):
                for flip in (False, True):
                    raw = unit(pool(maps, how) + pool(flipped, how)) if flip else unit(pool(maps, how))
                    for centre in (False, True):
                        vectors = unit(raw - raw.mean(axis=0)) if centre else raw
                        key = (prep, how, "flip" if flip else "", "centre" if centre else "")
                        results.setdefault(key, {})[seed] = curve(files, truth, vectors)
            print(f"seed {seed}: {prep} done", file=sys.stderr, flush=True)

    a, b = args.seeds[0], args.seeds[-1]
    print(f"| preparation | pooling | flip | centre | best F1 seed {a} (threshold) | best F1 seed {b} (threshold) "
          f"| F1 on {b} at {a}'s threshold | F1 on {a} at {b}'s threshold |")
    print("|---|---|---|---|---|---|---|---|")
    for key, by_seed in results.items():
        best = {s: max(c, key=lambda p: p.f1) for s, c in by_seed.items()}

        def at(seed, threshold, by_seed=by_seed):
            return next(p for p in by_seed[seed] if abs(p.threshold - threshold) < 1e-9).f1

        print(f"| {key[0]} | {key[1]} | {key[2] or '-'} | {key[3] or '-'} | {best[a].f1:.3f} ({best[a].threshold:.2f}) "
              f"| {best[b].f1:.3f} ({best[b].threshold:.2f}) | {at(b, best[a].threshold):.3f} "
              f"| {at(a, best[b].threshold):.3f} |", flush=True)


if __name__ == "__main__":
    main()
