"""Routing of one batch: what is read, decoded, embedded, or recorded with its reason."""

import io

import numpy as np
from PIL import Image

from neardup_core.config import InputConfig
from neardup_core.embed.batch import embed_batch


class MeanColourEmbedder:
    """A tiny deterministic embedder; the routing, not the model, is under test."""

    dim = 3

    def embed(self, pixels):
        v = pixels.reshape(len(pixels), -1, 3).mean(axis=1) - 100.0
        v[v[:, 0] > 150] = np.nan  # red images stand for a model that blows up
        return v.astype(np.float32)


def png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buf, "PNG")
    return buf.getvalue()


def test_each_row_gets_an_embedding_or_a_reason(tmp_path):
    (tmp_path / "on_disk.png").write_bytes(png((0, 0, 255)))
    paths = ["a.png", str(tmp_path / "on_disk.png"), str(tmp_path / "missing.png"), "big.png", "bad.png", "red.png"]
    contents = [png((0, 255, 0)), None, None, None, b"garbage", png((255, 0, 0))]
    prior = [None, None, None, "file is 99 bytes, above input.max_file_bytes=10", None, None]
    out = embed_batch(paths, contents, prior, MeanColourEmbedder(), InputConfig(), size=8)
    assert out.error_stage == [None, None, "read", "read", "decode", "embed"]
    assert out.error_message[2] == "no such file"
    assert out.error_message[3] == prior[3]
    assert out.error_message[4] == "not a recognised image format"
    assert "not finite" in out.error_message[5]
    np.testing.assert_allclose(out.embeddings[0], [-100, 155, -100])
    np.testing.assert_allclose(out.embeddings[1], [-100, -100, 155])
    assert out.embeddings[2:] == [None] * 4


def test_a_batch_with_nothing_decodable_never_calls_the_model():
    class Exploding:
        dim = 3

        def embed(self, pixels):
            raise AssertionError("called")

    out = embed_batch(["x"], [b""], [None], Exploding(), InputConfig(), size=8)
    assert out.error_stage == ["decode"]
    assert out.error_message == ["empty file"]


def test_keys_for_rows_match_hashing_the_good_rows_alone():
    from neardup_core.embed.batch import keys_for_rows
    from neardup_core.lsh import bucket_keys, hyperplanes

    rng = np.random.default_rng(5)
    vectors = [rng.standard_normal(6), None, rng.standard_normal(6), None]
    planes = hyperplanes(1, num_tables=3, bits_per_table=4, dim=6)
    keys = keys_for_rows(vectors, planes, 3)
    assert keys[1] is None and keys[3] is None
    np.testing.assert_array_equal(np.stack([keys[0], keys[2]]),
                                  bucket_keys(np.stack([vectors[0], vectors[2]]), planes, 3))
    assert keys_for_rows([None, None], planes, 3) == [None, None]
