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
