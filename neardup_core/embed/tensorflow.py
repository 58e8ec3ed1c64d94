"""TensorFlow backend: a SavedModel directory or a ``.keras`` file, on the CPU."""

from __future__ import annotations

import os

import numpy as np

from . import ModelError, l2_normalise

# Pixel scaling presets for user models: (scale, offset) applied as x * scale + offset.
PREPROCESS = {
    "none": None,  # raw 0..255 floats; the default model scales inside itself
    "unit": (1.0 / 255.0, 0.0),  # [0, 1]
    "tf": (1.0 / 127.5, -1.0),  # [-1, 1], Keras "tf" mode
    "torch": None,  # ImageNet mean/std, handled below
}
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


class TensorFlowEmbedder:
    """Runs a TensorFlow model; ``dim`` is read from a probe batch at load time."""

    def __init__(self, path: str, input_size: int, preprocess: str, output: str | None, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep worker logs readable
        import tensorflow as tf

        if threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # TF already initialised in this process; the first setting stands
        self._tf = tf
        self.path = path
        self.input_size = input_size
        self.preprocess = preprocess
        self._fn = _load(tf, path, output)
        probe = self._run(np.zeros((1, input_size, input_size, 3), dtype=np.uint8))
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ModelError(
                f"model {path}: output for one {input_size}x{input_size} image has shape "
                f"{tuple(probe.shape)}, expected (1, dim); choose a pooled output with model.output"
            )
        self.dim = int(probe.shape[1])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalise(self._run(pixels))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        if self.preprocess == "torch":
            x = (x - _TORCH_MEAN) / _TORCH_STD
        elif PREPROCESS[self.preprocess] is not None:
            scale, offset = PREPROCESS[self.preprocess]
            x = x * scale + offset
        return np.asarray(self._fn(self._tf.constant(x)))


def _load(tf, path: str, output: str | None):
    if not os.path.exists(path):
        raise ModelError(f"model.path {path}: no such file or directory")
    try:
        if path.endswith((".keras", ".h5")):
            return _keras_fn(tf, path, output)
        return _saved_model_fn(tf, path, output)
    except ModelError:
        raise
    except Exception as err:  # TF raises many unrelated types for unreadable models
        raise ModelError(f"model.path {path}: cannot load: {type(err).__name__}: {err}") from err


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
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: infer(x).numpy()


def _saved_model_fn(tf, path: str, output: str | None):
    loaded = tf.saved_model.load(path)
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelError(f"model.path {path}: SavedModel has no 'serving_default' signature")
    fn = signatures["serving_default"]
    (input_name,) = fn.structured_input_signature[1].keys() or (None,)
    outputs = list(fn.structured_outputs)
    if output is None:
        if len(outputs) != 1:
            raise ModelError(f"model.path {path}: several outputs {outputs}; set model.output to one of them")
        output = outputs[0]
    elif output not in outputs:
        raise ModelError(f"model.output {output!r}: not an output of {path}; outputs: {outputs}")

    def run(x):
        result = fn(**{input_name: x}) if input_name else fn(x)
        return result[output].numpy()

    # Keep the loaded object alive: the concrete function holds only weak references.
    run.loaded = loaded
    return run
