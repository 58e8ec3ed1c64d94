"""Pixel scaling applied before the model, the same for every backend (pure NumPy)."""

from __future__ import annotations

import numpy as np

_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0

# name -> (scale, offset) applied as x * scale + offset; "torch" is per-channel.
PRESETS = {
    "none": (1.0, 0.0),  # raw 0..255 floats; the default model scales inside itself
    "unit": (1.0 / 255.0, 0.0),  # [0, 1]
    "tf": (1.0 / 127.5, -1.0),  # [-1, 1], Keras "tf" mode
    "torch": (1.0 / _TORCH_STD, -_TORCH_MEAN / _TORCH_STD),  # ImageNet mean/std
}


def preprocess(pixels: np.ndarray, preset: str) -> np.ndarray:
    """uint8 (n, h, w, 3) RGB -> float32 model input for ``model.preprocess`` = ``preset``."""
    scale, offset = PRESETS[preset]
    x = pixels.astype(np.float32)
    if preset == "none":
        return x
    return (x * np.float32(scale) + np.float32(offset)).astype(np.float32, copy=False)
