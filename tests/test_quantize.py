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
from neardup_core.embed.factory import is_int8_copy
from neardup_core.embed.quantize import (
    CALIBRATION_PHOTOS,
    calibration_files,
    calibration_inputs,
    int8_model_path,
    photos_digest,
    probe_input,
    probe_misfit,
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
def export():
    """The default model and its FP32 export: all that auto needs (no photos)."""
    model = ModelConfig()
    return model, prepare_model(model, EmbedConfig(cpu_precision="fp32"))


@pytest.fixture(scope="module")
def prepared(export):
    if not os.path.isdir(CALIBRATION_PHOTOS):
        pytest.skip(f"{CALIBRATION_PHOTOS} missing: apt-get install opencv-doc (.ci/run does)")
    model, fp32 = export
    return model, fp32, prepare_model(model, EmbedConfig(cpu_precision="int8"))


@pytest.fixture
def no_photos(monkeypatch):
    """A machine without opencv-doc: whatever asks for the calibration photos fails."""
    def refuse(*_):
        raise AssertionError("the calibration photos were asked for")

    monkeypatch.setattr(quantize_module, "calibration_files", refuse)


def test_the_shipped_ranges_are_those_measured_on_the_photos_for_this_export(prepared):
    model, fp32, _ = prepared
    shipped = shipped_ranges(model)
    files = calibration_files()
    assert photos_digest(files) == shipped["photos"]["sha256"], \
        f"{CALIBRATION_PHOTOS} holds other photos than those the ranges were measured on ({shipped['photos']})"
    again = quantize(fp32.file, calibration_inputs(files, model))[1]
    redo = (f"the default export changed ({shipped['made_with']} when the ranges were measured): measure them "
            "again with python -m neardup_core.embed.quantize")
    assert sorted(again["data"]) == sorted(shipped["ranges"]["data"]), redo
    for name, measured in again["data"].items():
        for end in ("lowest", "highest"):
            # The same float32 network on another CPU may round differently in the last bits.
            np.testing.assert_allclose(measured[end]["data"], shipped["ranges"]["data"][name][end]["data"],
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name} {end}: {redo}")
    assert probe_misfit(quantize(fp32.file, probe_input(model))[1], shipped["probe"]) is None, redo


def test_auto_quantizes_the_default_model_from_the_shipped_ranges_without_the_photos(export, tmp_path, no_photos):
    model, fp32 = export
    copy = int8_model_path(fp32.file, model, str(tmp_path), calibrate=False)  # an empty cache: quantized now
    assert os.path.dirname(copy) == str(tmp_path / "onnx")
    embedder = get_embedder(copy, "onnxruntime", None, model, EmbedConfig())
    assert is_int8_copy(embedder) and not is_int8_copy(get_embedder(fp32.file, "onnxruntime", None, model,
                                                                    EmbedConfig()))
    assert embedder.dim == fp32.dim
    # What prepare_model gives by default: the INT8 copy of the default model (cached beside its
    # export); the model's own FP32 for any other model or preparation; TensorRT's FP32 export.
    auto = prepare_model(model, EmbedConfig())
    assert (auto.precision, auto.export) == ("int8", fp32.file) and auto.file != fp32.file
    assert os.path.basename(auto.file).startswith(Path(fp32.file).stem + "-int8-")
    assert prepare_model(dataclasses.replace(model, colour="rgb"), EmbedConfig()).precision is None
    assert prepare_model(dataclasses.replace(model, path=fp32.file), EmbedConfig()).precision is None
    assert prepare_model(model, EmbedConfig(), gpus=True) == fp32


def test_auto_and_int8_give_the_same_model_for_the_default_one(prepared):
    model, _, int8 = prepared
    auto = prepare_model(model, EmbedConfig())
    pixels = np.stack([decode_for_model((Path(CALIBRATION_PHOTOS) / name).read_bytes(), model, 64_000_000)
                       for name in PHOTOS])
    a = get_embedder(auto.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    b = get_embedder(int8.file, "onnxruntime", None, model, EmbedConfig()).embed(pixels)
    # Byte for byte where the ranges were measured on this CPU; elsewhere within its rounding.
    assert np.sum(a.astype(np.float64) * b, axis=1).min() >= 0.999


def test_shipped_ranges_that_do_not_fit_the_export_are_refused_with_the_versions(export, no_photos):
    model, fp32 = export
    shipped = shipped_ranges(model)
    probe = shipped["probe"]["data"]
    first, second = sorted(probe)[:2]

    def refused(changed_probe: dict, why: str) -> None:
        changed = {**shipped, "probe": {**shipped["probe"], "data": changed_probe}}
        with pytest.raises(ModelError, match=rf"do not fit .*{why}.* tensorflow-cpu .*Set embed.cpu_precision int8"):
            quantize_module.quantize_with_shipped(fp32.file, changed)

    # Another network: a tensor holds other values on the probe image.
    moved = {**probe[first], "highest": {**probe[first]["highest"], "data": [probe[first]["highest"]["data"][0] + 1]}}
    refused({**probe, first: moved}, rf"tensor {re.escape(first)} holds other values")
    # The same names holding each other's values, or a tensor the ranges do not name.
    refused({**probe, first: probe[second], second: probe[first]}, "holds other values")
    refused({name: r for name, r in probe.items() if name != first},
            rf"its tensors differ \(1 without a shipped range, e\.g\. \[{re.escape(repr(first))}\]; 0 shipped but not")
    # Ranges lacking a tensor the probe has: ONNX Runtime refuses them, and so do we.
    data = {name: r for name, r in shipped["ranges"]["data"].items() if name != second}
    with pytest.raises(ModelError, match=rf"do not fit .*ONNX Runtime says .*{re.escape(second)}"):
        quantize_module.quantize_with_shipped(fp32.file, {**shipped, "ranges": {**shipped["ranges"], "data": data}})
    assert quantize_module.quantize_with_shipped(fp32.file, shipped)  # and the ranges as shipped fit


def test_a_runs_int8_copy_named_as_model_path_runs_as_it_is(export, no_photos):
    model, fp32 = export
    copy = prepare_model(model, EmbedConfig())
    user = dataclasses.replace(model, path=copy.file)
    for precision in ("auto", "int8", "fp32"):
        again = prepare_model(user, EmbedConfig(cpu_precision=precision))
        assert (again.file, again.precision, again.digest) == (copy.file, "int8", copy.digest), precision
    with pytest.raises(ModelError, match="INT8 copy, for ONNX Runtime on CPUs.*export_file"):
        prepare_model(user, EmbedConfig(), gpus=True)


def test_unreadable_shipped_ranges_say_which_file_and_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "SHIPPED_RANGES", str(tmp_path / "gone.json"))
    with pytest.raises(ModelError, match=r"cannot read the INT8 ranges .*gone.json.*embed.cpu_precision fp32"):
        shipped_ranges(ModelConfig())


def test_the_shipped_ranges_are_package_data():
    import tomllib

    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as fh:
        patterns = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["neardup_core.embed"]
    assert any(Path(quantize_module.SHIPPED_RANGES).match(pattern) for pattern in patterns)


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
