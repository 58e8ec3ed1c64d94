import logging
import time
from types import SimpleNamespace

import pytest

from neardup_core.progress import Progress


class FakeTracker:
    def getActiveStageIds(self):
        return [3, 4]

    def getStageInfo(self, stage_id):
        return SimpleNamespace(numCompletedTasks=stage_id, numTasks=10, numActiveTasks=1)


class IdleTracker:
    """Two stages of tasks, none started."""

    def getActiveStageIds(self):
        return [1]

    def getStageInfo(self, stage_id):
        return SimpleNamespace(numCompletedTasks=0, numTasks=2, numActiveTasks=0)


class FakeContext:
    def __init__(self, tracker=FakeTracker):
        self.descriptions = []
        self.tracker = tracker

    def statusTracker(self):
        return self.tracker()

    def setJobDescription(self, description):
        self.descriptions.append(description)


def test_stage_logs_start_heartbeat_and_end_with_rate(caplog):
    progress = Progress(spark=SimpleNamespace(sparkContext=FakeContext()), heartbeat_seconds=0.05)
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


class GoneJvm(FakeContext):
    """A JVM that Ctrl-C has ended: naming the jobs fails once the stage has begun."""

    def setJobDescription(self, description):
        super().setJobDescription(description)
        if description is None:
            raise ConnectionError("Answer from Java side is empty")


def test_an_interrupted_stage_reports_the_interrupt_not_the_gone_jvm():
    context = GoneJvm()
    progress = Progress(spark=SimpleNamespace(sparkContext=context), heartbeat_seconds=10)
    with pytest.raises(KeyboardInterrupt), progress.stage("verify"):
        raise KeyboardInterrupt
    assert context.descriptions == ["neardup verify", None] and progress.stages == []
    # A stage whose own work ended well still fails on the JVM's error.
    with pytest.raises(ConnectionError), progress.stage("groups"):
        pass



@pytest.mark.parametrize("status, expected", [
    ((0, 2), "waiting for executors: 0 of 2 registered"),
    ((1, 2), "waiting for executors: 1 of 2 registered"),
    ((0, None), "waiting for executors: none registered yet"),
    ((2, 2), "waiting for executors: 2 registered, none running a task yet (a starting executor fetches and "
             "unpacks --archives first)"),
])
def test_a_stage_says_it_waits_for_executors(caplog, status, expected):
    context = FakeContext(IdleTracker if status == (2, 2) else FakeTracker)
    progress = Progress(spark=SimpleNamespace(sparkContext=context), heartbeat_seconds=60,
                        executors=lambda: status, executor_wait_seconds=0.05)
    with caplog.at_level(logging.INFO, logger="neardup"), progress.stage("list"):
        time.sleep(0.2)
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) >= 2
    assert all(line.startswith("stage list: running for ") and line.endswith(expected) for line in waits)
    assert context.descriptions == ["neardup list", None]


@pytest.mark.parametrize("status", [(2, 2), (3, None), None])
def test_no_waiting_line_once_the_executors_are_there(caplog, status):
    progress = Progress(spark=SimpleNamespace(sparkContext=FakeContext()), heartbeat_seconds=60,
                        executors=lambda: status, executor_wait_seconds=0.05)
    with caplog.at_level(logging.INFO, logger="neardup"), progress.stage("embed"):
        time.sleep(0.2)
    assert not [r for r in caplog.records if "waiting" in r.getMessage() or "running for" in r.getMessage()]
