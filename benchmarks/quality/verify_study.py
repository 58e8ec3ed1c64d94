"""Choose the pairing defaults on tuning photos, report them on held-out test photos.

The labelled sets (build_set.py, one per seed) are split BY SOURCE PHOTO: every image
made from one photo, and every photo of one hard-negative set, lands in the same half,
the same half for every seed (a hash of the photo's name). Pairs across the halves count
in neither.

For each seed and each preparation (model.colour, model.trim_borders), `neardup run`
embeds the set once with verification off, at the precision the default model runs at on
the CPU (INT8 with the defaults); every pair at cosine >= FLOOR is then scored
exactly from the embeddings, and verified here with the job's own kernel
(neardup_core.verify) for each feature kind, ratio and transform. The grid of
(preparation, features, ratio, transform, cosine_threshold, accept_cosine, min_inliers)
is scored on the tuning photos of all seeds together; the best F1 among settings with
tuning precision >= MIN_PRECISION is chosen, and only then scored on the test photos.
Prints the choice, test scores per seed and pooled, the spread over seeds, per-transform
recall and every false positive on the test photos; writes study.json into --work.

    python benchmarks/quality/verify_study.py [--work bench-quality] [--seeds 4 5 6] [--check-job]

Prints measured numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import build_set
import photos
from run import load_truth, neardup

from neardup_core import verify
from neardup_core.evaluation import Truth, pair, recall_by_transform, score_pairs

FLOOR = 0.55  # pairs below this cosine are never reported by any setting tried
MIN_PRECISION = 0.98
PREPARATIONS = {  # name -> the job's --set overrides
    "grayscale+trim": [],
    "rgb+trim": ["model.colour=rgb"],
}
FEATURES = {"sift-512": ("sift", 512), "orb-512": ("orb", 512)}
RATIOS = [0.7, 0.75, 0.8]
TRANSFORMS = ["similarity", "affine", "homography"]
THRESHOLDS = [round(float(t), 3) for t in np.arange(0.55, 0.851, 0.025)]
ACCEPTS = [round(float(t), 3) for t in np.arange(0.6, 1.001, 0.05)]
MIN_INLIERS = [4, 6, 8, 10, 12, 15, 20, 25, 30]
MAX_KEYPOINTS = 1000
F1_TIE = 0.005
KERNEL_TAG = f"sift-contrast-{verify.SIFT_CONTRAST}"  # cached inliers are per kernel version


def same_design(source_a: str, source_b: str) -> bool:
    """Two colourings of one design (gnome-backgrounds' NAME-l and NAME-d): the set's own
    colour and grayscale copies are positives, so these count neither way (ambiguous)."""
    a, b = source_a.rsplit("/", 1)[-1], source_b.rsplit("/", 1)[-1]
    return (a != b and a.endswith(".webp") and b.endswith(".webp") and source_a.startswith(photos.GNOME)
            and source_b.startswith(photos.GNOME) and a[:-7] == b[:-7])


def half_of(source: str) -> str:
    """'tuning' or 'test' for a split unit (a photo or a hard-negative set), the same on every machine."""
    return "tuning" if hashlib.sha1(source.encode()).digest()[0] % 2 == 0 else "test"


def split(set_dir: str, rows: list[dict]) -> dict[str, str]:
    """Each image's half. The unit is its source photo, or the hard-negative sets that
    photo is in (joined when they share a photo), so hard negatives stay within a half."""
    base = {r["file"]: r["source"].split(": ")[0] for r in rows}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    sets: dict[str, list[str]] = {}
    with open(os.path.join(set_dir, "hard_negatives.csv")) as f:
        for r in csv.DictReader(f):
            sets.setdefault(r["set"], []).append(base[r["file"]])
    for members in sets.values():
        for m in members[1:]:
            parent[find(m)] = find(members[0])
    for x, y in itertools.combinations(sorted(set(base.values())), 2):
        if same_design(x, y):
            parent[find(y)] = find(x)
    group_unit: dict[str, str] = {}  # a group's originals and copies follow its first source
    for r in sorted(rows, key=lambda r: r["role"] != "original"):
        group_unit.setdefault(r["group"], find(base[r["file"]]))
    return {r["file"]: half_of(group_unit[r["group"]]) for r in rows}


def default_precision() -> str:
    """What the default model runs at on the CPU: every preparation is embedded at it, so
    preparations are compared like for like (auto runs a non-default preparation in FP32,
    having no ranges shipped for it; int8 measures them on the photos, as the study has)."""
    from neardup_core.config import EmbedConfig, ModelConfig
    from neardup_core.embed.factory import cpu_int8

    return "int8" if cpu_int8(ModelConfig(), EmbedConfig()) else "fp32"


def embed(set_dir: str, work: str, name: str, overrides: list[str]) -> tuple[list[str], np.ndarray, float]:
    precision = default_precision()
    overrides = [f"embed.cpu_precision={precision}", *overrides]
    out = os.path.join(work, f"run-{name}-{precision}")  # a --work of FP32 runs is not read as INT8 ones
    seconds = 0.0
    if not os.path.exists(os.path.join(out, "_SUCCESS")):
        seconds = neardup(["run", "--input", os.path.join(set_dir, "images"), "--output", out, "--overwrite",
                           "--set", "pairs.accept_cosine=-1", *[x for kv in overrides for x in ("--set", kv)]])
    table = pq.read_table(os.path.join(out, "embeddings"), columns=["id", "embedding"]).to_pydict()
    return [os.path.basename(i) for i in table["id"]], np.asarray(table["embedding"], np.float64), seconds


def cosine_pairs(ids: list[str], vectors: np.ndarray) -> dict[tuple[str, str], float]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    i, j = np.nonzero(np.triu(sims >= FLOOR, k=1))
    return {pair(ids[a], ids[b]): float(sims[a, b]) for a, b in zip(i, j)}


def inliers_for(set_dir: str, pairs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """inliers[features][ratio][transform][pair], and the seconds each step took."""
    import cv2

    images = sorted({x for p in pairs for x in p})
    result, seconds = {}, {}
    for name, (kind, side) in FEATURES.items():
        start = time.perf_counter()
        feats = {}
        for image in images:
            with open(os.path.join(set_dir, "images", image), "rb") as f:
                feats[image] = verify.features(verify.gray_image(f.read(), side, 10**9), kind, MAX_KEYPOINTS)
        featurized = time.perf_counter() - start
        start = time.perf_counter()
        norm = cv2.NORM_L2 if kind == "sift" else cv2.NORM_HAMMING
        matcher = cv2.BFMatcher(norm)
        out = {r: {t: {} for t in TRANSFORMS} for r in RATIOS}
        for p in pairs:
            a, b = feats[p[0]], feats[p[1]]
            knn = []
            if len(a) and len(b) >= 2:
                da = a.descriptors.astype(np.float32) if kind == "sift" else a.descriptors
                db = b.descriptors.astype(np.float32) if kind == "sift" else b.descriptors
                knn = [m for m in matcher.knnMatch(da, db, k=2) if len(m) == 2]
            q = np.array([m[0].queryIdx for m in knn], np.int64)
            t = np.array([m[0].trainIdx for m in knn], np.int64)
            d1 = np.array([m[0].distance for m in knn])
            d2 = np.array([m[1].distance for m in knn])
            for r in RATIOS:
                keep = d1 < r * d2 if len(knn) else np.zeros(0, bool)
                for tr in TRANSFORMS:
                    out[r][tr][p] = verify.fit_inliers(a.points[q[keep]], b.points[t[keep]], tr)
        result[name] = out
        seconds[name] = {"featurize_per_image": featurized / max(len(images), 1),
                         "match_and_fit_9_per_pair": (time.perf_counter() - start) / max(len(pairs), 1)}
    return result, seconds


def decide(cosines: dict, inliers: dict, threshold: float, accept: float, min_inliers: int) -> list:
    keys = list(cosines)
    c = np.array([cosines[k] for k in keys])
    n = np.array([inliers.get(k, -1) for k in keys])
    keep = verify.accepted(c, n, threshold, accept, min_inliers)
    return [k for k, ok in zip(keys, keep) if ok]


def label_of(data: dict, truth: Truth, p: tuple[str, str]) -> bool | None:
    """The truth's label, and None for two colourings of one design (:func:`same_design`)."""
    got = truth.label(*p)
    if got is False and same_design(data["base"][p[0]], data["base"][p[1]]):
        return None
    return got


def score(data: dict, kept: list, truth: Truth):
    """score_pairs with :func:`same_design` pairs left out (they count neither way)."""
    return score_pairs([p for p in kept if label_of(data, truth, p) is not None], truth)


def restricted(truth_rows: list[dict], halves: dict[str, str], half: str) -> Truth:
    return Truth.from_rows(
        (r["file"], r["group"] if r["role"] != "ambiguous" else None,
         r["group"] if r["role"] == "ambiguous" else None, r["transform"].split(":")[0])
        for r in truth_rows if halves[r["file"]] == half)


def pooled(scores: list) -> tuple[float, float, float, int, int, int]:
    tp = sum(s.true_positives for s in scores)
    fp = sum(s.false_positives for s in scores)
    fn = sum(s.false_negatives for s in scores)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0), tp, fp, fn


def pooled_counts(counts: list[tuple[int, int, int]]) -> tuple[float, float, float, int, int, int]:
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0), tp, fp, fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--check-job", action="store_true",
                        help="then run `neardup run` with the configured defaults on each set and score it")
    parser.add_argument("--rescore-job", action="store_true",
                        help="score the runs --check-job wrote last time, without running the job again")
    parser.add_argument("--job-set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --check-job: run the job with this override (e.g. embed.cpu_precision=int8)")
    args = parser.parse_args()
    seeds = {}
    for seed in args.seeds:
        work = os.path.join(args.work, f"seed-{seed}")
        set_dir = os.path.join(work, "set")
        if not os.path.exists(os.path.join(set_dir, "set.json")):
            print(json.dumps(build_set.build(set_dir, seed, build_set.default_cache())))
        _, rows = load_truth(set_dir)
        halves = split(set_dir, rows)
        data = {"cosines": {}, "job_seconds": {}}
        for name, overrides in PREPARATIONS.items():
            ids, vectors, seconds = embed(set_dir, work, name, overrides)
            data["cosines"][name] = cosine_pairs(ids, vectors)
            data["job_seconds"][name] = seconds
        cache = os.path.join(work, f"verify-inliers-{KERNEL_TAG}.json")
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
            data["seconds"] = cached["seconds"]
            data["inliers"] = {f: {float(r): {t: {tuple(p.split("|")): n for p, n in d.items()} for t, d in rv.items()}
                                   for r, rv in fv.items()} for f, fv in cached["inliers"].items()}
        else:
            every = sorted({p for c in data["cosines"].values() for p in c})
            data["inliers"], data["seconds"] = inliers_for(set_dir, every)
            data["seconds"]["pairs"] = len(every)
            with open(cache, "w") as f:
                json.dump({"seconds": data["seconds"],
                           "inliers": {f: {str(r): {t: {"|".join(p): n for p, n in d.items()} for t, d in rv.items()}
                                           for r, rv in fv.items()} for f, fv in data["inliers"].items()}}, f)
        data["halves"] = halves
        data["set_dir"] = set_dir
        data["base"] = {r["file"]: r["source"].split(": ")[0] for r in rows}
        data["rows"] = rows
        data["truth"] = {h: restricted(rows, halves, h) for h in ("tuning", "test")}
        seeds[seed] = data
        n = {h: sum(v == h for v in halves.values()) for h in ("tuning", "test")}
        print(f"seed {seed}: {len(rows)} images ({n['tuning']} tuning, {n['test']} test), "
              f"true pairs {len(data['truth']['tuning'].positives)} tuning / {len(data['truth']['test'].positives)} "
              f"test; feature cost {json.dumps(data['seconds'])}")

    # Per seed, preparation and half: the pairs, their cosines and labels as arrays, so a
    # setting is scored with a few vector operations.
    arrays = {}
    for seed, data in seeds.items():
        halves = data["halves"]
        for prep in PREPARATIONS:
            for half in ("tuning", "test"):
                truth = data["truth"][half]
                keys = [p for p in data["cosines"][prep] if halves[p[0]] == half == halves[p[1]]]
                labels = np.array([{True: 1, False: 0, None: -1}[label_of(data, truth, p)] for p in keys], np.int8)
                inl = {(f, r, t): np.array([data["inliers"][f][r][t].get(p, -1) for p in keys])
                       for f in FEATURES for r in RATIOS for t in TRANSFORMS}
                arrays[seed, prep, half] = (keys, np.array([data["cosines"][prep][p] for p in keys]), labels, inl,
                                            len(truth.positives))

    def counts_for(setting: tuple, half: str) -> list[tuple[int, int, int]]:
        """(true positives, false positives, false negatives) per seed."""
        prep, feats, ratio, transform, threshold, accept, min_inl = setting
        out = []
        for seed in seeds:
            _, cosine, labels, inl, positives = arrays[seed, prep, half]
            keep = verify.accepted(cosine, inl[feats, ratio, transform], threshold, accept, min_inl)
            tp = int((keep & (labels == 1)).sum())
            out.append((tp, int((keep & (labels == 0)).sum()), positives - tp))
        return out

    def scores_for(setting: tuple, half: str) -> list:
        prep, feats, ratio, transform, threshold, accept, min_inl = setting
        out = []
        for data in seeds.values():
            halves = data["halves"]
            cosines = {p: c for p, c in data["cosines"][prep].items()
                       if halves[p[0]] == half and halves[p[1]] == half}
            kept = decide(cosines, data["inliers"][feats][ratio][transform], threshold, accept, min_inl)
            out.append(score(data, kept, data["truth"][half]))
        return out

    start = time.perf_counter()
    results = []
    for prep, feats, ratio, transform in itertools.product(PREPARATIONS, FEATURES, RATIOS, TRANSFORMS):
        for threshold in THRESHOLDS:
            for accept in [a for a in ACCEPTS if a > threshold] + [threshold]:  # the last: verification off
                for min_inl in MIN_INLIERS if accept > threshold else [MIN_INLIERS[0]]:
                    setting = (prep, feats, ratio, transform, threshold, accept, min_inl)
                    results.append((setting, pooled_counts(counts_for(setting, "tuning"))))
    print(f"\n{len(results)} settings scored on the tuning photos in {time.perf_counter() - start:.0f} s")

    def eligible(candidates):
        return [r for r in candidates if r[1][0] >= MIN_PRECISION] or candidates

    def best(candidates):
        ok = eligible(candidates)
        top = max(r[1][2] for r in ok)
        # Within F1_TIE of the best F1 on the tuning photos, the setting that verifies most
        # (highest accept_cosine), then demands most inliers: the tuning photos hold few
        # look-alikes, and a look-alike they lack is caught only by verification.
        near = [r for r in ok if r[1][2] >= top - F1_TIE]
        return max(near, key=lambda r: (r[0][5], r[0][6], r[1][2]))

    chosen = best(results)
    top = max(r[1][2] for r in eligible(results))
    print(f"best tuning F1 at precision >= {MIN_PRECISION}: {top:.3f}; the choice is the setting that verifies most "
          f"within {F1_TIE} of it")
    no_verify = best([r for r in results if r[0][5] <= r[0][4] and r[0][0] == chosen[0][0]])
    old = next(r for r in results if r[0][:2] == ("grayscale+trim", "sift-512") and r[0][4] == 0.7
               and r[0][5] == 0.7 and r[0][2] == 0.75 and r[0][3] == "similarity")
    # Outside the grid (another preparation or feature size) it has no row.
    current = [("the defaults now (config.py)", r) for r in results if r[0] == default_setting()]
    print("\nsettings: preparation, features, ratio, transform, cosine_threshold, accept_cosine, min_inliers")
    print(f"{'':<34}{'tuning P':>9} {'R':>6} {'F1':>6}   {'test P':>7} {'R':>6} {'F1':>6}  test F1 per seed")
    report = {}
    for label, (setting, tuned) in [("before: cosine >= 0.7, no verify", old),
                                    ("best cosine alone (on tuning)", no_verify),
                                    ("chosen: with verification", chosen), *current]:
        per_seed = scores_for(setting, "test")
        tested = pooled(per_seed)
        f1s = [s.f1 for s in per_seed]
        print(f"{label:<34}{tuned[0]:9.3f} {tuned[1]:6.3f} {tuned[2]:6.3f}   {tested[0]:7.3f} {tested[1]:6.3f} "
              f"{tested[2]:6.3f}  {' '.join(f'{x:.3f}' for x in f1s)} (spread {max(f1s) - min(f1s):.3f})")
        print(f"{'':<34}{setting}")
        report[label] = {"setting": setting, "tuning": tuned, "test": tested,
                         "test_per_seed": [s._asdict() for s in per_seed]}
    for half in ("tuning", "test"):
        both = pooled(scores_for(chosen[0], half))
        print(f"chosen on {half:<7}: precision {both[0]:.3f} recall {both[1]:.3f} F1 {both[2]:.3f} "
              f"(TP {both[3]}, FP {both[4]}, FN {both[5]})")

    prep, feats, ratio, transform, threshold, accept, min_inl = chosen[0]
    print(f"\ntuning F1 around the choice ({prep}, {feats}, ratio {ratio}, {transform}): rows cosine_threshold, "
          f"columns accept_cosine, at min_inliers {min_inl}")
    table = {(r[0][4], r[0][5]): r[1][2] for r in results if r[0][:4] == chosen[0][:4] and r[0][6] == min_inl}
    print("       " + "".join(f"{a:>7}" for a in ACCEPTS))
    for t in THRESHOLDS:
        print(f"{t:>7}" + "".join(f"{table[t, a]:7.3f}" if (t, a) in table else "      -" for a in ACCEPTS))
    print("\ntest photos, chosen setting: recall by transform, false positives, share verified")
    found: dict[str, list[int]] = {}
    for seed, data in seeds.items():
        halves, truth = data["halves"], data["truth"]["test"]
        cosines = {p: c for p, c in data["cosines"][prep].items() if halves[p[0]] == "test" == halves[p[1]]}
        inl = data["inliers"][feats][ratio][transform]
        kept = decide(cosines, inl, threshold, accept, min_inl)
        for t, (f, n) in recall_by_transform(kept, truth).items():
            found.setdefault(t, [0, 0])
            found[t][0] += f
            found[t][1] += n
        source = {r["file"]: r["source"].split(": ")[0].split("/")[-1] for r in data["rows"]}
        for p in kept:
            if label_of(data, truth, p) is False:
                print(f"  FP seed {seed}: {p[0]} ({source[p[0]]}) ~ {p[1]} ({source[p[1]]}) "
                      f"cosine {cosines[p]:.3f} inliers {inl.get(p)}")
        above = [p for p, c in cosines.items() if c >= threshold]
        borderline = [p for p in above if cosines[p] < accept]
        print(f"  seed {seed}: {len(borderline)} of {len(above)} pairs at cosine >= {threshold} verified "
              f"({len(borderline) / max(len(above), 1):.0%})")
    print("  recall by transform: " + ", ".join(f"{t} {f}/{n}" for t, (f, n) in sorted(found.items())))
    report["recall_by_transform"] = found
    with open(os.path.join(args.work, "study.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nwrote {args.work}/study.json")
    if args.check_job or args.rescore_job:
        check_job(seeds, score, args.rescore_job, args.job_set)


def default_setting() -> tuple:
    """The job's default configuration as a setting of the grid."""
    from neardup_core.config import ModelConfig, PairsConfig

    model, cfg = ModelConfig(), PairsConfig()
    prep = f"{model.colour}+trim" if model.trim_borders else f"{model.colour}, no trim"
    feats = f"{cfg.features}-{cfg.max_side}"
    return prep, feats, cfg.ratio, cfg.transform, cfg.cosine_threshold, cfg.accept_cosine, cfg.min_inliers


def with_exact_copies(rows: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """The pairs that pairs/ implies: it lists an exact copy only with the copy that stands
    for it (``exact`` true), and the copy shares that one's pairs and its other copies."""
    members: dict[str, set[str]] = {}
    for a, b, exact in rows:
        if exact:
            joined = members.get(a, {a}) | members.get(b, {b})
            for x in joined:
                members[x] = joined
    implied = set()
    for a, b, _ in rows:
        for x in members.get(a, {a}):
            for y in members.get(b, {b}):
                if x != y:
                    implied.add(pair(x, y))
    return sorted(implied)


def check_job(seeds: dict, score, rescore: bool = False, overrides: list[str] = ()) -> None:
    """`neardup run` with the configured defaults (verification on) on each set: its pairs/
    scored on the test photos, what its verify stage did, and the kernel's own cost."""
    from neardup_core.config import PairsConfig

    cfg = PairsConfig()
    print(f"\nneardup run with the defaults {' '.join(overrides)} (cosine_threshold {cfg.cosine_threshold}, "
          f"accept_cosine "
          f"{cfg.accept_cosine}, min_inliers {cfg.min_inliers}, {cfg.features}, {cfg.transform}, ratio {cfg.ratio}):")
    per_half = {"tuning": [], "test": []}
    for seed, data in seeds.items():
        out = os.path.join(os.path.dirname(data["set_dir"]), "run-defaults")
        wall = float("nan")
        if not rescore:
            wall = neardup(["run", "--input", os.path.join(data["set_dir"], "images"), "--output", out, "--overwrite",
                            "--set", "pairs.keep_rejected=true", *[x for kv in overrides for x in ("--set", kv)]])
        table = pq.read_table(os.path.join(out, "pairs"), columns=["id_a", "id_b", "exact"]).to_pydict()
        kept = with_exact_copies([(os.path.basename(a), os.path.basename(b), e)
                                  for a, b, e in zip(table["id_a"], table["id_b"], table["exact"])])
        with open(os.path.join(out, "_manifest.json")) as f:
            manifest = json.load(f)
        stage = {s["name"]: s for s in manifest["stages"]}
        v = stage["verify"]
        for half in per_half:
            inside = [p for p in kept if data["halves"][p[0]] == half == data["halves"][p[1]]]
            per_half[half].append(score(data, inside, data["truth"][half]))
        t = per_half["test"][-1]
        found = v["pairs"] + v["rejected"]
        matched = v.get("matched", v["borderline"])
        print(f"  seed {seed}: test P {t.precision:.3f} R {t.recall:.3f} F1 {t.f1:.3f}; run {wall:.1f} s, embed "
              f"{stage['embed']['seconds']:.1f} s, verify {v['seconds']:.1f} s: {v['borderline']} of {found} pairs "
              f"borderline ({v['borderline'] / max(found, 1):.0%}), {matched} matched, {v.get('unverified', 0)} "
              f"left unverified, {v.get('over_budget', 0)} over the budget, {v['rejected']} rejected, "
              f"{v['images']} images featurized")
    for half, scores in per_half.items():
        p, r, f1, tp, fp, fn = pooled(scores)
        print(f"  {half:<7} photos, seeds pooled: precision {p:.3f} recall {r:.3f} F1 {f1:.3f} "
              f"(TP {tp}, FP {fp}, FN {fn})")
    # The kernel alone, one process, default settings: per image and per pair.
    data = next(iter(seeds.values()))
    cosines = data["cosines"]["grayscale+trim"]
    pairs = [p for p, c in cosines.items() if c >= cfg.cosine_threshold][:400]
    images = sorted({x for p in pairs for x in p})
    start = time.perf_counter()
    feats = {}
    for image in images:
        with open(os.path.join(data["set_dir"], "images", image), "rb") as f:
            feats[image] = verify.features(verify.gray_image(f.read(), cfg.max_side, 10**9), cfg.features,
                                           cfg.max_keypoints)
    per_image = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    with verify.one_thread():  # as in a Spark task
        for a, b in pairs:
            verify.count_inliers(feats[a], feats[b], cfg.ratio, cfg.transform)
    per_pair = (time.perf_counter() - start) / len(pairs)
    print(f"  kernel, one core: {per_image:.3f} s per featurized image ({len(images)} images, decode included), "
          f"{per_pair * 1000:.1f} s per 1,000 verified pairs ({len(pairs)} pairs)")


if __name__ == "__main__":
    main()
