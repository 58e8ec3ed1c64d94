"""The groups stage in Spark, both paths, against union-find and the sequential decisions."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neardup_core.spark.groups import GROUP_SCHEMA, group

from .references import expected_groups
from .test_groups import NAMED, seeded_graph

pytestmark = pytest.mark.spark

CRITERIA = [("pixels", True), ("score", False), ("bytes", True), ("id", False)]


def catalog(pairs, seed):
    """Node facts with ties, nulls and NaN, so that every criterion decides somewhere."""
    rng = np.random.default_rng(seed)
    ids = sorted({i for a, b, _ in pairs for i in (a, b)} | {"lonely"})
    nodes = []
    for i in ids:
        width = [None, 100, 200][rng.integers(3)]
        nodes.append({"id": i, "path": f"/p/{i}.jpg", "width": width, "height": None if width is None else 50,
                      "bytes": [None, 7, 9][rng.integers(3)],
                      "score": [None, math.nan, 0.5, 1.5][rng.integers(4)]})
    return nodes


def run_group(spark, tmp_path, pairs, nodes, limit, name, staged=False):
    """``staged``: the pairs written to a local folder first and passed as ``staged`` (the
    one-task graph is then decided on the driver)."""
    pairs_df = spark.createDataFrame(pd.DataFrame(pairs, columns=["id_a", "id_b", "cosine"]))
    folder = None
    if staged:
        folder = str(tmp_path / f"staged-{name}")
        pairs_df.repartition(2).write.parquet(folder)
        pairs_df = spark.read.parquet(folder)
    # From Python rows, not pandas: pandas would turn a null score into NaN, which sorts otherwise.
    columns = ["id", "path", "width", "height", "bytes", "score"]
    nodes_df = spark.createDataFrame([tuple(n[c] for c in columns) for n in nodes],
                                     "id string, path string, width int, height int, bytes bigint, score double")
    result = group(pairs_df, nodes_df, CRITERIA, len(pairs), limit, str(tmp_path / f"scratch-{name}"),
                   str(tmp_path / name), tasks=3, staged=folder)
    return result, pd.read_parquet(tmp_path / name)


def as_strings(pairs):
    """Integer pairs as id strings whose order is not the integers' order."""
    return [(f"n{a:04d}"[::-1], f"n{b:04d}"[::-1], c) for a, b, c in pairs]


GRAPHS = {**{name: NAMED[name] for name in ("long chain", "star around a low-priority hub", "clique",
                                            "isolated pairs", "ties in cosine")},
          "seeded 1": seeded_graph(1, 300), "seeded 2": seeded_graph(2, 120)}


# The rounds cost seconds of Spark jobs even on small graphs: they run on the graphs whose
# shapes stress them (a long chain, a hub of low priority, random clusters); one task on all.
ROUNDS = ("long chain", "star around a low-priority hub", "seeded 1")


@pytest.mark.parametrize("name", list(GRAPHS))
def test_both_paths_equal_the_references(spark, tmp_path, name):
    pairs = [(a, b, c) if a < b else (b, a, c) for a, b, c in as_strings(GRAPHS[name])]
    nodes = catalog(pairs, seed=len(name))
    expected = expected_groups(pairs, nodes, CRITERIA)
    outputs = []
    paths = [(10**9, "one-task"), (10**9, "driver")] + ([(0, "rounds")] if name in ROUNDS else [])
    for limit, label in paths:
        result, out = run_group(spark, tmp_path, pairs, nodes, limit, label, staged=label == "driver")
        got = {r.id: (r.group_id, r.group_size, r.action, r.kept_id, None if pd.isna(r.cosine) else r.cosine)
               for r in out.itertuples()}
        assert got == expected, label
        assert out.group_id.is_monotonic_increasing
        assert (result.groups, result.kept) == (len({g[0] for g in expected.values()}),
                                                sum(g[2] == "keep" for g in expected.values()))
        assert result.one_task == (limit > 0) and (result.rounds > 0) == (limit == 0)
        outputs.append(out)
    for other in outputs[1:]:
        pd.testing.assert_frame_equal(outputs[0], other)
    assert pq.read_schema(next((tmp_path / "driver").glob("*.parquet"))).remove_metadata() == pq.read_schema(
        next((tmp_path / "one-task").glob("*.parquet"))).remove_metadata()


def test_no_pairs_gives_an_empty_table(spark, tmp_path):
    empty = spark.createDataFrame([], "id_a string, id_b string, cosine double")
    nodes = spark.createDataFrame([], "id string, path string, width int, height int, bytes bigint, score double")
    result = group(empty, nodes, CRITERIA, 0, 10, str(tmp_path / "s"), str(tmp_path / "g"), tasks=2)
    assert result.groups == 0
    out = spark.read.parquet(str(tmp_path / "g"))
    assert out.count() == 0
    assert out.schema.simpleString() == spark.createDataFrame([], GROUP_SCHEMA).schema.simpleString()
