"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format.

This lets us use published PyTorch weights without installing PyTorch, and
without trusting the file: ``torch.load`` is plain ``pickle``, which can run
arbitrary code, so every pickle here goes through a restricted unpickler that
only knows the handful of globals a state dict of tensors needs.

Layout of a legacy ``torch.save`` file (``torch/serialization.py``,
``_legacy_save``), all pickles written back to back:

1. magic number ``0x1950a86a20f9469cfc6c``
2. protocol version ``1001``
3. ``sys_info`` dict (``little_endian``, ``type_sizes``, ...)
4. the object itself; tensors are ``_rebuild_tensor_v2(storage, offset,
   size, stride, requires_grad, backward_hooks)`` calls, and storages are
   persistent ids ``('storage', StorageType, key, location, numel,
   view_metadata)``
5. the list of storage keys, in the order their data follows
6. per key: an 8-byte element count, then the raw element bytes.

One file format, one module (a little over 300 lines): the restricted unpickler and
the storage reader check each other's assumptions and read best side by side.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "load_legacy_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# numpy has no bfloat16; we read its raw 16-bit words and widen them later.
_BFLOAT16 = "bfloat16"

# torch storage class name -> element dtype (byte order is applied later).
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(ValueError):
    """The pickle asked for a global that a plain state dict never needs."""


class _FormatError(ValueError):
    """Internal: a structural problem; re-raised with the file name attached."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.

    Deliberately not callable and not a numpy type, so a hostile pickle that
    REDUCEs on it gets an error instead of a constructor.
    """

    name: str
    dtype: Any

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == _BFLOAT16 else np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class _StorageRef:
    """A storage named in the main pickle, whose bytes come later in the file.

    ``offset``/``numel`` describe a view into the root storage ``key``
    (old torch versions could pickle storage views); for a root storage the
    offset is 0 and ``numel`` is the whole storage.
    """

    key: str
    storage_type: _StorageType
    root_numel: int
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """Arguments of a ``_rebuild_tensor_v2`` call, materialised after the
    storage bytes have been read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Safe replacement for ``torch._utils._rebuild_tensor_v2``.

    Only records (and type-checks) the arguments; the data does not exist yet
    when the main pickle is being read.
    """
    del requires_grad, backward_hooks, metadata  # meaningless without torch
    if not isinstance(storage, _StorageRef):
        raise _FormatError(f"tensor built from a non-storage object {type(storage).__name__}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise _FormatError(f"bad tensor size/stride {size!r} / {stride!r}")
    ints = (storage_offset, *size, *stride)
    if not all(type(v) is int and v >= 0 for v in ints):
        raise _FormatError(f"bad tensor offset/size/stride {ints!r}")
    return _TensorRef(storage, storage_offset, size, stride)


# (module, name) -> object handed to the pickle. Nothing else is reachable.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_ALLOWED_GLOBALS`` and torch storages.

    ``find_class`` is the single door through which a pickle reaches callables
    (GLOBAL, STACK_GLOBAL, INST, OBJ and EXT* all go through it), so refusing
    everything else here is what stops a malicious file from running code.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: not needed by a tensor state dict"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _FormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, root_numel, *rest = pid
        view_metadata = rest[0] if rest else None
        if not isinstance(storage_type, _StorageType):
            raise _FormatError(f"persistent id names a non-storage type {storage_type!r}")
        if not isinstance(key, str) or type(root_numel) is not int or root_numel < 0:
            raise _FormatError(f"bad storage key/size in persistent id {pid!r}")
        known = self.storages.get(key)
        if known is not None and (known.storage_type, known.root_numel) != (storage_type, root_numel):
            raise _FormatError(f"storage {key!r} declared twice with different type/size")
        offset, numel = 0, root_numel
        if view_metadata is not None:
            # (view_key, offset, view_size): a slice of the root storage.
            _view_key, offset, numel = view_metadata
            if not (type(offset) is int and type(numel) is int and offset >= 0
                    and offset + numel <= root_numel):
                raise _FormatError(f"storage view {view_metadata!r} outside its storage")
        root = _StorageRef(key, storage_type, root_numel, 0, root_numel)
        self.storages.setdefault(key, root)
        return _StorageRef(key, storage_type, root_numel, offset, numel)


def _load_pickle(f: BinaryIO, what: str) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(f)
    try:
        return unpickler.load(), unpickler
    except (UnsafePickleError, _FormatError):
        raise
    except EOFError:
        raise _FormatError(f"truncated while reading the {what}") from None
    except Exception as exc:  # noqa: BLE001 - any malformed-pickle error from the C unpickler
        raise _FormatError(f"corrupt {what}: {type(exc).__name__}: {exc}") from None


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    # A crafted header can declare any size; read() would allocate it before reading.
    left = _bytes_left(f)
    if left is not None and n > left:
        raise _FormatError(f"truncated in {what}: it declares {n} bytes, but the file has {left} left")
    data = f.read(n)
    if len(data) != n:
        raise _FormatError(f"truncated in {what}: wanted {n} bytes, got {len(data)}")
    return data


def _bytes_left(f: BinaryIO) -> int | None:
    """Bytes between the position and the end of ``f``, or None for a stream without size."""
    try:
        return os.fstat(f.fileno()).st_size - f.tell()
    except (AttributeError, OSError, ValueError):
        try:
            here = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(here)
            return end - here
        except (AttributeError, OSError, ValueError):
            return None


def _read_storages(f: BinaryIO, keys: list, storages: dict[str, _StorageRef],
                   byteorder: str) -> dict[str, np.ndarray]:
    """Read the raw storage records that follow the key list, in its order."""
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise _FormatError(f"storage {key!r} in the key list is not used by any tensor")
        if key in arrays:
            raise _FormatError(f"storage {key!r} listed twice")
        numel = int.from_bytes(_read_exact(f, 8, f"size of storage {key!r}"), byteorder)
        if numel != ref.root_numel:
            raise _FormatError(f"storage {key!r} holds {numel} elements, pickle said {ref.root_numel}")
        raw = _read_exact(f, numel * ref.storage_type.itemsize, f"data of storage {key!r}")
        arrays[key] = _decode(raw, ref.storage_type, byteorder)
    missing = storages.keys() - arrays.keys()
    if missing:
        raise _FormatError(f"no data for storages {sorted(missing)}")
    return arrays


def _decode(raw: bytes, storage_type: _StorageType, byteorder: str) -> np.ndarray:
    """Raw bytes -> native-endian numpy array."""
    order = "<" if byteorder == "little" else ">"
    if storage_type.dtype == _BFLOAT16:
        # bfloat16 is the top half of a float32.
        words = np.frombuffer(raw, dtype=order + "u2").astype(np.uint32)
        return (words << 16).view(np.float32)
    dtype = np.dtype(storage_type.dtype).newbyteorder(order)
    return np.frombuffer(raw, dtype=dtype).astype(np.dtype(storage_type.dtype))


def _materialise(name: str, ref: _TensorRef, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Apply offset/size/stride to the storage, with bounds checked first.

    ``as_strided`` does no bounds checking, so a hostile size/stride could
    otherwise read arbitrary process memory.
    """
    flat = arrays[ref.storage.key][ref.storage.offset:ref.storage.offset + ref.storage.numel]
    if 0 in ref.size:
        return np.empty(ref.size, dtype=flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= flat.size:
        raise _FormatError(f"tensor {name!r} reaches element {last} of a {flat.size}-element storage")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:],
        shape=ref.size,
        strides=[s * flat.itemsize for s in ref.stride],
        writeable=False,
    )
    # order="C": tensors permuted from TF arrays (e.g. conv weights stored in
    # (kh, kw, in, out) memory order) would otherwise keep their odd strides.
    return np.array(view, order="C", copy=True)


def _load(f: BinaryIO) -> dict[str, np.ndarray]:
    try:
        magic, _ = _load_pickle(f, "magic number")
    except _FormatError as exc:
        raise _FormatError(f"not a legacy torch.save file ({exc})") from None
    if type(magic) is not int or magic != _MAGIC_NUMBER:
        raise _FormatError("not a legacy torch.save file (bad magic number)")
    protocol, _ = _load_pickle(f, "protocol version")
    if protocol != _PROTOCOL_VERSION:
        raise _FormatError(f"unsupported torch protocol version {protocol!r}")
    sys_info, _ = _load_pickle(f, "sys_info")
    if not isinstance(sys_info, dict):
        raise _FormatError("sys_info is not a dict")
    byteorder = "little" if sys_info.get("little_endian", True) else "big"

    obj, unpickler = _load_pickle(f, "state dict pickle")
    keys, _ = _load_pickle(f, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _FormatError("storage key list is not a list of strings")
    arrays = _read_storages(f, keys, unpickler.storages, byteorder)

    if not isinstance(obj, dict):
        raise _FormatError(f"top-level object is a {type(obj).__name__}, not a state dict")
    result: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise _FormatError(f"entry {name!r} is not a named tensor")
        result[name] = _materialise(name, value, arrays)
    return result


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a legacy-format (pre-1.6, non-zip) PyTorch state dict without torch.

    Args:
        path: a file written by ``torch.save(model.state_dict(), path)`` with
            ``_use_new_zipfile_serialization=False`` (or by torch < 1.6).

    Returns:
        ``{parameter name: numpy array}`` in file order; arrays are
        C-contiguous copies with the tensor's shape and dtype (bfloat16 is
        widened to float32).

    Raises:
        UnsafePickleError: the file asks for a global outside the small
            allow-list (e.g. ``os.system``); nothing from it was executed.
        ValueError: the file is not a legacy torch file (zip-format files
            included), is truncated or corrupt, or is not a flat dict of
            tensors. The message names the file.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: zip-format torch file (torch>=1.6 default); only the legacy "
            "format is supported (re-save with _use_new_zipfile_serialization=False)"
        )
    with open(path, "rb") as f:
        try:
            return _load(f)
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except _FormatError as exc:
            raise ValueError(f"{path}: {exc}") from None
