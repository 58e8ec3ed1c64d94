"""Stage log lines and timings: what a person watching a run sees, and what the
manifest's ``stages`` records."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("neardup.progress")


@dataclass
class Progress:
    """Logs each stage as it starts and ends, and keeps the timings for the manifest.

    While a stage runs, a heartbeat logs Spark's task counts every ``heartbeat_seconds``,
    so a long embed stage on a big catalog still shows that it moves, and how fast.
    On a cluster, ``executors`` (set by the job: :func:`spark.session.executor_status`)
    gives (executors registered, asked for or None); while fewer are registered than asked
    for, or none at all, or none has started the stage's tasks yet, a line every
    ``executor_wait_seconds`` says so instead, so a job waiting for a cluster's resources or
    for its executors to start says what it waits for.

    The stage's Spark jobs carry its name as their description (``neardup embed``) in the
    Spark UI and event log. A stage's record (a dict the ``with`` block fills) goes into
    the manifest; its ``rows`` and ``errors``, where set, are also logged.
    """

    spark: object = None
    heartbeat_seconds: float = 30.0
    executors: Callable[[], tuple[int, int | None] | None] | None = None
    executor_wait_seconds: float = 10.0
    stages: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str, images: int | None = None):
        log.info("stage %s: started", name)
        record: dict = {"name": name}
        start = time.perf_counter()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(name, start, stop), daemon=True)
        beat.start()
        self._describe_jobs(f"neardup {name}")
        ended = False
        try:
            yield record
            ended = True
        finally:
            stop.set()
            beat.join()
            try:
                self._describe_jobs(None)
            except Exception:
                # A stage that fails or is interrupted reports its own exception: Ctrl-C
                # reaches the JVM too, and a call into a JVM that is gone would replace a
                # KeyboardInterrupt by Py4J's "Answer from Java side is empty".
                if ended:
                    raise
        seconds = time.perf_counter() - start
        record["seconds"] = round(seconds, 3)
        self.stages.append(record)
        rows = f", {record['rows']} rows" if "rows" in record else ""
        rate = f", {images / seconds:.1f} images/s" if images and seconds > 0 else ""
        errors = f", {record['errors']} errors" if "errors" in record else ""
        log.info("stage %s: done in %.1f s%s%s%s", name, seconds, rows, rate, errors)

    def _describe_jobs(self, description: str | None) -> None:
        """Name the stage's Spark jobs (the Spark UI's and event log's job description)."""
        if self.spark is not None:
            self.spark.sparkContext.setJobDescription(description)

    def _heartbeat(self, name: str, start: float, stop: threading.Event) -> None:
        last = start
        while not stop.wait(min(self.heartbeat_seconds, self.executor_wait_seconds)):
            if self.spark is None:
                continue
            now = time.perf_counter()
            tracker = self.spark.sparkContext.statusTracker()
            infos = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info]
            done = sum(i.numCompletedTasks for i in infos)
            total = sum(i.numTasks for i in infos)
            waiting = self._waiting_for(sum(i.numActiveTasks for i in infos), done, total)
            if waiting:
                log.info("stage %s: running for %.0f s, waiting for executors: %s", name, now - start, waiting)
                last = now
            elif now - last >= self.heartbeat_seconds:
                log.info("stage %s: running for %.0f s, %d of %d Spark tasks done", name, now - start, done, total)
                last = now

    def _waiting_for(self, running: int, done: int, total: int) -> str | None:
        """``"0 of 2 registered"`` while executors are missing, or a note while the registered
        ones have not started any of the stage's tasks yet; None when nothing is awaited."""
        status = self.executors() if self.executors is not None else None
        if status is None:
            return None
        registered, expected = status
        if expected is not None and registered < expected:
            return f"{registered} of {expected} registered"
        if registered == 0:
            return "none registered yet"
        if total and not running and not done:
            return (f"{registered} registered, none running a task yet (a starting executor fetches and "
                    "unpacks --archives first)")
        return None
