"""Routing of one batch: what is read, decoded, embedded, or recorded with its reason; and
the column check of user embeddings against a row-by-row reference kept here."""

import datetime as dt
import io
import os

import numpy as np
import pytest
from PIL import Image

from neardup_core.config import InputConfig, ModelConfig
from neardup_core.embed.batch import check_vector_column, embed_batch

RGB_16PX = ModelConfig(input_size=16, colour="rgb")  # the smallest model.input_size


class MeanColourEmbedder:
    """A tiny deterministic embedder; the routing, not the model, is under test."""

    dim = 3

    def embed(self, pixels):
        v = pixels.reshape(len(pixels), -1, 3).mean(axis=1) - 100.0
        v[v[:, 0] > 150] = np.nan  # red images stand for a model that blows up
        return v.astype(np.float32)


def check_vectors(values, dim):
    """The row-by-row reference for :func:`check_vector_column`: each value is a list of
    numbers or little-endian float32 bytes of length ``dim``, all finite. Returns
    (vectors, stages, messages), with vector None, stage ``embedding`` and the reason for
    a bad row."""
    vectors, stages, messages = [], [], []
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


def png(colour, size=(10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_each_row_gets_an_embedding_or_a_reason(tmp_path):
    (tmp_path / "on_disk.png").write_bytes(png((0, 0, 255), size=(12, 7)))
    paths = ["a.png", str(tmp_path / "on_disk.png"), str(tmp_path / "missing.png"), "big.png", "bad.png", "red.png"]
    contents = [png((0, 255, 0)), None, None, None, b"garbage", png((255, 0, 0))]
    prior = [None, None, None, "file is 99 bytes, above input.max_file_bytes=10", None, None]
    out = embed_batch(paths, contents, prior, MeanColourEmbedder(), InputConfig(), RGB_16PX)
    assert out.error_stage == [None, None, "read", "read", "decode", "embed"]
    assert out.error_message[2] == "no such file"
    assert out.error_message[3] == prior[3]
    assert out.error_message[4] == "not a recognised image format"
    assert "not finite" in out.error_message[5]
    np.testing.assert_allclose(out.embeddings[0], [-100, 155, -100])
    np.testing.assert_allclose(out.embeddings[1], [-100, -100, 155])
    assert out.embeddings[2:] == [None] * 4
    # What the keep/drop priority reads: the image's own size, the file's size and time.
    assert out.width[:2] == [10, 12] and out.height[:2] == [10, 7]
    assert out.file_bytes[:2] == [len(contents[0]), os.path.getsize(paths[1])]
    assert out.modified[0] is None  # given as bytes, no listing time: unknown
    assert out.modified[1].timestamp() == pytest.approx(os.path.getmtime(paths[1]))
    assert out.width[2:5] == [None] * 3 and out.file_bytes[2:4] == [None] * 2


def test_listed_modification_times_are_kept():
    when = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
    out = embed_batch(["a.png"], [png((0, 9, 0))], [None], MeanColourEmbedder(), InputConfig(), RGB_16PX,
                      listed_modified=[when])
    assert out.modified == [when] and out.error_stage == [None]


def test_a_batch_with_nothing_decodable_never_calls_the_model():
    class Exploding:
        dim = 3

        def embed(self, pixels):
            raise AssertionError("called")

    out = embed_batch(["x"], [b""], [None], Exploding(), InputConfig(), RGB_16PX)
    assert out.error_stage == ["decode"]
    assert out.error_message == ["empty file"]


def test_row_by_row_reference_gives_each_bad_row_its_reason():
    good = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    values = [list(map(float, good)), good.astype("<f4").tobytes(), None, [1.0, 2.0], [1.0, float("nan"), 0.0],
              [1.0, None, 0.0], b"\x00\x00\x80"]
    vectors, stages, messages = check_vectors(values, 3)
    np.testing.assert_array_equal(vectors[0], good)
    np.testing.assert_array_equal(vectors[1], good)
    assert vectors[2:] == [None] * 5
    assert stages == [None, None] + ["embedding"] * 5
    assert messages[2:] == [
        "no embedding",
        "embedding has 2 values, expected 3 like the first row",
        "embedding has a missing, NaN or infinite value",
        "embedding has a missing, NaN or infinite value",
        "binary embedding of 3 bytes is not float32 values",
    ]



@pytest.mark.parametrize("kind", ["list<float>", "list<double>", "binary"])
@pytest.mark.parametrize("n", [1, 2, 7, 300])
@pytest.mark.parametrize("bad_rows", [True, False])
def test_vector_column_is_checked_like_row_by_row(kind, n, bad_rows):
    """The column-at-once check (what `neardup pairs` runs) against the row-by-row one;
    a column of good rows only takes the float32 path."""
    import pyarrow as pa

    rng = np.random.default_rng(n)
    dim = 5
    values = []
    for _ in range(n):
        v = rng.standard_normal(dim)
        case = rng.integers(0, 6) if bad_rows else 0
        if case == 1:
            values.append(None)
            continue
        if case == 2:
            v = v[: rng.integers(0, dim)]
        if case == 3:
            v[rng.integers(0, dim)] = rng.choice([np.nan, np.inf, -np.inf])
        if kind == "binary":
            blob = v.astype("<f4").tobytes()
            values.append(blob[:-1] if case == 4 else blob)
        else:
            row = [float(x) for x in v]
            if case == 4:
                row[0] = None
            values.append(row)
    arrow_type = {"list<float>": pa.list_(pa.float32()), "list<double>": pa.list_(pa.float64()),
                  "binary": pa.binary()}[kind]
    column = pa.array([None] * 3 + values, arrow_type)[3:]  # a slice, as batches can be
    vectors, reasons = check_vector_column(column, dim)
    expected, _, messages = check_vectors(values, dim)
    assert reasons.to_pylist() == messages
    got = vectors.to_pylist()
    for g, e in zip(got, expected):
        assert (g is None and e is None) or np.array_equal(np.array(g, np.float32), e)
    assert vectors.type == pa.list_(pa.float32())


def test_a_file_whose_hash_matches_is_reused_not_decoded():
    class Exploding:
        dim = 3

        def embed(self, pixels):
            raise AssertionError("called")

    same, other = png((1, 2, 3)), png((4, 5, 6))
    from neardup_core.incremental import content_hash

    out = embed_batch(["a.png", "b.png"], [same, b"junk"], [None, None], Exploding(), InputConfig(), RGB_16PX,
                      previous_hash=[content_hash(same), content_hash(other)])
    assert out.reused == [True, False]
    assert out.error_stage == [None, "decode"]  # b changed (now junk): decoded again, and fails
    assert out.content_hash == [content_hash(same), content_hash(b"junk")]
    assert out.embeddings == [None, None] and out.file_bytes == [len(same), 4]


def test_copies_in_a_task_are_embedded_once():
    class Counting(MeanColourEmbedder):
        rows = 0

        def embed(self, pixels):
            Counting.rows += len(pixels)
            return super().embed(pixels)

    a, b = png((10, 20, 30)), png((40, 50, 60), size=(12, 8))
    memo, embedder = {}, Counting()
    first = embed_batch(["a", "b", "a2"], [a, b, a], [None] * 3, embedder, InputConfig(), RGB_16PX, memo=memo)
    second = embed_batch(["b2", "a3"], [b, a], [None] * 2, embedder, InputConfig(), RGB_16PX, memo=memo)
    plain = embed_batch(["a", "b"], [a, b], [None] * 2, MeanColourEmbedder(), InputConfig(), RGB_16PX)
    assert Counting.rows == 3  # a and b in the first batch (a2 is decoded there too), nothing in the second
    for got, want in ((first.embeddings[2], plain.embeddings[0]), (second.embeddings[0], plain.embeddings[1]),
                      (second.embeddings[1], plain.embeddings[0])):
        np.testing.assert_array_equal(got, want)
    assert (second.width, second.height) == ([12, 10], [8, 10])
    assert second.content_hash == [plain.content_hash[1], plain.content_hash[0]]


def _catalog(tmp_path, n=40, seed=7):
    """Rows as the embed stage gets them: good PNGs and JPEGs, copies within and across
    batches, files on disk and missing, empty and broken bytes, truncated JPEGs, red images
    (the test model's NaN), and reasons from the listing."""
    rng = np.random.default_rng(seed)
    colours = [tuple(int(c) for c in rng.integers(0, 150, 3)) for _ in range(6)] + [(255, 0, 0)]
    rows = []
    for i in range(n):
        kind = int(rng.integers(0, 8))
        colour = colours[int(rng.integers(0, len(colours)))]
        path, content, prior = f"r{i}.png", png(colour, size=(int(rng.integers(4, 30)), 9)), None
        if kind == 1:
            buf = io.BytesIO()
            Image.new("RGB", (20, 14), colour).save(buf, "JPEG")
            content = buf.getvalue()[: int(rng.integers(10, 200))]  # truncated
        elif kind == 2:
            content = b"" if rng.integers(0, 2) else b"not an image"
        elif kind == 3:
            path, content = str(tmp_path / f"disk{i}.png"), None
            (tmp_path / f"disk{i}.png").write_bytes(png(colour))
        elif kind == 4:
            path, content = str(tmp_path / f"missing{i}.png"), None
        elif kind == 5:
            content, prior = None, "file is 99 bytes, above input.max_file_bytes=10"
        rows.append((path, content, prior))
    return rows


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_overlapped_decoding_gives_the_rows_of_the_sequential_path(tmp_path, batch_size):
    from neardup_core.embed.batch import decode_batch, embed_batches

    rows = _catalog(tmp_path)
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def decode_with(memo):
        def decode(batch):
            paths, contents, prior = zip(*batch)
            return decode_batch(paths, contents, prior, InputConfig(), RGB_16PX, memo=memo)
        return decode

    def sequential():
        memo = {}
        return [embed_batch(*zip(*batch), MeanColourEmbedder(), InputConfig(), RGB_16PX, memo=memo)
                for batch in batches]

    def fields(result):
        return [[None if v is None else v.tolist() for v in result.embeddings], *result[1:]]

    want = [fields(r) for r in sequential()]
    assert any(s == "decode" for r in want for s in r[1]) and any(s == "embed" for r in want for s in r[1])
    for threads in (0, 1, 3):
        memo = {}
        got = list(embed_batches(iter(batches), decode_with(memo), MeanColourEmbedder(), memo, threads))
        assert [b for b, _ in got] == batches  # same batches, same order
        assert [fields(r) for _, r in got] == want, f"decode_threads={threads}"


def test_a_consumer_that_stops_early_leaves_no_decoding_behind():
    import threading

    from neardup_core.embed.batch import decode_batch, embed_batches

    batches = [[(f"{i}.png", png((i, 0, 0)), None)] for i in range(20)]
    decoded = []

    def decode(batch):
        decoded.append(batch)
        return decode_batch(*zip(*batch), InputConfig(), RGB_16PX)

    stream = embed_batches(iter(batches), decode, MeanColourEmbedder(), None, 2)
    next(stream)
    stream.close()
    assert len(decoded) <= 4  # the first batch and at most 2 + 1 ahead, not the whole stream
    assert not [t for t in threading.enumerate() if t.name.startswith("neardup-decode")]


@pytest.mark.parametrize("present", [[], [False], [True], [True, False, True, True], [False, False, True]])
def test_vectors_become_the_arrow_column_pa_array_would_build(present):
    import pyarrow as pa

    from neardup_core.spark.arrow import optional_list_column

    rng = np.random.default_rng(len(present))
    vectors = [rng.standard_normal(5).astype(np.float32) if p else None for p in present]
    got = optional_list_column(vectors, 5)
    assert got.equals(pa.array(vectors, type=pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="vectors of 4 values"):
        optional_list_column([np.zeros(5, np.float32)], 4)
