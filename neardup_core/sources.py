"""Where images come from: input checks, the file-name filter, and reading bytes by path.

Pure (no Spark). The Spark listing that uses these lives in :mod:`neardup_core.pipeline`.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
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


def resolve_format(cfg: InputConfig) -> str:
    """``directory``, ``parquet`` or ``csv``; ``auto`` is decided by the path itself.

    Raises:
        InputError: a local path that does not exist, or one ``auto`` cannot classify.
    """
    path = cfg.path
    if not path:
        raise InputError("--input is required")
    local = is_local(path)
    if local and not os.path.exists(local_path(path)):
        raise InputError(f"--input {path}: no such file or directory")
    if cfg.format != "auto":
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


def read_file(path: str, max_file_bytes: int) -> FileBytes:
    """Read one file named in a manifest: a local path or any URI ``pyarrow.fs`` knows.

    Raises:
        ReadError: missing, unreadable, or larger than ``max_file_bytes``.
    """
    try:
        if is_local(path):
            local = local_path(path)
            if os.path.isdir(local):
                raise ReadError("is a directory")
            stat = os.stat(local)
            _check_size(stat.st_size, max_file_bytes)
            with open(local, "rb") as fh:
                return FileBytes(fh.read(), dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc))
        fs, inner = _filesystem(path)
        info = fs.get_file_info(inner)
        if info.size is None:
            raise ReadError("no such file")
        _check_size(info.size, max_file_bytes)
        with fs.open_input_stream(inner) as fh:
            modified = info.mtime
            if modified is not None and modified.tzinfo is None:
                modified = modified.replace(tzinfo=dt.timezone.utc)
            return FileBytes(fh.read(), modified)
    except ReadError:
        raise
    except FileNotFoundError as err:
        raise ReadError("no such file") from err
    except OSError as err:
        raise ReadError(f"cannot read: {err}") from err


def _check_size(size: int, max_file_bytes: int) -> None:
    if size > max_file_bytes:
        raise ReadError(f"file is {size} bytes, above input.max_file_bytes={max_file_bytes}")


@functools.lru_cache(maxsize=16)
def _filesystem_for(scheme: str, netloc: str):
    import pyarrow.fs

    fs, _ = pyarrow.fs.FileSystem.from_uri(f"{scheme}://{netloc}/")
    return fs


def _filesystem(uri: str):
    """One pyarrow filesystem per (scheme, host) per worker; clients are costly to build."""
    parsed = urlparse(uri)
    scheme = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}.get(parsed.scheme, parsed.scheme)
    fs = _filesystem_for(scheme, parsed.netloc)
    inner = f"{parsed.netloc}{parsed.path}" if scheme in ("s3", "gs") else parsed.path
    return fs, inner
