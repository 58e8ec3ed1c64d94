"""What an incremental run (``--previous RUN``) can reuse from the previous run, and why
not. Pure: no Spark.

An image is reused, neither read again, decoded nor embedded, when its id is in the
previous run and its content did not change: same size and modification time from the
listing, or failing that, the same content hash of its bytes. Everything that changes an
embedding, a bucket key or which pairs are written must match: the settings in
:func:`fingerprint`. Pairs among reused images carry over; only pairs that involve a new
or changed image are computed (:mod:`neardup_core.spark.incremental`), which gives exactly
what a full run with the same LSH plan gives as long as no bucket touched by the change is
over ``lsh.max_bucket_size`` (then the pairing runs in full; the groups always do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .arrays import distinct_sorted
from .config import Config


def content_hash(data: bytes) -> str:
    """128-bit BLAKE2b of a file's bytes, hex: computed while the file is read anyway."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(cfg: Config, model_digest: str | None, dim: int, precision: str | None = None) -> dict[str, Any]:
    """The settings whose change makes the previous run's embeddings, keys or pairs
    unusable. ``model_digest`` is None for embeddings made elsewhere (``neardup pairs``).
    ``precision`` is ``int8`` for the quantized model (``embed.cpu_precision``), None for
    the model as exported: the digest differs too, this says why in words."""
    images = model_digest is not None
    return {
        "model": model_digest,
        "model.precision": precision,
        "model.input_size": cfg.model.input_size if images else None,
        "model.preprocess": cfg.model.preprocess if images else None,
        "model.output": cfg.model.output if images else None,
        "model.trim_borders": cfg.model.trim_borders if images else None,
        "model.colour": cfg.model.colour if images else None,
        "embedding_dim": dim,
        "lsh.seed": cfg.lsh.seed,
        "lsh.split_bits": cfg.lsh.split_bits,
        "lsh.max_bucket_size": cfg.lsh.max_bucket_size,
        "pairs.cosine_threshold": cfg.pairs.cosine_threshold,
        # Geometric verification decides which pairs are written (images only).
        **{f"pairs.{key}": getattr(cfg.pairs, key) if images else None for key in VERIFY_KEYS},
    }


VERIFY_KEYS = ("accept_cosine", "min_inliers", "features", "transform", "max_keypoints", "max_side", "ratio",
               "max_verified_per_image")  # the budget decides which pairs are rejected unmatched


def differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase per setting."""
    return [f"{key}: {previous.get(key)!r} before, {current[key]!r} now"
            for key in current if previous.get(key) != current[key]]


class PreviousRun(NamedTuple):
    path: str
    fingerprint: dict[str, Any]
    bits_per_table: int | None  # the previous LSH plan; None when it hashed nothing
    num_tables: int | None
    pairs: int  # rows in its pairs/
    exact_copies: int = 0  # inputs it paired as exact copies of another (spark.exact)
    near_copies: int = 0  # inputs it collapsed as near copies (spark.near): its pairs/ is not every pair
    borderline_pairs: int | None = None  # pairs it matched, left unverified or rejected unmatched (None: not counted)
    plan_items: int | None = None  # rows its plan was priced for (None: an older run that did not record them)
    plan_candidates: float = 0.0  # the candidate pairs its plan expected for them
    rejected_pairs: int = 0  # borderline pairs it rejected (matched or over the budget): not in its pairs/
    kept_rejected: bool = False  # it wrote them to rejected_pairs/ (pairs.keep_rejected)

    @property
    def rejected_to_read(self) -> bool:
        """Its rejected_pairs/ holds pairs: an incremental run carries them, to decide again."""
        return self.rejected_pairs > 0 and self.kept_rejected

    @property
    def rejected_lost(self) -> bool:
        """It rejected pairs without keeping them (``pairs.keep_rejected`` false): tonight's
        verification could need them again, so an incremental run cannot carry its pairs."""
        return self.rejected_pairs > 0 and not self.kept_rejected


def previous_run(path: str, manifest: dict[str, Any]) -> PreviousRun:
    """The parts of a finished run's ``_manifest.json`` an incremental run needs.

    Raises:
        ValueError: the run was made without a fingerprint (an older neardup) or without
            ``embeddings/``; the message says so.
    """
    if "fingerprint" not in manifest:
        raise ValueError(f"--previous {path}: made by a neardup without incremental runs (no fingerprint in "
                         "_manifest.json); run in full once")
    if not manifest.get("config", {}).get("output", {}).get("write_embeddings", True):
        raise ValueError(f"--previous {path}: has no embeddings/ (output.write_embeddings was false)")
    lsh = manifest.get("lsh") or {}
    counts = manifest.get("counts", {})
    borderline = [counts.get(name) for name in ("verified_pairs", "unverified_pairs", "over_budget_pairs")]
    return PreviousRun(path, manifest["fingerprint"], lsh.get("bits_per_table"), lsh.get("num_tables"),
                       int(counts.get("pairs", 0)), int(counts.get("exact_copies", 0)),
                       int(counts.get("near_copies", 0)), None if None in borderline else sum(borderline),
                       lsh.get("items"), float(lsh.get("expected_candidate_pairs") or 0.0),
                       int(counts.get("rejected_pairs", 0)),
                       bool(manifest.get("config", {}).get("pairs", {}).get("keep_rejected", False)))


def plan_conflicts(previous: PreviousRun, bits_per_table: int | str, num_tables: int | str) -> list[str]:
    """Explicit ``lsh.bits_per_table`` / ``lsh.num_tables`` settings that contradict the
    previous run's plan, which an incremental run reuses."""
    found = []
    for key, given, before in (("lsh.bits_per_table", bits_per_table, previous.bits_per_table),
                               ("lsh.num_tables", num_tables, previous.num_tables)):
        if given != "auto" and before is not None and given != before:
            found.append(f"{key}: {before!r} before (the plan), {given!r} now")
    return found


KEY_BITS = 48  # a bucket key has at most 48 bits (config.MAX_BITS_PER_TABLE)


def bucket_codes(keys: np.ndarray) -> np.ndarray:
    """Each (table, key) of (n, L) keys as one int64, table << 48 | key, row by row."""
    return ((np.arange(keys.shape[1], dtype=np.int64) << KEY_BITS) | keys).reshape(-1)


def touched_codes(fresh_keys: np.ndarray, gone_keys: np.ndarray) -> np.ndarray:
    """The buckets a change touches: every (table, key) code a fresh (new or changed) row
    hashes to, or a gone (deleted or changed) row hashed to last night; sorted, distinct."""
    num_tables = fresh_keys.shape[1]
    return distinct_sorted(np.concatenate([bucket_codes(fresh_keys), bucket_codes(gone_keys.reshape(-1, num_tables))]))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing's multiplier (2^64 / golden ratio)


def may_hold(values: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """A filter before the binary searches below: False where a needle is certainly not
    among ``values`` (int64), True where it is, and for about 1.5 % of the others. One
    byte per slot, 64 slots per value (at most 2^26): a needle costs one multiply and one
    read, where a binary search costs a read per level (93 ns a needle into 10,000 keys)."""
    bits = int(np.clip(np.ceil(np.log2(max(len(values), 1) * 64)), 10, 26))
    shift = np.uint64(64 - bits)
    seen = np.zeros(1 << bits, bool)
    seen[(values.astype(np.uint64) * _GOLDEN) >> shift] = True
    return seen[(needles.astype(np.uint64) * _GOLDEN) >> shift]


def table_bounds(codes: np.ndarray, num_tables: int) -> np.ndarray:
    """Where each table's share of the sorted ``codes`` (table << 48 | key) starts, and
    where the last ends: (num_tables + 1,) positions."""
    return np.searchsorted(codes, np.arange(num_tables + 1, dtype=np.int64) << KEY_BITS)


def touched_rows(keys: np.ndarray, touched: np.ndarray) -> list[np.ndarray]:
    """For each table t, the rows of ``keys`` (n, L) whose key in t is among the sorted
    ``touched`` codes (table << 48 | key)."""
    return [rows for _, rows, _ in _in_touched(keys, touched)]


def touched_counts(keys: np.ndarray, touched: np.ndarray) -> np.ndarray:
    """How many rows of ``keys`` (n, L) each of the sorted ``touched`` codes holds:
    (len(touched),) int64. Summed over the parts of a table, the sizes of the buckets a
    change touches."""
    at = [np.zeros(0, np.int64), *(positions for _, _, positions in _in_touched(keys, touched))]
    return np.bincount(np.concatenate(at), minlength=len(touched))


def _in_touched(keys: np.ndarray, touched: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each table t: (t, the rows of ``keys`` whose key in t is among the sorted
    ``touched`` codes, the position of that code in ``touched``). One binary search per
    table in that table's share of the codes: 0.08 s for 10,000 rows x 220 tables against
    2.2M codes on this machine (``touched_counts``), where ``np.isin`` over all the codes at
    once took 2.7 s."""
    bounds = table_bounds(touched, keys.shape[1])
    for table in range(keys.shape[1]):
        start, stop = int(bounds[table]), int(bounds[table + 1])
        in_table = touched[start:stop] & ((1 << KEY_BITS) - 1)
        if len(in_table) == 0:
            yield table, np.zeros(0, np.int64), np.zeros(0, np.int64)
            continue
        column = keys[:, table]
        maybe = np.flatnonzero(may_hold(in_table, column))
        at = np.minimum(np.searchsorted(in_table, column[maybe]), len(in_table) - 1)
        hit = in_table[at] == column[maybe]
        yield table, maybe[hit], start + at[hit]


def largest_touched(now: np.ndarray, touched: np.ndarray, fresh_keys: np.ndarray, gone_keys: np.ndarray) -> int:
    """Rows in the largest touched bucket, tonight or last night, from tonight's rows in
    each of the sorted ``touched`` codes (``now``, aligned with them): last night's bucket
    is tonight's less its fresh rows, plus its gone ones."""
    before = now - touched_counts(fresh_keys, touched) + touched_counts(gone_keys, touched)
    return int(max(now.max(initial=0), before.max(initial=0)))


class FreshIndex(NamedTuple):
    """The fresh rows' keys sorted in each table, to find the rows that share a bucket."""

    order: np.ndarray  # (L, f): fresh row positions by key, table by table
    keys: np.ndarray  # (L, f): their keys, ascending in each table


def index_fresh(fresh_keys: np.ndarray) -> FreshIndex:
    """:class:`FreshIndex` of the fresh rows' (f, L) keys."""
    order = np.argsort(fresh_keys, axis=0, kind="stable")
    return FreshIndex(np.ascontiguousarray(order.T), np.ascontiguousarray(np.take_along_axis(fresh_keys, order, 0).T))


class Partners(NamedTuple):
    """What :func:`fresh_partners` finds, aligned arrays but the last."""

    rows: np.ndarray  # int64 rows of ``keys``
    fresh: np.ndarray  # int64 fresh rows, the partner of each
    tables: np.ndarray  # int32 tables in which the two share a bucket (tables_matched)
    touched: np.ndarray | None  # with ``touched``: the rows each touched code holds (touched_counts)


def fresh_partners(keys: np.ndarray, index: FreshIndex, touched: np.ndarray | None = None) -> Partners:
    """Every (row of ``keys``, fresh row) that shares a bucket in at least one table, once,
    with the number of tables they share a key in. A row that is itself fresh is paired
    with itself too; the caller drops that. Memory O(rows x L + the pairs' entries over all
    tables).

    ``touched``: sorted codes (table << 48 | key) that include every fresh row's; then the
    rows found in them in the same search are also counted (:func:`touched_counts`), and
    only those rows are looked up among the fresh keys (one filter pass a table, not two).
    """
    n = len(keys)
    # Per table: the rows that may share a fresh row's key there (and where they are in touched).
    candidates = (_in_touched(keys, touched) if touched is not None else
                  ((t, np.flatnonzero(may_hold(index.keys[t], keys[:, t])), None) for t in range(keys.shape[1])))
    found, positions = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for table, maybe, at in candidates:
        if at is not None:
            positions.append(at)
        column, needles = index.keys[table], keys[:, table]
        if len(column) == 0 or len(maybe) == 0:
            continue
        lo = np.searchsorted(column, needles[maybe], "left")
        found_at = column[np.minimum(lo, len(column) - 1)] == needles[maybe]
        hit, lo = maybe[found_at], lo[found_at]
        if len(hit) == 0:
            continue
        c = np.searchsorted(column, needles[hit], "right") - lo  # the right bound of the few hits only
        offsets = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        fresh = index.order[table][np.repeat(lo, c) + offsets]
        found.append(fresh.astype(np.int64) * n + np.repeat(hit, c))
    codes, tables = np.unique(np.concatenate(found), return_counts=True)
    counts = None if touched is None else np.bincount(np.concatenate(positions), minlength=len(touched))
    return Partners(codes % n, codes // n, tables.astype(np.int32), counts)


class FreshCandidates(NamedTuple):
    a: np.ndarray | None  # row positions of each candidate pair, a < b; None: a touched bucket is oversized
    b: np.ndarray | None
    touched_buckets: int
    largest_touched: int  # rows in the largest touched bucket, tonight or last night


def fresh_candidates(keys: np.ndarray, fresh: np.ndarray, gone_keys: np.ndarray, max_bucket_size: int
                     ) -> FreshCandidates:
    """Every distinct pair of rows that shares a bucket in some table and involves a fresh
    row: the candidates an incremental run scores, for data that fits one process.

    Args:
        keys: (n, L) bucket keys of tonight's rows.
        fresh: (n,) bool, the rows embedded tonight (new or changed).
        gone_keys: (g, L) keys of last night's rows that are deleted or changed.
        max_bucket_size: the pairing's bound; if a touched bucket (one a fresh or gone row
            hashes to) holds more rows than this tonight or last night, the full pairing
            would have split or windowed it, so no candidates are given (``a`` is None).

    Memory O(rows in touched buckets x L + candidates).
    """
    n, num_tables = keys.shape
    fresh = np.asarray(fresh, bool)
    touched = touched_codes(keys[fresh], gone_keys)
    members = touched_rows(keys, touched)
    rows = np.concatenate([np.zeros(0, np.int64), *members])
    codes = np.concatenate([np.zeros(0, np.int64),
                            *((np.int64(t) << KEY_BITS) | keys[m, t] for t, m in enumerate(members))])
    order = np.argsort(codes, kind="stable")
    rows, codes = rows[order], codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(codes)])
    # Last night's size of each bucket: tonight's less its fresh rows, plus its gone rows.
    fresh_in = np.add.reduceat(fresh[rows].astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    gone_codes = np.sort(bucket_codes(gone_keys.reshape(-1, num_tables)))
    before = sizes - fresh_in + (np.searchsorted(gone_codes, codes[starts], "right")
                                 - np.searchsorted(gone_codes, codes[starts], "left"))
    largest = int(max(sizes.max(initial=0), before.max(initial=0)))
    if largest > max_bucket_size:
        return FreshCandidates(None, None, len(touched), largest)
    # Each fresh member against every member of its bucket.
    group = np.repeat(np.arange(len(starts)), sizes)
    mine = np.flatnonzero(fresh[rows])
    partners = sizes[group[mine]]
    x = np.repeat(rows[mine], partners)
    offsets = np.arange(partners.sum()) - np.repeat(np.cumsum(partners) - partners, partners)
    y = rows[np.repeat(starts[group[mine]], partners) + offsets]
    a, b = np.minimum(x, y), np.maximum(x, y)
    distinct = distinct_sorted((a * n + b)[a != b])
    return FreshCandidates(distinct // n, distinct % n, len(touched), largest)
