"""Where images come from: input checks, the file-name filter, and reading bytes by path.

Pure (no Spark). The Spark listing that uses these lives in :mod:`neardup_core.pipeline`.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import stat
from typing import NamedTuple
from urllib.parse import urlparse

from .config import InputConfig


class InputError(ValueError):
    """The input as a whole is unusable (missing path, no images, bad manifest)."""


class ReadError(OSError):
    """One file could not be read; recorded as a row in ``errors/``."""


def is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(path: str) -> str:
    """A local path without a ``file:`` scheme (Spark reports ``file:/abs/path``)."""
    parsed = urlparse(path)
    return parsed.path if parsed.scheme == "file" else path


def require_local_path(path: str, option: str) -> None:
    """A local path given as ``option`` (``--input``, ``--embeddings``) must exist: checked
    before Spark starts, which would otherwise log a Java stack trace first. A URI is left
    to its file system.

    Raises:
        InputError: a local path that does not exist.
    """
    if is_local(path) and not os.path.exists(local_path(path)):
        raise InputError(f"{option} {path}: no such file or directory")


def resolve_format(cfg: InputConfig) -> str:
    """``directory``, ``parquet`` or ``csv``; ``auto`` is decided by the path itself.

    Raises:
        InputError: a local path that does not exist, or one ``auto`` cannot classify.
    """
    path = cfg.path
    if not path:
        raise InputError("--input is required")
    require_local_path(path, "--input")
    local = is_local(path)
    if cfg.format != "auto":
        if cfg.format == "parquet" and local and os.path.isdir(local_path(path)):
            _check_local_parquet(local_path(path))
        return cfg.format
    lowered = path.rstrip("/").lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".csv"):
        return "csv"
    if local and os.path.isfile(local_path(path)):
        raise InputError(
            f"--input {path}: a file that is neither .parquet nor .csv; give a directory of "
            "images or a manifest, or set input.format"
        )
    return "directory"


def _check_local_parquet(path: str, limit: int = 1000) -> None:
    """A local Parquet directory holds Parquet files (``PAR1`` at both ends), so that a
    directory of images given with ``input.format=parquet`` is one clear error instead of
    a failed Spark job. Names starting with ``_`` or ``.`` are skipped, as Spark does.

    Raises:
        InputError: naming the first file that is not Parquet, or an empty directory.
    """
    if os.path.isdir(path):
        files = []
        for folder, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
            files += [os.path.join(folder, n) for n in names if not n.startswith(("_", "."))]
            if len(files) >= limit:
                break
        if not files:
            raise InputError(f"--input {path}: input.format is parquet, but the directory holds no files")
    else:
        files = [path]
    for name in sorted(files)[:limit]:
        try:
            with open(name, "rb") as fh:
                head = fh.read(4)
                fh.seek(max(os.fstat(fh.fileno()).st_size - 4, 0))
                tail = fh.read(4)
        except OSError as err:
            raise InputError(f"--input {path}: cannot read {name}: {err.strerror}") from err
        if head != b"PAR1" or tail != b"PAR1":
            raise InputError(f"--input {path}: input.format is parquet, but {name} is not a Parquet file")


def extension_glob(extensions: tuple[str, ...]) -> str:
    """A Hadoop glob matching the extensions in any letter case, e.g. ``*.{[jJ][pP][gG]}``.

    Hadoop's ``pathGlobFilter`` is case-sensitive, and catalogues hold ``.JPG`` as often
    as ``.jpg``.
    """
    alts = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext) for ext in extensions]
    return "*.{" + ",".join(alts) + "}"


class FileBytes(NamedTuple):
    data: bytes
    modified: dt.datetime | None  # the file's modification time (UTC), where the file system keeps one


# URI schemes read through pyarrow.fs; anything else in a manifest is an errors/ row.
REMOTE_SCHEMES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs", "hdfs": "hdfs"}
# How long one remote file system may take to answer before its row fails: offline, an
# object store's client would otherwise retry for minutes on every row.
REMOTE_TIMEOUT_S = 10


def read_file(path: str, max_file_bytes: int) -> FileBytes:
    """Read one file named in a manifest: a local path or an ``s3://``, ``gs://`` or
    ``hdfs://`` URI (:data:`REMOTE_SCHEMES`).

    Never reads more than ``max_file_bytes + 1`` bytes, whatever size the file system
    reports (a device or a file growing while read reports 0); never opens what is not
    a regular file (a FIFO would block, ``/dev/zero`` never ends).

    Raises:
        ReadError: missing, a dangling symbolic link, a directory, not a regular file,
            unreadable, larger than ``max_file_bytes``, an unsupported URI scheme, or a
            file system that cannot be reached.
    """
    try:
        if is_local(path):
            return _read_local(local_path(path), max_file_bytes)
        return _read_remote(path, max_file_bytes)
    except ReadError:
        raise
    except FileNotFoundError as err:
        raise ReadError("no such file") from err
    except OSError as err:
        raise ReadError(f"cannot read: {_first_line(err)}") from err
    except Exception as err:
        raise ReadError(f"cannot read: {type(err).__name__}: {_first_line(err)}") from err


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def _read_local(local: str, max_file_bytes: int) -> FileBytes:
    try:
        info = os.stat(local)
    except FileNotFoundError:
        if os.path.islink(local):
            raise ReadError("dangling symbolic link (its target does not exist)") from None
        raise ReadError("no such file") from None
    if stat.S_ISDIR(info.st_mode):
        raise ReadError("is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ReadError(f"not a regular file ({_file_kind(info.st_mode)})")
    _check_size(info.st_size, max_file_bytes)
    # O_NONBLOCK: should the name be swapped for a FIFO after the check, open does not wait.
    fd = os.open(local, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReadError("not a regular file")
        data = fh.read(max_file_bytes + 1)
    _check_read(len(data), max_file_bytes)
    return FileBytes(data, dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc))


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _read_remote(path: str, max_file_bytes: int) -> FileBytes:
    import pyarrow.fs

    fs, inner = _filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise ReadError("no such file")
    if info.type == pyarrow.fs.FileType.Directory:
        raise ReadError("is a directory")
    if info.size is not None:
        _check_size(info.size, max_file_bytes)
    with fs.open_input_stream(inner) as fh:
        data = fh.read(max_file_bytes + 1)
    _check_read(len(data), max_file_bytes)
    modified = info.mtime
    if modified is not None and modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.timezone.utc)
    return FileBytes(data, modified)


def _check_read(read: int, max_file_bytes: int) -> None:
    if read > max_file_bytes:
        raise ReadError(f"file is more than input.max_file_bytes={max_file_bytes} bytes (its reported size was "
                        "smaller: it grew, or is not an ordinary file)")


def _check_size(size: int, max_file_bytes: int) -> None:
    if size > max_file_bytes:
        raise ReadError(f"file is {size} bytes, above input.max_file_bytes={max_file_bytes}")


@functools.lru_cache(maxsize=16)
def _filesystem_for(scheme: str, netloc: str):
    """The pyarrow file system, with timeouts (:data:`REMOTE_TIMEOUT_S`), or the reason it
    cannot be had. Cached per worker with its failure, so that once a store is found
    unreachable the worker's other rows for it fail at once instead of waiting again."""
    import pyarrow.fs

    try:
        if scheme == "s3":
            fs = pyarrow.fs.S3FileSystem(connect_timeout=REMOTE_TIMEOUT_S, request_timeout=REMOTE_TIMEOUT_S,
                                         retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=2))
        elif scheme == "gs":
            fs = pyarrow.fs.GcsFileSystem(retry_time_limit=dt.timedelta(seconds=REMOTE_TIMEOUT_S))
        else:
            fs, _ = pyarrow.fs.FileSystem.from_uri(f"{scheme}://{netloc}/")
    except Exception as err:  # noqa: BLE001 - no client library, no configuration: rows fail with why
        return _Unreachable(f"{scheme}:// file system unavailable: {_first_line(err)}")
    return _Watched(fs, scheme, netloc)


class _Unreachable:
    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name):
        raise ReadError(self.reason)


class _Watched:
    """A remote file system that remembers, for this worker, that it could not be
    reached (no network, no credentials): later calls fail at once with that reason."""

    _SIGNS = ("NETWORK_CONNECTION", "UNAVAILABLE", "Could not resolve", "Retry policy exhausted",
              "access token", "Connection refused", "timed out", "Timeout")

    def __init__(self, fs, scheme: str, netloc: str):
        self._fs, self._where, self._down = fs, f"{scheme}://{netloc}", None

    def _call(self, name, *args):
        if self._down:
            raise ReadError(self._down)
        try:
            return getattr(self._fs, name)(*args)
        except OSError as err:
            text = _first_line(err)
            if any(sign in str(err) for sign in self._SIGNS):
                self._down = f"cannot reach {self._where}: {text}"
                raise ReadError(self._down) from err
            raise

    def get_file_info(self, path):
        return self._call("get_file_info", path)

    def open_input_stream(self, path):
        return self._call("open_input_stream", path)


def _filesystem(uri: str):
    """One pyarrow filesystem per (scheme, host) per worker; clients are costly to build.

    Raises:
        ReadError: a scheme neardup does not read (``ftp``, ``http``, ...).
    """
    parsed = urlparse(uri)
    scheme = REMOTE_SCHEMES.get(parsed.scheme.lower())
    if scheme is None:
        supported = ", ".join(f"{name}://" for name in REMOTE_SCHEMES)
        raise ReadError(f"unsupported URI scheme {parsed.scheme[:20]!r} (neardup reads local paths, file:, "
                        f"{supported})")
    fs = _filesystem_for(scheme, parsed.netloc)
    inner = f"{parsed.netloc}{parsed.path}" if scheme in ("s3", "gs") else parsed.path
    return fs, inner


class Listed(NamedTuple):
    """One file found under a local input directory: its size and time, or why it cannot
    be read (an ``errors/`` row of stage ``read``)."""

    path: str  # absolute, as found (through symbolic links, not resolved)
    size: int | None
    modified: dt.datetime | None
    error: str | None


def walk_directory(root: str, extensions: tuple[str, ...], max_file_bytes: int) -> list[Listed]:
    """Every file under a local ``root`` whose name ends in one of ``extensions`` (any
    letter case), in name order, each accounted for:

    - hidden names (``.x.jpg``, ``_x.jpg``, files under ``_dir/``) are read like any other
      (Spark's file sources would skip them silently);
    - symbolic links are followed; a directory reached twice (a link back up the tree,
      two links to one folder) is walked once, under the first path that reached it;
    - a dangling link, a FIFO, a device or a socket, an empty file, a file over
      ``max_file_bytes``, a directory that cannot be listed: a row with the reason, never
      opened.

    Cost: one ``stat`` per entry, on the driver.
    """
    suffixes = tuple("." + ext.lower() for ext in extensions)
    root = os.path.abspath(root)
    seen: set[tuple[int, int]] = set()
    found: list[Listed] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            found.append(Listed(folder, None, None, f"cannot list directory: {err.strerror or err}"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(suffixes):
                found.append(_listed(entry, max_file_bytes))
        pending.extend(reversed(subfolders))
    return sorted(found, key=lambda row: row.path)


def _listed(entry: os.DirEntry, max_file_bytes: int) -> Listed:
    try:
        info = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        why = "dangling symbolic link (its target does not exist)" if entry.is_symlink() else "no such file"
        return Listed(entry.path, None, None, why)
    except OSError as err:
        return Listed(entry.path, None, None, f"cannot read: {err.strerror or err}")
    # Milliseconds, as Spark's file listing records them (an incremental run compares them).
    modified = dt.datetime.fromtimestamp(info.st_mtime_ns // 1_000_000 / 1000, dt.timezone.utc)
    if not stat.S_ISREG(info.st_mode):
        return Listed(entry.path, None, modified, f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        return Listed(entry.path, 0, modified, "empty file")
    if info.st_size > max_file_bytes:
        return Listed(entry.path, info.st_size, modified,
                      f"file is {info.st_size} bytes, above input.max_file_bytes={max_file_bytes}")
    return Listed(entry.path, info.st_size, modified, None)
