"""The review report's kernels, without Spark: what is chosen for the page, the charts, the
thumbnails, escaping, the atomic write, and `neardup report`'s checks."""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neardup_core import cli, report
from neardup_core.config import ReportConfig
from neardup_core.evaluation import Truth, read_truth_csv, score_pairs
from neardup_core.report import charts, render
from neardup_core.report.data import ReportError, acceptance, prepare, read_finished_manifest
from neardup_core.report.thumbs import ThumbnailError, thumbnail, thumbnail_name

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
THRESHOLD = 0.7
ACCEPT = 0.85  # pairs below it (and above THRESHOLD) are seeded as verified by geometry
VERIFICATION = [("exact", pa.bool_()), ("inliers", pa.int32()), ("verified", pa.string())]
SCHEMAS = {
    "pairs": pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("path_a", pa.string()),
                        ("path_b", pa.string()), ("cosine", pa.float64()), ("jaccard", pa.float64()),
                        ("tables_matched", pa.int32())]),
    "groups": pa.schema([("id", pa.string()), ("path", pa.string()), ("group_id", pa.string()),
                         ("group_size", pa.int32()), ("action", pa.string()), ("kept_id", pa.string()),
                         ("cosine", pa.float64())]),
    "errors": pa.schema([("id", pa.string()), ("path", pa.string()), ("stage", pa.string()),
                         ("message", pa.string())]),
    "embeddings": pa.schema([("id", pa.string()), ("path", pa.string()), ("width", pa.int32()),
                             ("height", pa.int32()), ("bytes", pa.int64())]),
}


def seeded_run(root, sizes=(5, 2, 3, 2, 4), seed=0, errors=(), names=None, verification=True):
    """A finished run's folder: group k has sizes[k] images, the first kept and the rest
    dropped with a pair to it (and a chain pair between the last two drops).

    With ``verification``, pairs/ has ``exact``, ``inliers`` and ``verified`` as today's runs
    write them (g00-1 an exact copy of g00-0; pairs below ACCEPT verified by geometry) and the
    manifest their counts and settings; without, the schema of runs written before them."""
    rng = np.random.default_rng(seed)
    rows = {name: [] for name in SCHEMAS}
    schemas = dict(SCHEMAS)
    if verification:
        schemas["pairs"] = pa.schema(list(SCHEMAS["pairs"]) + [pa.field(n, t) for n, t in VERIFICATION])
    names = names or {}
    for k, size in enumerate(sizes):
        ids = [f"g{k:02d}-{j}.jpg" for j in range(size)]
        path = {i: f"/photos/{names.get(i, i)}" for i in ids}
        for i in ids:
            rows["embeddings"].append({"id": i, "path": path[i], "width": 640, "height": 480, "bytes": 1234})
        rows["groups"].append({"id": ids[0], "path": path[ids[0]], "group_id": ids[0], "group_size": size,
                               "action": "keep", "kept_id": None, "cosine": None})
        for i in ids[1:]:
            c = float(rng.uniform(THRESHOLD, 1.0))
            exact = i == "g00-1.jpg"
            c = 1.0 if exact else c
            rows["pairs"].append({"id_a": ids[0], "id_b": i, "path_a": path[ids[0]], "path_b": path[i], "cosine": c,
                                  "jaccard": 0.5, "tables_matched": 3, "exact": exact,
                                  "inliers": 20 + len(rows["pairs"]) if c < ACCEPT else None,
                                  "verified": "geometry" if c < ACCEPT else "embedding"})
            rows["groups"].append({"id": i, "path": path[i], "group_id": ids[0], "group_size": size, "action": "drop",
                                   "kept_id": ids[0], "cosine": c})
        if size > 3:
            rows["pairs"].append({"id_a": ids[-2], "id_b": ids[-1], "path_a": path[ids[-2]], "path_b": path[ids[-1]],
                                  "cosine": float(rng.uniform(THRESHOLD, 1.0)), "jaccard": 0.5, "tables_matched": 3,
                                  "exact": False, "inliers": None, "verified": "embedding"})
    rows["errors"] = [dict(zip(("id", "path", "stage", "message"), e)) for e in errors]
    if not verification:
        rows["pairs"] = [{k: v for k, v in r.items() if k not in dict(VERIFICATION)} for r in rows["pairs"]]
    for name, schema in schemas.items():
        os.makedirs(root / name)
        pq.write_table(pa.Table.from_pylist(rows[name], schema), root / name / "part-00000.parquet")
        (root / name / "_SUCCESS").write_text("")
    manifest = {"run_id": "20261201T000000Z-test", "neardup_version": "0.1.0", "finished_at": "now",
                "counts": {"inputs": sum(sizes) + len(errors), "errors": len(errors), "pairs": len(rows["pairs"]),
                           "groups": len(sizes), "kept": len(sizes), "dropped": sum(sizes) - len(sizes)},
                "lsh": {"num_tables": 8, "bits_per_table": 10, "recall_at_threshold": 0.99},
                "stages": [{"name": "embed", "seconds": 3.5}, {"name": "pairs", "seconds": 1.25}],
                "config": {"pairs": {"cosine_threshold": THRESHOLD},
                           "model": {"input_size": 224, "colour": "grayscale"}, "input": {"path": "/photos"},
                           "groups": {"keep": ["pixels desc"]}}}
    if verification:
        manifest["counts"].update(verified_pairs=sum(r["verified"] == "geometry" for r in rows["pairs"]),
                                  rejected_pairs=3, exact_copies=1)
        manifest["config"]["pairs"].update(accept_cosine=ACCEPT, min_inliers=15)
    (root / "_manifest.json").write_text(json.dumps(manifest))
    (root / "_SUCCESS").write_text("")
    return manifest, rows


def rewrite(root, change, name="pairs"):
    """Replace the seeded run's ``name``/ rows by ``change(rows)``, keeping its schema."""
    file = root / name / "part-00000.parquet"
    table = pq.read_table(file)
    pq.write_table(pa.Table.from_pylist(change(table.to_pylist()), table.schema), file)


def jpeg(size=(300, 200), colour=(200, 30, 30)):
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def test_groups_largest_first_with_the_kept_image_first(tmp_path):
    manifest, rows = seeded_run(tmp_path)
    data = prepare(str(tmp_path), manifest, ReportConfig())
    assert [g.size for g in data.groups] == [5, 4, 3, 2, 2]
    assert [g.group_id for g in data.groups][-2:] == ["g01-0.jpg", "g03-0.jpg"]  # a tie goes by id
    cosine = {r["id"]: r["cosine"] for r in rows["groups"]}
    for group in data.groups:
        assert group.images[0].action == "keep" and group.images[0].id == group.group_id
        drops = group.images[1:]
        assert all(i.action == "drop" and i.kept_id == group.group_id for i in drops)
        assert [i.cosine for i in drops] == sorted((cosine[i.id] for i in drops), reverse=True)
        assert all((i.width, i.height, i.bytes) == (640, 480, 1234) for i in group.images)
    assert data.total_groups == 5 and data.total_pairs == len(rows["pairs"])
    assert data.summary[0] == ("images", "16") and ("LSH plan", "8 tables of 10 bits; recall 0.9900 at the threshold"
                                                   ) in data.settings


def test_limits_bound_what_is_shown_and_the_page_says_so(tmp_path):
    manifest, rows = seeded_run(tmp_path, sizes=(7, 2, 2, 3))
    limits = ReportConfig(max_groups=2, max_images_per_group=4, max_pairs=3)
    data = prepare(str(tmp_path), manifest, limits)
    assert [(g.size, len(g.images), g.hidden) for g in data.groups] == [(7, 4, 3), (3, 3, 0)]
    html = render.render(data)
    assert "Showing the 2 largest of 4 groups" in html and "and 3 more images in this group" in html
    assert f"Showing 3 of {len(rows['pairs'])} pairs" in html


@pytest.mark.parametrize("max_pairs", [1, 2, 3, 7, 100])
def test_borderline_pairs_are_those_closest_to_the_threshold(tmp_path, max_pairs):
    manifest, rows = seeded_run(tmp_path, sizes=(6, 4, 2, 3), seed=max_pairs)
    data = prepare(str(tmp_path), manifest, ReportConfig(max_pairs=max_pairs))
    expected = sorted(rows["pairs"], key=lambda r: (abs(r["cosine"] - THRESHOLD), r["id_a"], r["id_b"]))[:max_pairs]
    assert [(p.a.id, p.b.id, p.cosine) for p in data.pairs] == [(r["id_a"], r["id_b"], r["cosine"]) for r in expected]


def test_errors_are_counted_by_stage_and_reason(tmp_path):
    errors = [(f"e{i}", f"/bad/e{i}.jpg", "decode", "cannot identify image file") for i in range(12)]
    errors += [("r1", "/bad/r1.jpg", "read", "no such file"), ("d1", "/bad/d1.png", "decode", "truncated")]
    manifest, _ = seeded_run(tmp_path, errors=errors)
    data = prepare(str(tmp_path), manifest, ReportConfig())
    assert data.total_errors == 14 and data.total_error_reasons == 3
    first = data.errors[0]
    assert (first.stage, first.reason, first.count) == ("decode", "cannot identify image file", 12)
    assert first.paths == sorted(f"/bad/e{i}.jpg" for i in range(12))[:10]
    assert [(e.stage, e.count) for e in data.errors[1:]] == [("decode", 1), ("read", 1)]
    assert "and 2 more" in render.render(data)


def test_a_hostile_file_name_is_text(tmp_path):
    manifest, _ = seeded_run(tmp_path, names={"g00-1.jpg": HOSTILE},
                             errors=[("h", f"/bad/{HOSTILE}", "decode", f"cannot decode {HOSTILE}")])
    data = prepare(str(tmp_path), manifest, ReportConfig())
    render.attach_thumbnails(data, {i.id: jpeg() for i in data.images()})
    html = render.render(data)
    assert HOSTILE not in html
    escaped = "&lt;img src=x onerror=alert(1)&gt;.jpg"
    assert html.count(escaped) >= 4  # caption, alt text, error path, error message
    assert "onerror" not in re.sub(r"&lt;img src=x onerror=alert\(1\)&gt;", "", html)


def test_histogram_counts_every_pair_and_marks_the_threshold():
    rng = np.random.default_rng(1)
    cosines = rng.uniform(0.72, 1.0, 1000)
    h = charts.histogram(cosines, 0.72)
    assert sum(b.count for b in h.bars) == 1000 == h.total
    assert h.plot_left <= h.threshold_x <= h.plot_right
    assert h.bars[0].low == 0.70 and h.bars[-1].high == 1.0
    tallest = max(h.bars, key=lambda b: b.count)
    assert tallest.y == h.plot_top and all(b.y + b.height == pytest.approx(h.plot_bottom) for b in h.bars)
    assert charts.histogram(np.array([]), 0.9).total == 0
    assert h.accept_x is None and charts.histogram(cosines, 0.72, 0.72).accept_x is None  # verification off
    marked = charts.histogram(cosines, 0.72, 0.86)
    assert marked.accept_cosine == 0.86 and marked.accept_x == pytest.approx(
        h.plot_left + (0.86 - 0.70) / 0.30 * (h.plot_right - h.plot_left), abs=0.01)


def test_thumbnail_is_small_oriented_and_named_by_a_hash():
    data = jpeg((800, 400))
    small = Image.open(io.BytesIO(thumbnail(data, 160, 10**8)))
    assert small.format == "JPEG" and small.size == (160, 80)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed a quarter turn round: taller than wide
    Image.new("RGB", (400, 200), "blue").save(rotated, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(thumbnail(rotated.getvalue(), 100, 10**8))).size == (50, 100)
    # The reasons read after the page's "no thumbnail: ".
    with pytest.raises(ThumbnailError, match="^not a recognised image format$"):
        thumbnail(b"<html>not an image</html>", 160, 10**8)
    noisy = io.BytesIO()
    Image.effect_noise((400, 300), 40).convert("RGB").save(noisy, "JPEG")
    with pytest.raises(ThumbnailError, match="^unreadable image data: image file is truncated"):
        thumbnail(noisy.getvalue()[:noisy.tell() // 2], 160, 10**8)
    with pytest.raises(ThumbnailError, match="above input.max_pixels=1000"):
        thumbnail(data, 160, 1000)
    assert re.fullmatch(r"[0-9a-f]{32}\.jpg", thumbnail_name(f"../../{HOSTILE}"))
    assert thumbnail_name("a") != thumbnail_name("b")


def test_build_writes_a_self_contained_folder_and_replaces_it_whole(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest, _ = seeded_run(run)
    asked = []

    def thumbs(items):
        asked.extend(items)
        return {i: (jpeg() if not i.startswith("g04") else "no such file") for i, _ in items}

    folder = tmp_path / "report"
    (folder / "thumbs").mkdir(parents=True)
    (folder / "thumbs" / "stale.jpg").write_bytes(b"old")
    record = report.build(str(run), manifest, str(folder), ReportConfig(max_groups=4, max_pairs=2), thumbs)
    shown = prepare(str(run), manifest, ReportConfig(max_groups=4, max_pairs=2))
    assert sorted(asked) == sorted({(i.id, i.path) for i in shown.images()})  # each image once, only those shown
    assert record["groups_shown"] == 4 and record["pairs_shown"] == 2 and record["written"]
    files = sorted(os.listdir(folder / "thumbs"))
    assert "stale.jpg" not in files and len(files) == record["thumbnails"]
    html = (folder / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "no thumbnail: no such file" in html
    assert sorted(os.listdir(tmp_path)) == ["report", "run"]  # no temporary folder left


def test_ids_are_never_opened_as_files_when_the_table_had_no_path_column(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest, _ = seeded_run(run)

    def thumbs(items):
        raise AssertionError(f"asked to read {items[:2]}")

    record = report.build(str(run), {**manifest, "paths_are_ids": True}, str(tmp_path / "report"), ReportConfig(),
                          thumbs)
    assert record["thumbnails"] == 0 and record["thumbnail_errors"] == 0 and record["groups_shown"] > 0
    assert f"no thumbnail: {report.NO_PATH_COLUMN}" in (tmp_path / "report" / "index.html").read_text()


def with_content_hashes(root, changed=()):
    """Adds embeddings/ ``content_hash`` to a seeded run: the same on both nights but for ``changed``."""
    file = root / "embeddings" / "part-00000.parquet"
    table = pq.read_table(file)
    hashes = [("changed-" if i in changed else "same-") + i for i in table.column("id").to_pylist()]
    pq.write_table(table.append_column("content_hash", pa.array(hashes, pa.string())), file)


@pytest.mark.parametrize("case", ["reused", "other thumbnail size", "neardup pairs", "not incremental"])
def test_an_incremental_report_takes_unchanged_images_thumbnails_from_the_previous_run(tmp_path, case):
    before, tonight = tmp_path / "before", tmp_path / "tonight"
    before.mkdir()
    tonight.mkdir()
    last_night, _ = seeded_run(before)
    manifest, _ = seeded_run(tonight)
    with_content_hashes(before)
    with_content_hashes(tonight, changed={"g00-1.jpg"})
    old = jpeg(colour=(10, 10, 10))
    report.build(str(before), last_night, str(before / "report"), ReportConfig(),
                 lambda items: {i: old if i != "g01-0.jpg" else "no such file" for i, _ in items})
    manifest["incremental"] = {"previous": str(before), "reused": True}
    if case == "other thumbnail size":
        manifest["config"]["report"] = {"thumbnail_px": 96}
    elif case == "neardup pairs":
        manifest["config"]["input"] = {"path": None}
    elif case == "not incremental":
        manifest["incremental"]["reused"] = False
    asked = []

    def thumbs(items):
        asked.extend(i for i, _ in items)
        return {i: jpeg(colour=(250, 250, 250)) for i, _ in items}

    record = report.build(str(tonight), manifest, str(tonight / "report"), ReportConfig(), thumbs)
    shown = {i.id for i in prepare(str(tonight), manifest, ReportConfig()).images()}
    if case != "reused":
        assert sorted(asked) == sorted(shown) and record["thumbnails_reused"] == 0
        return
    # Made again: the image whose content changed, and the one last night failed to make.
    assert sorted(asked) == ["g00-1.jpg", "g01-0.jpg"]
    assert record["thumbnails_reused"] == len(shown) - 2 and record["thumbnails"] == len(shown)
    for image_id in shown - set(asked):
        assert (tonight / "report" / "thumbs" / thumbnail_name(image_id)).read_bytes() == old
    assert (tonight / "report" / "thumbs" / thumbnail_name("g00-1.jpg")).read_bytes() != old


def test_a_failed_write_leaves_the_old_report(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    manifest, _ = seeded_run(run)
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "index.html").write_text("old report")

    def broken(data):
        raise RuntimeError("template broke")

    monkeypatch.setattr(render, "render", broken)
    with pytest.raises(RuntimeError):
        report.build(str(run), manifest, str(folder), ReportConfig(), lambda items: {})
    assert (folder / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["report", "run"]


def test_truth_gives_precision_recall_and_a_curve(tmp_path):
    manifest, rows = seeded_run(tmp_path, sizes=(3, 2))
    truth_csv = tmp_path / "truth.csv"
    # g00 is one true group; g01-0 and g01-1 are different photos; x.jpg has no copy.
    lines = ["file,group,role,transform", "g00-0.jpg,A,original,", "g00-1.jpg,A,copy,scale:0.5", "g00-2.jpg,A,copy,",
             "g01-0.jpg,B,original,", "g01-1.jpg,C,original,", "x.jpg,D,original,", "y.jpg,D,copy,jpeg"]
    truth_csv.write_text("\n".join(lines) + "\n")
    truth = read_truth_csv(str(truth_csv))
    data = prepare(str(tmp_path), manifest, ReportConfig(), truth)
    expected = score_pairs([(r["id_a"], r["id_b"]) for r in rows["pairs"]], truth)
    t = data.truth
    assert (t.precision, t.recall) == (expected.precision, expected.recall)
    assert (t.true_positives, t.false_positives, t.false_negatives) == (2, 1, 2)
    assert t.unlabelled_pairs == 0 and len(t.curve.points) == 41
    assert all(a.threshold >= b.threshold for a, b in zip(t.curve.points, t.curve.points[1:]))
    assert "Against the labels" in render.render(data)
    truth_csv.write_text("name,group\nx.jpg,A\n")
    with pytest.raises(ValueError, match="no column file, role, transform"):
        read_truth_csv(str(truth_csv))
    assert isinstance(Truth.from_rows([]), Truth)


def test_read_finished_manifest_refuses_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(ReportError, match="no such directory"):
        read_finished_manifest(str(tmp_path / "nope"))
    (tmp_path / "_manifest.json").write_text("{}")
    with pytest.raises(ReportError, match=r"holds no finished run \(no _SUCCESS\)"):
        read_finished_manifest(str(tmp_path))
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "_manifest.json").write_text("{not json")
    with pytest.raises(ReportError, match="unreadable _manifest.json"):
        read_finished_manifest(str(tmp_path))


@pytest.mark.parametrize("case", ["missing", "unfinished", "truth"])
def test_report_command_exits_2_with_one_line(tmp_path, capsys, case):
    run = tmp_path / "run"
    argv = ["report", "--run", str(run)]
    if case == "unfinished":
        run.mkdir()
    if case == "truth":
        seeded_run(run.mkdir() or run)
        argv += ["--truth", str(tmp_path / "no-truth.csv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("neardup: error: ")
    assert {"missing": "no such directory", "unfinished": "no finished run", "truth": "cannot read"}[case] in err


@pytest.mark.parametrize("key, value", [("max_groups", -1), ("max_images_per_group", 1), ("max_pairs", 10**6),
                                        ("thumbnail_px", 8)])
def test_report_config_names_the_key_and_value(key, value):
    from neardup_core.config import ConfigError

    with pytest.raises(ConfigError, match=rf"report\.{key} must be in .*, got {value}"):
        ReportConfig(**{key: value})


def test_a_rebuild_killed_half_way_leaves_what_the_next_run_removes():
    from neardup_core.output import STAGING_PREFIX

    assert render.TMP_PREFIX.startswith(STAGING_PREFIX)


def expected_acceptance(row):
    if row["exact"]:
        return "exact copy"
    return f"verified: {row['inliers']} inliers" if row["verified"] == "geometry" else "embedding"


def test_each_drop_and_borderline_pair_says_how_it_was_accepted(tmp_path):
    manifest, rows = seeded_run(tmp_path)
    by_pair = {(r["id_a"], r["id_b"]): r for r in rows["pairs"] if (r["id_a"], r["id_b"]) != ("g00-0.jpg", "g00-4.jpg")}
    # g00-4 is linked to the kept g00-0 only through g00-3: no direct pair, so nothing to say.
    rewrite(tmp_path, lambda rs: [r for r in rs if (r["id_a"], r["id_b"]) != ("g00-0.jpg", "g00-4.jpg")])
    # In group g01 the larger id is kept, so its pair is (drop, kept) in id order.
    swapped = {"g01-0.jpg": {"action": "drop", "kept_id": "g01-1.jpg",
                             "cosine": by_pair[("g01-0.jpg", "g01-1.jpg")]["cosine"]},
               "g01-1.jpg": {"action": "keep", "kept_id": None, "cosine": None}}
    rewrite(tmp_path, lambda rs: [dict(r, **swapped.get(r["id"], {})) for r in rs], "groups")
    data = prepare(str(tmp_path), manifest, ReportConfig(max_pairs=100))
    drops = {i.id: i for g in data.groups for i in g.images if i.action == "drop"}
    assert len(drops) == 11 and drops["g00-4.jpg"].accepted is None and drops["g01-0.jpg"].kept_id == "g01-1.jpg"
    for image in drops.values():
        if image.id != "g00-4.jpg":
            assert image.accepted == expected_acceptance(by_pair[tuple(sorted((image.kept_id, image.id)))])
    assert {i.accepted for i in drops.values()} >= {"exact copy", "embedding"}
    assert any(i.accepted and i.accepted.startswith("verified: ") for i in drops.values())
    assert all(i.accepted is None for g in data.groups for i in g.images if i.action == "keep")
    assert len(data.pairs) == len(by_pair)
    assert all(p.accepted == expected_acceptance(by_pair[(p.a.id, p.b.id)]) for p in data.pairs)
    html = render.render(data)
    groups_html, pairs_html = html.split('<section id="pairs"')[0].split('<section id="groups"')[1], html.split(
        '<section id="pairs"')[1].split('<section id="errors"')[0]
    assert '<div class="accepted">exact copy</div>' in groups_html
    shown = [p.accepted for p in data.pairs]
    assert pairs_html.count('<div class="accepted">') == len(shown)
    for text in set(shown):
        assert f'<div class="accepted">{text}</div>' in pairs_html


def test_summary_shows_verification_counts_and_settings_and_the_histogram_marks_accept_cosine(tmp_path):
    manifest, rows = seeded_run(tmp_path)
    data = prepare(str(tmp_path), manifest, ReportConfig())
    verified = sum(r["verified"] == "geometry" for r in rows["pairs"])
    assert verified > 0
    summary = dict(data.summary)
    assert (summary["verified pairs"], summary["rejected pairs"], summary["exact copies"]) == (str(verified), "3", "1")
    labels = [label for label, _ in data.settings]
    assert labels[:3] == ["cosine threshold", "accept cosine", "min inliers"]
    assert dict(data.settings)["accept cosine"] == "0.85" and dict(data.settings)["min inliers"] == "15"
    assert dict(data.settings)["model"] == "built-in EfficientNet-Lite0, 224 px, grayscale"  # no precision recorded
    manifest["stages"].insert(0, {"name": "load-model", "seconds": 0.1, "precision": "int8"})
    assert dict(prepare(str(tmp_path), manifest, ReportConfig()).settings)["model"].endswith("grayscale, INT8")
    h = data.histogram
    assert h.accept_cosine == ACCEPT and h.threshold_x < h.accept_x < h.plot_right
    html = render.render(data)
    assert f'<line class="accept" x1="{h.accept_x}"' in html and "accept 0.85</text>" in html
    assert ">verified pairs<" in html and ">exact copies<" in html

    manifest["config"]["pairs"]["accept_cosine"] = 0.6  # at or below the threshold: verification off
    data = prepare(str(tmp_path), manifest, ReportConfig())
    assert data.histogram.accept_x is None and 'class="accept"' not in render.render(data)
    assert dict(data.settings)["accept cosine"] == "0.6 (at or below the threshold: no verification)"


def test_a_run_written_before_verification_still_renders(tmp_path):
    manifest, rows = seeded_run(tmp_path, verification=False)
    assert "verified_pairs" not in manifest["counts"] and "accept_cosine" not in manifest["config"]["pairs"]
    data = prepare(str(tmp_path), manifest, ReportConfig(max_pairs=100))
    assert all(i.accepted is None for i in data.images()) and all(p.accepted is None for p in data.pairs)
    assert len(data.pairs) == len(rows["pairs"]) and len(data.groups) == 5
    assert not {"verified pairs", "rejected pairs", "exact copies"} & {label for label, _ in data.summary}
    assert not {"accept cosine", "min inliers"} & {label for label, _ in data.settings}
    assert data.histogram.accept_x is None
    html = render.render(data)
    assert 'class="accepted"' not in html and 'class="accept"' not in html and "inliers" not in html
    assert "cosine threshold" in html and html.count('<div class="pair">') == len(rows["pairs"])


def test_a_hostile_verification_value_is_text(tmp_path):
    manifest, _ = seeded_run(tmp_path, sizes=(2,))
    rewrite(tmp_path, lambda rs: [dict(r, exact=False, inliers=None, verified=HOSTILE) for r in rs])
    data = prepare(str(tmp_path), manifest, ReportConfig())
    assert data.groups[0].images[1].accepted == HOSTILE and data.pairs[0].accepted == HOSTILE
    html = render.render(data)
    assert HOSTILE not in html and html.count("&lt;img src=x onerror=alert(1)&gt;.jpg") == 2


@pytest.mark.parametrize("row, text", [
    ({"exact": True, "verified": "embedding", "inliers": None}, "exact copy"),
    ({"exact": False, "verified": "geometry", "inliers": 42}, "verified: 42 inliers"),
    ({"exact": False, "verified": "geometry", "inliers": None}, "verified"),
    ({"exact": False, "verified": "embedding", "inliers": None}, "embedding"),
    ({"exact": False}, None),  # a run with exact but not yet verification
    ({}, None),  # an older run
])
def test_acceptance_text(row, text):
    assert acceptance(row) == text


def test_pairs_left_unverified_say_why_and_are_counted(tmp_path):
    manifest, rows = seeded_run(tmp_path)
    assert acceptance({"exact": False, "inliers": None, "verified": "unverified"}) == \
        "not verified: same group either way"
    manifest["counts"].update(unverified_pairs=1234, over_budget_pairs=5)
    summary = dict(prepare(str(tmp_path), manifest, ReportConfig()).summary)
    assert (summary["unverified pairs"], summary["over-budget pairs"]) == ("1,234", "5")


@pytest.mark.spark
@pytest.mark.parametrize("count", [1, 5, 200])  # one task; fewer than the cores; more tasks than cores
def test_thumbnails_made_in_spark_are_those_made_one_by_one(spark, tmp_path, count):
    from neardup_core.config import InputConfig
    from neardup_core.spark.report import make_thumbnails

    rng = np.random.default_rng(count)
    items = []
    for i in range(count):
        path = tmp_path / f"im {i}:x.jpg"  # a space and a colon in the name, as catalogs have
        if i == count // 2:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (40 + i % 7, 60, 3), dtype=np.uint8)).save(path, "JPEG")
        items.append((f"id-{i}", str(path)))
    cfg = InputConfig(path=str(tmp_path))
    made = make_thumbnails(spark, items, 32, cfg)
    assert sorted(made) == sorted(i for i, _ in items)
    for image_id, path in items:
        try:
            expected = thumbnail(Path(path).read_bytes(), 32, cfg.max_pixels)
        except ThumbnailError as err:
            expected = str(err)
        assert made[image_id] == expected, image_id
