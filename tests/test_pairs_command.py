"""`neardup pairs` and `neardup plan` on seeded synthetic embeddings, against exact search."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neardup_core import cli

from .references import check_groups_output

pytestmark = pytest.mark.spark

THRESHOLD = 0.9


def synthetic(seed: int, n: int = 1500, dim: int = 32, planted: int = 120, giant: int = 0):
    """Clustered unit vectors plus ``planted`` near-duplicates at cosines 0.86..0.99, and
    optionally ``giant`` near-identical copies of one vector (a bucket that must split)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    x = centres[rng.integers(0, 30, n)] + 1.2 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = []
    for src, cos in zip(rng.integers(0, n, planted), rng.uniform(0.86, 0.99, planted)):
        r = rng.standard_normal(dim)
        r -= (r @ x[src]) * x[src]
        copies.append(cos * x[src] + np.sqrt(1 - cos**2) * r / np.linalg.norm(r))
    if giant:
        base = x[0]
        noise = 0.02 * rng.standard_normal((giant, dim))
        copies.extend(base + noise)
    x = np.vstack([x, *copies]) if copies else x
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_pairs(x: np.ndarray, ids: list[str], threshold: float) -> set[tuple[str, str]]:
    gram = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(gram >= threshold, 1))
    return {tuple(sorted((ids[a], ids[b]))) for a, b in zip(i, j)}


def write_table(path, x: np.ndarray, bad_rows: bool = True) -> list[str]:
    ids = [f"item-{i:05d}" for i in range(len(x))]
    vectors = [list(map(float, v)) for v in x]
    if bad_rows:
        ids += ["bad-null", "bad-short", "bad-nan"]
        vectors += [None, [0.1, 0.2], [float("nan")] * x.shape[1]]
    pd.DataFrame({"item": ids, "vec": vectors}).to_parquet(path)
    return ids[: len(x)]


def run(args) -> int:
    return cli.main(["pairs", *args, "--set", "input.id_column=item", "--set", "input.embedding_column=vec",
                     "--set", f"pairs.cosine_threshold={THRESHOLD}"])


SHUFFLED = ["--set", "spark.shuffle_partitions=3"]  # a set task count always takes the shuffled path


@pytest.fixture(scope="module")
def normal_run(spark, tmp_path_factory):
    """1,500 vectors: small enough that one task pairs them all."""
    root = tmp_path_factory.mktemp("pairs")
    x = synthetic(1)
    ids = write_table(root / "emb.parquet", x)
    assert run(["--embeddings", str(root / "emb.parquet"), "--output", str(root / "out")]) == 0
    check_groups_output(root / "out")
    return root / "out", x, ids


@pytest.fixture(scope="module")
def shuffled_run(spark, normal_run):
    out, x, ids = normal_run
    assert run(["--embeddings", str(out.parent / "emb.parquet"), "--output", str(out.parent / "shuffled"),
                *SHUFFLED, "--set", "groups.max_pairs_in_one_task=0"]) == 0
    check_groups_output(out.parent / "shuffled")
    return out.parent / "shuffled", x, ids


def pairs_stage(out):
    manifest = json.loads((out / "_manifest.json").read_text())
    return next(s for s in manifest["stages"] if s["name"] == "pairs")


@pytest.mark.parametrize("which", ["normal_run", "shuffled_run"])
def test_pairs_are_the_exact_pairs_at_the_threshold(which, request):
    out, x, ids = request.getfixturevalue(which)
    pairs = pd.read_parquet(out / "pairs")
    found = list(zip(pairs.id_a, pairs.id_b))
    assert len(found) == len(set(found))  # each pair once
    assert all(a < b for a, b in found)
    truth = exact_pairs(x, ids, THRESHOLD)
    assert len(truth) >= 60
    assert set(found) <= truth  # exact cosine decides: no false pair
    recall = len(set(found) & truth) / len(truth)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert recall >= 0.97, (recall, manifest["lsh"])  # planned for 0.99 at the threshold itself
    index = {k: v for v, k in enumerate(ids)}
    for row in pairs.itertuples():
        expected = float(x[index[row.id_a]].astype(np.float64) @ x[index[row.id_b]].astype(np.float64))
        assert row.cosine == pytest.approx(expected, abs=1e-6)


def test_one_task_and_shuffled_stages_give_the_same_result(normal_run, shuffled_run):
    """Both physical plans of the pairing stage: the same pairs, scores and counts."""
    one, shuffled = pairs_stage(normal_run[0]), pairs_stage(shuffled_run[0])
    assert one["tasks"] == {"buckets": 1, "rows": 1, "shuffled": False}
    assert shuffled["tasks"] == {"buckets": 3, "rows": 3, "shuffled": True}
    assert shuffled["shuffle_bytes_per_image"] > 0
    # The groups stage in one task and in distributed rounds: the same groups and decisions.
    pd.testing.assert_frame_equal(pd.read_parquet(normal_run[0] / "groups"),
                                  pd.read_parquet(shuffled_run[0] / "groups"))
    for key in ("rows", "candidate_pairs", "buckets"):
        assert one[key] == shuffled[key], key
    pd.testing.assert_frame_equal(pd.read_parquet(normal_run[0] / "pairs"), pd.read_parquet(shuffled_run[0] / "pairs"))


def test_bad_vectors_are_recorded_and_the_rest_goes_on(normal_run):
    out, x, _ = normal_run
    errors = pd.read_parquet(out / "errors").set_index("id")
    assert set(errors.stage) == {"embedding"}
    assert errors.loc["bad-null", "message"] == "no embedding"
    assert errors.loc["bad-short", "message"] == "embedding has 2 values, expected 32 like the first row"
    assert errors.loc["bad-nan", "message"] == "embedding has a missing, NaN or infinite value"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["embedded"] == len(x)
    assert [s["name"] for s in manifest["stages"]] == ["read-embeddings", "exact-copies", "near-copies", "plan",
                                                       "pairs", "verify", "groups", "write"]
    assert manifest["lsh"]["recall_at_threshold"] >= 0.99
    # The table has no path column: its ids are not opened as image files for the report.
    assert manifest["paths_are_ids"] is True and manifest["report"]["thumbnail_errors"] == 0
    assert len(pd.read_parquet(out / "embeddings")) == len(x)
    written = pd.read_parquet(out / "pairs")
    assert (written.verified == "embedding").all() and written.inliers.isna().all()  # no images to verify


def test_giant_bucket_is_split_and_counted(spark, tmp_path):
    x = synthetic(2, n=800, planted=40, giant=400)
    ids = write_table(tmp_path / "emb.parquet", x, bad_rows=False)
    for out, extra in (("one", []), ("shuffled", SHUFFLED)):
        code = run(["--embeddings", str(tmp_path / "emb.parquet"), "--output", str(tmp_path / out),
                    "--set", "lsh.max_bucket_size=100", "--set", "pairs.copy_cosine=1", *extra])  # no collapse
        assert code == 0
    buckets = pairs_stage(tmp_path / "one")["buckets"]
    assert buckets["oversized"] >= 1 and buckets["largest_rows"] >= 350  # most of the 400 planted rows
    assert buckets["split"] + buckets["windowed"] == buckets["oversized"]
    assert pairs_stage(tmp_path / "shuffled")["buckets"] == buckets
    pairs = pd.read_parquet(tmp_path / "one" / "pairs")
    found = set(zip(pairs.id_a, pairs.id_b))
    assert len(found) == len(pairs)
    assert found <= exact_pairs(x, ids, THRESHOLD)
    pd.testing.assert_frame_equal(pairs, pd.read_parquet(tmp_path / "shuffled" / "pairs"))


def test_tally_counts_a_recomputed_partition_once(spark):
    """A stage that runs again (here: an unpersisted frame read twice) must not double
    the counts the manifest reports."""
    from neardup_core.spark.tally import Tally

    tally = Tally(spark)

    def count_rows(batches):
        n = 0
        for batch in batches:
            n += batch.num_rows
            yield batch
        tally.record("rows", (n,))

    frame = spark.range(0, 1000, numPartitions=4).mapInArrow(count_rows, "id long")
    assert frame.count() == 1000 and frame.count() == 1000
    assert sorted(v[0] for v in tally.values("rows")) == [250] * 4


def test_missing_columns_exit_2_naming_them(spark, tmp_path, capsys):
    pd.DataFrame({"item": ["a"], "vector": [[1.0, 2.0]]}).to_parquet(tmp_path / "e.parquet")
    assert run(["--embeddings", str(tmp_path / "e.parquet"), "--output", str(tmp_path / "out")]) == 2
    assert "no column 'vec' (columns: item, vector)" in capsys.readouterr().err


def test_missing_table_exits_2_in_one_line_before_spark_starts(tmp_path, capsys):
    """No Spark session (no `spark` fixture, none started): the path is checked first."""
    assert run(["--embeddings", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"neardup: error: --embeddings {tmp_path}/nope.parquet: no such file or directory"
    assert not (tmp_path / "out").exists()


def test_plan_prints_the_choice_before_anything_heavy(tmp_path, capsys):
    x = synthetic(3, n=3000, planted=50)
    pd.DataFrame({"id": [str(i) for i in range(len(x))],
                  "embedding": [v.astype("<f4").tobytes() for v in x]}).to_parquet(tmp_path / "e.parquet")
    assert cli.main(["plan", "--embeddings", str(tmp_path / "e.parquet"), "--set", "pairs.cosine_threshold=0.9"]) == 0
    out = capsys.readouterr().out
    assert f"items: {len(x):,}, dimension 32, sample of 2,000" in out
    assert "choice: lsh.bits_per_table=" in out and "<- chosen" in out
    assert "recall at cosine 0.9: 0.99" in out
