"""End to end in Spark local mode, through the CLI as a user runs it."""

import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from neardup_core import cli
from neardup_core.config import load_config
from neardup_core.lsh import unpack_keys
from neardup_core.spark import pairing as pairing_stage

from .conftest import REPO, SAMPLE_CATALOG, export_user_model
from .references import check_groups_output

pytestmark = [pytest.mark.spark, pytest.mark.model]

DUPLICATED = ["baboon", "building"]
UNRELATED = ["fruits", "home", "messi5", "butterfly", "board", "starry_night", "apple", "orange", "squirrel_cls"]
# Names that a URI would escape must still be matched against Spark's file index.
FILE_NAMES = {"squirrel_cls": "squirrel +1 100% é.jpg"}
COMMON = ["--set", "input.max_file_bytes=2000000"]


def jpeg(im, quality=90):
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Real photos; two of them with a resized, a recompressed and a cropped copy each,
    plus files the job must report or skip."""
    root = tmp_path_factory.mktemp("catalog")
    (root / "nested" / "deeper").mkdir(parents=True)
    groups = []
    for name in DUPLICATED:
        im = Image.open(os.path.join(SAMPLE_CATALOG, f"{name}.jpg")).convert("RGB")
        w, h = im.size
        files = {
            f"{name}.jpg": jpeg(im),
            f"nested/{name}_small.JPG": jpeg(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
            f"nested/deeper/{name}_q30.jpeg": jpeg(im, 30),
            f"{name}_crop.jpg": jpeg(im.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        }
        for rel, data in files.items():
            (root / rel).write_bytes(data)
        groups.append([str(root / rel) for rel in files])
    for name in UNRELATED:
        shutil.copy(os.path.join(SAMPLE_CATALOG, f"{name}.jpg"), root / FILE_NAMES.get(name, f"{name}.jpg"))
    good = jpeg(Image.open(os.path.join(SAMPLE_CATALOG, "home.jpg")))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "empty.png").write_bytes(b"")
    (root / "nested" / "not_an_image.webp").write_bytes(b"<html>hello</html>")
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "huge.png")  # ~3.6 MB, over the 2 MB limit set below
    (root / "notes.txt").write_text("not listed: wrong extension")
    expected = {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}
    return root, expected


def uri(path):
    return "file:" + str(path)


def run_cli(args, capsys):
    code = cli.main(["run", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def first_run(spark, catalog, tmp_path_factory):
    root, _ = catalog
    out = tmp_path_factory.mktemp("run") / "out"
    handler = signal.getsignal(signal.SIGINT)
    assert cli.main(["run", "--input", str(root), "--output", str(out), *COMMON]) == 0
    # An in-process caller keeps its own Ctrl-C handler (the CLI's entry point sets another).
    assert signal.getsignal(signal.SIGINT) is handler
    check_groups_output(out)
    return out


def read_pairs(out):
    return pd.read_parquet(os.path.join(out, "pairs")).sort_values(["id_a", "id_b"]).reset_index(drop=True)


def test_finds_the_copies_and_only_the_copies(catalog, first_run):
    _, expected = catalog
    pairs = read_pairs(first_run)
    found = {(a.removeprefix("file:"), b.removeprefix("file:")) for a, b in zip(pairs.id_a, pairs.id_b)}
    assert found == expected


def test_pair_scores_agree_with_the_embeddings(first_run):
    cfg = load_config()
    pairs = read_pairs(first_run)
    emb = pd.read_parquet(os.path.join(first_run, "embeddings")).set_index("id")
    with open(os.path.join(first_run, "_manifest.json")) as f:
        num_tables = json.load(f)["lsh"]["num_tables"]
    emb["keys"] = [unpack_keys(np.frombuffer(v, np.uint8).reshape(1, -1), num_tables)[0] for v in emb["keys"]]
    assert list(pairs.columns) == ["id_a", "id_b", "path_a", "path_b", "cosine", "jaccard", "tables_matched",
                                   "exact", "near_copy", "inliers", "verified"]
    assert not pairs.exact.any()  # no two files here have the same bytes
    for row in pairs.itertuples():
        a = np.asarray(emb.loc[row.id_a, "embedding"], dtype=np.float64)
        b = np.asarray(emb.loc[row.id_b, "embedding"], dtype=np.float64)
        assert row.id_a < row.id_b
        assert row.cosine == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-9)
        assert row.cosine >= cfg.pairs.cosine_threshold
        m = int((np.asarray(emb.loc[row.id_a, "keys"]) == np.asarray(emb.loc[row.id_b, "keys"])).sum())
        assert row.tables_matched == m >= 1
        assert row.jaccard == pytest.approx(m / (2 * len(emb.loc[row.id_a, "keys"]) - m))
        assert row.path_a == row.id_a and row.path_b == row.id_b
    assert len(emb) == len(DUPLICATED) * 4 + len(UNRELATED)
    norms = np.linalg.norm(np.stack(emb.embedding.to_numpy()), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_bad_files_are_recorded_and_the_job_succeeds(catalog, first_run):
    root, _ = catalog
    errors = pd.read_parquet(os.path.join(first_run, "errors")).set_index("id")
    assert list(errors.columns) == ["path", "stage", "message"]
    assert set(errors.index) == {uri(root / n) for n in ("truncated.jpg", "empty.png", "nested/not_an_image.webp",
                                                          "huge.png")}
    assert errors.loc[uri(root / "truncated.jpg"), "stage"] == "decode"
    assert "truncated" in errors.loc[uri(root / "truncated.jpg"), "message"]
    assert tuple(errors.loc[uri(root / "empty.png"), ["stage", "message"]]) == ("read", "empty file")
    assert errors.loc[uri(root / "nested/not_an_image.webp"), "message"] == "not a recognised image format"
    assert errors.loc[uri(root / "huge.png"), "stage"] == "read"
    assert "above input.max_file_bytes=2000000" in errors.loc[uri(root / "huge.png"), "message"]


def test_manifest_and_success_marker(first_run):
    assert not [n for n in os.listdir(first_run) if n.startswith("_staging")]
    assert os.path.exists(os.path.join(first_run, "_SUCCESS"))
    manifest = json.loads((first_run / "_manifest.json").read_text())
    assert manifest["counts"]["inputs"] == 4 * len(DUPLICATED) + len(UNRELATED) + 4
    assert manifest["counts"]["errors"] == 4
    assert manifest["counts"]["errors_by_stage"] == {"decode": 2, "read": 2}
    assert manifest["counts"]["pairs"] == 6 * len(DUPLICATED)
    assert manifest["counts"]["candidate_pairs"] >= manifest["counts"]["pairs"]
    assert manifest["config"]["input"]["max_file_bytes"] == 2000000
    assert [s["name"] for s in manifest["stages"]] == ["load-model", "list", "embed", "exact-copies", "near-copies",
                                                       "plan", "pairs", "verify", "groups", "write"]
    assert all(s["seconds"] >= 0 for s in manifest["stages"])
    lsh = manifest["lsh"]  # auto: chosen for the default threshold and recall target
    assert lsh["recall_at_threshold"] >= 0.99
    assert lsh["sample_size"] == manifest["counts"]["embedded"]  # small catalog: all of it
    assert lsh["buckets"]["oversized"] == 0
    # Each distinct candidate counted once; its copies (one per table it collides in) are more.
    assert lsh["buckets"]["pair_copies"] >= manifest["counts"]["candidate_pairs"]
    pairs_stage = next(s for s in manifest["stages"] if s["name"] == "pairs")
    assert pairs_stage["tasks"]["shuffled"] is False  # 15 embeddings: one task pairs them, no shuffle
    # Two photos with three copies each: two groups of four, the original kept (most pixels).
    assert manifest["counts"]["groups"] == 2 and manifest["counts"]["largest_group"] == 4
    assert (manifest["counts"]["kept"], manifest["counts"]["dropped"]) == (2, 6)


def test_groups_keep_the_largest_copy_and_drop_the_rest(catalog, first_run):
    groups = pd.read_parquet(first_run / "groups")
    kept = sorted(p.removeprefix("file:") for p in groups[groups.action == "keep"].id)
    assert kept == sorted(str(catalog[0] / f"{name}.jpg") for name in DUPLICATED)  # the full-size originals
    emb = pd.read_parquet(first_run / "embeddings").set_index("id")
    for row in groups[groups.action == "drop"].itertuples():
        mine, theirs = emb.loc[row.id], emb.loc[row.kept_id]
        assert (mine.width * mine.height, mine.bytes) <= (theirs.width * theirs.height, theirs.bytes)


def test_embeddings_carry_what_the_priority_reads(catalog, first_run):
    emb = pd.read_parquet(first_run / "embeddings").set_index("id")
    original = emb.loc[uri(catalog[0] / "baboon.jpg")]
    with Image.open(catalog[0] / "baboon.jpg") as im:
        assert (original.width, original.height) == im.size
    assert original.bytes == os.path.getsize(catalog[0] / "baboon.jpg")
    assert original.modified.timestamp() == pytest.approx(os.path.getmtime(catalog[0] / "baboon.jpg"), abs=1e-3)


def test_a_manifest_column_can_decide_what_is_kept(catalog, first_run, tmp_path):
    root, _ = catalog
    emb = pd.read_parquet(os.path.join(first_run, "embeddings"))
    paths = sorted(p.removeprefix("file:") for p in emb.id)
    # The newest upload wins, whatever its size: the copies were uploaded last.
    uploaded = [2 if os.path.basename(p) in {f"{n}.jpg" for n in DUPLICATED} else 5 for p in paths]
    pd.DataFrame({"id": paths, "path": paths, "uploaded": uploaded}).to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "out"
    assert cli.main(["run", "--input", str(tmp_path / "m.parquet"), "--output", str(out),
                     "--set", "groups.keep=[uploaded desc, bytes desc]"]) == 0
    check_groups_output(out)
    groups = pd.read_parquet(out / "groups")
    assert not set(groups[groups.action == "keep"].id) & {str(root / f"{n}.jpg") for n in DUPLICATED}
    assert len(groups[groups.action == "keep"]) >= 2


def test_rerun_gives_identical_pairs(catalog, first_run, tmp_path):
    root, _ = catalog
    assert cli.main(["run", "--input", str(root), "--output", str(tmp_path / "again"), *COMMON]) == 0
    check_groups_output(tmp_path / "again")
    pd.testing.assert_frame_equal(read_pairs(first_run), read_pairs(tmp_path / "again"))
    pd.testing.assert_frame_equal(pd.read_parquet(first_run / "groups"), pd.read_parquet(tmp_path / "again" / "groups"))


def test_manifest_input_with_relative_paths_and_custom_columns(catalog, first_run, tmp_path):
    root, _ = catalog
    emb = pd.read_parquet(os.path.join(first_run, "embeddings"))
    rows = [(f"sku-{i:03d}", os.path.relpath(p.removeprefix("file:"), tmp_path)) for i, p in enumerate(sorted(emb.id))]
    rows.append(("sku-missing", "no/such/file.jpg"))
    pd.DataFrame(rows, columns=["sku", "file"]).to_csv(tmp_path / "catalog.csv", index=False)
    out = tmp_path / "out"
    assert cli.main(["run", "--input", str(tmp_path / "catalog.csv"), "--output", str(out),
                     "--set", "input.id_column=sku", "--set", "input.path_column=file"]) == 0
    check_groups_output(out)
    pairs = read_pairs(out)
    by_path = {os.path.normpath(os.path.join(tmp_path, f)): sku for sku, f in rows}
    expected = {tuple(sorted((by_path[a.removeprefix("file:")], by_path[b.removeprefix("file:")])))
                for a, b in zip(read_pairs(first_run).id_a, read_pairs(first_run).id_b)}
    assert set(zip(pairs.id_a, pairs.id_b)) == expected
    errors = pd.read_parquet(out / "errors")
    assert errors.to_dict("records") == [{"id": "sku-missing", "path": str(tmp_path / "no/such/file.jpg"),
                                          "stage": "read", "message": "no such file"}]


@pytest.mark.parametrize("backend", ["auto", "tensorflow"])
def test_user_saved_model_end_to_end(spark, tmp_path, backend):
    """The job's embeddings are the user's model's, on the CPU default and on TensorFlow."""
    from neardup_core.config import EmbedConfig, ModelConfig
    from neardup_core.embed import get_embedder
    from neardup_core.embed.batch import decode_for_model

    model_path = export_user_model(tmp_path)
    out = tmp_path / "out"
    args = ["--set", f"model.path={model_path}", "--set", "model.preprocess=unit",
            "--set", f"model.cache_dir={tmp_path / 'cache'}", "--set", f"embed.backend={backend}"]
    assert cli.main(["run", "--input", SAMPLE_CATALOG, "--output", str(out), *args]) == 0
    check_groups_output(out)
    emb = pd.read_parquet(os.path.join(out, "embeddings")).set_index("path")
    reference = get_embedder(model_path, "tensorflow", None, ModelConfig(path=model_path, preprocess="unit"),
                             EmbedConfig())
    paths = sorted(emb.index)
    pixels = np.stack([decode_for_model(Path(p.removeprefix("file:")).read_bytes(), ModelConfig(), 10**8)
                       for p in paths])
    expected = reference.embed(pixels).astype(np.float64)
    got = np.stack(emb.loc[paths, "embedding"].to_numpy()).astype(np.float64)
    assert got.shape == (18, 24)
    assert np.sum(expected * got, axis=1).min() >= 0.999
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["config"]["model"]["path"] == model_path
    assert manifest["counts"]["errors"] == 1


def test_failed_run_leaves_the_previous_result_and_no_success_of_its_own(catalog, first_run, tmp_path, monkeypatch):
    root, _ = catalog
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = read_pairs(out)

    def explode(*args, **kwargs):
        raise RuntimeError("executor lost")

    monkeypatch.setattr(pairing_stage, "_pair_in_one_task", explode)
    with pytest.raises(RuntimeError, match="executor lost"):
        cli.main(["run", "--input", str(root), "--output", str(out), "--overwrite", *COMMON])
    assert not [n for n in os.listdir(out) if n.startswith("_staging")]
    pd.testing.assert_frame_equal(read_pairs(out), before)

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        cli.main(["run", "--input", str(root), "--output", str(fresh), *COMMON])
    assert not os.path.exists(fresh / "_SUCCESS") and not os.path.exists(fresh / "pairs")


def test_an_error_raised_while_a_ctrl_c_unwinds_is_reported_as_the_interrupt(catalog, first_run, tmp_path,
                                                                               monkeypatch, capsys):
    """PySpark calls into the JVM on the way out of an interrupted call, and that call may
    fail with Py4J's "Answer from Java side is empty" (seen in CI): still neardup's one line
    and exit 130, not a traceback and exit 1."""
    from py4j.protocol import Py4JNetworkError

    root, _ = catalog
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = read_pairs(out)

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt()
        except KeyboardInterrupt:
            raise Py4JNetworkError("Answer from Java side is empty")  # noqa: B904 - as PySpark does

    monkeypatch.setattr(pairing_stage, "_pair_in_one_task", interrupted)
    assert cli.main(["run", "--input", str(root), "--output", str(out), "--overwrite", *COMMON]) == 130
    assert capsys.readouterr().err.splitlines()[-1:] == [
        "neardup: interrupted; the output folder holds what it held before"]
    assert not [n for n in os.listdir(out) if n.startswith("_staging")]
    pd.testing.assert_frame_equal(read_pairs(out), before)


@pytest.mark.parametrize("setup,args,message", [
    ("none", ["--input", "{tmp}/nope"], "--input {tmp}/nope: no such file or directory"),
    ("empty_dir", ["--input", "{tmp}/in"], "--input {tmp}/in: no image files (jpg, jpeg"),
    ("bad_manifest", ["--input", "{tmp}/m.parquet"], "manifest has no column 'path'"),
    ("dup_ids", ["--input", "{tmp}/m.csv"], "ids occur more than once, e.g. 'a' (column 'id')"),
    ("null_ids", ["--input", "{tmp}/m.csv"], "1 rows have no id (column 'id')"),
    ("none", ["--input", "{tmp}", "--set", "lsh.bits_per_table=80"], "lsh.bits_per_table must be in 1..48, got 80"),
    ("none", ["--input", "{tmp}", "--set", "lsh.tabels=4"], "unknown configuration key lsh.tabels"),
    ("finished", ["--input", "{tmp}"], "holds a finished run (_SUCCESS); pass --overwrite"),
    ("foreign", ["--input", "{tmp}"], "holds files this job did not write (thesis.docx)"),
    ("none", ["--input", "{tmp}", "--set", "model.path={tmp}/model.keras"],
     "model.path {tmp}/model.keras: no such file"),
    ("none", ["--input", "{tmp}", "--set", "groups.keep=[created_at asc]"],
     "groups.keep names 'created_at', which a directory input does not have"),
    ("bad_manifest", ["--input", "{tmp}/m.parquet", "--set", "input.path_column=file",
                      "--set", "groups.keep=[created_at asc]"], "has no column 'created_at' named in groups.keep"),
])
def test_bad_invocations_exit_2_with_one_message(spark, tmp_path, capsys, setup, args, message):
    out = tmp_path / "out"
    if setup == "empty_dir":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "readme.txt").write_text("no images here")
    if setup == "bad_manifest":
        pd.DataFrame({"id": ["a"], "file": ["a.jpg"]}).to_parquet(tmp_path / "m.parquet")
    if setup == "dup_ids":
        (tmp_path / "m.csv").write_text("id,path\na,x.jpg\nb,y.jpg\na,z.jpg\n")
    if setup == "null_ids":
        (tmp_path / "m.csv").write_text("id,path\na,x.jpg\n,y.jpg\n")
    if setup in ("finished", "foreign"):
        out.mkdir()
        (out / ("_SUCCESS" if setup == "finished" else "thesis.docx")).write_text("")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--output", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.strip() == "neardup: error: " + err.strip().removeprefix("neardup: error: ")
    assert message.format(tmp=tmp_path) in err
    assert len(err.strip().splitlines()) == 1


def test_spark_submit_entry_point_takes_the_same_arguments(tmp_path):
    spark_submit = shutil.which("spark-submit", path=os.path.dirname(sys.executable)) or shutil.which("spark-submit")
    assert spark_submit, "pyspark installs spark-submit beside the interpreter"
    job = os.path.join(REPO, "jobs", "dedup.py")
    proc = subprocess.run([spark_submit, job, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    assert proc.returncode == 2, proc.stderr[-2000:]
    # spark-submit merges the Python driver's stderr into its own stdout.
    assert f"neardup: error: --input {tmp_path}/nope: no such file or directory" in proc.stdout + proc.stderr


def test_catalog_where_every_image_fails_gives_errors_and_no_pairs(spark, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert cli.main(["run", "--input", str(tmp_path / "in"), "--output", str(out)]) == 0
    assert len(pd.read_parquet(out / "pairs")) == 0
    assert len(pd.read_parquet(out / "errors")) == 2
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["embedded"] == 0 and manifest["lsh"] is None
    check_groups_output(out)
    assert (out / "_SUCCESS").exists()
