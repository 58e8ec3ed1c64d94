"""Score reported pairs against labelled near-duplicate groups. Pure Python and NumPy.

A labelled set names, for each image, its near-duplicate group (every pair inside a group
is a true pair) and optionally an ambiguous set (stereo views, frames of one video): pairs
inside one ambiguous set count neither way. Every other pair is a negative.

    truth = Truth.from_rows(rows)          # rows: (image, group, ambiguous_set, transform)
    scores = score_pairs(reported, truth)  # precision, recall, F1 over pairs
    curve = pr_curve(reported_with_cosine, truth)

Memory: the true pairs are materialised (sum over groups of n * (n - 1) / 2); negatives
never are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

Pair = tuple[str, str]


def pair(a: str, b: str) -> Pair:
    """The pair's canonical order (a pair and its mirror are the same pair)."""
    return (a, b) if a <= b else (b, a)


def pairs_within(sets: Iterable[Sequence[str]]) -> set[Pair]:
    """Every pair of two different members of one set, in canonical order."""
    return {pair(a, b) for members in sets for i, a in enumerate(members) for b in members[i + 1:] if a != b}


@dataclass(frozen=True)
class Truth:
    """Labels of a benchmark set.

    ``group[image]`` is its near-duplicate group or None (an image with no copy in the set);
    ``ambiguous[image]`` its ambiguous set or None; ``transform[image]`` how a copy was made
    ("" for an original).
    """

    group: dict[str, str | None]
    ambiguous: dict[str, str | None]
    transform: dict[str, str]
    positives: frozenset[Pair] = field(init=False)

    def __post_init__(self):
        members: dict[str, list[str]] = defaultdict(list)
        for image, g in self.group.items():
            if g is not None:
                members[g].append(image)
        object.__setattr__(self, "positives", frozenset(pairs_within(members.values())))

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[str | None]]) -> Truth:
        """From (image, group, ambiguous_set, transform) rows; empty strings mean None.

        Raises:
            ValueError: an image listed twice, or in both a group and an ambiguous set.
        """
        group, ambiguous, transform = {}, {}, {}
        for image, g, a, t in rows:
            if image in group:
                raise ValueError(f"truth: image {image!r} is listed twice")
            if g and a:
                raise ValueError(f"truth: image {image!r} is in group {g!r} and ambiguous set {a!r}; "
                                 "an image is one or the other")
            group[image], ambiguous[image], transform[image] = g or None, a or None, t or ""
        return cls(group, ambiguous, transform)

    def label(self, a: str, b: str) -> bool | None:
        """True for a near-duplicate pair, False for a negative, None for an ambiguous one.

        Raises:
            KeyError: an image the truth does not know (the report is not of this set).
        """
        for image in (a, b):
            if image not in self.group:
                raise KeyError(f"image {image!r} is not in the labelled set")
        if self.ambiguous[a] is not None and self.ambiguous[a] == self.ambiguous[b]:
            return None
        return self.group[a] is not None and self.group[a] == self.group[b]


class Scores(NamedTuple):
    reported: int  # distinct pairs reported, ambiguous ones included
    true_positives: int
    false_positives: int
    false_negatives: int
    ambiguous: int  # reported pairs that count neither way
    precision: float
    recall: float
    f1: float


def precision_recall_f1(true_positives: int, false_positives: int, positives: int) -> tuple[float, float, float]:
    """Precision (1.0 when nothing is reported: no wrong answer was given), recall (1.0 when
    there is nothing to find) and their harmonic mean."""
    reported = true_positives + false_positives
    precision = true_positives / reported if reported else 1.0
    recall = true_positives / positives if positives else 1.0
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def score_pairs(reported: Iterable[Pair], truth: Truth) -> Scores:
    """Precision, recall and F1 over pairs.

    A pair reported twice (or as its mirror) counts once; a pair of an image with itself
    is ignored. Precision with nothing reported is 1.0 (no wrong answer was given).

    Raises:
        KeyError: a reported image is not in the labelled set.
    """
    seen = {pair(a, b) for a, b in reported if a != b}
    tp = fp = amb = 0
    for a, b in seen:
        label = truth.label(a, b)
        if label is None:
            amb += 1
        elif label:
            tp += 1
        else:
            fp += 1
    fn = len(truth.positives) - tp
    return Scores(len(seen), tp, fp, fn, amb, *precision_recall_f1(tp, fp, len(truth.positives)))


class CurvePoint(NamedTuple):
    threshold: float
    reported: int
    precision: float
    recall: float
    f1: float


def pr_curve(scored: Iterable[tuple[str, str, float]], truth: Truth,
             thresholds: Sequence[float] | None = None) -> list[CurvePoint]:
    """Precision and recall of keeping the pairs whose score is at least each threshold.

    Args:
        scored: (image_a, image_b, score) for every pair the scorer can see (for example
            the job's pairs/ written at a low ``pairs.cosine_threshold``). A pair listed
            twice keeps its highest score.
        thresholds: where to read the curve; None: at every distinct score.

    Returns:
        One point per threshold, highest threshold first.
    """
    best: dict[Pair, float] = {}
    for a, b, s in scored:
        if a != b:
            p = pair(a, b)
            best[p] = max(s, best.get(p, -np.inf))
    labelled = [(s, label) for (a, b), s in best.items() if (label := truth.label(a, b)) is not None]
    score = np.array([s for s, _ in labelled], dtype=np.float64)
    positive = np.array([label for _, label in labelled], dtype=bool)
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    tp, fp = np.cumsum(positive), np.cumsum(~positive)
    if thresholds is None:
        thresholds = np.unique(score)[::-1]
    points = []
    for t in sorted(thresholds, reverse=True):
        n = int(np.searchsorted(-score, -t, side="right"))  # pairs with score >= t
        tpn, fpn = (int(tp[n - 1]), int(fp[n - 1])) if n else (0, 0)
        points.append(CurvePoint(float(t), n, *precision_recall_f1(tpn, fpn, len(truth.positives))))
    return points


def recall_by_transform(reported: Iterable[Pair], truth: Truth) -> dict[str, tuple[int, int]]:
    """For each transform, (found, total) over the true pairs in which at least one image
    is a copy made with it. A pair of two copies counts for both transforms."""
    seen = {pair(a, b) for a, b in reported}
    found: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for p in truth.positives:
        for t in {truth.transform[p[0]], truth.transform[p[1]]} - {""}:
            total[t] += 1
            found[t] += p in seen
    return {t: (found[t], total[t]) for t in sorted(total)}


TRUTH_COLUMNS = ("file", "group", "role", "transform")


def read_truth_csv(path: str) -> Truth:
    """The labelled benchmark's ``truth.csv`` (benchmarks/quality/build_set.py): columns
    file, group, role (original, copy, shipped or ambiguous), transform. A row of role
    ``ambiguous`` puts its file in the ambiguous set named by ``group``; any other role, in
    that near-duplicate group. Images are named by file name, as a run's ids end.

    Raises:
        ValueError: unreadable file, missing columns, or labels :meth:`Truth.from_rows` refuses.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"truth file {path}: no column {', '.join(missing)} "
                                 f"(expected {', '.join(TRUTH_COLUMNS)})")
            rows = list(reader)
    except OSError as err:
        raise ValueError(f"truth file {path}: cannot read: {err.strerror}") from err
    return Truth.from_rows(
        (r["file"], r["group"] if r["role"] != "ambiguous" else None,
         r["group"] if r["role"] == "ambiguous" else None, r["transform"].split(":")[0]) for r in rows)
