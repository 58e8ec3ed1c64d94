"""ONNX Runtime backend on the CPU: the default where a task has no GPU (measured about
twice as fast as TensorFlow for the default model here; see benchmarks/embed_backends.py)."""

from __future__ import annotations

import numpy as np

from .base import ModelError, check_input_shape, l2_normalise, probe_dim
from .preprocess import preprocess


class OnnxRuntimeEmbedder:
    """Runs an ONNX model (from :mod:`onnx_export` or the user's own) with ONNX Runtime."""

    def __init__(self, path: str, input_size: int, preprocess: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for unreadable files
            raise ModelError(f"model {path}: ONNX Runtime cannot load it: {type(err).__name__}: {err}") from err
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {path}: takes {[i.name for i in inputs]}, expected one image input")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"model {path}: input {inputs[0].name} is {inputs[0].type}, expected tensor(float)")
        check_input_shape(path, [d if isinstance(d, int) else None for d in inputs[0].shape], input_size)
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name
        self.path = path
        self.preprocess = preprocess
        self.dim = probe_dim(self._run, path, input_size)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalise(self._run(pixels))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: preprocess(pixels, self.preprocess)})[0]
