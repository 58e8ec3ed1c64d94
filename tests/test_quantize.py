"""The INT8 copy of the default model's ONNX export (embed.cpu_precision int8): cached like
the export, told apart by incremental runs, and close to the FP32 model on real photos."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from neardup_core import incremental
from neardup_core.config import Config, EmbedConfig, ModelConfig
from neardup_core.embed import get_embedder, prepare_model
from neardup_core.embed.batch import decode_for_model
from neardup_core.embed.quantize import CALIBRATION_PHOTOS, calibration_files

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
    # The default is the FP32 export, for the built-in model and a user's.
    assert prepare_model(model, EmbedConfig()) == fp32
    user = dataclasses.replace(model, path=fp32.file)
    assert prepare_model(user, EmbedConfig()).precision is None
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
