"""What every embedding backend shares: the :class:`Embedder` interface, the error for a
bad model, the row normalisation, and the checks of a model's input and output shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class ModelError(ValueError):
    """The configured model cannot be loaded or does not produce one vector per image."""


class Embedder(Protocol):
    dim: int

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, size, size, 3) RGB -> float32 (n, dim), each row of unit length."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def probe_dim(run: Callable[[np.ndarray], np.ndarray], path: str, input_size: int) -> int:
    """Embedding width, from one black image; the output must be (1, dim).

    Raises:
        ModelError: the model's output for one image is not a vector.
    """
    probe = np.asarray(run(np.zeros((1, input_size, input_size, 3), dtype=np.uint8)))
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise ModelError(
            f"model {path}: output for one {input_size}x{input_size} image has shape "
            f"{tuple(probe.shape)}, expected (1, dim); choose a pooled output with model.output"
        )
    return int(probe.shape[1])


def check_input_shape(path: str, shape, input_size: int) -> None:
    """Fail where a model's declared input (batch, height, width, channels) cannot take
    ``input_size`` x ``input_size`` RGB images. Unknown (None) dimensions accept any size."""
    dims = list(shape) if shape is not None else None
    if dims is None or len(dims) != 4:
        raise ModelError(f"model {path}: input shape {dims} is not (batch, height, width, channels)")
    _, height, width, channels = dims
    if channels is not None and channels != 3:
        if height == 3:
            raise ModelError(f"model {path}: input {dims} is channels-first; export it channels-last (NHWC)")
        raise ModelError(f"model {path}: input {dims} has {channels} channels; images are RGB (3)")
    if (height is not None and height != input_size) or (width is not None and width != input_size):
        raise ModelError(
            f"model.input_size is {input_size} but model {path} takes {height}x{width} images; "
            f"set model.input_size={height or width}"
        )
