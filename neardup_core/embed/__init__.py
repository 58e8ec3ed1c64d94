"""Embedding backends behind one small interface.

An :class:`Embedder` turns a batch of uint8 RGB pixels (n, size, size, 3) into
L2-normalised float32 vectors (n, dim). :func:`get_embedder` builds one per Python
worker and caches it, so a model is loaded once per worker, never per batch.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from ..config import EmbedConfig, ModelConfig


class ModelError(ValueError):
    """The configured model cannot be loaded or does not produce one vector per image."""


class Embedder(Protocol):
    dim: int

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, size, size, 3) RGB -> float32 (n, dim), each row of unit length."""


@functools.lru_cache(maxsize=2)
def get_embedder(model: ModelConfig, embed: EmbedConfig) -> Embedder:
    """The worker's embedder for this configuration, built on first use.

    The key is the (frozen, hashable) configuration made on the driver, so every task of
    a job on one Python worker shares one loaded model.

    Raises:
        ModelError: missing or unreadable model, or an output that is not (batch, dim).
    """
    from .models import resolve_model_path
    from .tensorflow import TensorFlowEmbedder

    return TensorFlowEmbedder(
        path=resolve_model_path(model),
        input_size=model.input_size,
        preprocess=model.preprocess,
        output=model.output,
        threads=embed.threads_per_task,
    )


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
