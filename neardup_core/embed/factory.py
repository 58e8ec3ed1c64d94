"""Choosing and building embedders: which backend a task runs (:func:`choose_backend`),
the embedder each Python worker builds once (:func:`get_embedder`), and the model the
driver prepares before Spark starts (:func:`prepare_model`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..config import EmbedConfig, ModelConfig
from .base import Embedder, ModelError

if TYPE_CHECKING:
    from .onnxruntime_backend import OnnxRuntimeEmbedder

CPU_BACKEND = "onnxruntime"  # measured fastest on the CPU: benchmarks/embed_backends.py


def choose_backend(configured: str, gpu_addresses: Sequence[str]) -> tuple[str, int | None]:
    """Which backend a task runs, and on which CUDA device.

    Args:
        configured: ``embed.backend``.
        gpu_addresses: the GPU addresses Spark assigned to the task (empty for none).

    Returns:
        (backend, device): ``auto`` gives TensorRT on the first assigned GPU, else
        ONNX Runtime on the CPU; a CPU backend gets device None.

    Raises:
        ModelError: ``tensorrt`` was asked for but the task has no GPU.
    """
    backend = configured
    if backend == "auto":
        backend = "tensorrt" if gpu_addresses else CPU_BACKEND
    if backend != "tensorrt":
        return backend, None
    if not gpu_addresses:
        raise ModelError(
            "embed.backend tensorrt: this task has no GPU assigned; give executors GPUs with "
            "spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount (conf/spark-gpu.conf)"
        )
    try:
        return backend, int(gpu_addresses[0])
    except ValueError as err:
        raise ModelError(f"GPU address {gpu_addresses[0]!r} from Spark is not a CUDA device index") from err


@functools.lru_cache(maxsize=2)
def get_embedder(model_file: str, backend: str, device: int | None, model: ModelConfig,
                 embed: EmbedConfig) -> Embedder:
    """The worker's embedder, built on first use and kept for the worker's life.

    Args:
        model_file: a SavedModel or ``.keras`` for ``tensorflow``; an ONNX file for the others.
        backend: ``tensorflow``, ``onnxruntime`` or ``tensorrt`` (see :func:`choose_backend`).
        device: CUDA device index for ``tensorrt``.

    The key is made on the driver (paths and frozen configuration), so every task of a job
    on one Python worker shares one loaded model.

    Raises:
        ModelError: unreadable model, an output that is not (batch, dim), a wrong input
            size, or a TensorRT engine that cannot be built or loaded.
    """
    if backend == "tensorflow":
        from .tensorflow_backend import TensorFlowEmbedder

        return TensorFlowEmbedder(model_file, model.input_size, model.preprocess, model.output,
                                  embed.threads_per_task)
    if backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder(model_file, model.input_size, model.preprocess, embed.threads_per_task)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTEmbedder, ensure_plan

        plan = ensure_plan(model_file, engine_dir(model, embed), device, embed.precision, embed.batch_size,
                           model.input_size)
        return TensorRTEmbedder(plan, device, embed.batch_size, model.input_size, model.preprocess)
    raise ValueError(f"unknown backend {backend!r}")


def engine_dir(model: ModelConfig, embed: EmbedConfig) -> str:
    """Where TensorRT plans are looked up and built: ``embed.engine_dir``, or
    ``{model.cache_dir}/engines``."""
    return os.path.expanduser(embed.engine_dir or os.path.join(model.cache_dir, "engines"))


class PreparedModel(NamedTuple):
    """The model the driver prepared for the embed stage, and how it reaches the executors.

    Attributes:
        file: the driver-side path of what executors run: an ONNX file, or for
            ``embed.backend`` tensorflow a SavedModel directory or ``.keras`` file.
        dim: the embedding width.
        shipped: True when ``file`` is one file that the Spark stage ships with
            ``SparkContext.addFile`` and each task reads at
            ``SparkFiles.get(os.path.basename(file))``; False when each worker resolves
            the model itself with ``resolve_model_path(model)`` (the TensorFlow backend,
            whose model may be a SavedModel directory rather than one file). Decided once,
            by :func:`prepare_model`, so no other code asks which backend was configured.
        digest: SHA-256 of ``file``'s bytes: what an incremental run compares to know
            that the previous run's embeddings came from the same model.
        precision: ``int8`` where ``file`` is an INT8 copy neardup made (in this run, as
            ``embed.cpu_precision`` says, or in an earlier one whose copy is ``model.path``),
            else None: the model's own float precision.
        export: the FP32 ONNX export ``file`` was quantized from in this run, else None.
    """

    file: str
    dim: int
    shipped: bool
    digest: str = ""
    precision: str | None = None
    export: str | None = None


def prepare_model(model: ModelConfig, embed: EmbedConfig, gpus: bool = False) -> PreparedModel:
    """On the driver, before Spark starts: resolve the model, export it to ONNX unless the
    TensorFlow backend is forced (cached; checked against TensorFlow), quantize that to
    INT8 where ``embed.cpu_precision`` says so and the tasks run ONNX Runtime on the CPU
    (``gpus``: tasks are given GPUs, so ``auto`` runs TensorRT, which builds from the FP32
    export), and load it once on the CPU so a bad model fails here, with a message,
    instead of in every task.

    Raises:
        ModelError: any problem with the model (see :func:`get_embedder`).
    """
    from .models import resolve_model_path
    from .onnx_export import model_digest, onnx_model_path

    on_tensorflow = embed.backend == "tensorflow"
    source = resolve_model_path(model)
    if source.endswith(".onnx"):
        if on_tensorflow:
            raise ModelError(f"model.path {model.path}: an ONNX file cannot run on embed.backend tensorflow")
        if model.output is not None:
            raise ModelError(f"model.output {model.output!r}: ONNX files are read at their first output; "
                             "export the embedding as the first output and leave model.output null")
    if on_tensorflow:
        dim = get_embedder(source, "tensorflow", None, model, embed).dim
        return PreparedModel(source, dim, shipped=False, digest=model_digest(source))
    onnx = onnx_model_path(source, model.output, model.input_size, os.path.expanduser(model.cache_dir))
    precision, export = None, None
    on_cpu = embed.backend == "onnxruntime" or (embed.backend == "auto" and not gpus)
    if source.endswith(".onnx") and is_int8_copy(get_embedder(onnx, "onnxruntime", None, model, embed)):
        if not on_cpu:  # TensorRT and its FP16 conversion take float graphs
            raise ModelError(f"model.path {model.path}: neardup's INT8 copy, for ONNX Runtime on CPUs; GPU executors "
                             "build TensorRT engines from the FP32 export it was made from (export_file in the "
                             "manifest that named this file)")
        precision = "int8"  # a run's INT8 copy, named by its manifest: run as it is, recorded as it is
    elif on_cpu and cpu_int8(model, embed):
        from .quantize import int8_model_path

        export = onnx
        onnx = int8_model_path(onnx, model, os.path.expanduser(model.cache_dir),
                               calibrate=embed.cpu_precision == "int8")
        precision = "int8"
    dim = get_embedder(onnx, "onnxruntime", None, model, embed).dim
    return PreparedModel(onnx, dim, shipped=True, digest=model_digest(onnx), precision=precision, export=export)


def is_int8_copy(embedder: OnnxRuntimeEmbedder) -> bool:
    """Whether an ONNX Runtime embedder runs a copy neardup quantized (its metadata says so)."""
    from .quantize import STAMP_KEY

    return embedder.metadata.get(STAMP_KEY) == "int8"


def cpu_int8(model: ModelConfig, embed: EmbedConfig) -> bool:
    """Whether ONNX Runtime on the CPU runs the INT8 copy (``embed.cpu_precision``):
    ``int8`` for any model, calibrated on opencv-doc's photos; ``auto`` where the package
    ships the ranges (the default model at its default preparation: 1.3-1.7 x the embed
    stage on 2 cores, held-out F1 0.003 below FP32's, docs/performance.md), and for any
    other model its own FP32, whose INT8 quality neardup has not measured."""
    from .quantize import shipped_ranges

    if embed.cpu_precision == "auto":
        return shipped_ranges(model) is not None
    return embed.cpu_precision == "int8"
