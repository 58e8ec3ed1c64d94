"""One Arrow batch of files -> embeddings, with a reason for each file that failed. Pure."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..config import InputConfig, ModelConfig
from ..decode import DecodeError, decode_image
from ..sources import ReadError, read_bytes
from . import Embedder


class EmbeddedBatch(NamedTuple):
    """Aligned with the input rows; ``embeddings[i]`` is None where ``error_stage[i]`` is set."""

    embeddings: list[np.ndarray | None]
    error_stage: list[str | None]
    error_message: list[str | None]


def decode_for_model(data: bytes, model: ModelConfig, max_pixels: int) -> np.ndarray:
    """:func:`decode_image` prepared as ``model`` says: input size, border trimming, colour.

    Raises:
        DecodeError: see :func:`decode_image`.
    """
    return decode_image(data, model.input_size, max_pixels, model.trim_borders, model.colour == "grayscale")


def embed_batch(
    paths: Sequence[str],
    contents: Sequence[bytes | None],
    prior_errors: Sequence[str | None],
    embedder: Embedder,
    input_cfg: InputConfig,
    model_cfg: ModelConfig,
) -> EmbeddedBatch:
    """Read (where ``contents`` is None), decode and embed a batch of files.

    A file that cannot be read or decoded becomes an error row; the rest of the batch goes
    on. ``prior_errors`` carries reasons found while listing (a file too large to read):
    such rows keep their reason and are not read.

    Memory: one decoded (size, size, 3) uint8 image per row, plus the model's activations.
    """
    n = len(paths)
    stages: list[str | None] = [None] * n
    messages: list[str | None] = list(prior_errors)
    pixels: list[np.ndarray] = []
    good: list[int] = []
    for i in range(n):
        if messages[i] is not None:
            stages[i] = "read"
            continue
        data = contents[i]
        try:
            if data is None:
                data = read_bytes(paths[i], input_cfg.max_file_bytes)
        except ReadError as err:
            stages[i], messages[i] = "read", str(err)
            continue
        try:
            pixels.append(decode_for_model(data, model_cfg, input_cfg.max_pixels))
            good.append(i)
        except DecodeError as err:
            stages[i], messages[i] = "decode", str(err)
        except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not fail the job
            stages[i], messages[i] = "decode", f"unexpected {type(err).__name__}: {err}"
    embeddings: list[np.ndarray | None] = [None] * n
    if good:
        vectors = embedder.embed(np.stack(pixels))
        finite = np.isfinite(vectors).all(axis=1)
        for row, vec, ok in zip(good, vectors, finite):
            if ok:
                embeddings[row] = vec
            else:  # NaN keys would put the image in bucket 0 of every table
                stages[row], messages[row] = "embed", "model output is not finite (NaN or inf)"
    return EmbeddedBatch(embeddings, stages, messages)


def check_vectors(values: Sequence[Sequence[float] | bytes | None], dim: int
                  ) -> tuple[list[np.ndarray | None], list[str | None], list[str | None]]:
    """Embeddings read from a user's table, checked: each value is a list of numbers or
    little-endian float32 bytes of length ``dim``, all finite. A bad row gets stage
    ``embedding`` and the reason instead of a vector."""
    vectors: list[np.ndarray | None] = []
    stages: list[str | None] = []
    messages: list[str | None] = []
    for value in values:
        problem = None
        vector = None
        if value is None:
            problem = "no embedding"
        else:
            if isinstance(value, (bytes, bytearray)):
                if len(value) % 4:
                    problem = f"binary embedding of {len(value)} bytes is not float32 values"
                else:
                    vector = np.frombuffer(value, dtype="<f4")
            else:
                vector = np.asarray([np.nan if v is None else v for v in value], dtype=np.float64)
            if problem is None and len(vector) != dim:
                problem = f"embedding has {len(vector)} values, expected {dim} like the first row"
            elif problem is None and not np.isfinite(vector).all():
                problem = "embedding has a missing, NaN or infinite value"
        vectors.append(None if problem else vector.astype(np.float32))
        stages.append("embedding" if problem else None)
        messages.append(problem)
    return vectors, stages, messages
