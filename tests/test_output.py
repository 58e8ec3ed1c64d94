import pytest

from neardup_core.output import OutputError, check_output


@pytest.mark.parametrize("names", [None, [], ["pairs", "_manifest.json", "._manifest.json.crc"],
                                   ["_staging-20261122T000000Z-abcd1234", "pairs"]])
def test_new_empty_or_unfinished_outputs_are_usable(names):
    check_output(names, "/out", overwrite=False)


def test_finished_run_needs_overwrite():
    names = ["pairs", "embeddings", "errors", "_manifest.json", "_SUCCESS"]
    with pytest.raises(OutputError, match="--output /out: holds a finished run"):
        check_output(names, "/out", overwrite=False)
    check_output(names, "/out", overwrite=True)


def test_foreign_files_are_never_overwritten():
    with pytest.raises(OutputError, match=r"holds files this job did not write \(photos\)"):
        check_output(["photos", "_SUCCESS"], "/out", overwrite=True)


def test_data_files_are_linked_not_copied_and_checked_by_their_columns(tmp_path):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from neardup_core.output import hold_columns, link_data_files

    source = tmp_path / "embeddings"
    source.mkdir()
    pq.write_table(pa.table({"id": ["a"], "keys": [b"\x01"]}), source / "part-0.parquet")
    pq.write_table(pa.table({"id": ["b"], "keys": [b"\x02"]}), source / "part-1.parquet")
    (source / "_SUCCESS").write_text("")
    (source / ".part-0.parquet.crc").write_text("")
    assert hold_columns(str(source), ["id", "keys"], binary=("keys",))
    assert not hold_columns(str(source), ["id", "keys", "path"])
    assert not hold_columns(str(source), ["id", "keys"], binary=("id",))
    assert link_data_files(str(source), str(tmp_path / "tonight")) == 2
    assert sorted(os.listdir(tmp_path / "tonight")) == ["part-0.parquet", "part-1.parquet"]
    assert os.stat(tmp_path / "tonight" / "part-1.parquet").st_ino == os.stat(source / "part-1.parquet").st_ino
    pq.write_table(pa.table({"id": ["c"], "keys": [[3]]}), source / "part-2.parquet")  # keys as a list: older runs
    assert not hold_columns(str(source), ["id", "keys"], binary=("keys",))
    with pytest.raises(FileExistsError):  # the target must be new
        link_data_files(str(source), str(tmp_path / "tonight"))
    assert (tmp_path / "tonight" / "part-0.parquet").exists()
