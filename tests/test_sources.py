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


@pytest.mark.parametrize("setup,message", [
    ("fifo", "not a regular file (a FIFO)"),
    ("dangling", "dangling symbolic link"),
    ("proc", "file is more than input.max_file_bytes=10 bytes"),  # reports size 0, holds more
])
def test_read_file_never_blocks_or_reads_past_the_limit(tmp_path, setup, message):
    path = tmp_path / "x.jpg"
    if setup == "fifo":
        os.mkfifo(path)
    if setup == "dangling":
        path.symlink_to(tmp_path / "gone.jpg")
    if setup == "proc":
        path.symlink_to("/proc/self/status")
    with pytest.raises(ReadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_file(str(path), 10)


def test_read_file_refuses_devices():
    with pytest.raises(ReadError, match=r"not a regular file \(a character device\)"):
        read_file("/dev/zero", 10)


@pytest.mark.parametrize("uri", ["ftp://host/a.jpg", "http://host/a.jpg", "https://host/a.jpg", "foo://h/a",
                                 "FTP://host/a.jpg"])
def test_read_file_unsupported_schemes_are_row_errors(uri):
    with pytest.raises(ReadError, match=r"unsupported URI scheme '\w+' \(neardup reads local paths"):
        read_file(uri, 10)


def test_unreachable_object_store_fails_fast_and_once(monkeypatch):
    import time

    from neardup_core import sources

    monkeypatch.setattr(sources, "REMOTE_TIMEOUT_S", 1)
    sources._filesystem_for.cache_clear()
    # Offline (or without credentials) neither store can be read; each must fail in seconds.
    for uri in ("gs://neardup-no-such-bucket/a.jpg", "s3://neardup-no-such-bucket/a.jpg"):
        started = time.monotonic()
        with pytest.raises(ReadError):
            read_file(uri, 10)
        assert time.monotonic() - started < 30
    sources._filesystem_for.cache_clear()
