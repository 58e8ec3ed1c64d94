"""The groups stage: duplicate groups (connected components of the pair graph) and a keep
or drop for every image that has a pair, written to ``groups/``.

Images are ranked by ``groups.keep`` in one global sort, so the decision kernels
(:mod:`neardup_core.groups`) work on integers in priority order. A graph of up to
``groups.max_pairs_in_one_task`` pairs is decided in one task with no shuffle. A larger
one is split into components in Spark by the large-star / small-star algorithm of
Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014), written as
joins and aggregations, and each component is then decided in one task of its own.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .driver_tables import local_dataset, nodes_in, read_local, write_table
from .session import shuffle_partitions
from .tally import Tally

log = logging.getLogger("neardup.groups")

GROUP_SCHEMA = ("id string, path string, group_id string, group_size int, action string, kept_id string, "
                "cosine double")
# GROUP_SCHEMA as Arrow writes it where Spark would.
_GROUP_ARROW_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("group_id", pa.string()),
                                 ("group_size", pa.int32()), ("action", pa.string()), ("kept_id", pa.string()),
                                 ("cosine", pa.float64())])
_DECIDED_SCHEMA = "rank bigint, label bigint, kept_by bigint, cosine double"
MAX_ROUNDS = 200  # large-star / small-star needs O(log^2 n) rounds; this is far above any real graph
# A pair in a round's shuffles: two int64 ends in Spark's row format, in both directions.
ROUND_BYTES_PER_PAIR = 64


class GroupsResult(NamedTuple):
    groups: int
    largest_group: int
    kept: int
    dropped: int
    rounds: int  # large-star / small-star rounds; 0 when decided in one task
    one_task: bool

    def record(self) -> dict:
        return self._asdict()


def priority_order(criteria: list[tuple[str, bool]]) -> list[Column]:
    """Sort expressions for ``groups.keep`` criteria (:meth:`GroupsConfig.criteria`):
    ``pixels`` is width x height; unknown values sort last in either direction."""
    order = []
    for name, descending in criteria:
        column = F.col("width").cast("long") * F.col("height") if name == "pixels" else F.col(name)
        order.append(column.desc_nulls_last() if descending else column.asc_nulls_last())
    return order


def round_tasks(pair_count: int, task_bytes: int, min_tasks: int) -> int:
    """Shuffle partitions for the distributed rounds: about ``task_bytes`` of edges each."""
    return max(min_tasks, -(-pair_count * ROUND_BYTES_PER_PAIR // task_bytes))


def group(pairs: DataFrame, nodes: DataFrame, criteria: list[tuple[str, bool]], pair_count: int,
          max_pairs_in_one_task: int, scratch: str, path: str, tasks: int, staged: str | None = None
          ) -> GroupsResult:
    """Write ``groups/`` (GROUP_SCHEMA, sorted by group_id, then priority) for ``pairs``
    (id_a, id_b, cosine, ...; ``pair_count`` rows).

    Args:
        nodes: id, path and the columns the criteria read, for at least every image in a pair.
        scratch: a folder for intermediate results (the ranking, the component rounds' edges).
        tasks: shuffle partitions for the distributed path (:func:`round_tasks`).
        staged: the folder ``pairs`` reads: where it is local, a graph for one task is
            decided on the driver (:func:`_group_on_driver`).
    """
    spark = pairs.sparkSession
    if pair_count == 0:
        spark.createDataFrame([], GROUP_SCHEMA).write.parquet(path)
        return GroupsResult(0, 0, 0, 0, 0, True)
    dataset = local_dataset(staged) if staged is not None else None
    if pair_count <= max_pairs_in_one_task and dataset is not None:
        return _group_on_driver(read_local(dataset, ["id_a", "id_b", "cosine"]), nodes, criteria, path)
    ids = pairs.select(F.col("id_a").alias("id")).union(pairs.select(F.col("id_b").alias("id"))).distinct()
    members = nodes.join(ids, "id", "left_semi")
    if pair_count <= max_pairs_in_one_task:
        return _group_in_one_task(pairs, members, criteria, path)
    with shuffle_partitions(spark, tasks):
        return _group_in_rounds(pairs, members, criteria, scratch, path)


def _group_in_one_task(pairs: DataFrame, members: DataFrame, criteria: list[tuple[str, bool]], path: str
                       ) -> GroupsResult:
    """The whole stage in one task, with no shuffle after the members are found: rank
    (:func:`groups.group_table`: rank, components, decisions, names, in Arrow and NumPy).
    Gives what :func:`_group_in_rounds` gives, in one file."""
    tally = Tally(pairs.sparkSession)
    rows = pairs.select("id_a", "id_b", "cosine").unionByName(members, allowMissingColumns=True)

    def run(batches):
        from neardup_core.groups import group_table

        batches = list(batches)
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        is_pair = table.column("id_a").is_valid()
        out = group_table(table.filter(is_pair), table.filter(pc.invert(is_pair)), criteria)
        sizes = out.column("group_size").to_numpy()
        kept = int(pc.sum(pc.equal(out.column("action"), "keep")).as_py() or 0)
        groups = len(pc.unique(out.column("group_id")))
        tally.record("groups", (groups, sizes.max(), kept, out.num_rows - kept))
        yield from out.to_batches()

    rows.coalesce(1).mapInArrow(run, GROUP_SCHEMA).write.parquet(path)
    (groups, largest, kept, dropped), = tally.values("groups")
    return GroupsResult(groups, largest, kept, dropped, 0, True)


def _group_on_driver(pairs: pa.Table, nodes: DataFrame, criteria: list[tuple[str, bool]], path: str
                     ) -> GroupsResult:
    """What :func:`_group_in_one_task` does, on the driver: the pairs read by PyArrow, the
    members taken from ``nodes`` by their ids, and ``groups/`` written by PyArrow (the Spark
    task took 2.9 s for 836,599 pairs, its kernel 0.47 s). The same rows; one file."""
    from neardup_core.groups import group_table

    out = group_table(pairs, nodes_in(nodes, pairs), criteria)
    write_table(nodes.sparkSession, out.cast(_GROUP_ARROW_SCHEMA), path)
    kept = int(pc.sum(pc.equal(out.column("action"), "keep")).as_py() or 0)
    return GroupsResult(len(pc.unique(out.column("group_id"))), int(pc.max(out.column("group_size")).as_py()), kept,
                        out.num_rows - kept, 0, True)


def _group_in_rounds(pairs: DataFrame, members: DataFrame, criteria: list[tuple[str, bool]], scratch: str,
                     path: str) -> GroupsResult:
    """Rank in one global sort, find components in large-star / small-star rounds
    (:func:`components`), and decide each component in one task of its own."""
    spark = pairs.sparkSession
    ranked_path = f"{scratch}/ranked"
    # After one global sort, monotonically increasing ids follow the sort order. Written
    # and read back so the ranks are fixed, whatever is recomputed later.
    (members.orderBy(*priority_order(criteria))
     .select(F.monotonically_increasing_id().alias("rank"), "id", "path").write.parquet(ranked_path))
    ranked = spark.read.parquet(ranked_path)
    names = ranked.select("rank", "id")
    edges = (pairs.select("id_a", "id_b", "cosine")
             .join(names.toDF("a", "id_a"), "id_a").join(names.toDF("b", "id_b"), "id_b")
             .select("a", "b", "cosine"))
    labels, rounds = components(edges.select("a", "b"), scratch)
    decided = (edges.join(labels.toDF("a", "label"), "a").select("label", "a", "b", "cosine")
               .groupBy("label").applyInArrow(_decide_table, _DECIDED_SCHEMA))
    kept_names = ranked.select(F.col("rank").alias("kept_by"), F.col("id").alias("kept_id"))
    # Persisted: the sizes and the rows both read it, and the decisions must run once.
    named = decided.join(ranked, "rank").join(kept_names, "kept_by", "left").persist(StorageLevel.MEMORY_AND_DISK)
    sizes = named.groupBy("label").agg(F.min("id").alias("group_id"), F.count("*").cast("int").alias("group_size"))
    result = (named.join(sizes, "label").orderBy("group_id", "rank")
              .select("id", "path", "group_id", "group_size",
                      F.when(F.col("kept_by").isNull(), "keep").otherwise("drop").alias("action"),
                      "kept_id", "cosine")
              .persist(StorageLevel.MEMORY_AND_DISK))
    stats = result.agg(F.countDistinct("group_id").alias("groups"), F.max("group_size").alias("largest"),
                       F.count(F.when(F.col("action") == "keep", 1)).alias("kept"),
                       F.count(F.when(F.col("action") == "drop", 1)).alias("dropped")).first()
    result.write.parquet(path)
    result.unpersist()
    named.unpersist()
    return GroupsResult(stats["groups"], stats["largest"], stats["kept"], stats["dropped"], rounds, False)


def components(edges: DataFrame, scratch: str, checkpoint_every: int = 2) -> tuple[DataFrame, int]:
    """Connected components of an undirected graph given as pairs of int64 nodes (a, b):
    (node, label) for every node in a pair, the label being the smallest node of its
    component; and the number of rounds.

    Each round is a large-star step then a small-star step (Kiveris et al. 2014) on edges
    kept as (src, dst) with src > dst. The rounds end when the edges form stars around
    their components' minima: every dst is a root (never a src) and every src has one
    edge. The edges are written to ``scratch`` and read back every ``checkpoint_every``
    rounds, since the query plan otherwise grows with every round.
    """
    spark = edges.sparkSession
    current = edges.select(F.greatest("a", "b").alias("src"), F.least("a", "b").alias("dst")).distinct()
    current = current.persist(StorageLevel.MEMORY_AND_DISK)
    rounds = 0
    while True:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
        previous = current
        current = _small_star(_large_star(previous))
        if rounds % checkpoint_every == 0:
            current.write.parquet(f"{scratch}/components-round-{rounds}")
            current = spark.read.parquet(f"{scratch}/components-round-{rounds}")
        current = current.persist(StorageLevel.MEMORY_AND_DISK)
        done = _is_star_forest(current)  # materialises current, so previous can go
        previous.unpersist()
        if done:
            break
    log.info("components: %d rounds of large-star and small-star", rounds)
    labels_path = f"{scratch}/components-labels"
    current.select(F.col("src").alias("node"), F.col("dst").alias("label")).union(
        current.select(F.col("dst").alias("node"), F.col("dst").alias("label")).distinct()).write.parquet(labels_path)
    current.unpersist()
    return spark.read.parquet(labels_path), rounds


def _large_star(edges: DataFrame) -> DataFrame:
    """Every node links its larger neighbours to the smallest node of its neighbourhood
    (itself included): (v, m(u)) for each neighbour v > u."""
    both = edges.union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    least = both.groupBy("src").agg(F.min("dst").alias("m"))
    return (both.join(least, "src").where(F.col("dst") > F.col("src"))
            .select(F.col("dst").alias("src"), F.least("m", "src").alias("dst")).distinct())


def _small_star(edges: DataFrame) -> DataFrame:
    """Every node links itself and its smaller neighbours to the smallest of them:
    for u with smaller neighbours N, m = min N, edges (v, m) for v in N + {u}, v != m."""
    least = edges.groupBy("src").agg(F.min("dst").alias("m"))
    return (edges.join(least, "src")
            .select(F.when(F.col("dst") == F.col("m"), F.col("src")).otherwise(F.col("dst")).alias("src"),
                    F.col("m").alias("dst"))
            .distinct())


def _is_star_forest(edges: DataFrame) -> bool:
    """True when every src has one edge and no dst is a src: each component is one star
    around its smallest node. One aggregation over both ends of every edge."""
    ends = edges.select(F.col("src").alias("node"), F.lit(1).alias("out"), F.lit(0).alias("into")).union(
        edges.select(F.col("dst").alias("node"), F.lit(0).alias("out"), F.lit(1).alias("into")))
    per_node = ends.groupBy("node").agg(F.sum("out").alias("out"), F.max("into").alias("into"))
    bad = per_node.where((F.col("out") > 1) | ((F.col("out") > 0) & (F.col("into") > 0)))
    return bad.limit(1).count() == 0


def _decide_table(table: pa.Table) -> pa.Table:
    """The decisions of one group (:func:`groups.keep_or_drop`), from its pairs of
    global ranks: rank, label (the group's smallest rank), kept_by (null for a kept
    image) and cosine (to kept_by)."""
    from neardup_core.groups import keep_or_drop_ranks

    nodes, kept_by, cosine = keep_or_drop_ranks(table.column("a").to_numpy(), table.column("b").to_numpy(),
                                                table.column("cosine").to_numpy())
    kept = kept_by < 0
    label = np.full(len(nodes), table.column("label")[0].as_py(), dtype=np.int64)
    return pa.table({"rank": pa.array(nodes, pa.int64()), "label": pa.array(label, pa.int64()),
                     "kept_by": pa.array(kept_by, pa.int64(), mask=kept),
                     "cosine": pa.array(cosine, pa.float64(), mask=kept)})
