"""TensorFlow backend: a SavedModel directory or a ``.keras`` file, on the CPU.

:func:`embedding_function` is also what the ONNX export traces, so both backends run the
same graph.
"""

from __future__ import annotations

import os

import numpy as np

from .base import ModelError, check_input_shape, l2_normalise, probe_dim
from .preprocess import preprocess


def import_tensorflow(threads: int = 0):
    """TensorFlow with quiet logs and, where it is not yet initialised, ``threads`` intra-op threads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep worker logs readable
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TF already initialised in this process; the first setting stands
    return tf


class TensorFlowEmbedder:
    """Runs a TensorFlow model; ``dim`` is read from a probe batch at load time."""

    def __init__(self, path: str, input_size: int, preprocess: str, output: str | None, threads: int):
        self._tf = import_tensorflow(threads)
        self.path = path
        self.preprocess = preprocess
        self._fn = embedding_function(self._tf, path, output, input_size)
        self.dim = probe_dim(self._run, path, input_size)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalise(self._run(pixels))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self._fn(self._tf.constant(preprocess(pixels, self.preprocess))).numpy()


def embedding_function(tf, path: str, output: str | None, input_size: int):
    """A function from a float32 (n, input_size, input_size, 3) tensor to the embedding tensor.

    Raises:
        ModelError: missing or unreadable model, unknown output, or a model built for
            another input size or channel count.
    """
    if not os.path.exists(path):
        raise ModelError(f"model.path {path}: no such file or directory")
    try:
        if path.endswith((".keras", ".h5")):
            fn, shape = _keras_fn(tf, path, output)
        else:
            fn, shape = _saved_model_fn(tf, path, output)
    except ModelError:
        raise
    except Exception as err:  # TF raises many unrelated types for unreadable models
        raise ModelError(f"model.path {path}: cannot load: {type(err).__name__}: {err}") from err
    check_input_shape(path, shape, input_size)
    return fn


def _keras_fn(tf, path: str, output: str | None):
    import keras

    model = keras.models.load_model(path, compile=False)
    if output is not None:
        try:
            layer = model.get_layer(output)
        except ValueError as err:
            names = ", ".join(layer.name for layer in model.layers[-5:])
            raise ModelError(f"model.output {output!r}: no such layer in {path} (last layers: {names})") from err
        model = keras.Model(model.inputs, layer.output)
    if len(model.inputs) != 1:
        raise ModelError(f"model {path}: has {len(model.inputs)} inputs, expected one image input")
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    infer.model = model  # keep the model alive with the function
    return infer, tuple(model.inputs[0].shape)


def _saved_model_fn(tf, path: str, output: str | None):
    loaded = tf.saved_model.load(path)
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelError(f"model.path {path}: SavedModel has no 'serving_default' signature")
    fn = signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelError(f"model {path}: serving_default takes {sorted(inputs)}, expected one image input")
    ((input_name, input_spec),) = inputs.items()
    outputs = list(fn.structured_outputs)
    if output is None:
        if len(outputs) != 1:
            raise ModelError(f"model.path {path}: several outputs {outputs}; set model.output to one of them")
        output = outputs[0]
    elif output not in outputs:
        raise ModelError(f"model.output {output!r}: not an output of {path}; outputs: {outputs}")

    def run(x):
        if input_spec.dtype != tf.float32:  # e.g. a uint8 image input; preprocess "none" keeps 0..255
            x = tf.cast(x, input_spec.dtype)
        return fn(**{input_name: x})[output]

    # Keep the loaded object alive: the concrete function holds only weak references.
    run.loaded = loaded
    return run, tuple(input_spec.shape)
