"""Exact copies (spark.exact): collapsed to a representative before pairing, with the
groups and decisions of the full graph (a brute-force reference over every row), and a
flood of copies paired with linear shuffle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neardup_core import cli

from .references import check_groups_output, expected_groups

pytestmark = pytest.mark.spark

THRESHOLD = 0.9
CRITERIA = [("bytes", True), ("id", False)]


def table(seed: int, distinct: int, copies_of: dict[int, int], dim: int = 16):
    """``distinct`` seeded unit vectors with planted near pairs, then ``copies_of[i]``
    identical copies of vector i, each with its own id and ``bytes`` (the priority)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((distinct, dim))
    for a in range(0, distinct - 1, 3):  # near pairs and chains
        x[a + 1] = x[a] + 0.25 * rng.standard_normal(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [(f"v{i:03d}", x[i], int(rng.integers(1, 50))) for i in range(distinct)]
    for i, n in copies_of.items():
        rows += [(f"c{i:03d}-{k:04d}", x[i], int(rng.integers(1, 50))) for k in range(n)]
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]
    return pd.DataFrame({"item": [r[0] for r in rows], "vec": [list(map(float, r[1])) for r in rows],
                         "bytes": [r[2] for r in rows]})


def run(path, out, *extra) -> int:
    return cli.main(["pairs", "--embeddings", str(path), "--output", str(out), "--set", "input.id_column=item",
                     "--set", "input.embedding_column=vec", "--set", f"pairs.cosine_threshold={THRESHOLD}",
                     "--set", "groups.keep=[bytes desc]", *extra])


def brute_force(frame: pd.DataFrame):
    x = np.array(frame.vec.tolist(), dtype=np.float32).astype(np.float64)
    gram = x @ x.T
    i, j = np.nonzero(np.triu(gram >= THRESHOLD - 1e-6, 1))
    ids = frame.item.tolist()
    pairs = [(min(ids[a], ids[b]), max(ids[a], ids[b]), gram[a, b]) for a, b in zip(i, j)]
    nodes = [{"id": r.item, "bytes": r.bytes} for r in frame.itertuples()]
    return expected_groups(pairs, nodes, CRITERIA)


@pytest.mark.parametrize("copies_of", [{0: 3, 1: 2, 4: 5, 7: 1, 20: 4}, {2: 1}])
def test_copies_take_the_decisions_of_the_full_graph(spark, tmp_path, copies_of):
    frame = table(5, 30, copies_of)
    frame.to_parquet(tmp_path / "emb.parquet")
    assert run(tmp_path / "emb.parquet", tmp_path / "out") == 0
    check_groups_output(tmp_path / "out")
    groups = pd.read_parquet(tmp_path / "out" / "groups").set_index("id")
    expected = brute_force(frame)
    assert set(groups.index) == set(expected)
    for i, (group_id, size, action, kept_id, cos) in expected.items():
        row = groups.loc[i]
        assert (row.group_id, row.group_size, row.action, row.kept_id) == (group_id, size, action, kept_id), i
        assert (cos is None and pd.isna(row.cosine)) or row.cosine == pytest.approx(cos, abs=1e-5), i
    pairs = pd.read_parquet(tmp_path / "out" / "pairs")
    exact = pairs[pairs.exact]
    assert len(exact) == sum(copies_of.values())
    assert (exact.cosine == 1.0).all()
    counts = json.loads((tmp_path / "out" / "_manifest.json").read_text())["counts"]
    assert counts["exact_copies"] == sum(copies_of.values())
    assert counts["inputs"] == counts["embedded"] + counts["errors"] == len(frame)
    assert len(pd.read_parquet(tmp_path / "out" / "embeddings")) == len(frame)


def test_a_flood_of_copies_costs_linear_shuffle(spark, tmp_path):
    """20 vectors x 200 copies: without the collapse, every table's bucket of 200
    identical vectors is paired by windows (the issue measured 30 GB for 20 x 1,000)."""
    frame = table(7, 20, {i: 200 for i in range(20)})
    frame.to_parquet(tmp_path / "emb.parquet")
    assert run(tmp_path / "emb.parquet", tmp_path / "out", "--set", "spark.shuffle_partitions=4") == 0
    check_groups_output(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    shuffled = next(stage for stage in manifest["stages"] if stage["name"] == "pairs")["shuffle_bytes"]
    # 4,020 rows; the pairs stage shuffles the 20 representatives and writes 4,000 exact pairs.
    assert 0 <= shuffled < 2_000_000, shuffled
    groups = pd.read_parquet(tmp_path / "out" / "groups")
    expected = brute_force(frame)
    assert dict(zip(groups.id, groups.action)) == {i: e[2] for i, e in expected.items()}


def test_copies_may_be_fresh_only_where_a_fresh_hash_repeats_or_was_there_before(spark):
    from neardup_core.spark.exact import copies_may_be_fresh

    previous = spark.createDataFrame([("a", "h1"), ("b", "h2"), ("c", None)], "id string, content_hash string")

    def fresh(*hashes):
        return spark.createDataFrame([(f"f{i}", h) for i, h in enumerate(hashes)], "id string, content_hash string")

    assert not copies_may_be_fresh(fresh("h3", "h4", None, None), previous)
    assert not copies_may_be_fresh(fresh(), previous)
    assert copies_may_be_fresh(fresh("h3", "h4", "h3"), previous)  # two new copies of each other
    assert copies_may_be_fresh(fresh("h3", "h2"), previous)  # a copy of a previous row
