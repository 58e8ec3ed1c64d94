"""Small per-task results sent back to the driver beside a stage's rows."""

from __future__ import annotations

from pyspark.accumulators import AccumulatorParam
from pyspark.sql import SparkSession


class Tally:
    """Counts that tasks report for the manifest (a Spark accumulator): what the bucket
    tasks found, how many pairs were scored.

    Each task records under (name, partition), so a task that runs again (a retry, or a
    stage recomputed after a lost shuffle file) replaces its earlier record instead of
    adding to it, and each partition is counted once. Read :meth:`values` after the
    action that ran the tasks.
    """

    def __init__(self, spark: SparkSession):
        self._acc = spark.sparkContext.accumulator({}, _MergeRecords())

    def record(self, name: str, values: tuple) -> None:
        """In a task: this task's values for ``name``."""
        from pyspark import TaskContext

        self._acc.add({(name, TaskContext.get().partitionId()): tuple(int(v) for v in values)})

    def record_arrays(self, name: str, *arrays) -> None:
        """In a task: this task's NumPy arrays for ``name`` (as :meth:`record`, kept whole)."""
        from pyspark import TaskContext

        self._acc.add({(name, TaskContext.get().partitionId()): arrays})

    def values(self, name: str) -> list[tuple]:
        """On the driver: one tuple per partition that recorded ``name``."""
        return [v for (key, _), v in sorted(self._acc.value.items()) if key == name]


class _MergeRecords(AccumulatorParam):
    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, value1: dict, value2: dict) -> dict:
        value1.update(value2)
        return value1
