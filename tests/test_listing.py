"""The local directory listing (spark.listing.list_inputs): the rows of a plain os.walk,
in name order, cut into partitions without a shuffle."""

import os

import pytest

from neardup_core.config import InputConfig
from neardup_core.spark.listing import list_inputs

pytestmark = pytest.mark.spark


def walk_reference(root, extensions, max_file_bytes):
    """path -> (size, error) for every file under ``root`` with one of ``extensions``,
    by os.walk (no links, loops or special files in the tree this test builds)."""
    rows = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(tuple("." + e for e in extensions)):
                path = os.path.join(folder, name)
                size = os.path.getsize(path)
                error = ("empty file" if size == 0 else
                         f"file is {size} bytes, above input.max_file_bytes={max_file_bytes}"
                         if size > max_file_bytes else None)
                rows["file:" + path] = (size, error)
    return rows


def test_local_listing_has_the_rows_of_os_walk_in_name_order(spark, tmp_path):
    for i in range(57):
        folder = tmp_path / f"d{i % 4}" / ("deep" if i % 3 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}.{'JPG' if i % 5 == 0 else 'png'}").write_bytes(b"x" * (i % 7) * 10)
    (tmp_path / "notes.txt").write_text("not an image")
    expected = walk_reference(str(tmp_path), ("jpg", "png"), 50)
    for rows_per_partition, partitions in ((2000, 2), (10, 6)):  # 2: defaultParallelism; 6: ceil(57 / 10)
        cfg = InputConfig(path=str(tmp_path), max_file_bytes=50, rows_per_partition=rows_per_partition,
                          extensions=("jpg", "png"))
        listing = list_inputs(spark, cfg, "directory")
        parts = listing.rdd.glom().map(lambda rows: [r.id for r in rows]).collect()
        assert len(parts) == partitions and all(parts)
        if partitions == 2:  # no shuffle: each partition a run of the name order
            assert [i for part in parts for i in part] == sorted(expected)
        got = listing.collect()
        assert {r.id: (r.size, r.error_message) for r in got} == expected
        assert all(r.path == r.id and r.content is None for r in got)
