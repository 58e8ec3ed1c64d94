"""TensorRT backend: an engine built from the ONNX export, run on one GPU of the executor.

A serialised engine (a *plan*) only runs on the GPU model and TensorRT version that built
it, so plans are named by both (:func:`plan_filename`) and kept under ``embed.engine_dir``.
``neardup build-engine`` builds one ahead of the job on a node of each GPU type; otherwise
the first task on a node builds it under a file lock and the rest of the node's tasks
load it.

Precision: TensorRT 10.12 deprecated and 11 removed the FP16 builder flag; networks are
strongly typed and take their precision from the ONNX graph. FP16 therefore means an
ONNX graph converted to float16 (:func:`onnx_export.to_fp16`, float32 inputs and outputs
kept), then built as it is.

Needs the ``gpu`` extra (``tensorrt``, ``cuda-python``, ``onnxconverter-common``); nothing
here is imported on CPU executors.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .base import ModelError, l2_normalise
from .preprocess import preprocess

WORKSPACE_BYTES = 1 << 30


def plan_filename(model_key: str, gpu_name: str, compute_capability: tuple[int, int], trt_version: str,
                  precision: str, max_batch: int, input_size: int) -> str:
    """File name of the plan for one model on one GPU model and TensorRT version.

    >>> plan_filename("lite0-0123abcd", "NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.106", "fp16", 32, 224)
    'lite0-0123abcd-NVIDIA_H100_80GB_HBM3-sm90-trt11.4.0.106-fp16-b32-224px.plan'
    """
    gpu = re.sub(r"[^A-Za-z0-9.-]+", "_", gpu_name.strip()).strip("_") or "unknown-gpu"
    major, minor = compute_capability
    return f"{model_key}-{gpu}-sm{major}{minor}-trt{trt_version}-{precision}-b{max_batch}-{input_size}px.plan"


def _import_gpu_stack():
    try:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        raise ModelError(
            f"embed.backend tensorrt needs the tensorrt and cuda-python packages on the GPU executors "
            f"(pip install 'neardup[gpu]'): {err}"
        ) from err
    return trt, cudart


def _cuda(cudart, result):
    """Unwrap a cuda-python call's (error, value...) tuple, raising on an error."""
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {err!r}: {cudart.cudaGetErrorString(err)[1].decode()}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity(device: int) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of CUDA device ``device``."""
    _, cudart = _import_gpu_stack()
    try:
        props = _cuda(cudart, cudart.cudaGetDeviceProperties(device))
    except RuntimeError as err:
        raise ModelError(f"CUDA device {device}: {err}") from err
    return props.name.decode("utf-8", "replace").strip(), (props.major, props.minor)


def ensure_plan(onnx_path: str, engine_dir: str, device: int, precision: str, max_batch: int,
                input_size: int) -> str:
    """Path of the plan for ``onnx_path`` on this device's GPU model, building it first
    (under a file lock, written atomically) if no process has yet.

    Raises:
        ModelError: TensorRT is missing, or the ONNX model does not parse or build.
    """
    trt, _ = _import_gpu_stack()
    from .models import cached_file

    gpu_name, capability = gpu_identity(device)
    model_key = os.path.splitext(os.path.basename(onnx_path))[0]
    plan = os.path.join(engine_dir, plan_filename(model_key, gpu_name, capability, trt.__version__,
                                                  precision, max_batch, input_size))
    return cached_file(plan, lambda: build_plan(onnx_path, device, precision, max_batch, input_size),
                       setting="embed.engine_dir")


def build_plan(onnx_path: str, device: int, precision: str, max_batch: int, input_size: int) -> bytes:
    """A serialised engine for batches of 1..``max_batch`` images, tuned for ``max_batch``.

    Raises:
        ModelError: the ONNX model does not parse or the engine does not build.
    """
    trt, cudart = _import_gpu_stack()
    from .onnx_export import to_fp16

    with open(onnx_path, "rb") as fh:
        model = fh.read()
    if precision == "fp16":
        model = to_fp16(model)
    _cuda(cudart, cudart.cudaSetDevice(device))  # the builder targets the current device
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: TensorRT keeps the graph's types (always on, and the flag ignored, in 11).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"model {onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    name = network.get_input(0).name
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    shape = (input_size, input_size, 3)
    profile.set_shape(name, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"model {onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    return bytes(plan)


class TensorRTEmbedder:
    """Runs a plan on CUDA device ``device``, in chunks of at most ``max_batch`` images.

    Memory: device buffers for one chunk of inputs and outputs, allocated once.
    """

    def __init__(self, plan_path: str, device: int, max_batch: int, input_size: int, preprocess: str):
        trt, cudart = self._trt, self._cudart = _import_gpu_stack()
        self.device, self.max_batch, self.preprocess = device, max_batch, preprocess
        # An engine and its context are bound to the device current when they are made.
        _cuda(cudart, cudart.cudaSetDevice(device))
        self._logger = trt.Logger(trt.Logger.WARNING)
        with open(plan_path, "rb") as fh:
            self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(fh.read())
        if self._engine is None:
            raise ModelError(f"TensorRT plan {plan_path}: cannot be loaded on GPU {device} "
                             f"(built for another GPU model or TensorRT version?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.dim = int(self._engine.get_tensor_shape(self._output)[-1])
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self._stream = _cuda(cudart, cudart.cudaStreamCreate())
        self._d_in = _cuda(cudart, cudart.cudaMalloc(max_batch * input_size * input_size * 3 * 4))
        self._d_out = _cuda(cudart, cudart.cudaMalloc(max_batch * self.dim * self._out_dtype.itemsize))
        self._context.set_tensor_address(self._input, int(self._d_in))
        self._context.set_tensor_address(self._output, int(self._d_out))

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        chunks = [self._run(pixels[i:i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)]
        return l2_normalise(np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        _cuda(cudart, cudart.cudaSetDevice(self.device))  # the current device is per thread
        x = np.ascontiguousarray(preprocess(pixels, self.preprocess), dtype=np.float32)
        if not self._context.set_input_shape(self._input, x.shape):
            raise RuntimeError(f"TensorRT rejected input shape {x.shape}")
        out = np.empty((len(x), self.dim), dtype=self._out_dtype)
        _cuda(cudart, cudart.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice,
                                             self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _cuda(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, kind.cudaMemcpyDeviceToHost,
                                             self._stream))
        _cuda(cudart, cudart.cudaStreamSynchronize(self._stream))  # x and out live until here
        return out.astype(np.float32, copy=False)
