"""The quality scorer on a hand-made truth whose answers are worked out by hand."""

import pytest

from neardup_core.evaluation import Truth, pr_curve, recall_by_transform, score_pairs

# Group g1: a (original), a1 (crop), a2 (text) -> 3 true pairs.
# Group g2: b (original), b1 (crop) -> 1 true pair.
# c: an unrelated image. s1, s2: stereo views (ambiguous set s).
ROWS = [
    ("a", "g1", None, ""), ("a1", "g1", None, "crop"), ("a2", "g1", None, "text"),
    ("b", "g2", None, ""), ("b1", "g2", None, "crop"),
    ("c", None, None, ""),
    ("s1", None, "s", ""), ("s2", None, "s", ""),
]
TRUTH = Truth.from_rows(ROWS)


def test_true_pairs_are_every_pair_inside_a_group():
    assert TRUTH.positives == {("a", "a1"), ("a", "a2"), ("a1", "a2"), ("b", "b1")}


def test_scores_worked_by_hand():
    # 2 true pairs (one reported twice, once mirrored), 1 wrong pair, 1 ambiguous pair,
    # and a self-pair, which is ignored.
    reported = [("a", "a1"), ("a1", "a"), ("b1", "b"), ("a2", "c"), ("s2", "s1"), ("c", "c")]
    s = score_pairs(reported, TRUTH)
    assert (s.reported, s.true_positives, s.false_positives, s.false_negatives, s.ambiguous) == (4, 2, 1, 2, 1)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 4)
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_nothing_reported_is_precise_but_finds_nothing():
    s = score_pairs([], TRUTH)
    assert (s.precision, s.recall, s.f1, s.false_negatives) == (1.0, 0.0, 0.0, 4)


def test_ambiguous_pairs_count_neither_way_but_pairs_leaving_the_set_do():
    assert TRUTH.label("s1", "s2") is None
    assert TRUTH.label("s1", "a") is False
    assert score_pairs([("s1", "a")], TRUTH).false_positives == 1


def test_unknown_image_is_an_error_naming_it():
    with pytest.raises(KeyError, match="'zz' is not in the labelled set"):
        score_pairs([("a", "zz")], TRUTH)


@pytest.mark.parametrize("rows, message", [
    ([("a", "g", None, ""), ("a", "g", None, "")], "listed twice"),
    ([("a", "g", "s", "")], "group 'g' and ambiguous set 's'"),
])
def test_bad_truth_rows_are_refused(rows, message):
    with pytest.raises(ValueError, match=message):
        Truth.from_rows(rows)


def test_pr_curve_worked_by_hand():
    scored = [("a", "a1", 0.95), ("b", "b1", 0.9), ("a", "c", 0.85), ("s1", "s2", 0.8),
              ("a", "a2", 0.7), ("a1", "a2", 0.6), ("a1", "a", 0.5)]  # the mirror keeps 0.95
    curve = pr_curve(scored, TRUTH, [0.9, 0.8, 0.6, 0.99])
    by_t = {p.threshold: p for p in curve}
    assert [p.threshold for p in curve] == [0.99, 0.9, 0.8, 0.6]
    assert (by_t[0.99].reported, by_t[0.99].precision, by_t[0.99].recall) == (0, 1.0, 0.0)
    assert (by_t[0.9].reported, by_t[0.9].precision, by_t[0.9].recall) == (2, 1.0, 0.5)
    # At 0.8 the ambiguous pair is above the threshold but is not counted.
    assert (by_t[0.8].reported, by_t[0.8].precision, by_t[0.8].recall) == (3, pytest.approx(2 / 3), 0.5)
    assert (by_t[0.6].reported, by_t[0.6].precision, by_t[0.6].recall) == (5, pytest.approx(4 / 5), 1.0)


def test_pr_curve_at_every_score_matches_score_pairs():
    scored = [("a", "a1", 0.9), ("a", "c", 0.8), ("b", "b1", 0.7)]
    for point in pr_curve(scored, TRUTH):
        kept = [(a, b) for a, b, s in scored if s >= point.threshold]
        s = score_pairs(kept, TRUTH)
        assert (point.precision, point.recall, point.f1) == (s.precision, s.recall, s.f1)


def test_recall_by_transform_counts_copy_pairs_for_both_transforms():
    # Found: a-a1 (crop) and a1-a2 (crop and text). Missed: a-a2 (text), b-b1 (crop).
    found = recall_by_transform([("a", "a1"), ("a2", "a1")], TRUTH)
    assert found == {"crop": (2, 3), "text": (1, 2)}
