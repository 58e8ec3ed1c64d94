"""Geometric verification of a near-duplicate pair: local features, ratio-test matches,
a RANSAC fit, an inlier count; and the rule that says which pairs need it. Pure (OpenCV,
NumPy, Pillow).

One global embedding cannot tell "the same photo, edited" from "a similar photo". Local
features can: a copy shares many keypoints that agree on one geometric transform, a
look-alike does not. The steps follow OpenCV's ``samples/python/find_obj.py``:

    features(image)  -> keypoint positions and descriptors (SIFT or ORB, capped)
    good_matches     -> nearest neighbours that pass Lowe's ratio test
    inliers          -> matches that agree on one transform fitted by RANSAC

and :func:`accepted` is the decision: a pair at or above ``accept_cosine`` is accepted on
its embedding; one between ``cosine_threshold`` and ``accept_cosine`` only when its inlier
count reaches ``min_inliers``.

Memory and time: an image is scaled to at most ``max_side`` pixels on its longer side
before features are found, and keeps at most ``max_keypoints`` of them (a SIFT keypoint
is 8 bytes of position and 128 bytes of descriptor, so 1,000 keypoints are 136 kB);
matching two images is O(n_a * n_b) descriptor distances.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps

FeatureKind = Literal["sift", "orb"]
TransformKind = Literal["similarity", "affine", "homography"]

# RANSAC's reprojection threshold, in pixels of the scaled images (max_side on the longer
# side): a match further than this from the fitted transform is an outlier.
RANSAC_PIXELS = 5.0
RANSAC_CONFIDENCE = 0.995
RANSAC_MAX_ITERS = 2000
# The fewest matches each transform can be fitted from.
MIN_MATCHES = {"similarity": 2, "affine": 3, "homography": 4}
SIFT_BYTES = 128
# SIFT's contrast threshold (OpenCV's default is 0.04). Smooth artwork, gradients and dark
# wallpapers have almost no keypoints at 0.04, so their copies could never be verified; at
# 0.01 they have hundreds, and different images still match few (docs/quality.md).
SIFT_CONTRAST = 0.01


class FeatureError(ValueError):
    """The bytes could not be turned into features; the message says why."""


class Features(NamedTuple):
    """An image's keypoints: ``points`` (n, 2) float32 positions in the scaled image and
    ``descriptors`` (n, d) uint8 (SIFT: 128 values, ORB: 32 bytes of bits)."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def gray_image(data: bytes, max_side: int, max_pixels: int) -> np.ndarray:
    """Decode ``data`` to uint8 grayscale, EXIF orientation applied, scaled so its longer
    side is at most ``max_side``.

    Raises:
        FeatureError: empty, unrecognised or corrupt data, or more than ``max_pixels``.
    """
    if not data:
        raise FeatureError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise FeatureError(f"too many pixels, above input.max_pixels={max_pixels}: "
                                       f"{im.width}x{im.height}")
                im.draft("L", (max_side, max_side))  # JPEG: decode at a reduced DCT scale
                im = ImageOps.exif_transpose(im).convert("L")
                im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except FeatureError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise FeatureError(f"cannot decode: {err}") from err


def features(gray: np.ndarray, kind: FeatureKind = "sift", max_keypoints: int = 1000) -> Features:
    """The ``max_keypoints`` strongest keypoints of a grayscale image and their descriptors."""
    import cv2

    if kind == "sift":
        detector = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=SIFT_CONTRAST)
    elif kind == "orb":
        detector = cv2.ORB_create(nfeatures=max_keypoints)
    else:
        raise ValueError(f"unknown feature kind {kind!r}; use 'sift' or 'orb'")
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    width = SIFT_BYTES if kind == "sift" else 32
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8))
    # SIFT_create(nfeatures) can return a few more than asked (ties in response).
    keypoints, descriptors = keypoints[:max_keypoints], descriptors[:max_keypoints]
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    # OpenCV's SIFT values are whole numbers in 0..255 held as float32: uint8 loses nothing
    # and keeps the shuffled features a quarter of the size.
    return Features(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8))


def good_matches(a: Features, b: Features, ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``a``, into ``b``) of the matches that pass Lowe's ratio test: the
    nearest descriptor of ``b`` is closer than ``ratio`` times the second nearest.

    SIFT: all squared distances at once as one float32 matrix product,
    ``|a|^2 + |b|^2 - 2 a.b``; the descriptors are whole numbers in 0..255, so every term
    and partial sum is a whole number below 2^24 and the distances are exact. The same
    matches as OpenCV's brute-force ``knnMatch(k=2)`` (tests/test_verify.py checks it),
    about 4 x faster since no Python object is made per match. ORB: OpenCV's brute-force
    Hamming matcher.
    """
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(a) < 1 or len(b) < 2:
        return empty
    if a.descriptors.shape[1] != SIFT_BYTES:
        return _hamming_matches(a, b, ratio)
    da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    # |b|^2 - 2 a.b: |a|^2 is the same along a row, so it is added to the two nearest only.
    partial = np.matmul(da, db.T)
    partial *= -2.0
    partial += np.einsum("ij,ij->i", db, db)[None, :]
    rows = np.arange(len(da))
    nearest = np.argmin(partial, axis=1)
    first = partial[rows, nearest].astype(np.float64)
    partial[rows, nearest] = np.inf
    second = partial.min(axis=1).astype(np.float64)
    norms = np.einsum("ij,ij->i", da, da).astype(np.float64)
    # d1 < ratio * d2 on distances is d1^2 < ratio^2 * d2^2 on their squares.
    keep = np.flatnonzero(first + norms < ratio * ratio * (second + norms))
    return keep.astype(np.int64), nearest[keep].astype(np.int64)


def _hamming_matches(a: Features, b: Features, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`good_matches` for ORB's binary descriptors (OpenCV's brute-force matcher)."""
    import cv2

    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    kept = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if not kept:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.array([m.queryIdx for m in kept], np.int64), np.array([m.trainIdx for m in kept], np.int64))


def count_inliers(a: Features, b: Features, ratio: float = 0.75, transform: TransformKind = "similarity",
                  ransac_pixels: float = RANSAC_PIXELS, seed: int = 0) -> int:
    """How many of ``a`` and ``b``'s ratio-test matches (:func:`good_matches`) agree on one
    ``transform`` of ``a`` onto ``b`` (:func:`fit_inliers`)."""
    ia, ib = good_matches(a, b, ratio)
    return fit_inliers(a.points[ia], b.points[ib], transform, ransac_pixels, seed)


def fit_inliers(src: np.ndarray, dst: np.ndarray, transform: TransformKind = "similarity",
                ransac_pixels: float = RANSAC_PIXELS, seed: int = 0) -> int:
    """How many matched positions ``src[i] -> dst[i]`` ((n, 2) each) agree on one
    ``transform`` fitted by RANSAC; 0 when there are too few to fit one.

    ``transform``: "similarity" (rotation, uniform scale, shift: 4 degrees of freedom),
    "affine" (6: also a stretch or shear) or "homography" (8: also perspective). The more
    freedom, the more chance matches of two different images fit by accident.
    """
    import cv2

    if transform not in MIN_MATCHES:
        raise ValueError(f"unknown transform {transform!r}; use 'similarity', 'affine' or 'homography'")
    if len(src) < MIN_MATCHES[transform]:
        return 0
    src = np.asarray(src, np.float32).reshape(-1, 1, 2)
    dst = np.asarray(dst, np.float32).reshape(-1, 1, 2)
    cv2.setRNGSeed(seed)  # RANSAC draws from OpenCV's generator: the same pair, the same count
    if transform == "homography":
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_pixels, maxIters=RANSAC_MAX_ITERS,
                                     confidence=RANSAC_CONFIDENCE)
    elif transform == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_pixels,
                                       maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE)
    else:
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_pixels,
                                              maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE)
    return 0 if mask is None else int(mask.sum())


def one_thread():
    """A context in which NumPy's BLAS uses one thread: :func:`good_matches`' matrix
    product is small (1,000 x 1,000 x 128), and a Spark task already has its core, so
    more threads only contend (3 to 6 x slower measured on a loaded 2-core machine). Enter
    it once per batch of pairs (about 0.6 ms), not per pair."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def needs_verification(cosine: np.ndarray, cosine_threshold: float, accept_cosine: float) -> np.ndarray:
    """Which pairs are borderline: ``cosine_threshold <= cosine < accept_cosine``. None
    are when ``accept_cosine <= cosine_threshold`` (verification off)."""
    cosine = np.asarray(cosine, dtype=np.float64)
    return (cosine >= cosine_threshold) & (cosine < accept_cosine)


def accepted(cosine: np.ndarray, inliers: np.ndarray, cosine_threshold: float, accept_cosine: float,
             min_inliers: int) -> np.ndarray:
    """The decision for each pair: cosine >= ``accept_cosine`` (on the embedding), or
    borderline (:func:`needs_verification`) with ``inliers >= min_inliers``. ``inliers``
    of pairs that were not verified are ignored (any value, e.g. -1)."""
    cosine = np.asarray(cosine, dtype=np.float64)
    inliers = np.asarray(inliers)
    on_embedding = (cosine >= cosine_threshold) & (cosine >= accept_cosine)
    return on_embedding | (needs_verification(cosine, cosine_threshold, accept_cosine) & (inliers >= min_inliers))


def pack(f: Features) -> tuple[bytes, bytes]:
    """``f`` as two byte strings (positions, descriptors) for a binary column."""
    return f.points.astype(np.float32).tobytes(), f.descriptors.astype(np.uint8).tobytes()


def unpack(points: bytes, descriptors: bytes, kind: FeatureKind) -> Features:
    """The inverse of :func:`pack`."""
    width = SIFT_BYTES if kind == "sift" else 32
    return Features(np.frombuffer(points, np.float32).reshape(-1, 2),
                    np.frombuffer(descriptors, np.uint8).reshape(-1, width))


# What the plan knows of each pair (:func:`pairs_to_verify`, :func:`settle`).
UNKNOWN = 0  # borderline, not verified (yet)
EMBEDDING = 1  # accepted on its embedding (cosine >= accept_cosine, an exact copy, or a verdict from before)
GEOMETRY = 2  # verified and accepted
REJECTED = 3  # verified and rejected
OVER_BUDGET = 4  # borderline, needed a verdict after the budget was spent: rejected without matching
_ACCEPTED = (EMBEDDING, GEOMETRY)
# Rounds of :func:`settle` before every pair still unknown is verified at once (a round is a
# few Spark jobs; on the catalogs measured 2 to 4 rounds settle everything).
MAX_ROUNDS = 8


def walk_order(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pair indices in the order the decision walk of :func:`pairs_to_verify` looks at
    them: by later end, then earlier end (node numbers in priority order): one sort of
    ``later * n + earlier`` where that fits 63 bits, else a two-key sort."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    later, earlier = np.maximum(a, b), np.minimum(a, b)
    if n < 2**31:
        return np.argsort(later * n + earlier, kind="stable")
    return np.lexsort((earlier, later))


def pairs_to_verify(n: int, a: np.ndarray, b: np.ndarray, state: np.ndarray,
                    order: np.ndarray | None = None) -> np.ndarray:
    """Which UNKNOWN pairs need a verdict before the groups and the keep/drop decisions
    (:mod:`neardup_core.groups`) of the accepted pairs are final, given what ``state``
    (one of the codes above per pair) knows. ``n`` nodes numbered in priority order;
    pairs (a[i], b[i]), each once, a != b; ``order``: :func:`walk_order` of the pairs,
    which a caller asking again for the same pairs computes once.

    A pair is needed when it joins two components of the accepted pairs (its verdict could
    merge two groups), or when the decision walk (:func:`groups.keep_or_drop`: each image
    looks at its neighbours of higher priority in order and is dropped by the first kept
    one), run with every UNKNOWN pair taken as rejected, looks at it: its higher-priority
    end is kept and the image has not been dropped by an earlier neighbour. When no pair
    is needed, every assignment of verdicts to the UNKNOWN pairs gives the same
    components and the same decisions (same kept image, same cosine), so they need not
    be matched: by induction over the walk, an UNKNOWN pair is only ever looked at from an
    image already decided, or towards an image that is not kept.

    The walk is a Python loop over the images; an image's neighbours are taken as Python
    values a few at a time, since most images stop at their first kept neighbour.
    """
    from .groups import components

    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    state = np.asarray(state)
    unknown = state == UNKNOWN
    accepted = np.isin(state, _ACCEPTED)
    label = components(n, a[accepted], b[accepted])
    needed = unknown & (label[a] != label[b])
    if order is None:
        order = walk_order(n, a, b)
    order = order[~np.isin(state[order], (REJECTED, OVER_BUDGET))]  # the pairs the walk looks at, in its order
    earlier = np.minimum(a, b)[order]
    is_unknown = unknown[order]
    bounds = np.searchsorted(np.maximum(a, b)[order], np.arange(n + 1)).tolist()
    kept = [False] * n
    consulted = []
    for node in range(n):
        j, end, step, dropped = bounds[node], bounds[node + 1], 4, False
        while j < end and not dropped:
            stop = min(end, j + step)
            for k, (other, maybe) in enumerate(zip(earlier[j:stop].tolist(), is_unknown[j:stop].tolist()), j):
                if not kept[other]:
                    continue
                if maybe:
                    consulted.append(k)
                    continue
                dropped = True  # by its first kept neighbour over an accepted pair
                break
            j, step = stop, step * 4
        kept[node] = not dropped
    needed[order[np.asarray(consulted, dtype=np.int64)]] = True
    return needed


class Settled(NamedTuple):
    state: np.ndarray  # per pair, a code above; UNKNOWN left: its verdict changes nothing
    inliers: np.ndarray  # per pair, -1 where not matched
    rounds: int  # rounds that verified something
    over_budget: int  # pairs rejected without matching: the budget was spent


def settle(n: int, a: np.ndarray, b: np.ndarray, cosine: np.ndarray, state: np.ndarray, count_inliers,
           min_inliers: int, budget: int, max_rounds: int = MAX_ROUNDS) -> Settled:
    """Verify, in rounds, only the pairs whose verdict the groups or the decisions need
    (:func:`pairs_to_verify`). ``state``: EMBEDDING or UNKNOWN (or a verdict) per pair;
    ``count_inliers(indices)`` verifies those pairs and returns their inlier counts.

    Each round verifies the pairs needed now, by cosine (highest first, then index). At
    most ``budget`` pairs are verified in all: a needed pair beyond it is OVER_BUDGET,
    rejected without matching (so precision cannot fall; the count is returned). After
    ``max_rounds`` rounds every pair still UNKNOWN is verified at once (same budget).
    """
    state = np.array(state, dtype=np.int8)
    cosine = np.asarray(cosine, dtype=np.float64)
    inliers = np.full(len(state), -1, dtype=np.int64)
    spent = rounds = over = 0
    order = walk_order(n, a, b)
    while True:
        needed = np.flatnonzero(pairs_to_verify(n, a, b, state, order))
        if len(needed) == 0:
            break
        if rounds >= max_rounds:
            needed = np.flatnonzero(state == UNKNOWN)
        needed = needed[np.lexsort((needed, -cosine[needed]))]
        take, beyond = needed[:max(budget - spent, 0)], needed[max(budget - spent, 0):]
        state[beyond] = OVER_BUDGET
        over += len(beyond)
        if len(take):
            counts = np.asarray(count_inliers(take), dtype=np.int64)
            inliers[take] = counts
            state[take] = np.where(counts >= min_inliers, GEOMETRY, REJECTED)
            spent += len(take)
            rounds += 1
    return Settled(state, inliers, rounds, over)
