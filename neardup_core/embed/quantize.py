"""An INT8 copy of an ONNX export, for ONNX Runtime on the CPU (``embed.cpu_precision`` int8).

ONNX Runtime's static quantization (QDQ, weights int8 per channel, activations uint8 per
tensor, MinMax ranges) calibrated on the photos that Debian's opencv-doc package ships
(its JPEGs, prepared as the job prepares images: ``model.input_size``, border trimming,
colour). Made once per model and cached beside the FP32 export, keyed by the export's
bytes, the calibration photos, the preparation and the ONNX Runtime version.

What it costs and what it changes is measured in docs/performance.md; the quantized
model's embeddings against the FP32 model's are checked in tests/test_quantize.py on
photos not used for calibration (opencv-doc's PNGs).
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from importlib.metadata import version

import numpy as np

from ..config import ModelConfig
from .base import ModelError
from .models import cached_file

CALIBRATION_PHOTOS = "/usr/share/doc/opencv-doc/examples/data"
# Bump when the quantization code changes, so stale caches are rebuilt instead of reused.
QUANTIZE_VERSION = 1
MAX_PIXELS = 64_000_000


def calibration_files(folder: str = CALIBRATION_PHOTOS) -> list[str]:
    """The calibration photos: every JPEG in ``folder``, in name order.

    Raises:
        ModelError: none there (the package is not installed).
    """
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    if not files:
        raise ModelError(f"embed.cpu_precision int8: no calibration photos (*.jpg) under {folder}; install "
                         "them (apt-get install opencv-doc) or set embed.cpu_precision fp32")
    return files


def int8_model_path(fp32_path: str, model: ModelConfig, cache_dir: str, photos: str = CALIBRATION_PHOTOS) -> str:
    """The cached INT8 copy of the ONNX model ``fp32_path``, quantized first if absent.

    Raises:
        ModelError: no calibration photos, or ONNX Runtime cannot quantize the model.
    """
    files = calibration_files(photos)
    digest = hashlib.sha256()
    with open(fp32_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    for name in files:
        digest.update(os.path.basename(name).encode() + b"\0")
        with open(name, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    digest.update(f"|{model.input_size}|{model.preprocess}|{model.trim_borders}|{model.colour}"
                  f"|{version('onnxruntime')}|{QUANTIZE_VERSION}".encode())
    stem = os.path.splitext(os.path.basename(fp32_path))[0]
    target = os.path.join(cache_dir, "onnx", f"{stem}-int8-{digest.hexdigest()[:16]}.onnx")
    return cached_file(target, lambda: quantize(fp32_path, calibration_inputs(files, model)))


def calibration_inputs(files: list[str], model: ModelConfig) -> np.ndarray:
    """float32 (n, size, size, 3) model inputs of the photos, prepared like the job's."""
    from .batch import decode_for_model
    from .preprocess import preprocess

    pixels = []
    for name in files:
        with open(name, "rb") as fh:
            pixels.append(decode_for_model(fh.read(), model, MAX_PIXELS))
    return preprocess(np.stack(pixels), model.preprocess)


def quantize(fp32_path: str, inputs: np.ndarray) -> bytes:
    """The INT8 (QDQ) model's bytes, its activation ranges taken from ``inputs``.

    Raises:
        ModelError: ONNX Runtime cannot quantize the model.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Photos(CalibrationDataReader):
        def __init__(self):
            self._rows = iter(range(len(inputs)))

        def get_next(self):
            i = next(self._rows, None)
            return None if i is None else {name: inputs[i:i + 1]}

    with tempfile.TemporaryDirectory(prefix="neardup-quantize-") as work:
        prepared, quantized = os.path.join(work, "prepared.onnx"), os.path.join(work, "int8.onnx")
        try:
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
            quantize_static(prepared, quantized, Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as err:  # ORT and onnx raise their own types for graphs they cannot take
            raise ModelError(f"model {fp32_path}: ONNX Runtime cannot quantize it to INT8 "
                             f"({type(err).__name__}: {err}); set embed.cpu_precision fp32") from err
        with open(quantized, "rb") as fh:
            return fh.read()
