"""A fault corpus, made here (not checked in): awkward files, manifest rows and invocations,
each with its exit code, its one-line message or its errors/ row and reason, and the
accounting identity. One run over a directory holding many bad cases and one over a
manifest holding many bad rows, so the corpus costs two Spark runs."""

import csv
import json
import os
import shutil

import pandas as pd
import pytest

from neardup_core import cli

from .conftest import SAMPLE_CATALOG


def uri(path):
    return "file:" + str(path)


def run(args, capsys):
    code = cli.main(["run", *args])
    captured = capsys.readouterr()
    return code, captured.err


def outputs(out):
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["inputs"] == counts["embedded"] + counts["reused"] + counts["errors"]
    errors = pd.read_parquet(out / "errors").set_index("id")
    embedded = pd.read_parquet(out / "embeddings", columns=["id"])["id"]
    assert embedded.is_unique and not set(embedded) & set(errors.index)
    assert counts["embedded"] == len(embedded) and counts["errors"] == len(errors)
    return counts, set(embedded), errors


@pytest.mark.spark
@pytest.mark.model
def test_directory_corpus(spark, tmp_path, capsys):
    root = tmp_path / "in"
    (root / "_dir").mkdir(parents=True)
    (root / "sub").mkdir()
    good = {"12:30 shot.jpg": "baboon", "_x.jpg": "fruits", ".x.jpg": "home", "_dir/a.jpg": "apple",
            "sub/b.JPG": "orange"}
    for rel, name in good.items():
        shutil.copy(os.path.join(SAMPLE_CATALOG, f"{name}.jpg"), root / rel)
    (root / "sub" / "loop").symlink_to(root)  # a loop: each file must still be listed once
    (root / "sub2").symlink_to(root / "sub")  # a second way into one folder
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(root / "fifo.jpg")
    (root / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code, err = run(["--input", str(root), "--output", str(out)], capsys)
    assert code == 0, err
    counts, embedded, errors = outputs(out)
    assert embedded == {uri(root / rel) for rel in good}
    assert dict(errors["message"]) == {
        uri(root / "dangling.jpg"): "dangling symbolic link (its target does not exist)",
        uri(root / "fifo.jpg"): "not a regular file (a FIFO)",
        uri(root / "empty.jpg"): "empty file",
    }
    assert counts["inputs"] == 8


@pytest.mark.spark
@pytest.mark.model
def test_manifest_corpus(spark, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(os.path.join(SAMPLE_CATALOG, "baboon.jpg"), folder / "12:30 shot.jpg")
    shutil.copy(os.path.join(SAMPLE_CATALOG, "fruits.jpg"), folder / "fruits.jpg")
    os.mkfifo(folder / "fifo.jpg")
    rows = {
        "multi\nline id": "12:30 shot.jpg",  # a quoted newline stays in the id
        'quote "id"': str(folder / "fruits.jpg"),  # doubled quotes are one quote
        "ftp": "ftp://example.org/a.jpg",
        "http": "http://example.org/a.jpg",
        "https": "https://example.org/a.jpg",
        "unknown": "foo://bar/a.jpg",
        "zero": "/dev/zero",
        "fifo": str(folder / "fifo.jpg"),
        "missing": str(folder / "gone.jpg"),
        "dir": str(folder),
        "blank": "   ",
    }
    with open(folder / "m.csv", "w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["id", "path"])
        writer.writerows(rows.items())
    out = tmp_path / "out"
    code, err = run(["--input", str(folder / "m.csv"), "--output", str(out)], capsys)
    assert code == 0, err
    counts, embedded, errors = outputs(out)
    assert embedded == {"multi\nline id", 'quote "id"'}
    schemes = "(neardup reads local paths, file:, s3://, s3a://, s3n://, gs://, gcs://, hdfs://)"
    assert dict(errors["message"]) == {
        "ftp": f"unsupported URI scheme 'ftp' {schemes}",
        "http": f"unsupported URI scheme 'http' {schemes}",
        "https": f"unsupported URI scheme 'https' {schemes}",
        "unknown": f"unsupported URI scheme 'foo' {schemes}",
        "zero": "not a regular file (a character device)",
        "fifo": "not a regular file (a FIFO)",
        "missing": "no such file",
        "dir": "is a directory",
        "blank": "manifest row has no path",
    }
    assert set(errors["stage"]) == {"read"}
    assert counts["inputs"] == len(rows)


@pytest.mark.parametrize("setup,args,message", [
    ("binary", ["--config", "{tmp}/c.yaml"], "--config {tmp}/c.yaml: not a UTF-8 text file"),
    ("bomb", ["--config", "{tmp}/c.yaml"], "aliases (*name) are not allowed in a neardup config"),
    ("none", ["--set", "spark.master=bogus://x"], "spark.master must be local, local[N]"),
    ("none", ["--set", "input.format=parquet"], "input.format is parquet, but {tmp}/in/a.jpg is not a Parquet"),
    ("huge", ["--set", "output.overwrite=[{long}]"], "output.overwrite must be true or false, got ['xxxx"),
    ("none", ["--set", "spark.conf={{spark.driver.memory: 1m}}"], "spark.conf.spark.driver.memory must be a JVM "
     "memory size (512m, 4g) of at least 512m: Spark needs 450 MB of heap, got '1m'"),
    ("none", ["--set", "spark.conf.spark.driver.memory=1m"], "spark.conf.spark.driver.memory must be a JVM"),
])
def test_bad_invocations_exit_2_with_one_line(tmp_path, capsys, setup, args, message):
    (tmp_path / "in").mkdir()
    shutil.copy(os.path.join(SAMPLE_CATALOG, "home.jpg"), tmp_path / "in" / "a.jpg")
    if setup == "binary":
        (tmp_path / "c.yaml").write_bytes(bytes(range(256)) * 4)
    if setup == "bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
        (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    argv = [a.format(tmp=tmp_path, long="x" * 100_000) for a in args]
    code, err = run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *argv], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and len(err) < 1000, err[:2000]
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()
