"""Backend choice per task, TensorRT plan naming, preprocessing, model input checks and the
GPU discovery script. No model is loaded; the GPU test at the end needs TensorRT and a GPU."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from neardup_core.embed import ModelError, choose_backend
from neardup_core.embed.base import check_input_shape
from neardup_core.embed.preprocess import preprocess
from neardup_core.embed.tensorrt_backend import plan_filename

from .conftest import REPO


@pytest.mark.parametrize("configured, gpus, expected", [
    ("auto", [], ("onnxruntime", None)),
    ("auto", ["1"], ("tensorrt", 1)),
    ("auto", ["3", "2"], ("tensorrt", 3)),
    ("tensorrt", ["0"], ("tensorrt", 0)),
    ("onnxruntime", ["0"], ("onnxruntime", None)),
    ("tensorflow", ["0"], ("tensorflow", None)),
    ("tensorflow", [], ("tensorflow", None)),
])
def test_backend_follows_the_gpu_spark_assigned(configured, gpus, expected):
    assert choose_backend(configured, gpus) == expected


def test_forced_tensorrt_without_a_gpu_says_how_to_get_one():
    with pytest.raises(ModelError, match="no GPU assigned.*spark.task.resource.gpu.amount"):
        choose_backend("tensorrt", [])


def test_gpu_address_must_be_a_cuda_index():
    with pytest.raises(ModelError, match="'GPU-5f3a' from Spark is not a CUDA device index"):
        choose_backend("auto", ["GPU-5f3a"])


def test_plan_name_separates_everything_a_plan_depends_on():
    base = dict(model_key="lite0-0123", gpu_name="NVIDIA A10G", compute_capability=(8, 6),
                trt_version="11.4.0.106", precision="fp16", max_batch=32, input_size=224)
    names = {plan_filename(**base)}
    for key, other in [("model_key", "lite0-4567"), ("gpu_name", "NVIDIA L4"), ("compute_capability", (8, 9)),
                       ("trt_version", "10.13.3.9"), ("precision", "fp32"), ("max_batch", 64), ("input_size", 256)]:
        names.add(plan_filename(**{**base, key: other}))
    assert len(names) == 8
    assert plan_filename(**base) == plan_filename(**base)  # stable: a second run finds the first run's plan


def test_plan_name_is_a_safe_file_name():
    name = plan_filename("m", "  Tesla V100-SXM2/32GB (rev a)\n", (7, 0), "10.0.1", "fp16", 8, 224)
    assert name == "m-Tesla_V100-SXM2_32GB_rev_a-sm70-trt10.0.1-fp16-b8-224px.plan"
    assert "/" not in name and " " not in name


@pytest.mark.parametrize("preset, scale, offset", [
    ("none", 1.0, 0.0),
    ("unit", 1 / 255, 0.0),
    ("tf", 1 / 127.5, -1.0),
    ("torch", 1 / (255 * np.array([0.229, 0.224, 0.225])),
     -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])),
])
def test_preprocess_matches_float64_formula(preset, scale, offset):
    pixels = np.random.default_rng(7).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    got = preprocess(pixels, preset)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, pixels.astype(np.float64) * scale + offset, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(None, None, None, 3), (None, 224, 224, 3), (1, 224, None, None)])
def test_input_shapes_that_take_the_configured_size(shape):
    check_input_shape("m", shape, 224)


@pytest.mark.parametrize("shape, message", [
    ((None, 299, 299, 3), "model.input_size is 224 but model m takes 299x299 images; set model.input_size=299"),
    ((None, 3, 224, 224), "channels-first"),
    ((None, 224, 224, 1), "has 1 channels"),
    ((None, 1280), "is not \\(batch, height, width, channels\\)"),
])
def test_input_shape_mismatch_is_named(shape, message):
    with pytest.raises(ModelError, match=message):
        check_input_shape("m", shape, 224)


DISCOVERY = os.path.join(REPO, "conf", "gpu-discovery.sh")


def _discover(tmp_path, gpus: int | None, visible: str | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if gpus is not None:  # a fake nvidia-smi that lists `gpus` devices
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(gpus)))
        fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return subprocess.run(["bash", DISCOVERY], env=env, capture_output=True, text=True)


def test_discovery_script_reports_each_gpu_in_sparks_format(tmp_path):
    done = _discover(tmp_path, gpus=2)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_discovery_script_numbers_visible_devices_as_cuda_does(tmp_path):
    done = _discover(tmp_path, gpus=4, visible="2,3")
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_discovery_script_fails_loudly_without_a_driver(tmp_path):
    done = _discover(tmp_path, gpus=None)
    assert done.returncode != 0
    assert "nvidia-smi not found" in done.stderr
