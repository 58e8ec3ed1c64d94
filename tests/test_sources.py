import fnmatch
import os

import pytest

from neardup_core.config import InputConfig
from neardup_core.sources import InputError, ReadError, extension_glob, read_file, resolve_format


def expand_braces(glob):
    """fnmatch has no {a,b}; expand the one brace group extension_glob writes."""
    head, rest = glob.split("{", 1)
    body, tail = rest.split("}", 1)
    return [head + alt + tail for alt in body.split(",")]


@pytest.mark.parametrize("name,listed", [("a.jpg", True), ("A.JPG", True), ("b.JpEg", True), ("c.tif", True),
                                         ("d.png.txt", False), ("e.jpgx", False), ("jpg", False)])
def test_extension_glob_is_case_insensitive_and_exact(name, listed):
    patterns = expand_braces(extension_glob(("jpg", "jpeg", "png", "tif")))
    assert any(fnmatch.fnmatchcase(name, p) for p in patterns) == listed


def test_resolve_format(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"")
    (tmp_path / "m.csv").write_text("id,path\n")
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert resolve_format(InputConfig(path=str(tmp_path))) == "directory"
    assert resolve_format(InputConfig(path=str(tmp_path / "m.parquet"))) == "parquet"
    assert resolve_format(InputConfig(path=str(tmp_path / "m.csv"))) == "csv"
    assert resolve_format(InputConfig(path=str(tmp_path / "m.csv"), format="parquet")) == "parquet"
    with pytest.raises(InputError, match="neither .parquet nor .csv"):
        resolve_format(InputConfig(path=str(tmp_path / "photo.jpg")))
    with pytest.raises(InputError, match=f"--input {tmp_path}/nope: no such file or directory"):
        resolve_format(InputConfig(path=str(tmp_path / "nope")))


def test_read_file_local_and_file_uri(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"abc")
    assert read_file(str(tmp_path / "x.jpg"), 10).data == b"abc"
    read = read_file("file:" + str(tmp_path / "x.jpg"), 10)
    assert read.data == b"abc"
    assert read.modified.timestamp() == pytest.approx(os.stat(tmp_path / "x.jpg").st_mtime)


@pytest.mark.parametrize("setup,message", [("missing", "no such file"), ("dir", "is a directory"),
                                           ("big", "file is 11 bytes, above input.max_file_bytes=10")])
def test_read_file_errors(tmp_path, setup, message):
    path = tmp_path / "x.jpg"
    if setup == "dir":
        path.mkdir()
    if setup == "big":
        path.write_bytes(b"x" * 11)
    with pytest.raises(ReadError, match=message):
        read_file(str(path), 10)
