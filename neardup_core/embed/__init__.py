"""Embedding: a batch of uint8 RGB pixels (n, size, size, 3) -> L2-normalised float32
vectors (n, dim), behind one small interface (:class:`Embedder`).

Modules:
    base: the interface, :class:`ModelError`, normalisation and model shape checks.
    factory: which backend a task runs, the embedder built once per Python worker, and
        the model the driver prepares before Spark starts.
    onnxruntime_backend, tensorrt_backend, tensorflow_backend: the backends (ONNX Runtime
        is the CPU default, TensorRT runs on GPU executors, TensorFlow runs any SavedModel
        and is what the ONNX export is checked against).
    models, onnx_export, efficientnet_lite, torch_state_dict: which model file to load,
        its ONNX export, and the default model built from its shipped weights.
    preprocess: pixel scaling before the model. batch: one Arrow batch of files ->
        embeddings, and the check of embeddings read from a user's table.

Importing this package loads no machine-learning runtime; each backend imports its own
when it is built.
"""

from .base import Embedder, ModelError, l2_normalise
from .factory import CPU_BACKEND, PreparedModel, choose_backend, engine_dir, get_embedder, prepare_model

__all__ = [
    "CPU_BACKEND",
    "Embedder",
    "ModelError",
    "PreparedModel",
    "choose_backend",
    "engine_dir",
    "get_embedder",
    "l2_normalise",
    "prepare_model",
]
