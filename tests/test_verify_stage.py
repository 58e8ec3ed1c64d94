"""The verification stage in Spark (neardup_core.spark.verify), and end to end through
`neardup run`: a pair only verification accepts is written as such; a look-alike pair
it rejects is not."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont

from neardup_core import cli
from neardup_core.config import InputConfig, PairsConfig
from neardup_core.spark import driver_tables
from neardup_core.spark import groups as groups_stage
from neardup_core.spark import verify as verify_stage

DATA = "/usr/share/doc/opencv-doc/examples/data"

pytestmark = [pytest.mark.spark,
              pytest.mark.skipif(not os.path.isdir(DATA), reason="needs the opencv-doc package (its sample photos)")]


def _write_jpeg(im: Image.Image, path) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=85)
    path.write_bytes(buf.getvalue())
    return str(path)


def _edited(im: Image.Image) -> Image.Image:
    """Rotated with filled corners, then a caption over it: a copy a global embedding
    finds only moderately alike."""
    im = im.convert("RGB").rotate(9, Image.Resampling.BICUBIC, expand=True, fillcolor=(20, 120, 200))
    ImageDraw.Draw(im).text((im.width * 0.05, im.height * 0.45), "SUMMER SALE", fill=(255, 255, 0),
                            font=ImageFont.load_default(size=im.height // 7))
    return im


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-photos")
    baboon = Image.open(os.path.join(DATA, "baboon.jpg"))
    return {
        "baboon": _write_jpeg(baboon, root / "baboon.jpg"),
        "baboon_edited": _write_jpeg(_edited(baboon), root / "baboon_edited.jpg"),
        "apple": _write_jpeg(Image.open(os.path.join(DATA, "apple.jpg")), root / "apple.jpg"),
        "orange": _write_jpeg(Image.open(os.path.join(DATA, "orange.jpg")), root / "orange.jpg"),
        "fruits": _write_jpeg(Image.open(os.path.join(DATA, "fruits.jpg")), root / "fruits.jpg"),
    }


def _pairs(spark, photos, rows):
    data = [(a, b, photos[a], photos[b], cosine, 0.5, 4) for a, b, cosine in rows]
    return spark.createDataFrame(data, "id_a string, id_b string, path_a string, path_b string, cosine double, "
                                       "jaccard double, tables_matched int")


def test_borderline_pairs_are_verified_once_per_image(spark, photos, tmp_path):
    pairs = _pairs(spark, photos, [("baboon", "baboon_edited", 0.75),  # borderline copy: geometry accepts
                                   ("apple", "orange", 0.80),  # borderline look-alike: rejected
                                   ("apple", "fruits", 0.78),  # borderline look-alike: rejected
                                   ("fruits", "orange", 0.95)])  # above accept_cosine: on the embedding
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    cfg = PairsConfig(cosine_threshold=0.7, accept_cosine=0.9, min_inliers=12)
    result = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / "scratch"),
                                       str(tmp_path / "pairs"), str(tmp_path / "rejected"))
    written = pd.read_parquet(tmp_path / "pairs")
    assert list(written.columns) == ["id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched",
                                     "inliers", "verified"]
    got = {(r.id_a, r.id_b): (r.verified, None if pd.isna(r.inliers) else int(r.inliers))
           for r in written.itertuples()}
    assert set(got) == {("baboon", "baboon_edited"), ("fruits", "orange")}
    assert got[("fruits", "orange")] == ("embedding", None)
    assert got[("baboon", "baboon_edited")][0] == "geometry" and got[("baboon", "baboon_edited")][1] >= 12
    rejected = pd.read_parquet(tmp_path / "rejected")
    assert sorted(zip(rejected.id_a, rejected.id_b)) == [("apple", "fruits"), ("apple", "orange")]
    assert (rejected.inliers < 12).all() and (rejected.verified == "geometry").all()
    # Five images in borderline pairs, each featurized once although apple is in two pairs.
    assert result._replace(featurize_seconds=0.0, match_seconds=0.0) == verify_stage.VerifyResult(
        pairs=2, borderline=3, accepted=1, rejected=2, images=5, image_errors=0, matched=3, rounds=1)
    assert spark.read.parquet(str(tmp_path / "scratch" / "features")).count() == 5


def _graph_with_a_pair_no_group_needs(spark, photos):
    """(pairs, images, cfg): a group of three baboon copies, two pairs accepted on the
    embedding and one borderline pair inside it, and two borderline pairs across groups."""
    photos = {**photos, "baboon_crop": photos["baboon_edited"]}  # a third copy (same file, another id)
    rows = [("baboon", "baboon_edited", 0.90), ("baboon", "baboon_crop", 0.90),  # accepted on the embedding
            ("baboon_crop", "baboon_edited", 0.72),  # inside that group, dropped either way: not matched
            ("apple", "orange", 0.80), ("fruits", "orange", 0.74)]  # across groups: matched, rejected
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    return _pairs(spark, photos, rows), images, PairsConfig(cosine_threshold=0.7, accept_cosine=0.85, min_inliers=12)


def test_only_pairs_the_groups_need_are_matched_and_the_groups_are_those_of_matching_all(spark, photos, tmp_path):
    pairs, images, cfg = _graph_with_a_pair_no_group_needs(spark, photos)
    criteria = [("id", False)]
    results, groups = [], []
    for name, nodes in (("planned", images), ("every", None)):
        results.append(verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / f"s-{name}"),
                                                 str(tmp_path / f"p-{name}"), str(tmp_path / f"r-{name}"),
                                                 nodes=images if nodes is not None else None, criteria=criteria))
        verified = spark.read.parquet(str(tmp_path / f"p-{name}"))
        groups_stage.group(verified, images, criteria, verified.count(), 10**6, str(tmp_path / f"g-s-{name}"),
                           str(tmp_path / f"g-{name}"), 2)
        groups.append(pd.read_parquet(tmp_path / f"g-{name}").sort_values("id").reset_index(drop=True))
    planned, every = results
    assert planned.planned and planned.matched == 2 and planned.unverified == 1 and planned.images == 3
    assert not every.planned and every.matched == 3 and every.images == 5
    pd.testing.assert_frame_equal(groups[0], groups[1])
    written = pd.read_parquet(tmp_path / "p-planned").set_index(["id_a", "id_b"])
    assert written.loc[("baboon_crop", "baboon_edited"), "verified"] == "unverified"
    assert pd.isna(written.loc[("baboon_crop", "baboon_edited"), "inliers"])
    rejected = pd.read_parquet(tmp_path / "r-planned")
    assert sorted(zip(rejected.id_a, rejected.id_b)) == [("apple", "orange"), ("fruits", "orange")]


def test_counts_known_from_last_night_save_matching_and_change_no_verdict(spark, photos, tmp_path):
    """An incremental run's ``known`` inlier counts (pairs last night matched) only stand in
    for matching: which pairs are matched, and every label, are a full run's. A known pair
    the plan does not need stays unverified, with no inliers."""
    # baboon_crop-baboon_edited is not needed, although matched last night; apple-orange is,
    # and its count is known.
    pairs, images, cfg = _graph_with_a_pair_no_group_needs(spark, photos)
    full = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / "s-full"),
                                     str(tmp_path / "p-full"), str(tmp_path / "r-full"), nodes=images,
                                     criteria=[("id", False)])
    rejected = pd.read_parquet(tmp_path / "r-full").set_index(["id_a", "id_b"])
    known = spark.createDataFrame([("baboon_crop", "baboon_edited", 40),
                                   ("apple", "orange", int(rejected.loc[("apple", "orange"), "inliers"]))],
                                  "id_a string, id_b string, inliers int")
    memo = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / "s-memo"),
                                     str(tmp_path / "p-memo"), str(tmp_path / "r-memo"), known, nodes=images,
                                     criteria=[("id", False)])
    for name in ("p", "r"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}-memo").sort_values(["id_a", "id_b"]),
                                      pd.read_parquet(tmp_path / f"{name}-full").sort_values(["id_a", "id_b"]))
    assert memo.matches_reused == 1 and memo.images == 2 < full.images == 3  # fruits and orange read
    assert memo._replace(images=0, matches_reused=0, featurize_seconds=0.0, match_seconds=0.0) == full._replace(
        images=0, featurize_seconds=0.0, match_seconds=0.0)
    # Without a plan every borderline pair is matched, in Spark: both known counts are used there.
    every = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / "s-every"),
                                      str(tmp_path / "p-every"), str(tmp_path / "r-every"), known)
    assert every.matches_reused == 2 and every.matched == 3 and every.images == 2  # fruits and orange read
    assert pd.read_parquet(tmp_path / "p-every").set_index(["id_a", "id_b"]).loc[
        ("baboon_crop", "baboon_edited"), "inliers"] == 40


def test_pairs_past_the_budget_are_rejected_without_matching(spark, photos, tmp_path):
    pairs = _pairs(spark, photos, [("baboon", "baboon_edited", 0.75), ("apple", "orange", 0.80)])
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    cfg = PairsConfig(cosine_threshold=0.7, accept_cosine=0.9, min_inliers=12, max_verified_per_image=0.25)
    for nodes in (images, None):  # 4 images in pairs: a budget of one pair, the highest cosine first
        tag = "planned" if nodes is not None else "every"
        result = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / f"s-{tag}"),
                                           str(tmp_path / f"p-{tag}"), str(tmp_path / f"r-{tag}"),
                                           nodes=nodes, criteria=[("id", False)])
        assert (result.matched, result.over_budget, result.rejected, result.pairs) == (1, 1, 2, 0), tag
        rejected = pd.read_parquet(tmp_path / f"r-{tag}").set_index("id_b")
        assert rejected.verified.to_dict() == {"orange": "geometry", "baboon_edited": "over_budget"}
        assert pd.isna(rejected.inliers["baboon_edited"]) and rejected.inliers["orange"] < 12


def test_the_plan_does_not_depend_on_the_order_pairs_are_staged_in(spark, photos, tmp_path):
    """Staged pairs come in any order (only a final pairs/ is sorted): a budget of one
    pair between two of equal cosine takes the first by id_a, id_b either way."""
    rows = [("apple", "orange", 0.80), ("baboon", "baboon_edited", 0.80)]
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    cfg = PairsConfig(cosine_threshold=0.7, accept_cosine=0.9, min_inliers=12, max_verified_per_image=0.25)
    for tag, order in (("sorted", rows), ("reversed", rows[::-1])):
        staged = _pairs(spark, photos, order).coalesce(1)
        verify_stage.verify_pairs(staged, images, cfg, InputConfig(), 2, str(tmp_path / f"s-{tag}"),
                                  str(tmp_path / f"p-{tag}"), str(tmp_path / f"r-{tag}"), nodes=images,
                                  criteria=[("id", False)])
        rejected = pd.read_parquet(tmp_path / f"r-{tag}")
        assert list(zip(rejected.id_a, rejected.verified)) == [("apple", "geometry"), ("baboon", "over_budget")], tag


def test_verification_off_or_without_images_accepts_every_pair(spark, photos, tmp_path):
    pairs = _pairs(spark, photos, [("apple", "orange", 0.80), ("baboon", "baboon_edited", 0.75)])
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    off = PairsConfig(cosine_threshold=0.7, accept_cosine=0.7)
    for i, (given, cfg) in enumerate([(images, off), (None, PairsConfig(cosine_threshold=0.7))]):
        result = verify_stage.verify_pairs(pairs, given, cfg, InputConfig(), 2, str(tmp_path / f"s{i}"),
                                           str(tmp_path / f"p{i}"))
        written = pd.read_parquet(tmp_path / f"p{i}")
        assert len(written) == 2 and (written.verified == "embedding").all() and written.inliers.isna().all()
        assert result.borderline == 0 and result.images == 0 and result.pairs == 2


def test_pairs_are_written_sorted_whichever_way_they_are_sorted(spark, photos, tmp_path):
    rows = [("fruits", "orange", 0.95), ("apple", "orange", 0.80), ("apple", "fruits", 0.92),
            ("baboon", "baboon_edited", 0.75)]
    pairs = _pairs(spark, photos, rows).repartition(3)
    images = spark.createDataFrame(list(photos.items()), "id string, path string")
    cfg = PairsConfig(cosine_threshold=0.7, accept_cosine=0.9, min_inliers=12)
    # Verification off with a global sort; verified and sorted in one task.
    for tag, given, max_pairs_in_one_task in (("off", None, 1), ("verified", images, 10**6)):
        verify_stage.verify_pairs(pairs, given, cfg, InputConfig(), 2, str(tmp_path / f"s-{tag}"),
                                  str(tmp_path / f"p-{tag}"), str(tmp_path / f"r-{tag}"), nodes=given,
                                  criteria=[("id", False)], max_pairs_in_one_task=max_pairs_in_one_task)
        written = pd.read_parquet(tmp_path / f"p-{tag}")
        assert list(zip(written.id_a, written.id_b)) == sorted(zip(written.id_a, written.id_b)), tag
        assert len(written) == (4 if given is None else 3), tag  # apple-orange rejected


def test_an_unreadable_image_has_no_features_and_its_pair_is_rejected(spark, photos, tmp_path):
    pairs = _pairs(spark, {**photos, "gone": str(tmp_path / "gone.jpg")}, [("baboon", "gone", 0.8)])
    images = spark.createDataFrame([("baboon", photos["baboon"]), ("gone", str(tmp_path / "gone.jpg"))],
                                   "id string, path string")
    cfg = PairsConfig(cosine_threshold=0.7, accept_cosine=0.9)
    result = verify_stage.verify_pairs(pairs, images, cfg, InputConfig(), 2, str(tmp_path / "scratch"),
                                       str(tmp_path / "pairs"))
    assert result.image_errors == 1 and result.rejected == 1 and result.pairs == 0
    errors = pd.read_parquet(tmp_path / "scratch" / "features").set_index("id").error
    assert errors["gone"] == "no such file" and errors["baboon"] is None


@pytest.mark.model
def test_a_local_staged_folder_read_and_written_by_pyarrow_gives_what_spark_gives(spark, photos, tmp_path,
                                                                                 monkeypatch):
    """The planned path reads a local staged folder, and writes pairs/ and rejected_pairs/,
    with PyArrow; for a remote one Spark does both: the same rows, order and types."""
    pairs, images, cfg = _graph_with_a_pair_no_group_needs(spark, photos)
    staged = str(tmp_path / "staged")
    pairs.repartition(2).write.parquet(staged)  # two files, with no exact or near_copy column
    results = {}
    for tag in ("arrow", "spark"):
        if tag == "spark":
            monkeypatch.setattr(driver_tables, "is_local", lambda path: False)
        results[tag] = verify_stage.verify_pairs(
            verify_stage.staged_pairs(spark, staged), images, cfg, InputConfig(), 2, str(tmp_path / f"s-{tag}"),
            str(tmp_path / f"p-{tag}"), str(tmp_path / f"r-{tag}"), nodes=images, criteria=[("id", False)],
            staged=staged)
    for name in ("p", "r"):
        by_arrow, by_spark = (spark.read.parquet(str(tmp_path / f"{name}-{tag}")) for tag in ("arrow", "spark"))
        assert by_arrow.collect() == by_spark.collect()
        arrow_schema, spark_schema = (pq.read_table(tmp_path / f"{name}-{tag}").schema.remove_metadata()
                                      for tag in ("arrow", "spark"))
        assert arrow_schema == spark_schema  # names, types and nullability
    assert by_arrow.columns[-4:] == ["exact", "near_copy", "inliers", "verified"]
    written = pd.read_parquet(tmp_path / "p-arrow")
    assert list(zip(written.id_a, written.id_b)) == sorted(zip(written.id_a, written.id_b))
    assert not written.exact.any() and not written.near_copy.any()
    assert results["arrow"]._replace(featurize_seconds=0.0, match_seconds=0.0) == results["spark"]._replace(
        featurize_seconds=0.0, match_seconds=0.0)
    assert results["arrow"].planned and results["arrow"].pairs == len(written) == 3


def test_neardup_run_writes_geometry_accepted_pairs_and_leaves_out_rejected_ones(spark, photos, tmp_path):
    # Thresholds set so that every pair found is borderline: the edited copy can only be
    # accepted by verification, and the different photos of fruit only rejected by it.
    out = tmp_path / "out"
    settings = ["pairs.cosine_threshold=0.3", "pairs.accept_cosine=1.0", "pairs.keep_rejected=true"]
    code = cli.main(["run", "--input", os.path.dirname(photos["baboon"]), "--output", str(out),
                     *[x for kv in settings for x in ("--set", kv)]])
    assert code == 0
    name = os.path.basename
    written = pd.read_parquet(out / "pairs")
    rejected = pd.read_parquet(out / "rejected_pairs")
    kept = {(name(a), name(b)): v for a, b, v in zip(written.id_a, written.id_b, written.verified)}
    dropped = {(name(a), name(b)) for a, b in zip(rejected.id_a, rejected.id_b)}
    assert kept == {("baboon.jpg", "baboon_edited.jpg"): "geometry"}
    assert ("apple.jpg", "orange.jpg") in dropped  # a look-alike pair the embedding found
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["pairs"] == 1 and counts["rejected_pairs"] == len(rejected)
    assert counts["verified_pairs"] == len(rejected) + 1
    stage = next(s for s in manifest["stages"] if s["name"] == "verify")
    ends = {x for pair in dropped | set(kept) for x in pair}
    assert stage["images"] == len(ends) and stage["borderline"] == counts["verified_pairs"]


def test_keys_are_checked_with_their_names():
    with pytest.raises(ValueError, match="pairs.min_inliers must be in 1..100000, got 0"):
        PairsConfig(min_inliers=0)
    with pytest.raises(ValueError, match="pairs.max_verified_per_image must be in"):
        PairsConfig(max_verified_per_image=-1)
    with pytest.raises(ValueError, match="pairs.transform must be one of"):
        dataclasses.replace(PairsConfig(), transform="projective")
