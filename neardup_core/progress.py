"""Stage log lines and timings: what a person watching a run sees, and what the
manifest's ``stages`` records."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("neardup.progress")


@dataclass
class Progress:
    """Logs each stage as it starts and ends, and keeps the timings for the manifest.

    While a stage runs, a heartbeat logs Spark's task counts every ``heartbeat_seconds``,
    so a long embed stage on a big catalog still shows that it moves, and how fast.
    A stage's record (a dict the ``with`` block fills) goes into the manifest; its
    ``rows`` and ``errors``, where set, are also logged.
    """

    spark: object = None
    heartbeat_seconds: float = 30.0
    stages: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str, images: int | None = None):
        log.info("stage %s: started", name)
        record: dict = {"name": name}
        start = time.perf_counter()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(name, start, stop), daemon=True)
        beat.start()
        try:
            yield record
        finally:
            stop.set()
            beat.join()
        seconds = time.perf_counter() - start
        record["seconds"] = round(seconds, 3)
        self.stages.append(record)
        rows = f", {record['rows']} rows" if "rows" in record else ""
        rate = f", {images / seconds:.1f} images/s" if images and seconds > 0 else ""
        errors = f", {record['errors']} errors" if "errors" in record else ""
        log.info("stage %s: done in %.1f s%s%s%s", name, seconds, rows, rate, errors)

    def _heartbeat(self, name: str, start: float, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_seconds):
            if self.spark is None:
                continue
            tracker = self.spark.sparkContext.statusTracker()
            infos = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            done = sum(i.numCompletedTasks for i in infos if i)
            total = sum(i.numTasks for i in infos if i)
            log.info("stage %s: running for %.0f s, %d of %d Spark tasks done", name,
                     time.perf_counter() - start, done, total)
