import logging
import time
from types import SimpleNamespace

import pytest

from neardup_core.progress import Progress


class FakeTracker:
    def getActiveStageIds(self):
        return [3, 4]

    def getStageInfo(self, stage_id):
        return SimpleNamespace(numCompletedTasks=stage_id, numTasks=10)


def test_stage_logs_start_heartbeat_and_end_with_rate(caplog):
    progress = Progress(spark=SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=FakeTracker)),
                        heartbeat_seconds=0.05)
    with caplog.at_level(logging.INFO, logger="neardup"), progress.stage("embed", images=100) as record:
        time.sleep(0.2)
        record["rows"] = 100
        record["errors"] = 2
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "stage embed: started"
    assert any("stage embed: running for" in line and "7 of 20 Spark tasks done" in line for line in lines)
    assert lines[-1].startswith("stage embed: done in 0.2 s, 100 rows, ")
    assert lines[-1].endswith("images/s, 2 errors")
    assert progress.stages[0]["name"] == "embed" and progress.stages[0]["seconds"] >= 0.2


def test_a_failing_stage_stops_its_heartbeat_and_is_not_recorded():
    progress = Progress(heartbeat_seconds=0.01)
    with pytest.raises(RuntimeError), progress.stage("pairs"):
        raise RuntimeError("boom")
    assert progress.stages == []
