"""SavedModel / ``.keras`` -> ONNX, converted once per model and cached, checked against TensorFlow.

The ONNX file is what ONNX Runtime (the CPU default) and TensorRT (GPU executors) run.
It takes float32 ``images`` (n, size, size, 3) after ``model.preprocess`` and returns the
un-normalised embedding, exactly like :func:`tensorflow_backend.embedding_function`.

tf2onnx is tested against older TensorFlow releases than the one we run, so every
conversion is checked: the ONNX model and TensorFlow must agree on a probe batch
(cosine >= :data:`PARITY_MIN_COSINE` on every row) or the conversion is refused.
"""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version

import numpy as np

from .base import ModelError, l2_normalise, probe_dim
from .models import cached_file

OPSET = 17
INPUT_NAME = "images"
PARITY_MIN_COSINE = 0.999
# Bump when the export code changes, so stale caches are rebuilt instead of reused.
EXPORT_VERSION = 1


def onnx_model_path(model_path: str, output: str | None, input_size: int, cache_dir: str) -> str:
    """The cached ONNX export of ``model_path``, exporting it first if it is absent.

    The cache key covers the model's files, ``output``, ``input_size`` and the tf2onnx
    version, so a changed model is exported again instead of reusing a stale file. An
    ``.onnx`` ``model_path`` is returned as it is.

    Raises:
        ModelError: the model cannot be loaded or converted, or the conversion disagrees
            with TensorFlow.
    """
    if model_path.endswith(".onnx"):
        return model_path
    key = export_key(model_path, output, input_size)
    stem = os.path.splitext(os.path.basename(os.path.normpath(model_path)))[0]  # keeps "w0.1.0"
    target = os.path.join(cache_dir, "onnx", f"{stem}-{key}.onnx")
    return cached_file(target, lambda: export_onnx(model_path, output, input_size))


def export_key(model_path: str, output: str | None, input_size: int) -> str:
    """16 hex digits naming one export: the model's bytes, the options and the converter."""
    digest = _hash_model_files(hashlib.sha256(), model_path)
    digest.update(f"|{output}|{input_size}|{version('tf2onnx')}|{OPSET}|{EXPORT_VERSION}".encode())
    return digest.hexdigest()[:16]


def model_digest(model_path: str) -> str:
    """SHA-256 of a model's files (names and bytes): the same model, the same digest."""
    return _hash_model_files(hashlib.sha256(), model_path).hexdigest()


def _hash_model_files(digest, model_path: str):
    for name in _model_files(model_path):
        digest.update(os.path.relpath(name, model_path).encode() + b"\0")
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest


def _model_files(model_path: str) -> list[str]:
    if os.path.isfile(model_path):
        return [model_path]
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(model_path)
        for f in files
        if f.endswith((".pb", ".index")) or ".data-" in f
    )


def export_onnx(model_path: str, output: str | None, input_size: int) -> bytes:
    """Convert with tf2onnx and check parity with TensorFlow; the ONNX model's bytes.

    Raises:
        ModelError: conversion failed or the result disagrees with TensorFlow.
    """
    from .tensorflow_backend import embedding_function, import_tensorflow

    tf = import_tensorflow()
    import tf2onnx

    fn = embedding_function(tf, model_path, output, input_size)
    probe_dim(lambda pixels: fn(tf.constant(pixels, tf.float32)).numpy(), model_path, input_size)
    spec = [tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name=INPUT_NAME)]
    traced = tf.function(lambda images: fn(images))
    try:
        proto, _ = tf2onnx.convert.from_function(traced, input_signature=spec, opset=OPSET)
    except Exception as err:  # tf2onnx raises whatever the failing op handler raised
        raise ModelError(
            f"model {model_path}: ONNX export failed ({type(err).__name__}: {err}); "
            f"use embed.backend=tensorflow for this model"
        ) from err
    data = proto.SerializeToString()
    probe = probe_images(input_size)
    expected = np.asarray(fn(tf.constant(probe)))
    got = run_onnx(data, probe)
    worst = float(np.min(np.sum(l2_normalise(expected) * l2_normalise(got), axis=1)))
    if not worst >= PARITY_MIN_COSINE:
        raise ModelError(
            f"model {model_path}: the ONNX export disagrees with TensorFlow (worst cosine {worst:.5f} "
            f"< {PARITY_MIN_COSINE}); use embed.backend=tensorflow for this model"
        )
    return data


def probe_images(input_size: int, seed: int = 0) -> np.ndarray:
    """Four float32 0..255 images with structure at several scales (noise, gradients,
    blocks), so a wrong layout or a wrong layer shows in the embeddings."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 255.0, input_size, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), axis=-1)
    blocks = np.kron(rng.uniform(0, 255, (8, 8, 3)), np.ones((input_size // 8 + 1, input_size // 8 + 1, 1)))
    images = [
        rng.uniform(0, 255, (input_size, input_size, 3)),
        gradient,
        blocks[:input_size, :input_size],
        np.clip(gradient + rng.normal(0, 30, gradient.shape), 0, 255),
    ]
    return np.stack(images).astype(np.float32)


def run_onnx(model: bytes | str, images: np.ndarray) -> np.ndarray:
    """One call of an ONNX model on the CPU (checks and tests; the job uses a session per worker)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def to_fp16(model: bytes) -> bytes:
    """The same ONNX model with float16 weights and activations, float32 inputs and
    outputs kept (for TensorRT, whose strongly typed networks take precision from the graph)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per weight below float16's smallest normal
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        converted = float16.convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return converted.SerializeToString()
