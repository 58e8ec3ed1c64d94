"""The INT8 copy of the default model's ONNX export (embed.cpu_precision): quantized from the
ranges the package ships (auto, the default) or measured on the photos (int8), which agree;
cached like the export, told apart by incremental runs, and close to the FP32 model on real
photos."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest

from neardup_core import incremental
from neardup_core.config import Config, EmbedConfig, ModelConfig
from neardup_core.embed import ModelError, get_embedder, prepare_model
from neardup_core.embed import quantize as quantize_module
from neardup_core.embed.batch import decode_for_model
from neardup_core.embed.quantize import (
    CALIBRATION_PHOTOS,
    PROBE_TOLERANCE,
    calibration_files,
    calibration_inputs,
    probe,
    quantize,
    shipped_ranges,
)

pytestmark = pytest.mark.model

# Photos the calibration does not see (it takes opencv-doc's JPEGs): its PNG photographs.
PHOTOS = ["graf1.png", "graf3.png", "rubberwhale1.png", "rubberwhale2.png", "basketball1.png", "basketball2.png",
          "box_in_scene.png", "chicky_512.png", "smarties.png", "cards.png"]
# Measured on these photos: cosine 0.964 to 0.993 (docs/performance.md). Synthetic
# drawings (opencv-doc's gradient.png, pic6.png) go lower, down to 0.72.
MIN_COSINE = 0.95
MIN_MEAN_COSINE = 0.97
MAX_PAIR_SHIFT = 0.06


@pytest.fixture(scope="module")
def prepared():
    if not os.path.isdir(CALIBRATION_PHOTOS):
        pytest.skip(f"{CALIBRATION_PHOTOS} missing: apt-get install opencv-doc (.ci/run does)")
    model = ModelConfig()
    return (model, prepare_model(model, EmbedConfig(cpu_precision="fp32")),
            prepare_model(model, EmbedConfig(cpu_precision="int8")))


def test_the_shipped_ranges_are_those_measured_on_the_photos_for_this_export(prepared):
    model, fp32, _ = prepared
    shipped = shipped_ranges(model)
    again = quantize(fp32.file, calibration_inputs(calibration_files(), model))[1]
    redo = "the default export changed: write them again with python -m neardup_core.embed.quantize"
    assert sorted(again["data"]) == sorted(shipped["ranges"]["data"]), redo
    for name, measured in again["data"].items():
        for end in ("lowest", "highest"):
            # The same float32 network on another CPU may round differently in the last bits.
            np.testing.assert_allclose(measured[end]["data"], shipped["ranges"]["data"][name][end]["data"],
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name} {end}: {redo}")
    assert np.abs(probe(fp32.file, model) - shipped["probe"]).max() <= PROBE_TOLERANCE / 100, redo


def test_auto_quantizes_the_default_model_from_the_shipped_ranges_without_the_photos(prepared, tmp_path,
                                                                                      monkeypatch):
    model, fp32, int8 = prepared
    # A machine without opencv-doc: int8 cannot calibrate there, auto needs nothing from it.
    monkeypatch.setattr(quantize_module, "CALIBRATION_PHOTOS", str(tmp_path / "no-photos"))
    auto = prepare_model(model, EmbedConfig())
    assert auto.precision == "int8" and auto.dim == fp32.dim
    assert os.path.basename(auto.file).startswith(Path(fp32.file).stem + "-int8-")
    # The same ranges, so the same model: byte for byte where they were measured on this CPU.
    pixels = np.stack([decode_for_model((Path(CALIBRATION_PHOTOS) / name).read_bytes(), model, 64_000_000)
                       for name in PHOTOS])
    a = get_embedder(auto.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    b = get_embedder(int8.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    assert np.sum(a.astype(np.float64) * b, axis=1).min() >= 0.999
    # Ranges are shipped for the default model at its default preparation only; elsewhere
    # auto runs the model's own FP32.
    assert prepare_model(dataclasses.replace(model, colour="rgb"), EmbedConfig()).precision is None
    assert prepare_model(dataclasses.replace(model, path=fp32.file), EmbedConfig()).precision is None
    # Tasks given GPUs run TensorRT, which builds from the FP32 export.
    assert prepare_model(model, EmbedConfig(), gpus=True) == fp32


def test_shipped_ranges_that_do_not_fit_the_export_are_refused_with_the_versions(prepared):
    model, fp32, int8 = prepared
    shipped = shipped_ranges(model)
    # Another function (the INT8 copy stands in for another export), and a tensor without a range.
    with pytest.raises(ModelError, match=r"computes another function .* tensorflow-cpu .* Set embed.cpu_precision"):
        quantize_module.quantize_with_shipped(int8.file, shipped)
    for dropped in sorted(shipped["ranges"]["data"])[:2]:  # ORT finds one missing in two places
        data = {name: r for name, r in shipped["ranges"]["data"].items() if name != dropped}
        lacking = {**shipped, "ranges": {**shipped["ranges"], "data": data}}
        with pytest.raises(ModelError, match=rf"do not fit .*ONNX Runtime says .*{re.escape(dropped)}"):
            quantize_module.quantize_with_shipped(fp32.file, lacking)


def test_int8_embeddings_stay_close_to_fp32_on_photos_it_was_not_calibrated_on(prepared):
    model, fp32, int8 = prepared
    assert not set(PHOTOS) & {os.path.basename(f) for f in calibration_files()}
    pixels = np.stack([decode_for_model((Path(CALIBRATION_PHOTOS) / name).read_bytes(), model, 64_000_000)
                       for name in PHOTOS])
    a = get_embedder(fp32.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    b = get_embedder(int8.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    cos = np.sum(a.astype(np.float64) * b, axis=1)
    assert cos.min() >= MIN_COSINE and cos.mean() >= MIN_MEAN_COSINE, cos
    # The photos differ (bar two pairs of video frames), so the bound says something.
    assert np.median((a @ a.T)[np.triu_indices(len(a), 1)]) < 0.5
    # What pairing reads: the cosine between two photos moves by at most this much.
    upper = np.triu_indices(len(a), 1)
    assert np.abs((a @ a.T) - (b @ b.T))[upper].max() <= MAX_PAIR_SHIFT


def test_int8_model_is_cached_beside_the_export_and_keyed_by_content(prepared):
    model, fp32, int8 = prepared
    assert (fp32.precision, int8.precision) == (None, "int8") and int8.dim == fp32.dim
    assert os.path.dirname(int8.file) == os.path.dirname(fp32.file)
    assert os.path.basename(int8.file).startswith(Path(fp32.file).stem + "-int8-")
    stamp = os.stat(int8.file).st_mtime_ns
    again = prepare_model(model, EmbedConfig(cpu_precision="int8"))
    assert again == int8 and os.stat(int8.file).st_mtime_ns == stamp  # not quantized again
    assert int8.digest != fp32.digest
    # Tasks given GPUs run TensorRT (auto), which builds from the FP32 export.
    assert prepare_model(model, EmbedConfig(cpu_precision="int8"), gpus=True) == fp32
    # int8 quantizes a user's model too, calibrated on the photos.
    user = dataclasses.replace(model, path=fp32.file)
    assert prepare_model(user, EmbedConfig(cpu_precision="int8")).precision == "int8"


def test_an_incremental_run_says_the_precision_changed(prepared):
    _, fp32, int8 = prepared
    cfg = Config()
    before = incremental.fingerprint(cfg, fp32.digest, fp32.dim, fp32.precision)
    now = incremental.fingerprint(dataclasses.replace(cfg), int8.digest, int8.dim, int8.precision)
    why = incremental.differences(before, now)
    assert "model.precision: None before, 'int8' now" in why and len(why) == 2  # and the model's digest
    assert incremental.differences(now, before)[1] == "model.precision: 'int8' before, None now"
    # a run made before precision was recorded (no key) still matches an FP32 run
    older = {k: v for k, v in before.items() if k != "model.precision"}
    assert incremental.differences(older, before) == []
