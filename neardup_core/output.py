"""Atomic output: results are written under a staging folder and moved into place, and
``_SUCCESS`` is written last, so a run that fails or is killed never leaves a result that
looks complete.

Layout of a finished run::

    OUTPUT/pairs/  groups/  embeddings/  errors/  report/  _manifest.json  _SUCCESS

File operations go through Hadoop's FileSystem API (the one Spark writes with), so the
same code handles local paths, HDFS and object stores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

from pyspark.sql import SparkSession

from .config import OutputConfig
from .lock import LOCK_NAME
from .sources import is_local, local_path
from .spark.jvm import hadoop_filesystem, read_text

DATASETS = ("pairs", "groups", "changes", "embeddings", "errors", "rejected_pairs", "report")
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
STAGING_PREFIX = "_staging-"
OWN_NAMES = frozenset(DATASETS) | {MANIFEST, SUCCESS, LOCK_NAME}
# Hadoop's local file system writes a checksum file beside each file it writes.
OWN_NAMES |= {f".{name}.crc" for name in OWN_NAMES}


class OutputError(ValueError):
    """The output location cannot be used (a finished run without --overwrite, foreign files)."""


def check_output(names: list[str] | None, path: str, overwrite: bool) -> None:
    """Refuse an output that holds a finished run (unless ``overwrite``) or foreign files.

    Args:
        names: entries directly under ``path``, or None if it does not exist.

    Raises:
        OutputError: naming the path and what is wrong.
    """
    if not names:
        return
    if SUCCESS in names and not overwrite:
        raise OutputError(f"--output {path}: holds a finished run (_SUCCESS); pass --overwrite to replace it")
    foreign = sorted(n for n in names if n not in OWN_NAMES and not n.startswith(STAGING_PREFIX))
    if foreign:
        raise OutputError(
            f"--output {path}: holds files this job did not write ({', '.join(foreign[:5])}); "
            "choose an empty or new directory"
        )


def check_local_output(cfg: OutputConfig) -> None:
    """:func:`check_output` before Spark starts, where the output is a local path (others
    are checked through Hadoop's file system once the session is up).

    Raises:
        OutputError: see :func:`check_output`.
    """
    path = cfg.path
    if is_local(path):
        entries = os.listdir(path) if os.path.isdir(path) else ([path] if os.path.exists(path) else None)
        check_output(entries, path, cfg.overwrite)


def previous_problem(path: str, exists: Callable[[str], bool]) -> str | None:
    """Why ``path`` (``--previous``) holds no finished run, or None when it does;
    ``exists(path)`` says whether a path exists (``os.path.exists``, or Hadoop's)."""
    if exists(f"{path.rstrip('/')}/{SUCCESS}"):
        return None
    return "holds no finished run (no _SUCCESS)" if exists(path) else "does not exist"


def check_local_previous(path: str | None) -> None:
    """:meth:`OutputDir.read_finished_manifest`'s check before Spark starts, where
    ``--previous`` is a local path (others are checked once the session is up).

    Raises:
        OutputError: no finished run there.
    """
    if path is not None and is_local(path):
        problem = previous_problem(local_path(path), os.path.exists)
        if problem:
            raise OutputError(f"--previous {path}: {problem}")


def data_files(folder: str) -> list[str]:
    """The data files of a local dataset folder: names not starting with ``_`` or ``.``
    (Spark's markers, Hadoop's checksums)."""
    return sorted(name for name in os.listdir(local_path(folder)) if not name.startswith(("_", ".")))


def hold_columns(folder: str, columns: list[str], binary: tuple[str, ...] = ()) -> bool:
    """Whether every Parquet data file of the local ``folder`` has exactly ``columns``, in
    that order, those named in ``binary`` as binary (read from the files' footers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = data_files(folder)
    for name in names:
        schema = pq.read_schema(os.path.join(local_path(folder), name))
        if schema.names != list(columns) or not all(pa.types.is_binary(schema.field(c).type) for c in binary):
            return False
    return bool(names)


def link_data_files(source: str, target: str) -> int:
    """Hard-link the :func:`data_files` of the local dataset folder ``source`` into the new
    folder ``target``, and return how many: a dataset carried whole from a previous run, without
    copying or rewriting it. Linked files share their bytes; Parquet files are never
    changed in place, and removing either run's folder leaves the other's whole.

    Raises:
        OSError: the folders are on different file systems, or the file system has no
            hard links; ``target`` is removed again.
    """
    names = data_files(source)
    os.makedirs(local_path(target))
    try:
        for name in names:
            os.link(os.path.join(local_path(source), name), os.path.join(local_path(target), name))
    except OSError:
        shutil.rmtree(local_path(target), ignore_errors=True)
        raise
    return len(names)


class OutputDir:
    """One run's output folder, staged under ``OUTPUT/_staging-RUN_ID``."""

    def __init__(self, spark: SparkSession, path: str, run_id: str):
        self._fs, self._Path = hadoop_filesystem(spark, path)
        self.root = self._Path(path)
        self.path = path.rstrip("/")
        self.staging = f"{self.path}/{STAGING_PREFIX}{run_id}"

    def read_finished_manifest(self, spark: SparkSession, path: str) -> dict:
        """The ``_manifest.json`` of the finished run in ``path`` (``--previous``).

        Raises:
            OutputError: no finished run there (no ``_SUCCESS``) or an unreadable manifest.
        """
        problem = previous_problem(path, lambda name: self._fs.exists(self._Path(name)))
        if problem:
            raise OutputError(f"--previous {path}: {problem}")
        text = read_text(spark, f"{path.rstrip('/')}/{MANIFEST}")
        try:
            return json.loads(text)
        except ValueError as err:
            raise OutputError(f"--previous {path}: unreadable {MANIFEST}: {err}") from err

    def entries(self) -> list[str] | None:
        if not self._fs.exists(self.root):
            return None
        if not self._fs.getFileStatus(self.root).isDirectory():
            return [self.path]
        return [status.getPath().getName() for status in self._fs.listStatus(self.root)]

    def staged(self, name: str) -> str:
        """Where a dataset is written before it is moved into place."""
        return f"{self.staging}/{name}"

    def replace_staged(self, name: str, replacement: str) -> None:
        """Make the staged ``replacement`` the staged ``name``: for a stage that rewrites
        what an earlier stage staged (verification rewrites pairs/)."""
        target = self._Path(self.staged(name))
        if self._fs.exists(target):
            self._fs.delete(target, True)
        if not self._fs.rename(self._Path(self.staged(replacement)), target):
            raise OSError(f"could not move {self.staged(replacement)} to {self.staged(name)}")

    def commit(self, manifest: dict) -> None:
        """Move the staged datasets into place, then write the manifest, then ``_SUCCESS``.

        The old ``_SUCCESS`` goes first, so a crash half-way leaves a folder that does not
        claim to be finished; each dataset moves whole, with one rename.
        """
        self._delete(SUCCESS)
        for name in (*DATASETS, MANIFEST):
            self._delete(name)
        for name in DATASETS:
            src = self._Path(self.staged(name))
            if self._fs.exists(src) and not self._fs.rename(src, self._Path(f"{self.path}/{name}")):
                raise OSError(f"could not move {self.staged(name)} into {self.path}")
        self._write_text(MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        self._write_text(SUCCESS, "")
        self.discard_staging()

    def discard_staging(self) -> None:
        """Remove this run's own staging folder (never another run's: it may be live)."""
        try:
            path = self._Path(self.staging)
            if self._fs.exists(path):
                self._fs.delete(path, True)
        except Exception:  # the JVM is going away (an interrupt): a local folder is removed here
            if not is_local(self.staging):
                raise
            shutil.rmtree(local_path(self.staging), ignore_errors=True)

    def staging_exists(self) -> bool:
        """Whether this run's staging folder is there (False when that cannot be told any
        more: a remote folder once the JVM has gone)."""
        try:
            return bool(self._fs.exists(self._Path(self.staging)))
        except Exception:  # noqa: BLE001 - the JVM is going away
            return is_local(self.staging) and os.path.exists(local_path(self.staging))

    def stale_staging(self) -> list[str]:
        """The staging folders of other runs (names). While this run holds the output
        lock (:mod:`neardup_core.lock`), no other run is live, so they are dead runs'."""
        if not self._fs.exists(self.root) or not self._fs.getFileStatus(self.root).isDirectory():
            return []
        own = self.staging.rsplit("/", 1)[-1]
        return sorted(name for name in (s.getPath().getName() for s in self._fs.listStatus(self.root))
                      if name.startswith(STAGING_PREFIX) and name != own)

    def remove_staging(self, names: list[str]) -> None:
        """Remove other runs' staging folders; call only while holding the output lock."""
        for name in names:
            self._fs.delete(self._Path(f"{self.path}/{name}"), True)

    def _delete(self, name: str) -> None:
        path = self._Path(f"{self.path}/{name}")
        if self._fs.exists(path):
            self._fs.delete(path, True)

    def _write_text(self, name: str, text: str) -> None:
        # Write beside the target and rename, so a reader never sees a partial file.
        tmp = self._Path(f"{self.staging}/{name}")
        stream = self._fs.create(tmp, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        if not self._fs.rename(tmp, self._Path(f"{self.path}/{name}")):
            raise OSError(f"could not write {self.path}/{name}")
