"""The verification stage: borderline pairs kept only when local features agree
(:mod:`neardup_core.verify`), from the staged ``pairs/`` to the final one.

    borderline pairs (pairs.cosine_threshold <= cosine < pairs.accept_cosine)
      -> which of them the groups need a verdict for (verify.settle, in rounds, on the driver)
      -> the images in those, each once -> read again, featurize     [written to scratch]
      -> both feature sets joined to each such pair -> inliers, accepted
      -> pairs/ = accepted pairs with inliers and verified; rejected_pairs/ (pairs.keep_rejected)

Only the borderline pairs whose verdict can change a group or a keep/drop decision are
matched (:func:`verify.pairs_to_verify`): a pair between two images that the accepted pairs
already put in one group, and that the decision walk never looks at, is written with
``verified`` "unverified" and null inliers; the groups and decisions are exactly those of
verifying every pair. This plan needs the whole pair graph and the images' priority on
the driver, so it is made for graphs of up to ``groups.max_pairs_in_one_task`` pairs (the
groups stage's one-task bound); a larger graph, or a call without ``nodes``, verifies every
borderline pair. A graph the plan is made for is held on the driver as one Arrow table,
and labelled and written from there (by PyArrow where the output is local), with no join or
sort in Spark (about 200 bytes a pair with the benchmark's paths: 170 MB of the driver's
memory for 836,599 pairs). Either way at most ``pairs.max_verified_per_image`` x (images in pairs)
pairs are matched; a pair that needed a verdict beyond that is rejected without matching
(``verified`` "over_budget"), counted and logged.

Features are computed once per image, not once per pair, and only for images in a matched
pair. Memory is bounded by ``pairs.max_keypoints`` (about 136 bytes a SIFT keypoint) times
the rows of an Arrow batch, which this stage sets to :data:`FEATURE_BATCH_ROWS` while it
featurizes and matches. This module only moves data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import InputConfig, PairsConfig
from .driver_tables import local_dataset, nodes_in, read_local, write_table
from .session import arrow_batch_rows, sorted_by
from .tally import Tally

log = logging.getLogger("neardup.verify")

# added to pairs/: inliers int (null: not matched); verified "embedding" | "geometry" |
# "unverified" (its verdict could change no group or decision) | in rejected_pairs/ also "over_budget"
VERIFIED_COLUMNS = ("inliers", "verified")
PAIR_KEY = ("id_a", "id_b")  # pairs/ and rejected_pairs/ are sorted by it
# Rows per Arrow batch while pairs carry two feature sets each (up to 2 x 136 kB with the
# default 1,000 SIFT keypoints): 64 rows keep a batch under 20 MB.
FEATURE_BATCH_ROWS = 64
KEYPOINT_BYTES = 136  # a SIFT keypoint: 2 float32 of position, 128 bytes of descriptor
_FEATURE_SCHEMA = "id string, points binary, descriptors binary, error string"
_DECIDED_SCHEMA = "id_a string, id_b string, inliers int"
# Whether a pair is between exact copies, or near copies (spark.exact, spark.near): false
# where the pairing stage found none.
FLAG_COLUMNS = ("exact", "near_copy")


class VerifyResult(NamedTuple):
    pairs: int  # written to pairs/
    borderline: int  # pairs between pairs.cosine_threshold and pairs.accept_cosine
    accepted: int  # of those, matched and accepted
    rejected: int  # of those, rejected (matched, or over the budget): not in pairs/
    images: int  # images featurized
    image_errors: int  # of those, unreadable now: no features, so their pairs are rejected
    matched: int = 0  # borderline pairs matched (accepted + rejected - over_budget)
    unverified: int = 0  # borderline pairs not matched: their verdict changes no group or decision
    over_budget: int = 0  # borderline pairs rejected without matching: past pairs.max_verified_per_image
    rounds: int = 0  # rounds of matching (verify.settle); 1 without a plan
    planned: bool = False  # whether only the pairs the groups need were matched (else every borderline pair)
    featurize_seconds: float = 0.0  # wall-clock seconds reading images again and finding their features
    match_seconds: float = 0.0  # wall-clock seconds matching pairs (both on all the job's cores)
    matches_reused: int = 0  # of matched, inlier counts taken from the previous run (an incremental run)

    def record(self) -> dict:
        return self._asdict()


def label_unverified(pairs: DataFrame) -> DataFrame:
    """``pairs`` with ``inliers`` null and ``verified`` "embedding": what ``neardup pairs``
    (no images) and a run with verification off write."""
    return pairs.withColumn("inliers", F.lit(None).cast("int")).withColumn("verified", F.lit("embedding"))


def accepted_on_embedding(pairs: DataFrame) -> DataFrame:
    """Pairs found by the pairing stage (PAIR_SCHEMA) with the columns the verify stage
    gives a pair it has no need to match: not an exact or near copy, accepted on the
    embedding. A stage that writes them so leaves the verify stage nothing to rewrite."""
    return label_unverified(pairs.withColumn("exact", F.lit(False)).withColumn("near_copy", F.lit(False)))


def verify_pairs(pairs: DataFrame, images: DataFrame | None, cfg: PairsConfig, input_cfg: InputConfig,
                 min_tasks: int, scratch: str, path: str, rejected_path: str | None = None,
                 known: DataFrame | pa.Table | None = None, nodes: DataFrame | None = None,
                 criteria: list[tuple[str, bool]] | None = None, max_pairs_in_one_task: int = 1_000_000,
                 staged: str | None = None) -> VerifyResult:
    """Verify ``pairs``' borderline pairs and write the accepted pairs to ``path``.

    Args:
        pairs: the pairing stage's pairs (id_a, id_b, cosine, ...), all at or above
            ``cfg.cosine_threshold``.
        images: id and path of every image a pair can name; read again with
            :func:`neardup_core.sources.read_file`. None (``neardup pairs``: no images):
            every pair is written as accepted on the embedding.
        cfg: the thresholds, feature settings and budget (``pairs.*``).
        min_tasks: the fewest tasks for featurizing and for verifying; more when the
            matched pairs' two feature sets exceed ``cfg.partition_mb`` a task.
        scratch: a folder for the features and the decisions (each computed once).
        path: where the accepted pairs go, sorted by id_a, id_b, with VERIFIED_COLUMNS.
        rejected_path: where the rejected pairs go (same columns), or None.
        known: id_a, id_b, inliers of pairs matched before (an incremental run's carried
            pairs, whose images did not change): where this stage matches such a pair, it
            takes that count instead of reading the images again (matching is seeded: the
            same two images give the same count). Which pairs are matched, and their
            labels, are decided as without it, so the result is a full run's. A table
            where the driver read it.
        nodes, criteria: the groups stage's images (id and the ``groups.keep`` columns) and
            criteria, for the plan (module docstring); None: every borderline pair is matched.
        max_pairs_in_one_task: the most pairs the plan is made for, and sorted in one task
            (``groups.*``).
        staged: the folder ``pairs`` was read from (:func:`staged_pairs`), where PyArrow
            may read it instead of Spark (a local one).
    """
    spark = pairs.sparkSession
    verifying = cfg.verifies and images is not None
    if verifying and nodes is not None and criteria is not None:
        table = _pairs_table(pairs, staged, max_pairs_in_one_task)
        if table is not None:
            return _verify_on_driver(table, images, cfg, input_cfg, min_tasks, scratch, path, rejected_path, known,
                                     nodes, criteria)
    is_borderline = F.col("cosine") < F.lit(cfg.accept_cosine)
    borderline = pairs.filter(is_borderline).select("id_a", "id_b", "cosine")
    graph_size, count = pairs.agg(F.count(F.lit(1)), F.count_if(is_borderline)).first()
    count = count if verifying else 0
    one_task = graph_size <= max_pairs_in_one_task
    if count == 0:
        sorted_by(label_unverified(pairs), PAIR_KEY, one_task).write.parquet(path)
        if rejected_path is not None:
            label_unverified(pairs).limit(0).write.parquet(rejected_path)
        return VerifyResult(graph_size, 0, 0, 0, 0, 0)
    matcher = _Matcher(images, cfg, input_cfg, min_tasks, scratch, known)
    _verify_every_borderline_pair(pairs, borderline, cfg, matcher).write.parquet(f"{scratch}/verdicts")
    matcher.release()
    verdicts = spark.read.parquet(f"{scratch}/verdicts")
    by_label = {row["verified"]: (row["pairs"], row["accepted"]) for row in verdicts.groupBy("verified").agg(
        F.count("*").alias("pairs"), F.count(F.when(F.col("accepted"), 1)).alias("accepted")).collect()}
    # A pair without a verdict is accepted: on the embedding, or (borderline) unverified.
    labelled = pairs.join(verdicts, ["id_a", "id_b"], "left").withColumn("verified", F.coalesce(
        "verified", F.when(F.col("cosine") < F.lit(cfg.accept_cosine), "unverified").otherwise("embedding")))
    columns = [*pairs.columns, *VERIFIED_COLUMNS]
    sorted_by(labelled.filter(F.coalesce(F.col("accepted"), F.lit(True))).select(*columns), PAIR_KEY, one_task
              ).write.parquet(path)
    if rejected_path is not None:
        sorted_by(labelled.filter(~F.coalesce(F.col("accepted"), F.lit(True))).select(*columns), PAIR_KEY,
                  one_task).write.parquet(rejected_path)
    geometry, accepted = by_label.get("geometry", (0, 0))
    over = by_label.get("over_budget", (0, 0))[0]
    return _result(spark.read.parquet(path).count(), count, geometry, accepted, over, matcher, 1, False, cfg)


def _result(written: int, count: int, geometry: int, accepted: int, over: int, matcher: _Matcher, rounds: int,
            planned: bool, cfg: PairsConfig) -> VerifyResult:
    """The stage's result from its verdicts' tallies: ``count`` borderline pairs, of which
    ``geometry`` matched (``accepted`` of those accepted) and ``over`` over the budget."""
    unverified = count - geometry - over
    if over:
        log.warning("%d borderline pairs rejected without matching: verifying them would pass "
                    "pairs.max_verified_per_image=%g (%d pairs matched)", over, cfg.max_verified_per_image, geometry)
    images_done, errors = matcher.featurized()
    return VerifyResult(written, count, accepted, count - unverified - accepted, images_done, errors,
                        matched=geometry, unverified=unverified, over_budget=over, rounds=rounds, planned=planned,
                        featurize_seconds=round(matcher.seconds[0], 2), match_seconds=round(matcher.seconds[1], 2),
                        matches_reused=matcher.reused)


def staged_pairs(spark: SparkSession, path: str) -> DataFrame:
    """The pairs a pairing stage staged at ``path``, with :data:`FLAG_COLUMNS` last
    (false where that stage wrote none): one schema whether or not the run found copies."""
    staged = spark.read.parquet(path)
    for name in FLAG_COLUMNS:
        if name not in staged.columns:
            staged = staged.withColumn(name, F.lit(False))
    return staged.select(*(c for c in staged.columns if c not in FLAG_COLUMNS), *FLAG_COLUMNS)


def _pairs_table(pairs: DataFrame, staged: str | None, max_rows: int) -> pa.Table | None:
    """``pairs`` as one Arrow table sorted by PAIR_KEY on the driver, or None where it
    holds over ``max_rows`` rows; read by PyArrow from ``staged`` (what
    :func:`staged_pairs` read) where it is local."""
    dataset = local_dataset(staged) if staged is not None else None
    if dataset is not None:
        if dataset.count_rows() > max_rows:  # from the files' footers
            return None
        table = read_local(dataset)
        for name in FLAG_COLUMNS:
            if name not in table.column_names:
                table = table.append_column(pa.field(name, pa.bool_(), nullable=False),
                                            pa.array(np.zeros(table.num_rows, bool)))
        table = table.select(pairs.columns)
    else:
        if pairs.count() > max_rows:
            return None
        table = pairs.toArrow()
    return table.sort_by([(name, "ascending") for name in PAIR_KEY])


def _verify_on_driver(table: pa.Table, images: DataFrame, cfg: PairsConfig, input_cfg: InputConfig, min_tasks: int,
                      scratch: str, path: str, rejected_path: str | None, known: DataFrame | pa.Table | None,
                      nodes: DataFrame,
                      criteria: list[tuple[str, bool]]) -> VerifyResult:
    """The stage for a pair graph the driver holds (``table``, sorted by PAIR_KEY): the
    plan (:func:`_settle`) matches in Spark, and the labels are set and both outputs
    written from the table, with no join or sort in Spark."""
    from neardup_core import verify

    spark = images.sparkSession
    borderline = table.column("cosine").to_numpy() < cfg.accept_cosine
    count = int(borderline.sum())
    matcher = _Matcher(images, cfg, input_cfg, min_tasks, scratch, known)
    if count:
        state, inliers, rounds = _settle(table, nodes, criteria, cfg, matcher)
    else:
        state, inliers, rounds = np.full(table.num_rows, verify.EMBEDDING, np.int8), np.full(table.num_rows, -1), 0
    matcher.release()
    # A pair without a verdict is accepted: on the embedding, or (borderline) unverified.
    # Taken from four strings by code: 0.02 s at 836,599 pairs, against 0.5 s for NumPy strings.
    verdict = pa.array(["embedding", "unverified", "over_budget", "geometry"], pa.string()).take(
        np.select([~borderline, state == verify.UNKNOWN, state == verify.OVER_BUDGET], [0, 1, 2], 3))
    labelled = table.append_column("inliers", pa.array(inliers, pa.int32(), mask=inliers < 0)).append_column(
        pa.field("verified", pa.string(), nullable=False), verdict)
    rejected = (state == verify.REJECTED) | (state == verify.OVER_BUDGET)
    write_table(spark, labelled.filter(pa.array(~rejected)), path)
    if rejected_path is not None:
        write_table(spark, labelled.filter(pa.array(rejected)), rejected_path)
    geometry = int(((state == verify.GEOMETRY) | (state == verify.REJECTED)).sum())
    accepted = int((state == verify.GEOMETRY).sum())
    over = int((state == verify.OVER_BUDGET).sum())
    return _result(int((~rejected).sum()), count, geometry, accepted, over, matcher, rounds, True, cfg)


class _Matcher:
    """Matches sets of pairs in Spark, featurizing each image the first time a pair needs
    it (features kept in ``scratch`` across rounds); a pair ``known`` (id_a, id_b, inliers:
    matched by the previous run) takes its count from there."""

    def __init__(self, images: DataFrame, cfg: PairsConfig, input_cfg: InputConfig, min_tasks: int, scratch: str,
                 known: DataFrame | pa.Table | None = None):
        self.images, self.cfg, self.input_cfg = images, cfg, input_cfg
        self.min_tasks, self.scratch = min_tasks, scratch
        self.spark = images.sparkSession
        self.known = known.select(["id_a", "id_b", "inliers"]) if known is not None else None
        self.tally = Tally(self.spark)
        self.feature_paths: list[str] = []
        self.rounds = 0
        self.reused = 0  # pairs whose count came from known
        self.cached: list[DataFrame] = []  # released by release()
        self.seconds = [0.0, 0.0]  # featurizing, matching

    def take_known(self) -> pa.Table | None:
        """The known counts (id_a, id_b, inliers), for a caller that looks them up itself;
        :meth:`match` then matches every pair it is given."""
        known, self.known = self.known, None
        return known.toArrow() if isinstance(known, DataFrame) else known

    def match(self, wanted: DataFrame, count: int) -> DataFrame:
        """id_a, id_b (``count`` rows) -> id_a, id_b, inliers, computed once (in scratch)."""
        if self.known is None:
            return self._match(wanted, count)
        if isinstance(self.known, pa.Table):  # read on the driver (few rows)
            self.known = self.spark.createDataFrame(self.known)
        if not self.known.is_cached:  # few rows (last night's matched pairs), read from its pairs/ once
            self.cached.append(self.known.persist())
        hits = wanted.join(self.known, ["id_a", "id_b"]).persist()
        self.cached.append(hits)
        reused = hits.count()
        self.reused += reused
        rest = wanted.join(hits.select("id_a", "id_b"), ["id_a", "id_b"], "left_anti")
        if reused == count:
            return hits
        return self._match(rest, count - reused).unionByName(hits)

    def _match(self, wanted: DataFrame, count: int) -> DataFrame:
        self.rounds += 1
        tasks = max(self.min_tasks,
                    math.ceil(count * 2 * self.cfg.max_keypoints * KEYPOINT_BYTES / self.cfg.partition_bytes))
        ends = wanted.select(F.col("id_a").alias("id")).union(wanted.select(F.col("id_b").alias("id"))).distinct()
        if self.feature_paths:
            ends = ends.join(self._features().select("id"), "id", "left_anti")
        new = ends.join(self.images.select("id", "path"), "id", "left").repartition(tasks, "id")
        self.feature_paths.append(f"{self.scratch}/features/round={self.rounds}")
        start = time.perf_counter()
        with arrow_batch_rows(self.spark, FEATURE_BATCH_ROWS):
            _featurize(new, self.cfg, self.input_cfg, self.tally, self.rounds).write.parquet(self.feature_paths[-1])
        self.seconds[0] += time.perf_counter() - start
        features = self._features()
        side_a = features.select(F.col("id").alias("id_a"), F.col("points").alias("points_a"),
                                 F.col("descriptors").alias("descriptors_a"))
        side_b = features.select(F.col("id").alias("id_b"), F.col("points").alias("points_b"),
                                 F.col("descriptors").alias("descriptors_b"))
        joined = wanted.join(side_a, "id_a", "left").join(side_b, "id_b", "left").repartition(tasks)
        decided = f"{self.scratch}/decided/round={self.rounds}"
        start = time.perf_counter()
        with arrow_batch_rows(self.spark, FEATURE_BATCH_ROWS):
            _decide(joined, self.cfg).write.parquet(decided)
        self.seconds[1] += time.perf_counter() - start
        return self.spark.read.parquet(decided)

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()

    def _features(self) -> DataFrame:
        return self.spark.read.parquet(*self.feature_paths)

    def featurized(self) -> tuple[int, int]:
        """Images featurized, and of those unreadable."""
        records = [v for r in range(1, self.rounds + 1) for v in self.tally.values(f"features-{r}")]
        return sum(v[0] for v in records), sum(v[1] for v in records)


def _settle(edges: pa.Table, nodes: DataFrame, criteria: list[tuple[str, bool]], cfg: PairsConfig,
            matcher: _Matcher) -> tuple[np.ndarray, np.ndarray, int]:
    """For each pair of ``edges`` (sorted by PAIR_KEY: :func:`verify.settle` breaks cosine
    ties by position), its :mod:`neardup_core.verify` state and inlier count (-1: not
    matched), and the rounds, over the whole pair graph ranked as the groups stage ranks
    it; the pairs that matter are matched in Spark. Counts ``known`` to the matcher are
    looked up here, on the driver, which holds the graph already."""
    from neardup_core import verify
    from neardup_core.groups import priority_order

    spark = nodes.sparkSession
    members = nodes_in(nodes, edges)
    ranked = members.column("id").combine_chunks().take(priority_order(members, criteria))
    a = pc.index_in(edges.column("id_a"), value_set=ranked).to_numpy()
    b = pc.index_in(edges.column("id_b"), value_set=ranked).to_numpy()
    cosine = edges.column("cosine").to_numpy()
    strong = cosine >= cfg.accept_cosine
    n = len(ranked)
    budget = math.floor(cfg.max_verified_per_image * n)

    known = matcher.take_known()
    inliers = np.full(len(edges), -1, np.int64)

    def count_inliers(indices: np.ndarray) -> np.ndarray:
        wanted = pa.table({"i": pa.array(indices, pa.int64()), "id_a": edges.column("id_a").take(indices),
                           "id_b": edges.column("id_b").take(indices)})
        if known is not None:
            hits = wanted.join(known, ["id_a", "id_b"], join_type="inner")
            inliers[hits.column("i").to_numpy()] = hits.column("inliers").to_numpy()
            matcher.reused += hits.num_rows
            wanted = wanted.filter(pa.array(inliers[indices] < 0))
        if wanted.num_rows:
            frame = spark.createDataFrame(wanted)
            found = matcher.match(frame.select("id_a", "id_b"), wanted.num_rows).join(frame, ["id_a", "id_b"]).toArrow()
            inliers[found.column("i").to_numpy()] = found.column("inliers").to_numpy()
        return inliers[indices]

    settled = verify.settle(n, a, b, cosine, np.where(strong, verify.EMBEDDING, verify.UNKNOWN), count_inliers,
                            cfg.min_inliers, budget)
    return settled.state, settled.inliers, settled.rounds


def _verify_every_borderline_pair(pairs: DataFrame, borderline: DataFrame, cfg: PairsConfig, matcher: _Matcher
                                  ) -> DataFrame:
    """Verdicts without a plan: every borderline pair is matched, the first
    ``max_verified_per_image`` x (images in pairs) by cosine (highest first, then id_a,
    id_b); the rest are over the budget."""
    ids = pairs.select(F.col("id_a").alias("id")).union(pairs.select(F.col("id_b").alias("id"))).distinct()
    budget = math.floor(matcher.cfg.max_verified_per_image * ids.count())
    ordered = borderline.orderBy(F.col("cosine").desc(), "id_a", "id_b")
    taken = f"{matcher.scratch}/within-budget"
    ordered.limit(budget).select("id_a", "id_b").write.parquet(taken)
    within = pairs.sparkSession.read.parquet(taken)
    count = within.count()
    decided = matcher.match(within, count) if count else None
    over = borderline.join(within, ["id_a", "id_b"], "left_anti").select(
        "id_a", "id_b", F.lit(None).cast("int").alias("inliers"), F.lit("over_budget").alias("verified"),
        F.lit(False).alias("accepted"))
    if decided is None:
        return over
    return decided.select("id_a", "id_b", "inliers", F.lit("geometry").alias("verified"),
                          (F.col("inliers") >= cfg.min_inliers).alias("accepted")).unionByName(over)


def _featurize(wanted: DataFrame, cfg: PairsConfig, input_cfg: InputConfig, tally: Tally, round_: int = 1
               ) -> DataFrame:
    """id, path -> id and packed features (:func:`verify.pack`); an image that cannot be
    read or decoded now gets no features and its reason in ``error``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from neardup_core import verify
        from neardup_core.sources import ReadError, read_file

        done = failed = 0
        for batch in batches:
            ids, paths = batch.column("id").to_pylist(), batch.column("path").to_pylist()
            points, descriptors, errors = [], [], []
            for path in paths:
                error, found = None, verify.unpack(b"", b"", cfg.features)
                try:
                    if path is None:
                        raise verify.FeatureError("no path")
                    data = read_file(path, input_cfg.max_file_bytes).data
                    gray = verify.gray_image(data, cfg.max_side, input_cfg.max_pixels)
                    found = verify.features(gray, cfg.features, cfg.max_keypoints)
                except (ReadError, verify.FeatureError) as err:
                    error = str(err)
                    failed += 1
                packed = verify.pack(found)
                points.append(packed[0])
                descriptors.append(packed[1])
                errors.append(error)
                done += 1
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids, pa.string()), pa.array(points, pa.binary()), pa.array(descriptors, pa.binary()),
                 pa.array(errors, pa.string())], names=["id", "points", "descriptors", "error"])
        tally.record(f"features-{round_}", (done, failed))

    return wanted.mapInArrow(run, _FEATURE_SCHEMA)


def _decide(joined: DataFrame, cfg: PairsConfig) -> DataFrame:
    """Pairs with both feature sets -> inliers (:func:`verify.count_inliers`), on one BLAS
    thread per task (:func:`verify.one_thread`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np

        from neardup_core import verify

        with verify.one_thread():
            for batch in batches:
                columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
                inliers = np.zeros(batch.num_rows, np.int64)
                for i in range(batch.num_rows):
                    a = verify.unpack(columns["points_a"][i] or b"", columns["descriptors_a"][i] or b"", cfg.features)
                    b = verify.unpack(columns["points_b"][i] or b"", columns["descriptors_b"][i] or b"", cfg.features)
                    inliers[i] = verify.count_inliers(a, b, cfg.ratio, cfg.transform)
                yield pa.RecordBatch.from_arrays(
                    [batch.column("id_a"), batch.column("id_b"), pa.array(inliers, pa.int32())],
                    names=["id_a", "id_b", "inliers"])

    return joined.select("id_a", "id_b", "points_a", "descriptors_a", "points_b", "descriptors_b").mapInArrow(
        run, _DECIDED_SCHEMA)
