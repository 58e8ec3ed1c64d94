"""One Arrow batch of files -> embeddings, with a reason for each file that failed; and the
check of embeddings read from a user's table instead. Pure."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import InputConfig, ModelConfig
from ..decode import Decoded, DecodeError, decode_with_size
from ..incremental import content_hash
from ..sources import ReadError, read_file
from .base import Embedder


class EmbeddedBatch(NamedTuple):
    """Aligned with the input rows; ``embeddings[i]`` is None where ``error_stage[i]`` is set."""

    embeddings: list[np.ndarray | None]
    error_stage: list[str | None]
    error_message: list[str | None]
    # What the keep/drop priority reads, for every embedded row (None where unknown).
    width: list[int | None]
    height: list[int | None]
    file_bytes: list[int | None]
    modified: list[dt.datetime | None]
    content_hash: list[str | None]  # of every file read
    reused: list[bool]  # the file's hash equals its previous_hash: not decoded, not embedded


T = TypeVar("T")

# Vectors a task remembers by content hash (embed_batch's memo): 20,000 x 1,280 float32
# is 100 MB at most.
MEMO_ROWS = 20_000


def decode_for_model(data: bytes, model: ModelConfig, max_pixels: int) -> np.ndarray:
    """:func:`decode_prepared`, the pixels only."""
    return decode_prepared(data, model, max_pixels).pixels


def decode_prepared(data: bytes, model: ModelConfig, max_pixels: int) -> Decoded:
    """:func:`decode.decode_with_size` prepared as ``model`` says: input size, border
    trimming, colour.

    Raises:
        DecodeError: see :func:`decode.decode_with_size`.
    """
    return decode_with_size(data, model.input_size, max_pixels, model.trim_borders, model.colour == "grayscale")


class DecodedBatch(NamedTuple):
    """A batch read and decoded, not yet embedded (:func:`decode_batch`): the rows' facts,
    and the pixels of the rows that go to the model."""

    stages: list[str | None]
    messages: list[str | None]
    width: list[int | None]
    height: list[int | None]
    file_bytes: list[int | None]
    modified: list[dt.datetime | None]
    hashes: list[str | None]
    reused: list[bool]
    pixels: list[np.ndarray]  # one per row of ``good``
    good: list[int]  # rows decoded for the model
    copied: dict[int, tuple[np.ndarray, int, int]]  # row -> a memo entry found while decoding


def embed_batch(
    paths: Sequence[str],
    contents: Sequence[bytes | None],
    prior_errors: Sequence[str | None],
    embedder: Embedder,
    input_cfg: InputConfig,
    model_cfg: ModelConfig,
    listed_modified: Sequence[dt.datetime | None] | None = None,
    previous_hash: Sequence[str | None] | None = None,
    memo: dict | None = None,
) -> EmbeddedBatch:
    """Read (where ``contents`` is None), decode and embed a batch of files.

    A file that cannot be read or decoded becomes an error row; the rest of the batch goes
    on. ``prior_errors`` carries reasons found while listing (a file too large to read):
    such rows keep their reason and are not read. ``listed_modified`` is each file's
    modification time where the listing knows it; a file read here gets its own. A file
    whose content hash equals its ``previous_hash`` (an incremental run) is marked reused
    and neither decoded nor embedded. ``memo`` (content hash -> (vector, width, height),
    kept by the caller across a task's batches, at most :data:`MEMO_ROWS` entries) lets a
    copy of a file embedded earlier in the task take its vector without being decoded.

    The same as :func:`decode_batch` then :func:`embed_decoded`; :func:`embed_batches`
    runs the two overlapped over a stream of batches.

    Memory: one decoded (size, size, 3) uint8 image per row, plus the model's activations.
    """
    decoded = decode_batch(paths, contents, prior_errors, input_cfg, model_cfg, listed_modified, previous_hash, memo)
    return embed_decoded(decoded, embedder, memo)


def decode_batch(
    paths: Sequence[str],
    contents: Sequence[bytes | None],
    prior_errors: Sequence[str | None],
    input_cfg: InputConfig,
    model_cfg: ModelConfig,
    listed_modified: Sequence[dt.datetime | None] | None = None,
    previous_hash: Sequence[str | None] | None = None,
    memo: dict | None = None,
) -> DecodedBatch:
    """The first half of :func:`embed_batch` (same arguments): read, hash and decode, and
    note the rows that are reused or found in ``memo``. Only reads ``memo``, so it may run
    on another thread while the model embeds an earlier batch."""
    n = len(paths)
    stages: list[str | None] = [None] * n
    messages: list[str | None] = list(prior_errors)
    width: list[int | None] = [None] * n
    height: list[int | None] = [None] * n
    file_bytes: list[int | None] = [None] * n
    modified = list(listed_modified) if listed_modified is not None else [None] * n
    hashes: list[str | None] = [None] * n
    reused = [False] * n
    pixels: list[np.ndarray] = []
    good: list[int] = []
    copied: dict[int, tuple[np.ndarray, int, int]] = {}  # row -> a memo entry
    for i in range(n):
        if messages[i] is not None:
            stages[i] = "read"
            continue
        data = contents[i]
        try:
            if data is None:
                data, read_modified = read_file(paths[i], input_cfg.max_file_bytes)
                if modified[i] is None:  # the listing's time wins: a full run reads the same one
                    modified[i] = read_modified
        except ReadError as err:
            stages[i], messages[i] = "read", str(err)
            continue
        file_bytes[i] = len(data)
        hashes[i] = content_hash(data)
        if previous_hash is not None and previous_hash[i] == hashes[i]:
            reused[i] = True
            continue
        entry = memo.get(hashes[i]) if memo is not None else None
        if entry is not None:
            copied[i] = entry
            continue
        try:
            decoded = decode_prepared(data, model_cfg, input_cfg.max_pixels)
            pixels.append(decoded.pixels)
            width[i], height[i] = decoded.width, decoded.height
            good.append(i)
        except DecodeError as err:
            stages[i], messages[i] = "decode", str(err)
        except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not fail the job
            stages[i], messages[i] = "decode", f"unexpected {type(err).__name__}: {err}"
    return DecodedBatch(stages, messages, width, height, file_bytes, modified, hashes, reused, pixels, good, copied)


def embed_decoded(decoded: DecodedBatch, embedder: Embedder, memo: dict | None = None) -> EmbeddedBatch:
    """The second half of :func:`embed_batch`: embed the decoded rows and fill ``memo``.

    A decoded row whose content hash entered ``memo`` after it was decoded (an earlier
    batch, embedded while this one was decoded ahead) takes the memo's vector, as it would
    have had it been decoded after that batch: the rows are the same whether batches are
    decoded ahead or one after another."""
    stages, messages, width, height = decoded.stages, decoded.messages, decoded.width, decoded.height
    hashes = decoded.hashes
    copied = dict(decoded.copied)
    pixels, good = [], []
    for row, image in zip(decoded.good, decoded.pixels):
        entry = memo.get(hashes[row]) if memo is not None else None
        if entry is not None:
            copied[row] = entry
        else:
            pixels.append(image)
            good.append(row)
    embeddings: list[np.ndarray | None] = [None] * len(stages)
    if good:
        vectors = embedder.embed(np.stack(pixels))
        finite = np.isfinite(vectors).all(axis=1)
        for row, vec, ok in zip(good, vectors, finite):
            if ok:
                embeddings[row] = vec
                if memo is not None and len(memo) < MEMO_ROWS:
                    memo[hashes[row]] = (vec, width[row], height[row])
            else:  # NaN keys would put the image in bucket 0 of every table
                stages[row], messages[row] = "embed", "model output is not finite (NaN or inf)"
    for row, (vec, w, h) in copied.items():
        embeddings[row], width[row], height[row] = vec, w, h
    return EmbeddedBatch(embeddings, stages, messages, width, height, decoded.file_bytes, decoded.modified, hashes,
                         decoded.reused)


def embed_batches(batches: Iterable[T], decode: Callable[[T], DecodedBatch], embedder: Embedder,
                  memo: dict | None = None, decode_threads: int = 1) -> Iterator[tuple[T, EmbeddedBatch]]:
    """:func:`embed_decoded` over a stream of batches, each batch decoded by ``decode``
    (:func:`decode_batch` with the batch's columns) up to ``decode_threads`` batches ahead
    of the model, each on a thread of its own (reading and Pillow's decoding release the
    GIL, and so does the model's run). ``decode_threads`` 0 decodes each batch in the
    calling thread, right before it is embedded. Either way, the same rows in the same
    order (tests/test_embed_batch.py).

    Yields:
        (batch, its rows), in the order of ``batches``.

    Memory: ``decode_threads`` + 1 batches of decoded pixels.
    """
    if decode_threads == 0:
        for batch in batches:
            yield batch, embed_decoded(decode(batch), embedder, memo)
        return
    ahead: collections.deque = collections.deque()
    source = iter(batches)
    with concurrent.futures.ThreadPoolExecutor(decode_threads, thread_name_prefix="neardup-decode") as pool:
        try:
            while True:
                while len(ahead) <= decode_threads:
                    batch = next(source, _END)
                    if batch is _END:
                        break
                    ahead.append((batch, pool.submit(decode, batch)))
                if not ahead:
                    return
                batch, pending = ahead.popleft()
                yield batch, embed_decoded(pending.result(), embedder, memo)
        finally:
            for _, pending in ahead:  # the consumer stopped early, or a decode failed
                pending.cancel()


_END = object()


def check_vector_column(column: pa.Array, dim: int) -> tuple[pa.Array, pa.Array]:
    """Embeddings read from a user's table, checked on a whole Arrow column at once (no
    Python per row or value): each value is a list of numbers or little-endian float32
    bytes of length ``dim``, all finite.

    Args:
        column: list<float>, list<double> or binary (float32) values; a slice or a
            chunked array is fine.
        dim: the length every vector must have (the first good row's).

    Returns:
        (vectors, reasons): the vectors as list<float32>, null for a bad row, and the
        reason for each bad row (null for a good one), which the job records with stage
        ``embedding``. tests/test_embed_batch.py checks both against a row-by-row reference.

    Memory: O(values in the column), as float64."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if pa.types.is_list(column.type) and column.type.value_type == pa.float32() and column.null_count == 0:
        # The common case checked in float32, without the float64 copy: every row dim finite values.
        flat = pc.list_flatten(column)
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if (lengths == dim).all() and flat.null_count == 0 and np.isfinite(flat.to_numpy()).all():
            offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
            return pa.ListArray.from_arrays(offsets, flat), pa.nulls(n, pa.string())
    present = column.is_valid().to_numpy(zero_copy_only=False)
    reason = np.where(present, None, "no embedding").astype(object)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        nbytes = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        ragged = present & (nbytes % 4 != 0)
        for i in np.flatnonzero(ragged):
            reason[i] = f"binary embedding of {nbytes[i]} bytes is not float32 values"
        whole = present & ~ragged
        lengths = np.where(whole, nbytes // 4, 0)
        blobs = column.filter(pa.array(whole))
        values = np.frombuffer(b"".join(blobs.to_pylist()), dtype="<f4").astype(np.float64)
    else:
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        whole = present
        flat = pc.list_flatten(column)  # the values of non-null rows, in order
        values = pc.fill_null(flat.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    wrong_length = whole & (lengths != dim)
    for i in np.flatnonzero(wrong_length):
        reason[i] = f"embedding has {lengths[i]} values, expected {dim} like the first row"
    row_of_value = np.repeat(np.arange(n), lengths)
    nonfinite = np.zeros(n, dtype=bool)
    nonfinite[row_of_value[~np.isfinite(values)]] = True
    reason[whole & ~wrong_length & nonfinite] = "embedding has a missing, NaN or infinite value"
    good = whole & ~wrong_length & ~nonfinite
    kept = values[np.repeat(good, lengths)].astype(np.float32)
    offsets = np.concatenate(([0], np.cumsum(np.where(good, dim, 0)))).astype(np.int32)
    vectors = pa.ListArray.from_arrays(pa.array(offsets), pa.array(kept), mask=pa.array(~good))
    return vectors, pa.array(reason, pa.string())
