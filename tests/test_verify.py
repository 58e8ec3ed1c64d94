"""The geometric verification kernel (neardup_core.verify): real photos from opencv-doc,
copies of them made here, and the decision rule on seeded inputs."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from neardup_core import verify
from tests.references import brute_force_matches, pairs_needing_a_verdict, sequential_decisions, union_find_components

DATA = "/usr/share/doc/opencv-doc/examples/data"
MIN_INLIERS = 15  # the default pairs.min_inliers

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason="needs the opencv-doc package (its sample photos)")


def _jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _photo(name: str) -> Image.Image:
    with Image.open(os.path.join(DATA, name)) as im:
        return im.convert("RGB")


def _features(im: Image.Image, kind: str = "sift") -> verify.Features:
    return verify.features(verify.gray_image(_jpeg(im), 512, 10**8), kind, 1000)


def _copies(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    overlaid = im.copy()
    ImageDraw.Draw(overlaid).text((w * 0.05, h * 0.4), "SALE TODAY ONLY", fill=(255, 0, 0),
                                  font=ImageFont.load_default(size=max(12, h // 8)))
    return {
        "rotated": im.rotate(7, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 90, 0)),
        "cropped": im.crop((int(w * 0.15), int(h * 0.1), int(w * 0.9), int(h * 0.85))),
        "text": overlaid,
        "small": im.resize((w // 3, h // 3), Image.Resampling.LANCZOS),
    }


@pytest.mark.parametrize("kind", ["sift", "orb"])
@pytest.mark.parametrize("transform", ["similarity", "affine", "homography"])
def test_copies_of_a_photo_pass_and_other_photos_fail(kind, transform):
    base = _photo("baboon.jpg")
    original = _features(base, kind)
    for name, copy in _copies(base).items():
        inliers = verify.count_inliers(original, _features(copy, kind), transform=transform)
        assert inliers >= 2 * MIN_INLIERS, (name, inliers)
    for other in ("fruits.jpg", "messi5.jpg", "home.jpg"):
        inliers = verify.count_inliers(original, _features(_photo(other), kind), transform=transform)
        assert inliers < MIN_INLIERS, (other, inliers)


def test_two_different_photos_of_one_kind_fail():
    # Two photos of fruit: the embedding finds them alike, their keypoints do not agree.
    inliers = verify.count_inliers(_features(_photo("apple.jpg")), _features(_photo("orange.jpg")))
    assert inliers < MIN_INLIERS


def test_inliers_are_repeatable_and_symmetric_enough():
    a = _features(_photo("baboon.jpg"))
    b = _features(_copies(_photo("baboon.jpg"))["rotated"])
    assert verify.count_inliers(a, b) == verify.count_inliers(a, b)
    assert verify.count_inliers(b, a) >= 4 * MIN_INLIERS


def test_keypoints_are_capped_and_pack_round_trips():
    f = _features(_photo("baboon.jpg"))
    assert len(f) == 1000 and f.points.shape == (1000, 2) and f.descriptors.shape == (1000, 128)
    assert f.descriptors.dtype == np.uint8
    back = verify.unpack(*verify.pack(f), "sift")
    np.testing.assert_array_equal(back.points, f.points)
    np.testing.assert_array_equal(back.descriptors, f.descriptors)
    small = verify.features(verify.gray_image(_jpeg(_photo("baboon.jpg")), 512, 10**8), "orb", 50)
    assert len(small) <= 50 and small.descriptors.shape[1] == 32


def test_gray_image_is_bounded_and_errors_name_the_problem():
    gray = verify.gray_image(_jpeg(_photo("baboon.jpg")), 200, 10**8)
    assert gray.dtype == np.uint8 and max(gray.shape) == 200
    with pytest.raises(verify.FeatureError, match="empty file"):
        verify.gray_image(b"", 200, 10**8)
    with pytest.raises(verify.FeatureError, match="cannot decode"):
        verify.gray_image(b"not an image", 200, 10**8)
    with pytest.raises(verify.FeatureError, match="input.max_pixels=100"):
        verify.gray_image(_jpeg(_photo("baboon.jpg")), 200, 100)


def test_blank_images_have_no_features_and_no_inliers():
    blank = verify.features(np.full((64, 64), 128, np.uint8))
    assert len(blank) == 0
    assert verify.count_inliers(blank, blank) == 0
    assert verify.count_inliers(blank, _features(_photo("baboon.jpg"))) == 0


def _reference_decision(cosine, inliers, threshold, accept, min_inliers):
    out = []
    for c, n in zip(cosine, inliers):
        if c < threshold:
            out.append(False)
        elif c >= accept:
            out.append(True)
        else:
            out.append(bool(n >= min_inliers))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decision_rule_matches_a_reference_on_seeded_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    cosine = rng.uniform(0.5, 1.0, n).round(2)  # rounded: values exactly on a threshold occur
    inliers = rng.integers(0, 40, n)
    threshold, accept = float(rng.choice([0.6, 0.7, 0.75])), float(rng.choice([0.6, 0.8, 0.9, 1.0]))
    min_inliers = int(rng.integers(1, 30))
    got = verify.accepted(cosine, inliers, threshold, accept, min_inliers)
    assert got.tolist() == _reference_decision(cosine, inliers, threshold, accept, min_inliers)
    borderline = verify.needs_verification(cosine, threshold, accept)
    assert borderline.tolist() == [threshold <= c < accept for c in cosine]


def test_accept_cosine_at_or_below_the_threshold_turns_verification_off():
    cosine = np.array([0.7, 0.75, 0.99])
    assert not verify.needs_verification(cosine, 0.7, 0.7).any()
    assert verify.accepted(cosine, np.zeros(3), 0.7, 0.5, 1000).all()


def test_matches_are_those_of_opencvs_brute_force_matcher():
    photos = [_photo(name) for name in ("baboon.jpg", "fruits.jpg", "home.jpg", "apple.jpg")]
    found = []
    for im in photos:
        found += [_features(im), _features(_copies(im)["cropped"])]
    for i in range(len(found)):
        for j in range(len(found)):
            if i != j:
                for ratio in (0.7, 0.75, 0.8):
                    ia, ib = verify.good_matches(found[i], found[j], ratio)
                    assert (ia.tolist(), ib.tolist()) == brute_force_matches(found[i], found[j], ratio), (i, j, ratio)


def _seeded_graph(seed):
    """A priority-ordered pair graph: dense clusters (crops of one photo) and sparse links,
    each pair strong or borderline, and a fixed verdict for every borderline pair."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    cluster = rng.integers(0, max(1, n // int(rng.integers(2, 12))), n)
    pairs = {(i, j) for i in range(n) for j in range(i + 1, n)
             if rng.random() < (0.6 if cluster[i] == cluster[j] else 0.03)}
    pairs = sorted(pairs) or [(0, 1)]
    a, b = np.array(pairs).T
    swap = rng.random(len(a)) < 0.5  # either end may come first
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    strong = rng.random(len(a)) < rng.uniform(0.1, 0.9)
    verdict = rng.random(len(a)) < rng.uniform(0.1, 0.9)
    cosine = rng.uniform(0.625, 0.75, len(a)).round(3)
    return n, a, b, cosine, strong, verdict


def _outcome(n, a, b, cosine, accepted):
    edges = [(int(x), int(y)) for x, y in zip(a[accepted], b[accepted])]
    kept_by, cos = sequential_decisions(n, [(x, y, c) for (x, y), c in zip(edges, cosine[accepted])])
    return union_find_components(n, edges), kept_by, cos


@pytest.mark.parametrize("seed", range(60))
def test_pairs_to_verify_are_those_of_the_sequential_walk(seed):
    # Every state (rejected and over-budget pairs are not walked), and hubs with up to
    # hundreds of higher-priority neighbours, past the walk's growing slices of 4, 16, 64.
    rng = np.random.default_rng(seed)
    n, a, b, _, _, _ = _seeded_graph(seed)
    if seed % 3 == 0:
        hub_pairs = {(int(i), int(j)) for i, j in rng.integers(0, 400, (3000, 2)) if i != j}
        hub_pairs = sorted({(min(p), max(p)) for p in hub_pairs})
        n, (a, b) = 400, np.array(hub_pairs).T
    state = rng.choice(5, len(a), p=rng.dirichlet(np.ones(5)))
    got = verify.pairs_to_verify(n, a, b, state)
    expected = pairs_needing_a_verdict(n, list(zip(a.tolist(), b.tolist())), state.tolist())
    assert np.flatnonzero(got).tolist() == expected
    order = verify.walk_order(n, a, b)
    assert order.tolist() == np.lexsort((np.minimum(a, b), np.maximum(a, b))).tolist()
    assert (verify.pairs_to_verify(n, a, b, state, order) == got).all()
    assert verify.walk_order(2**40, a, b).tolist() == order.tolist()  # the two-key sort, for n past 31 bits


@pytest.mark.parametrize("seed", range(40))
def test_settling_gives_the_groups_and_decisions_of_verifying_every_pair(seed):
    n, a, b, cosine, strong, verdict = _seeded_graph(seed)
    asked = []

    def count(indices):
        asked.extend(indices.tolist())
        return np.where(verdict[indices], 20, 3)

    settled = verify.settle(n, a, b, cosine, np.where(strong, verify.EMBEDDING, verify.UNKNOWN), count,
                            min_inliers=15, budget=10**9)
    assert len(asked) == len(set(asked)) and not strong[asked].any()  # each borderline pair at most once
    assert settled.over_budget == 0
    expected = _outcome(n, a, b, cosine, strong | verdict)
    left = settled.state == verify.UNKNOWN
    assert (settled.state[strong] == verify.EMBEDDING).all() and (settled.inliers[left] == -1).all()
    # Whatever the pairs left unverified would have said, the groups and decisions are the same.
    for unverified_verdict in (True, False):
        accepted = np.isin(settled.state, (verify.EMBEDDING, verify.GEOMETRY)) | (left & unverified_verdict)
        assert _outcome(n, a, b, cosine, accepted) == expected


@pytest.mark.parametrize("seed", range(20))
def test_over_budget_pairs_are_rejected_and_the_rest_is_exact(seed):
    n, a, b, cosine, strong, verdict = _seeded_graph(seed)
    budget = int(np.random.default_rng(seed).integers(0, 6))
    settled = verify.settle(n, a, b, cosine, np.where(strong, verify.EMBEDDING, verify.UNKNOWN),
                            lambda idx: np.where(verdict[idx], 20, 3), min_inliers=15, budget=budget)
    matched = np.isin(settled.state, (verify.GEOMETRY, verify.REJECTED))
    over = settled.state == verify.OVER_BUDGET
    assert matched.sum() <= budget and over.sum() == settled.over_budget
    assert settled.over_budget == 0 or matched.sum() == budget  # the budget is spent before any pair is refused
    # The same as verifying every pair with the refused ones taken as rejected.
    accepted = strong | (verdict & ~over)
    left = settled.state == verify.UNKNOWN
    for unverified_verdict in (True, False):
        got = np.isin(settled.state, (verify.EMBEDDING, verify.GEOMETRY)) | (left & unverified_verdict)
        assert _outcome(n, a, b, cosine, got) == _outcome(n, a, b, cosine, accepted)


def test_settling_skips_pairs_inside_a_group_of_crops():
    # One photo's crops: a star of strong pairs around the kept image, and borderline pairs
    # between the crops, which are all dropped by the kept image whatever those pairs say.
    n = 30
    a = np.array([0] * (n - 1) + [i for i in range(1, n) for j in range(i + 1, n)])
    b = np.array(list(range(1, n)) + [j for i in range(1, n) for j in range(i + 1, n)])
    state = np.where(a == 0, verify.EMBEDDING, verify.UNKNOWN)
    settled = verify.settle(n, a, b, np.full(len(a), 0.7), state, lambda idx: np.zeros(len(idx)), 15, 10**9)
    assert settled.rounds == 0 and (settled.state[a > 0] == verify.UNKNOWN).all()
