"""Incremental runs (--previous): the oracle is a full run on the same catalog with the
same LSH plan; the incremental run must give the same pairs, groups and decisions."""

import functools
import json
import os
import shutil
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neardup_core import cli, incremental
from neardup_core.config import load_config
from neardup_core.spark.arrow import key_matrix, list_column

from .conftest import SAMPLE_CATALOG
from .references import check_groups_output
from .test_pairs_command import synthetic

PHOTOS = ["baboon", "building", "fruits", "home", "messi5", "butterfly", "board", "apple", "orange"]


def manifest(run):
    return json.loads((run / "_manifest.json").read_text())


def full_run_with_the_same_plan(args, previous_run):
    lsh = manifest(previous_run)["lsh"]
    return [*args, "--set", f"lsh.num_tables={lsh['num_tables']}",
            "--set", f"lsh.bits_per_table={lsh['bits_per_table']}"]


def assert_same_results(a, b):
    pairs_a = pd.read_parquet(a / "pairs").sort_values(["id_a", "id_b"], ignore_index=True)
    pairs_b = pd.read_parquet(b / "pairs").sort_values(["id_a", "id_b"], ignore_index=True)
    pd.testing.assert_frame_equal(pairs_a.drop(columns="cosine"), pairs_b.drop(columns="cosine"))
    np.testing.assert_allclose(pairs_a.cosine, pairs_b.cosine, atol=1e-6)
    groups_a = pd.read_parquet(a / "groups").sort_values("id", ignore_index=True)
    groups_b = pd.read_parquet(b / "groups").sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(groups_a.drop(columns="cosine"), groups_b.drop(columns="cosine"))
    np.testing.assert_allclose(groups_a.cosine, groups_b.cosine, atol=1e-6)


def pairs_tonight_both_ways(tmp_path, common):
    """`neardup pairs` on b.parquet with --previous a (into b) and in full with a's plan
    (into full), in ``tmp_path``: the two give the same results."""
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "b.parquet"), "--output", str(tmp_path / "b"),
                     "--previous", str(tmp_path / "a"), *common]) == 0
    assert cli.main(["pairs", *full_run_with_the_same_plan(
        ["--embeddings", str(tmp_path / "b.parquet"), "--output", str(tmp_path / "full"), *common],
        tmp_path / "a")]) == 0
    assert_same_results(tmp_path / "b", tmp_path / "full")


@pytest.mark.spark
@pytest.mark.model
def test_incremental_run_equals_a_full_run_after_adds_changes_and_deletes(spark, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for name in PHOTOS:
        shutil.copy(os.path.join(SAMPLE_CATALOG, f"{name}.jpg"), catalog / f"{name}.jpg")
    with Image.open(catalog / "baboon.jpg") as im:
        im.resize((im.width // 2, im.height // 2)).save(catalog / "baboon_small.jpg", quality=85)
    with Image.open(catalog / "building.jpg") as im:
        im.save(catalog / "building_q40.jpg", quality=40)
    night1 = tmp_path / "night1"
    # Every pair verified geometrically, so that carried pairs keep last night's verdict.
    verify_all = ["--set", "pairs.accept_cosine=0.999",
                  # Incremental runs do not collapse near copies (spark.near): compared with full runs
                  # that do not either, and a previous run that did would make tonight pair in full.
                  "--set", "pairs.copy_cosine=1"]
    assert cli.main(["run", "--input", str(catalog), "--output", str(night1), *verify_all]) == 0

    # Overnight: a new copy arrives (a bigger one: it becomes the kept image), one photo is
    # replaced by another, a copy is deleted, and one file is touched without changing.
    with Image.open(catalog / "fruits.jpg") as im:
        im.resize((im.width * 3 // 2, im.height * 3 // 2)).save(catalog / "fruits_large.jpg", quality=92)
    shutil.copy(os.path.join(SAMPLE_CATALOG, "starry_night.jpg"), catalog / "home.jpg")
    os.remove(catalog / "building_q40.jpg")
    later = time.time() + 5
    os.utime(catalog / "board.jpg", (later, later))

    night2 = tmp_path / "night2"
    # Data this small is paired in one task (the shuffled path: see the vectors test).
    assert cli.main(["run", "--input", str(catalog), "--output", str(night2), "--previous", str(night1),
                     *verify_all]) == 0
    full = tmp_path / "full"
    assert cli.main(["run", *full_run_with_the_same_plan(["--input", str(catalog), "--output", str(full), *verify_all],
                                                         night1)]) == 0
    check_groups_output(night2)
    assert_same_results(night2, full)

    counts = manifest(night2)["counts"]
    # Every pair verified, as in the full run; only the pair found tonight (fruits_large) was
    # matched: the carried one took last night's inlier count.
    assert counts["verified_pairs"] == manifest(full)["counts"]["verified_pairs"] == counts["pairs"] == 2
    verify = next(stage for stage in manifest(night2)["stages"] if stage["name"] == "verify")
    assert verify["matches_reused"] == 1 and verify["images"] == 2
    assert (pd.read_parquet(night2 / "pairs").verified == "geometry").all()
    assert counts["embedded"] == 2  # fruits_large (new) and home (changed); board was touched only
    assert (counts["reused"], counts["changed"], counts["deleted"]) == (len(PHOTOS) - 1 + 1, 1, 1)
    assert manifest(night2)["incremental"]["pairing"] == "incremental"
    assert manifest(night2)["incremental"]["settled"] is False  # a borderline pair found: the verify stage ran
    changes = pd.read_parquet(night2 / "changes")
    uri = f"file:{catalog}"
    assert set(changes[changes.change == "pair_removed"].id_b) == {f"{uri}/building_q40.jpg"}
    assert set(changes[changes.change == "pair_added"].id_b) == {f"{uri}/fruits_large.jpg"}
    moved = changes[changes.change == "action_changed"].set_index("id")
    assert moved.loc[f"{uri}/fruits.jpg", ["previous_action", "action"]].tolist() == ["keep", "drop"]
    assert moved.loc[f"{uri}/fruits.jpg", "kept_id"] == f"{uri}/fruits_large.jpg"
    assert moved.loc[f"{uri}/building_q40.jpg", ["previous_action", "action"]].tolist() == ["drop", None]
    embeddings = pd.read_parquet(night2 / "embeddings")
    assert sorted(embeddings.id) == sorted(pd.read_parquet(full / "embeddings").id)

    # A setting that changes the embeddings: said, and everything is embedded again.
    rgb = tmp_path / "rgb"
    assert cli.main(["run", "--input", str(catalog), "--output", str(rgb), "--previous", str(night2), *verify_all,
                     "--set", "model.colour=rgb"]) == 0
    record = manifest(rgb)["incremental"]
    assert record["reused"] is False and record["why_not"][-1] == "model.colour: 'grayscale' before, 'rgb' now"
    # Also said: another model, since INT8 ranges ship for grayscale only (embed.cpu_precision
    # auto), so the rgb run embeds with the FP32 export.
    assert record["why_not"][:-1] == [record["why_not"][0], "model.precision: 'int8' before, None now"]
    assert record["why_not"][0].startswith("model: ")
    assert manifest(rgb)["counts"]["embedded"] == len(embeddings) and manifest(rgb)["counts"]["reused"] == 0


@pytest.mark.spark
def test_incremental_pairs_equal_a_full_run(spark, tmp_path):
    x = synthetic(4, n=1200, planted=80)
    ids = [f"v{i:05d}" for i in range(len(x))]

    def table(path, rows):
        pd.DataFrame({"id": [ids[i] for i in rows], "embedding": [list(map(float, x[i])) for i in rows]}
                     ).to_parquet(path)

    common = ["--set", "pairs.cosine_threshold=0.85", "--set", "pairs.copy_cosine=1"]  # as above
    table(tmp_path / "a.parquet", range(0, 1100))
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "a"),
                     *common, "--set", "output.write_embeddings=true"]) == 0
    # What `neardup pairs` writes by default (output.write_embeddings auto): no vectors; with
    # the keys as a neardup before packed keys wrote them (array<bigint>): read as packed.
    shutil.copytree(tmp_path / "a", tmp_path / "a_keys")
    shutil.rmtree(tmp_path / "a_keys" / "embeddings")
    (tmp_path / "a_keys" / "embeddings").mkdir()
    keyed = pq.read_table(tmp_path / "a" / "embeddings", coerce_int96_timestamp_unit="us").drop_columns(["embedding"])
    as_lists = list_column(key_matrix(keyed.column("keys"), manifest(tmp_path / "a")["lsh"]["num_tables"]))
    # (without the footer's Spark schema, which Spark would read the file with)
    keyed = keyed.set_column(keyed.schema.get_field_index("keys"), "keys", as_lists).replace_schema_metadata(None)
    pq.write_table(keyed, tmp_path / "a_keys" / "embeddings" / "part-0.parquet")
    # d: only new vectors, nothing deleted or changed (no gone rows to look up); with vectors
    # in embeddings/, as a has them, so a's files are carried whole.
    table(tmp_path / "d.parquet", range(0, 1150))
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "d.parquet"), "--output", str(tmp_path / "d"),
                     "--previous", str(tmp_path / "a"), *common, "--set", "output.write_embeddings=true"]) == 0
    rows = [*range(30, 1100), *range(1100, 1200)]  # 30 deleted, 100 new
    # and one changed vector: near its neighbour (c), or a copy of it (b: exact copies, so
    # the verify stage rewrites pairs/ with the copies' pairs)
    x[40] = x[41] + 1e-3 * np.sign(x[41])
    table(tmp_path / "c.parquet", rows)
    x[40] = x[41]
    table(tmp_path / "b.parquet", rows)
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "b.parquet"), "--output", str(tmp_path / "b"),
                     "--previous", str(tmp_path / "a"), *common, "--set", "spark.shuffle_partitions=2",
                     "--set", "output.write_embeddings=true"]) == 0
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "c.parquet"), "--output", str(tmp_path / "c"),
                     "--previous", str(tmp_path / "a_keys"), *common]) == 0
    assert "embedding" not in pd.read_parquet(tmp_path / "c" / "embeddings").columns
    for night in ("b", "c", "d"):
        assert cli.main(["pairs", *full_run_with_the_same_plan(
            ["--embeddings", str(tmp_path / f"{night}.parquet"), "--output", str(tmp_path / f"full_{night}"),
             *common], tmp_path / "a")]) == 0
        assert_same_results(tmp_path / night, tmp_path / f"full_{night}")
        # changes/, from the pairs found tonight only, against a comparison of the whole outputs.
        expected = expected_changes(tmp_path / "a", tmp_path / f"full_{night}")
        assert changes_set(pd.read_parquet(tmp_path / night / "changes")) == expected, night
        assert manifest(tmp_path / night)["incremental"]["pairing"] == "incremental"
    # d only added rows: a's embeddings/ files are linked (same inodes), not written again.
    # b (written with vectors too) deleted and changed rows: its embeddings/ is written whole.
    # Either way embeddings/ holds what a full run's holds.
    assert manifest(tmp_path / "d")["incremental"]["embeddings_linked"] > 0
    assert "embeddings_linked" not in manifest(tmp_path / "b")["incremental"]
    inodes = [{os.stat(f).st_ino for f in (tmp_path / run / "embeddings").glob("part-*")} for run in ("a", "d")]
    assert inodes[0] and inodes[0] < inodes[1]

    def embeddings(run):
        return pd.read_parquet(tmp_path / run / "embeddings", columns=["id", "path", "keys", "content_hash"]
                               ).sort_values("id", ignore_index=True)

    for night in ("b", "d"):
        pd.testing.assert_frame_equal(embeddings(night), embeddings(f"full_{night}"))
    # Incremental pairing pairs no bucket whole: no bucket statistics, the touched buckets instead.
    assert manifest(tmp_path / "c")["lsh"]["buckets"] is None
    assert manifest(tmp_path / "c")["incremental"]["touched_buckets"] > 0
    check_groups_output(tmp_path / "b")
    counts = manifest(tmp_path / "b")["counts"]
    assert (counts["embedded"], counts["reused"], counts["changed"], counts["deleted"]) == (101, 1069, 1, 30)
    only_new = manifest(tmp_path / "d")["counts"]
    assert (only_new["embedded"], only_new["reused"], only_new["changed"], only_new["deleted"]) == (50, 1100, 0, 0)
    assert counts["exact_copies"] == 1 and not manifest(tmp_path / "b")["incremental"]["settled"]
    # Nothing to verify (no images) and no copies: pairs/ written final by the pairing stage.
    assert manifest(tmp_path / "c")["incremental"]["settled"]
    assert len(pd.read_parquet(tmp_path / "c" / "pairs")) == manifest(tmp_path / "c")["counts"]["pairs"]


@pytest.mark.spark
@pytest.mark.parametrize("flood", [False, True])
def test_incremental_pairs_read_tonights_vectors_only_where_needed(spark, tmp_path, flood):
    """`neardup pairs --previous` with embeddings/ written without vectors (the default)
    reads tonight's table for its hashes only, and again for the vectors it needs: the
    fresh rows' and the candidates' in the shuffled path (spark.shuffle_partitions set);
    every row's where a touched bucket is over lsh.max_bucket_size (``flood``: copies of
    one vector added to a bucket already at the bound) and the pairing falls back to a
    full one. Either way: what a full run writes."""
    x = synthetic(7, n=600, planted=40, giant=60)  # 60 copies of row 0: the last rows
    ids = [f"v{i:04d}" for i in range(len(x))]

    def table(path, rows):
        pd.DataFrame({"id": [ids[i] for i in rows], "path": [f"/img/{ids[i]}.jpg" for i in rows],
                      "embedding": [list(map(float, x[i])) for i in rows]}).to_parquet(path)

    common = ["--set", "pairs.cosine_threshold=0.85", "--set", "pairs.copy_cosine=1",
              "--set", "lsh.max_bucket_size=40", "--set", "spark.shuffle_partitions=2"]
    table(tmp_path / "a.parquet", [*range(560), *range(600, 620)])
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "a"),
                     *common]) == 0
    # Tonight: 10 deleted, 60 new (20 planted copies among them), one changed; with ``flood``
    # also the 60 copies of row 0.
    tonight = [i for i in range(10, 640) if i != 100] + ([*range(640, len(x))] if flood else [])
    x[101] = x[102] + 1e-3 * np.sign(x[102])
    table(tmp_path / "b.parquet", tonight)
    pairs_tonight_both_ways(tmp_path, common)
    record = manifest(tmp_path / "b")["incremental"]
    assert record["vectors"] == "where needed"
    assert record["pairing"] == ("full" if flood else "incremental")
    counts = manifest(tmp_path / "b")["counts"]
    assert (counts["changed"], counts["deleted"], counts["embedded"]) == (1, 11, 61 + 60 * flood)
    assert changes_set(pd.read_parquet(tmp_path / "b" / "changes")) == expected_changes(tmp_path / "a",
                                                                                          tmp_path / "full")

    def embeddings(run):
        return pd.read_parquet(tmp_path / run / "embeddings", columns=["id", "path", "keys", "content_hash"]
                               ).sort_values("id", ignore_index=True)

    pd.testing.assert_frame_equal(embeddings("b"), embeddings("full"))


@pytest.mark.spark
def test_incremental_pairs_name_tonights_paths_when_a_catalog_moved(spark, tmp_path):
    # `neardup pairs` knows from the join that decides the reuse whether paths moved and
    # how many of last night's ids are still here, and looks for exact copies among the
    # fresh rows' hashes only (last night had none): the outputs must be a full run's.
    x = synthetic(7, n=400, planted=60)
    x = np.concatenate([x, x[[5, 5]]])  # two new rows tonight, copies of each other
    ids = [f"v{i:04d}" for i in range(len(x))]

    def table(path, rows, root):
        pd.DataFrame({"id": [ids[i] for i in rows], "path": [f"{root}/{ids[i]}.jpg" for i in rows],
                      "embedding": [list(map(float, x[i])) for i in rows]}).to_parquet(path)

    common = ["--set", "pairs.cosine_threshold=0.85", "--set", "pairs.copy_cosine=1"]
    table(tmp_path / "a.parquet", range(0, 430), "/old")  # with 30 of the 60 planted near copies
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "a.parquet"), "--output", str(tmp_path / "a"),
                     *common]) == 0
    assert manifest(tmp_path / "a")["counts"]["exact_copies"] == 0
    x[50] = x[51] + 1e-3 * np.sign(x[51])  # changed: now near its neighbour
    table(tmp_path / "b.parquet", range(10, len(x)), "/new")  # 10 deleted, 32 new, every path moved
    pairs_tonight_both_ways(tmp_path, common)
    pairs = pd.read_parquet(tmp_path / "b" / "pairs")
    carried = pairs.id_b < "v0430"  # pairs last night found too
    assert carried.sum() > 10 and (~carried).sum() > 10
    assert pairs.path_a.str.startswith("/new/").all() and pairs.path_b.str.startswith("/new/").all()
    counts = manifest(tmp_path / "b")["counts"]
    assert (counts["embedded"], counts["reused"], counts["changed"], counts["deleted"]) == (33, 419, 1, 10)
    assert counts["exact_copies"] == 1
    assert manifest(tmp_path / "b")["incremental"]["pairing"] == "incremental"


@pytest.mark.spark
def test_carried_pairs_keep_their_verdicts_and_take_moved_paths(spark):
    from neardup_core.spark import incremental as stage

    pairs = spark.createDataFrame(
        [("a", "b", "/old/a", "/old/b", 0.9, 0.5, 3, False, False, 41, "geometry"),
         ("a", "c", "/old/a", "/old/c", 0.95, 0.7, 4, False, False, None, "embedding"),
         ("b", "c", "/old/b", "/old/c", 0.8, 0.2, 1, False, False, 12, "geometry")],
        "id_a string, id_b string, path_a string, path_b string, cosine double, jaccard double, "
        "tables_matched int, exact boolean, near_copy boolean, inliers int, verified string")
    embeddings = spark.createDataFrame([(i, f"/old/{i}") for i in "abc"], "id string, path string")
    gone = spark.createDataFrame([("c", bytes(4))], "id string, keys binary")
    previous = stage.Previous(embeddings, pairs, None)

    def carried(root, settled):
        keyed = spark.createDataFrame([(i, f"{root}/{i}", False) for i in "ab"],
                                      "id string, path string, fresh boolean")
        return [tuple(r) for r in stage._carried(previous, gone, keyed, True, settled, root != "/old").collect()]

    assert carried("/old", settled=True) == [("a", "b", "/old/a", "/old/b", 0.9, 0.5, 3, False, False, 41, "geometry")]
    assert carried("/new", settled=True) == [("a", "b", "/new/a", "/new/b", 0.9, 0.5, 3, False, False, 41, "geometry")]
    assert carried("/new", settled=False) == [("a", "b", "/new/a", "/new/b", 0.9, 0.5, 3)]


@pytest.mark.spark
@pytest.mark.parametrize("rejected", [False, True])
def test_carried_pairs_read_on_the_driver_are_those_spark_carries(spark, tmp_path, rejected):
    """_carried_table (PyArrow, from last night's local folder) against _carried (Spark) on
    seeded pairs: the same rows and types; None over its bound or where nothing is local."""
    from neardup_core.spark import incremental as stage

    rng = np.random.default_rng(7)
    ids = [f"i{k:03d}" for k in range(60)]
    rows = sorted({(ids[a], ids[b]) for a, b in rng.integers(0, 60, (400, 2)) if a < b})
    schema = ("id_a string, id_b string, path_a string, path_b string, cosine double, jaccard double, "
              "tables_matched int, exact boolean, near_copy boolean, inliers int, verified string")
    frame = spark.createDataFrame([(a, b, f"/p/{a}", f"/p/{b}", float(rng.uniform(0.6, 1)), 0.5, int(rng.integers(9)),
                                    False, False, None, "embedding") for a, b in rows], schema)
    run = tmp_path / "night1"
    frame.where("id_a < 'i030'").write.parquet(str(run / "pairs"))
    frame.where("id_a >= 'i030'").write.parquet(str(run / "rejected_pairs"))
    pairs = spark.read.parquet(str(run / "pairs"))
    previous = stage.Previous(None, pairs, None, spark.read.parquet(str(run / "rejected_pairs")) if rejected else None,
                              str(run))
    gone = spark.createDataFrame([(i,) for i in rng.choice(ids, 7, replace=False)], "id string")
    keyed = spark.createDataFrame([(i, f"/p/{i}") for i in ids], "id string, path string")
    by_spark = stage._carried(previous, gone, keyed, True, False, False).toArrow()
    by_arrow = stage._carried_table(previous, gone, 10**6)
    key = [("id_a", "ascending"), ("id_b", "ascending")]
    assert by_arrow.sort_by(key).equals(by_spark.sort_by(key).cast(by_arrow.schema))
    assert by_arrow.schema.names == by_spark.schema.names and by_arrow.schema.types == by_spark.schema.types
    assert 0 < by_arrow.num_rows < len(rows) if rejected else by_arrow.num_rows < pairs.count()
    assert stage._carried_table(previous, gone, by_arrow.num_rows - 1) is None  # counted before the filter
    assert stage._carried_table(previous._replace(path=None), gone, 10**6) is None


@pytest.mark.spark
@pytest.mark.parametrize("rejected", [False, True])
def test_counts_matched_before_read_on_the_driver_are_those_spark_reads(spark, tmp_path, rejected):
    """_matched_before from last night's local folder (a table) against its Spark route (a
    DataFrame) on seeded pairs, some matched: the same rows and types."""
    from neardup_core.spark import incremental as stage

    rng = np.random.default_rng(9)
    ids = [f"i{k:03d}" for k in range(50)]
    rows = sorted({(ids[a], ids[b]) for a, b in rng.integers(0, 50, (300, 2)) if a < b})
    schema = "id_a string, id_b string, cosine double, inliers int"
    frame = spark.createDataFrame([(a, b, float(rng.uniform(0.6, 1)),
                                    int(rng.integers(60)) if rng.random() < 0.4 else None) for a, b in rows], schema)
    run = tmp_path / "night1"
    frame.where("id_a < 'i025'").write.parquet(str(run / "pairs"))
    frame.where("id_a >= 'i025'").write.parquet(str(run / "rejected_pairs"))
    previous = stage.Previous(None, spark.read.parquet(str(run / "pairs")), None,
                              spark.read.parquet(str(run / "rejected_pairs")) if rejected else None, str(run))
    gone = spark.createDataFrame([(i,) for i in rng.choice(ids, 6, replace=False)], "id string")
    by_arrow = stage._matched_before(previous, gone, 10**6)
    by_spark = stage._matched_before(previous, gone).toArrow().select(["id_a", "id_b", "inliers"])
    key = [("id_a", "ascending"), ("id_b", "ascending")]
    assert isinstance(by_arrow, pa.Table) and by_arrow.schema.names == ["id_a", "id_b", "inliers"]
    assert by_arrow.sort_by(key).equals(by_spark.sort_by(key).cast(by_arrow.schema))
    assert by_arrow.schema.types == by_spark.schema.types
    everything = frame.count() if rejected else previous.pairs.count()
    assert 0 < by_arrow.num_rows < everything and by_arrow.column("inliers").null_count == 0
    assert stage._matched_before(previous._replace(pairs=previous.pairs.drop("inliers")), gone, 10**6) is None


@pytest.mark.spark
def test_changes_made_on_the_driver_are_those_spark_makes(spark, tmp_path):
    """changes_table (PyArrow and NumPy, from local folders) against changes (Spark) on
    seeded nights: pairs added and removed, actions to and from a drop, images deleted and
    new; the same rows in the same order, written with the same Parquet schema."""
    from neardup_core.spark import incremental as stage
    from neardup_core.spark.driver_tables import write_table
    from neardup_core.spark.session import sorted_by

    rng = np.random.default_rng(11)
    ids = [f"i{k:03d}" for k in range(80)]
    catalogs = {"night1": ids[:70], "night2": ids[5:]}  # 5 deleted, 10 new
    for night, listed in catalogs.items():
        run = tmp_path / night
        chosen = sorted({(listed[a], listed[b]) for a, b in rng.integers(0, len(listed), (150, 2)) if a < b})
        # about half of each night's pairs are the other's (seeded with the same shared pairs)
        shared = sorted({(ids[a], ids[b]) for a, b in np.random.default_rng(3).integers(5, 70, (120, 2)) if a < b})
        chosen = sorted(set(chosen) | set(shared))
        spark.createDataFrame([(a, b, float(rng.uniform(0.6, 1))) for a, b in chosen],
                              "id_a string, id_b string, cosine double").write.parquet(str(run / "pairs"))
        members = sorted({i for pair in chosen for i in pair})
        spark.createDataFrame(
            [(i, f"/p/{i}", "g", 2, str(rng.choice(["keep", "drop"])), str(rng.choice(members)), 0.9) for i in members],
            "id string, path string, group_id string, group_size int, action string, kept_id string, cosine double"
        ).write.parquet(str(run / "groups"))
        spark.createDataFrame([(i, b"k") for i in listed], "id string, keys binary").write.parquet(
            str(run / "embeddings"))
    night1, night2 = (str(tmp_path / night) for night in catalogs)
    read = functools.partial(stage.read_previous, spark, bits_per_table=None, num_tables=None)
    previous, tonight = read(night1), read(night2)
    by_spark = sorted_by(stage.changes(previous, previous.embeddings.select("id"), tonight.pairs, tonight.groups,
                                       tonight.embeddings.select("id")).repartition(1),
                         ("change", "id_a", "id_b", "id"), True)
    by_spark.write.parquet(str(tmp_path / "spark"))
    by_arrow = stage.changes_table(previous, f"{night2}/pairs", f"{night2}/groups", f"{night2}/embeddings")
    write_table(spark, by_arrow, str(tmp_path / "arrow"))
    written = [pq.read_table(tmp_path / name) for name in ("spark", "arrow")]
    assert written[1].equals(written[0].replace_schema_metadata(None))
    assert written[1].schema.equals(written[0].schema)  # nullability included
    kinds = set(written[1].column("change").to_pylist())
    assert kinds == {"pair_added", "pair_removed", "action_changed"}
    assert stage.changes_table(previous._replace(path=None), f"{night2}/pairs", f"{night2}/groups",
                               f"{night2}/embeddings") is None


@pytest.mark.spark
def test_reused_images_say_whether_their_path_moved(spark):
    # The join that decides the reuse (by size and time, or the embed stage's by content)
    # also says whether a reused image's path moved; the carried pairs are renamed only then.
    import datetime as dt

    from neardup_core.spark import incremental as stage

    when = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
    previous = spark.createDataFrame(
        [(i, f"/old/{i}.jpg", 10, when, f"h{i}", [1.0], b"k", 2, 3) for i in "abcd"],
        "id string, path string, bytes bigint, modified timestamp, content_hash string, embedding array<float>, "
        "keys binary, width int, height int")
    listing = spark.createDataFrame(
        [("a", "/old/a.jpg", 10, when, None), ("b", "/new/b.jpg", 10, when, None),
         ("c", "/new/c.jpg", 11, when, None), ("e", "/new/e.jpg", 10, when, None)],
        "id string, path string, size bigint, modified timestamp, error_message string")
    split = stage.unchanged_by_listing(listing, previous)
    # as_before: the embeddings/ row stays last night's as it was (the write stage may link its file).
    assert {(r.id, r.path_moved, r.as_before) for r in split.unchanged.collect()} == {
        ("a", False, True), ("b", True, False)}
    assert sorted(r.id for r in split.to_embed.collect()) == ["c", "e"]
    assert "previous_path" not in split.to_embed.columns
    by_content = spark.createDataFrame([("c", "/new/c.jpg", 11, when), ("d", "/old/d.jpg", 10, when)],
                                       "id string, path string, bytes bigint, modified timestamp")
    assert {(r.id, r.path_moved, r.as_before) for r in stage.reused_rows(by_content, previous).collect()} == {
        ("c", True, False), ("d", False, False)}
    split.joined.unpersist()


@pytest.mark.spark
def test_pairs_reuse_a_vector_by_its_hash_and_keep_its_row_only_when_nothing_else_changed(spark):
    # `neardup pairs`: one join decides the reuse (same id and vector hash), and says
    # whether the id was there, the path moved, and the row is as it was
    # (path, size in pixels, bytes and time equal, a null equal to a null).
    import datetime as dt

    from pyspark.sql import functions as F

    from neardup_core.spark import incremental as stage

    when = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
    facts = "width int, height int, bytes bigint, modified timestamp"
    previous = spark.createDataFrame(
        [(i, f"/p/{i}", f"h{i}", f"k{i}".encode(), None, None, None, when) for i in "abcd"],
        f"id string, path string, content_hash string, keys binary, {facts}")
    rows = spark.createDataFrame(
        [("a", "/p/a", "ha", None, None, None, when), ("b", "/q/b", "hb", None, None, None, when),
         ("c", "/p/c", "hc", 2, None, None, when), ("d", "/p/d", "hX", None, None, None, when),
         ("e", "/p/e", "he", None, None, None, when)],
        f"id string, path string, content_hash string, {facts}")
    matched = stage.match_previous_vectors(rows, previous)
    got = {r.id: (r.reused, r.was_there, r.path_moved, r.as_before) for r in matched.collect()}
    assert got == {"a": (True, True, False, True), "b": (True, True, True, False),
                   "c": (True, True, False, False), "d": (False, True, False, False),
                   "e": (False, False, False, False)}
    # The keys of the reused rows are last night's, less the deleted or changed rows' ("d").
    gone = spark.createDataFrame([("d",)], "id string")
    reused = stage.reused_vectors(matched.where("reused").withColumn("embedding", F.array(F.lit(1.0))))
    keyed = stage.with_previous_keys(reused, stage.previous_keys(previous, gone))
    assert {r.id: r.keys for r in keyed.collect()} == {"a": b"ka", "b": b"kb", "c": b"kc"}
    assert {r.id for r in stage.previous_keys(previous, None).collect()} == set("abcd")


def changes_set(frame):
    return {(r.change, r.id_a, r.id_b, r.id, r.previous_action, r.action, r.kept_id)
            for r in frame.astype(object).where(frame.notna(), None).itertuples()}


def expected_changes(before, after):
    """changes/ by brute force: every pair and every image's action, before and after."""
    pairs = [{(r.id_a, r.id_b) for r in pd.read_parquet(run / "pairs").itertuples()} for run in (before, after)]
    found = {("pair_added", a, b, None, None, None, None) for a, b in pairs[1] - pairs[0]}
    found |= {("pair_removed", a, b, None, None, None, None) for a, b in pairs[0] - pairs[1]}

    def actions(run):
        ids = pd.read_parquet(run / "embeddings").id
        groups = pd.read_parquet(run / "groups").set_index("id")
        return {i: (groups.action.get(i, "keep"), groups.kept_id.get(i)) for i in ids}

    was, now = actions(before), actions(after)
    for i in set(was) | set(now):
        a, b = was.get(i, (None, None))[0], now.get(i, (None, None))
        if a != b[0] and "drop" in (a, b[0]):
            found.add(("action_changed", None, None, i, a, b[0], b[1]))
    return found


@pytest.mark.spark
@pytest.mark.parametrize("setup,message", [
    ("missing", "--previous {tmp}/night: does not exist"),
    ("unfinished", "--previous {tmp}/night: holds no finished run (no _SUCCESS)"),
    ("old", "made by a neardup without incremental runs"),
])
def test_an_unusable_previous_run_exits_2(spark, tmp_path, capsys, monkeypatch, setup, message):
    from neardup_core import job

    locked = []  # the output is locked (made) only once the invocation is checked
    real_lock = job._lock_output
    monkeypatch.setattr(job, "_lock_output", lambda cfg: locked.append(cfg.output.path) or real_lock(cfg))
    pd.DataFrame({"id": ["a"], "embedding": [[1.0, 0.0]]}).to_parquet(tmp_path / "e.parquet")
    night = tmp_path / "night"
    if setup != "missing":
        night.mkdir()
    if setup == "old":
        (night / "_SUCCESS").write_text("")
        (night / "_manifest.json").write_text(json.dumps({"counts": {}}))
    code = cli.main(["pairs", "--embeddings", str(tmp_path / "e.parquet"), "--output", str(tmp_path / "out"),
                     "--previous", str(night)])
    assert code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    # A local --previous without a finished run is refused before the output is locked,
    # and so before Spark; one made by an older neardup is known only from its manifest.
    assert bool(locked) == (setup == "old")


def test_fingerprint_differences_name_each_setting():
    cfg = load_config()
    before = incremental.fingerprint(cfg, "abc", 1280)
    after = incremental.fingerprint(load_config(overrides=["lsh.seed=7", "pairs.cosine_threshold=0.8"]), "abd", 1280)
    assert incremental.differences(before, after) == [
        "model: 'abc' before, 'abd' now", "lsh.seed: 20261122 before, 7 now",
        "pairs.cosine_threshold: 0.625 before, 0.8 now"]
    assert incremental.differences(before, before) == []


def test_plan_conflicts_and_previous_run_errors():
    run = incremental.previous_run("r", {"fingerprint": {}, "lsh": {"bits_per_table": 9, "num_tables": 62},
                                         "counts": {"pairs": 3}})
    assert (run.bits_per_table, run.num_tables, run.pairs) == (9, 62, 3)
    assert incremental.plan_conflicts(run, "auto", "auto") == []
    assert incremental.plan_conflicts(run, 9, 40) == ["lsh.num_tables: 62 before (the plan), 40 now"]
    with pytest.raises(ValueError, match="has no embeddings/"):
        incremental.previous_run("r", {"fingerprint": {}, "config": {"output": {"write_embeddings": False}}})


@pytest.mark.parametrize("rejected,kept,to_read,lost", [(0, False, False, False), (0, True, False, False),
                                                        (4, True, True, False), (4, False, False, True)])
def test_rejected_pairs_are_carried_when_kept_and_force_a_full_pairing_when_not(rejected, kept, to_read, lost):
    run = incremental.previous_run("r", {"fingerprint": {}, "counts": {"pairs": 3, "rejected_pairs": rejected},
                                         "config": {"pairs": {"keep_rejected": kept}}})
    assert (run.rejected_to_read, run.rejected_lost) == (to_read, lost)


@pytest.mark.parametrize("n,tables,fresh", [(1, 1, 1), (7, 3, 2), (500, 12, 40), (300, 5, 0)])
def test_touched_rows_are_the_rows_sharing_a_touched_bucket(n, tables, fresh):
    rng = np.random.default_rng(n)
    keys = rng.integers(0, 50, (n, tables))
    new = rng.integers(0, 50, (fresh, tables))
    codes = (np.arange(tables, dtype=np.int64) << 48) | new
    touched = np.unique(codes.reshape(-1)) if fresh else np.zeros(0, np.int64)
    found = incremental.touched_rows(keys, touched)
    for t in range(tables):
        expected = [i for i in range(n) if (t << 48 | int(keys[i, t])) in set(touched.tolist())]
        assert found[t].tolist() == expected


@pytest.mark.parametrize("n,tables,fresh,gone,max_bucket", [
    (1, 1, 1, 0, 10), (2, 3, 1, 1, 10), (9, 2, 3, 2, 10), (400, 8, 30, 12, 1000), (300, 5, 0, 4, 1000),
    (300, 4, 20, 3, 5)])
def test_fresh_candidates_are_the_pairs_sharing_a_bucket_with_a_fresh_row(n, tables, fresh, gone, max_bucket):
    rng = np.random.default_rng(n + fresh)
    keys = rng.integers(0, 40, (n, tables))
    is_fresh = np.zeros(n, bool)
    is_fresh[rng.choice(n, min(fresh, n), replace=False)] = True
    gone_keys = rng.integers(0, 40, (gone, tables))
    found = incremental.fresh_candidates(keys, is_fresh, gone_keys, max_bucket)

    # The reference: every bucket's sizes counted in a dictionary, every pair tried.
    now, before = {}, {}
    for t in range(tables):
        for i in range(n):
            now[t, keys[i, t]] = now.get((t, keys[i, t]), 0) + 1
            if not is_fresh[i]:
                before[t, keys[i, t]] = before.get((t, keys[i, t]), 0) + 1
        for g in range(gone):
            before[t, gone_keys[g, t]] = before.get((t, gone_keys[g, t]), 0) + 1
    touched = {(t, keys[i, t]) for t in range(tables) for i in range(n) if is_fresh[i]}
    touched |= {(t, gone_keys[g, t]) for t in range(tables) for g in range(gone)}
    largest = max([max(now.get(c, 0), before.get(c, 0)) for c in touched], default=0)
    assert (found.touched_buckets, found.largest_touched) == (len(touched), largest)
    if largest > max_bucket:
        assert found.a is None
        return
    expected = {(i, j) for i in range(n) for j in range(i + 1, n)
                if (is_fresh[i] or is_fresh[j]) and (keys[i] == keys[j]).any()}
    assert list(zip(found.a.tolist(), found.b.tolist())) == sorted(expected)


@pytest.mark.parametrize("n,tables,fresh", [(1, 1, 1), (2, 3, 1), (9, 2, 3), (400, 8, 30), (300, 5, 0), (50, 4, 50)])
def test_fresh_partners_and_touched_counts_against_a_loop(n, tables, fresh):
    rng = np.random.default_rng(n * 7 + fresh)
    keys = rng.integers(0, 30, (n, tables))
    fresh_keys = rng.integers(0, 30, (fresh, tables))
    gone_keys = rng.integers(0, 40, (3, tables))  # codes beyond the fresh rows' (keys up to 39: some in no row)
    index = incremental.index_fresh(fresh_keys)
    expected = {(i, j, int((keys[i] == fresh_keys[j]).sum())) for i in range(n) for j in range(fresh)
                if (keys[i] == fresh_keys[j]).any()}
    touched = np.unique(np.concatenate([incremental.bucket_codes(fresh_keys), incremental.bucket_codes(gone_keys)]))
    alone = incremental.fresh_partners(keys, index)
    assert alone.touched is None
    for found in (alone, incremental.fresh_partners(keys, index, touched)):
        assert set(zip(found.rows.tolist(), found.fresh.tolist(), found.tables.tolist())) == expected
        assert len(found.rows) == len(expected)  # each pair once
    counted = incremental.fresh_partners(keys, index, touched).touched
    counts = incremental.touched_counts(keys, touched)
    assert counted.tolist() == counts.tolist()
    for code, count in zip(touched.tolist(), counts.tolist()):
        table, key = code >> 48, code & ((1 << 48) - 1)
        assert count == int((keys[:, table] == key).sum())


@pytest.mark.parametrize("parts", [1, 3])
def test_fresh_partners_over_parts_give_the_fresh_candidates(parts):
    """The shuffled incremental path meets each row with the fresh rows in its own part
    (spark.incremental.pair_incrementally); with one pair of fresh rows kept from the end
    with the lower position, the parts give fresh_candidates' pairs and nothing else."""
    rng = np.random.default_rng(parts)
    keys = rng.integers(0, 25, (600, 6))
    fresh = np.zeros(600, bool)
    fresh[rng.choice(600, 40, replace=False)] = True
    index = incremental.index_fresh(keys[fresh])
    fresh_at = np.flatnonzero(fresh)
    got = set()
    for part in np.array_split(np.arange(600), parts):
        found = incremental.fresh_partners(keys[part], index)
        a, b = part[found.rows], fresh_at[found.fresh]
        keep = ~fresh[a] | (a < b)
        got |= {(min(x, y), max(x, y)) for x, y in zip(a[keep].tolist(), b[keep].tolist())}
    want = incremental.fresh_candidates(keys, fresh, np.zeros((0, 6), np.int64), 10**6)
    assert got == set(zip(want.a.tolist(), want.b.tolist()))


@pytest.mark.spark
@pytest.mark.parametrize("chunk_bytes,gone_rows,max_bucket,by_fetch",
                         [(1, 0, 10**6, False), (1 << 30, 0, 10**6, False), (1, 2, 10**6, False),
                          (1, 2, 8, False), (1 << 30, 0, 8, False), (1, 2, 10**6, True), (1 << 30, 0, 10**6, True)])
def test_shuffled_incremental_pairs_in_fresh_chunks_are_every_fresh_pair(spark, tmp_path, chunk_bytes, gone_rows,
                                                                          max_bucket, by_fetch):
    """pair_incrementally with the fresh rows sent whole or one row at a time: the pairs
    sharing a key in some table with at least one fresh end, each once, scored; or, where
    a touched bucket (counted in the first pass) holds over ``max_bucket`` rows tonight or
    last night, nothing, with the same largest bucket as fresh_candidates finds. With
    ``by_fetch``, the candidates' vectors come from a fetch of their ids, as where
    `neardup pairs` read tonight's table without them (joined by a shuffle or broadcast)."""
    from neardup_core.lsh import LshTables, pack_keys
    from neardup_core.spark import incremental as stage

    rng = np.random.default_rng(5)
    n, dim, tables = 60, 4, 3
    x = rng.normal(size=(n, dim)).astype(np.float32)
    keys = rng.integers(0, 6, (n, tables))
    fresh = np.arange(n) % 20 == 0  # 3 fresh rows: 3 chunks of one row with chunk_bytes 1
    ids = [f"r{i:03d}" for i in range(n)]
    keyed = spark.createDataFrame(
        [(ids[i], f"/p/{ids[i]}", x[i].tolist(), pack_keys(keys[i:i + 1], 3).tobytes(), bool(fresh[i]))
         for i in range(n)],
        "id string, path string, embedding array<float>, keys binary, fresh boolean").repartition(3)
    reused = keyed.where("not fresh")
    gone_keys = rng.integers(0, 6, (gone_rows, tables))
    gone = spark.createDataFrame([(f"gone{g}", pack_keys(gone_keys[g:g + 1], 3).tobytes()) for g in range(gone_rows)],
                                 "id string, keys binary")
    empty = spark.createDataFrame([], "id_a string, id_b string, path_a string, path_b string, cosine double, "
                                      "jaccard double, tables_matched int")
    previous = stage.Previous(spark.createDataFrame([], "id string, path string"), empty, None)
    planes = LshTables.draw(1, tables, 3, 0, dim)
    # The reused rows' keys and vectors come apart, in other partitions, as in `neardup pairs`.
    fetched = []

    def fetch(wanted):
        fetched.append(len(wanted))
        return keyed.select("id", "path", "embedding").where(keyed.id.isin(wanted.to_pylist()))

    found = stage.pair_incrementally(keyed.where("fresh"), reused.select("id", "keys").repartition(2),
                                     reused.select("id", "path", "embedding"), gone, previous, planes, max_bucket,
                                     -1.0, str(tmp_path / "pairs"), chunk_bytes=chunk_bytes,
                                     fetch=fetch if by_fetch else None, paths_moved=False)
    assert bool(fetched) == by_fetch
    reference = incremental.fresh_candidates(keys, fresh, gone_keys, max_bucket)
    assert (reference.a is None) == (max_bucket == 8)  # buckets of about 10 rows
    assert (found.touched_buckets, found.largest_touched) == (reference.touched_buckets, reference.largest_touched)
    if reference.a is None:  # over max_bucket: the job pairs in full instead
        assert found.result is None and not (tmp_path / "pairs").exists()
        return
    assert found.result.tasks["fresh_chunks"] == (fresh.sum() if chunk_bytes == 1 else 1)
    got = pd.read_parquet(tmp_path / "pairs")
    expected = {(ids[i], ids[j]) for i in range(n) for j in range(i + 1, n)
                if (fresh[i] or fresh[j]) and (keys[i] == keys[j]).any()}
    # In any order: not settled (no accept_cosine), so the verify stage sorts them as it rewrites them.
    assert set(zip(got.id_a, got.id_b)) == expected and len(got) == len(expected)
    for row in got.itertuples():
        i, j = ids.index(row.id_a), ids.index(row.id_b)
        assert row.tables_matched == (keys[i] == keys[j]).sum()
        cosine = float(x[i].astype(np.float64) @ x[j] / np.linalg.norm(x[i].astype(np.float64)) / np.linalg.norm(x[j]))
        assert abs(row.cosine - cosine) < 1e-6
    found.found.unpersist()
    found.lost.unpersist()


def test_pairs_are_written_final_only_when_the_verify_stage_would_change_nothing():
    from types import SimpleNamespace

    from neardup_core.job import _settles_at

    def settles(overrides=(), images=True, copies=None, **run):
        previous = dict(exact_copies=0, borderline_pairs=0) | run
        embedded = SimpleNamespace(prior=SimpleNamespace(run=SimpleNamespace(**previous)), has_images=images)
        return _settles_at(load_config(overrides=list(overrides)), embedded, copies)

    cfg = load_config()
    assert settles() == cfg.pairs.accept_cosine  # found pairs below it need the verify stage
    assert settles(images=False) == -1.0 and settles([f"pairs.accept_cosine={cfg.pairs.cosine_threshold}"]) == -1.0
    assert settles(copies=object()) is None and settles(exact_copies=3) is None
    # Any borderline pair last night (matched, unverified or over the budget): tonight's
    # verification decides again which pairs it matches.
    assert settles(borderline_pairs=2) is None and settles(borderline_pairs=None) is None  # None: an older run
    assert settles(["pairs.keep_rejected=false"]) == settles(["pairs.keep_rejected=true"]) == cfg.pairs.accept_cosine


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000, 40_000])
def test_may_hold_never_drops_a_member_and_passes_few_others(n):
    """The filter before the binary searches of touched_rows and fresh_partners: every
    member passes (else a pair would be lost), and few non-members do."""
    from neardup_core.incremental import may_hold

    rng = np.random.default_rng(n)
    values = rng.integers(0, 1 << 48, n, dtype=np.int64)
    others = rng.integers(0, 1 << 48, 100_000, dtype=np.int64)
    others = others[~np.isin(others, values)]
    assert may_hold(values, values).all()
    assert may_hold(values, np.concatenate([others, values]))[len(others):].all()
    assert may_hold(values, others).mean() <= 0.03
    small = np.arange(n, dtype=np.int64)  # dense small keys, as k-bit keys are
    assert may_hold(small, small).all() and may_hold(small, small + n).sum() <= 0.03 * n
