"""The embed stage: read, decode and embed each file, in Arrow batches, with the model
loaded once per Python worker (:func:`neardup_core.embed.get_embedder`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame

from ..config import EmbedConfig, InputConfig, ModelConfig
from ..embed import PreparedModel
from .arrow import optional_list_column
from .listing import EMBEDDED_SCHEMA


def embed_images(listing: DataFrame, prepared: PreparedModel, model: ModelConfig, embed_cfg: EmbedConfig,
                 input_cfg: InputConfig) -> DataFrame:
    """Read, decode and embed each listed file (:func:`embed.batch.embed_batches`: the next
    batches decoded on ``embed.decode_threads`` threads while the model runs).

    ``prepared`` is the driver's model (:func:`embed.prepare_model`); a shipped file goes
    to the executors with ``SparkContext.addFile``, otherwise each worker resolves
    ``model`` itself. Each task picks its backend and device from the GPUs Spark assigned
    it (:func:`embed.choose_backend`).

    Returns:
        EMBEDDED_SCHEMA rows: id, path, embedding, the image's width and height, the
        file's bytes and modification time; for files that failed, error_stage and
        error_message instead of the embedding.
    """
    shipped, dim = None, prepared.dim
    if prepared.shipped:
        listing.sparkSession.sparkContext.addFile(prepared.file)
        shipped = os.path.basename(prepared.file)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles

        from neardup_core.embed import get_embedder
        from neardup_core.embed.batch import decode_batch, embed_batches
        from neardup_core.embed.models import resolve_model_path

        backend, device = task_backend(embed_cfg.backend)
        local_file = resolve_model_path(model) if shipped is None else SparkFiles.get(shipped)
        embedder = get_embedder(local_file, backend, device, model, embed_cfg)

        def decode(batch: pa.RecordBatch):
            return decode_batch(
                paths=batch.column("path").to_pylist(),
                contents=batch.column("content").to_pylist(),
                prior_errors=batch.column("error_message").to_pylist(),
                input_cfg=input_cfg,
                model_cfg=model,
                listed_modified=batch.column("modified").to_pylist(),
                previous_hash=(batch.column("previous_hash").to_pylist()
                               if "previous_hash" in batch.schema.names else None),
                memo=memo,
            )

        memo: dict = {}  # identical files in this task are decoded and embedded once
        # The next batches are read and decoded while the model embeds this one.
        for batch, result in embed_batches(batches, decode, embedder, memo, embed_cfg.decode_threads):
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("id"),
                    batch.column("path"),
                    optional_list_column(result.embeddings, dim),
                    pa.array(result.width, type=pa.int32()),
                    pa.array(result.height, type=pa.int32()),
                    pa.array(result.file_bytes, type=pa.int64()),
                    pa.array(result.modified, type=pa.timestamp("us", tz="UTC")),
                    pa.array(result.content_hash, type=pa.string()),
                    pa.array(result.reused, type=pa.bool_()),
                    pa.array(result.error_stage, type=pa.string()),
                    pa.array(result.error_message, type=pa.string()),
                ],
                names=["id", "path", "embedding", "width", "height", "bytes", "modified", "content_hash", "reused",
                       "error_stage", "error_message"],
            )

    return listing.mapInArrow(run, EMBEDDED_SCHEMA)


def task_backend(configured: str) -> tuple[str, int | None]:
    """Inside a task: (backend, CUDA device) from the GPUs Spark assigned to this task."""
    from pyspark import TaskContext

    from neardup_core.embed import choose_backend

    gpus = TaskContext.get().resources().get("gpu")
    return choose_backend(configured, gpus.addresses if gpus else [])

