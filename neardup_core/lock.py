"""The output lock: one run at a time writes into an output folder.

A run creates ``OUTPUT/_lock.json`` atomically before it does any work, holding its run
id, host and process id, and removes it when it ends (success, failure or Ctrl-C). A
second run that finds the file exits 2 naming the run that holds it. A lock whose
process is gone (same host, no such pid) or whose host cannot be asked (another
machine) is *stale*: it is reported, and taken over only with ``--break-lock``; a lock
held by a live process on this host is never taken over.

Creation is atomic where it can be: ``O_CREAT | O_EXCL`` on a local path, and Hadoop's
``FileSystem.create(path, overwrite=false)`` elsewhere (atomic on HDFS; on object stores
as atomic as the store's conditional put). Since the lock proves no other run is live,
the holder may remove ``_staging-*`` folders that other (dead) runs left behind.

No Spark here: a remote lock is handed the Hadoop file system by the caller
(:func:`neardup_core.spark.jvm.hadoop_filesystem`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass

LOCK_NAME = "_lock.json"


class LockError(ValueError):
    """The output is locked by another run (or a stale lock was not broken)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: what the lock file says."""

    run_id: str
    host: str
    pid: int

    @classmethod
    def me(cls, run_id: str) -> Holder:
        return cls(run_id, socket.gethostname(), os.getpid())

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        """The holder a lock file names, or None for an unreadable one (a run killed
        between creating the file and writing it)."""
        try:
            data = json.loads(text or "")
            return cls(str(data["run_id"])[:100], str(data["host"])[:255], int(data["pid"]))
        except (ValueError, TypeError, KeyError):
            return None

    def text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid})"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(holder: Holder | None, host: str) -> str | None:
    """Why a lock may be taken over with --break-lock, or None when its holder is alive.

    >>> stale_reason(Holder("r", "h", 999999999), "h")
    'its process 999999999 is gone'
    """
    if holder is None:
        return "its file names no run (a run killed while creating it)"
    if holder.host != host:
        return f"it was taken on another host ({holder.host}), whose processes this run cannot see"
    if not process_alive(holder.pid):
        return f"its process {holder.pid} is gone"
    return None


class LocalLockFile:
    """The lock file on a local path, created with ``O_CREAT | O_EXCL``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.made_folder = False

    def create(self, text: str) -> bool:
        """Create the file holding ``text``; False when it already exists."""
        try:
            if not os.path.isdir(self.folder):
                try:
                    os.makedirs(self.folder)
                    self.made_folder = True
                except FileExistsError:
                    pass
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:  # read-only mount, no permission, a file where the folder should be
            raise LockError(f"--output {self.folder}: cannot write there ({err.strerror})") from err
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return True

    def read(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                return fh.read(4096)
        except FileNotFoundError:
            return None

    def take_away(self, seen: str | None) -> bool:
        """Remove a stale lock whose text was ``seen``, unless another run replaced it
        meanwhile: it is renamed aside first (atomic), then checked."""
        aside = f"{self.path}.broken-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it; try to create ours
        with open(aside, encoding="utf-8", errors="replace") as fh:
            moved = fh.read(4096)
        if moved != (seen or ""):
            # Not the lock we judged stale: put it back (fails if one exists again).
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.made_folder:
            with contextlib.suppress(OSError):  # only when the run left it empty (a failed invocation)
                os.rmdir(self.folder)


class HadoopLockFile:
    """The lock file through a Hadoop ``FileSystem`` (HDFS, object stores):
    ``create(path, overwrite=false)`` fails when the file exists."""

    def __init__(self, fs, path_class, folder: str, read_text):
        self._fs = fs
        self._name = f"{folder.rstrip('/')}/{LOCK_NAME}"
        self._path = path_class(self._name)
        self._read_text = read_text  # path -> str (neardup_core.spark.jvm.read_text)

    def create(self, text: str) -> bool:
        try:
            stream = self._fs.create(self._path, False)
        except Exception as err:
            if self._fs.exists(self._path):
                return False
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise LockError(f"--output {self._name.rsplit('/', 1)[0]}: cannot write there ({first})") from err
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def read(self) -> str | None:
        if not self._fs.exists(self._path):
            return None
        try:
            return self._read_text(self._name)[:4096]
        except Exception:  # noqa: BLE001 - removed between exists and open: released
            return None

    def take_away(self, seen: str | None) -> bool:
        if self.read() != seen:
            return False
        self._fs.delete(self._path, False)
        return True

    def remove(self) -> None:
        self._fs.delete(self._path, False)


class OutputLock:
    """Holds an output folder for one run. ``acquire`` before any work, ``release`` at the
    end (idempotent)."""

    def __init__(self, output: str, run_id: str, break_lock: bool = False):
        self.output = output
        self.me = Holder.me(run_id)
        self.break_lock = break_lock
        self.file: LocalLockFile | HadoopLockFile | None = None
        self.broken: str | None = None  # what the broken stale lock said, for the log

    @property
    def held(self) -> bool:
        return self.file is not None

    def acquire(self, file: LocalLockFile | HadoopLockFile) -> None:
        """Create the lock file, or take over a stale one when ``break_lock``.

        Raises:
            LockError: another run holds it, naming that run; or a stale lock without
                ``break_lock``, saying why it is stale and how to break it.
        """
        for _ in range(3):
            if file.create(self.me.text()):
                self.file = file
                return
            seen = file.read()
            if seen is None:
                continue  # released meanwhile: try again
            holder = Holder.parse(seen)
            why = stale_reason(holder, self.me.host)
            who = holder.describe() if holder else "an unknown run"
            where = f"--output {self.output}"
            if why is None:
                raise LockError(f"{where}: locked by {who}, which is still running; wait for it to finish")
            if not self.break_lock:
                raise LockError(f"{where}: locked by {who}, but the lock looks stale: {why}; "
                                f"pass --break-lock to take it over if no run is writing there")
            if file.take_away(seen):
                self.broken = f"{who}: {why}"
        raise LockError(f"--output {self.output}: the lock changed hands while this run tried to take it; "
                        "another run is starting there")

    def release(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            file.remove()
