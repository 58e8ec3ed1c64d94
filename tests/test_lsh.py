import math

import numpy as np
import pytest

from neardup_core import lsh

from .references import bucket_keys


def reference_keys(x, planes, num_tables):
    """Brute force: one bit at a time in float64, packed with Python ints."""
    k = len(planes) // num_tables
    keys = np.zeros((len(x), num_tables), dtype=np.int64)
    for i, v in enumerate(x.astype(np.float64)):
        for t in range(num_tables):
            key = 0
            for j in range(k):
                if float(np.dot(v, planes[t * k + j])) > 0:
                    key |= 1 << j
            keys[i, t] = key
    return keys


@pytest.mark.parametrize("n", [1, 2, 3, 17, 130])
@pytest.mark.parametrize("num_tables,bits", [(1, 1), (3, 7), (8, 12), (2, 63)])
def test_bucket_keys_match_brute_force(n, num_tables, bits):
    rng = np.random.default_rng(n * 1000 + bits)
    x = rng.standard_normal((n, 24)).astype(np.float32)
    planes = lsh.hyperplanes(seed=7, num_tables=num_tables, bits_per_table=bits, dim=24)
    keys = bucket_keys(x, planes, num_tables)
    assert keys.shape == (n, num_tables) and keys.dtype == np.int64
    np.testing.assert_array_equal(keys, reference_keys(x, planes, num_tables))
    assert (keys >= 0).all() and (keys < 2**bits).all()


def test_same_seed_same_planes_other_seed_other_planes():
    a = lsh.hyperplanes(1, 4, 8, 32)
    np.testing.assert_array_equal(a, lsh.hyperplanes(1, 4, 8, 32))
    assert not np.allclose(a, lsh.hyperplanes(2, 4, 8, 32))


def test_keys_do_not_depend_on_vector_length():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 16))
    planes = lsh.hyperplanes(5, 4, 10, 16)
    np.testing.assert_array_equal(bucket_keys(x, planes, 4), bucket_keys(3.5 * x, planes, 4))


def test_bit_collision_rate_follows_angle():
    # Charikar: P[same bit] = 1 - theta / pi. 4000 planes give a standard error ~0.008.
    rng = np.random.default_rng(11)
    dim, cos = 64, 0.8
    a = rng.standard_normal(dim)
    a /= np.linalg.norm(a)
    noise = rng.standard_normal(dim)
    noise -= noise.dot(a) * a
    noise /= np.linalg.norm(noise)
    b = cos * a + math.sqrt(1 - cos**2) * noise
    planes = lsh.hyperplanes(seed=0, num_tables=4000, bits_per_table=1, dim=dim)
    keys = bucket_keys(np.stack([a, b]), planes, 4000)
    observed = float((keys[0] == keys[1]).mean())
    assert abs(observed - (1 - math.acos(cos) / math.pi)) < 0.03


@pytest.mark.parametrize("bits", [0, 64])
def test_bits_out_of_range_rejected(bits):
    with pytest.raises(ValueError, match=f"bits_per_table must be in 1..63, got {bits}"):
        lsh.hyperplanes(0, 2, bits, 8)


@pytest.mark.parametrize("n", [1, 2, 5, 1001])
@pytest.mark.parametrize("threads", [2, 3])
def test_hashing_on_threads_gives_the_same_keys(n, threads):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 24)).astype(np.float32)
    tables = lsh.LshTables.draw(seed=1, num_tables=6, bits_per_table=9, split_bits=3, dim=24)
    one = lsh.signature_keys(x, tables, block_values=700)
    many = lsh.signature_keys(x, tables, block_values=700, threads=threads)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


@pytest.mark.parametrize("split_bits", [0, 1, 8])
def test_keys_without_subkeys_are_the_same_keys(split_bits):
    rng = np.random.default_rng(split_bits)
    x = rng.standard_normal((97, 24)).astype(np.float32)
    tables = lsh.LshTables.draw(seed=4, num_tables=5, bits_per_table=11, split_bits=split_bits, dim=24)
    keys, subkeys = lsh.signature_keys(x, tables)
    only, none = lsh.signature_keys(x, tables, subkeys=False)
    np.testing.assert_array_equal(only, keys)
    assert none is None


def test_subkeys_are_the_split_planes_bits_most_significant_first():
    """Brute force on the planes: sub-key bit d (from the top) is the sign on split plane d."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 12))
    tables = lsh.LshTables.draw(seed=2, num_tables=3, bits_per_table=4, split_bits=3, dim=12)
    _, subkeys = lsh.signature_keys(x, tables)
    planes = tables.planes.reshape(3, 7, 12).astype(np.float64)
    for t in range(3):
        bits = (x @ planes[t, 4:].T) > 0
        np.testing.assert_array_equal(subkeys[:, t], bits @ np.array([4, 2, 1]))


@pytest.mark.parametrize("bits,split_bits", [(1, 0), (1, 10), (4, 3), (25, 8), (55, 8), (53, 10), (63, 0)])
def test_keys_and_subkeys_match_brute_force(bits, split_bits):
    """A table's key and sub-key bits are packed in one word and then split: against a
    plane-by-plane reference, up to 63 bits in all (the most :func:`lsh.hyperplanes` draws)."""
    rng = np.random.default_rng(bits * 100 + split_bits)
    x = rng.standard_normal((37, 16)).astype(np.float32)
    tables = lsh.LshTables.draw(seed=3, num_tables=4, bits_per_table=bits, split_bits=split_bits, dim=16)
    keys, subkeys = lsh.signature_keys(x, tables, block_values=16 * (bits + split_bits) * 4 * 5)
    planes = tables.planes.reshape(4, bits + split_bits, 16)
    np.testing.assert_array_equal(keys, reference_keys(x, planes[:, :bits].reshape(-1, 16), 4))
    for t in range(4):
        signs = (x.astype(np.float64) @ planes[t, bits:].T.astype(np.float64)) > 0
        expected = [sum(1 << (split_bits - 1 - d) for d in range(split_bits) if row[d]) for row in signs]
        np.testing.assert_array_equal(subkeys[:, t], expected)


def test_tables_refuse_more_than_64_bits_a_table():
    with pytest.raises(ValueError, match="at most 64 in all, got 60 \\+ 8"):
        lsh.LshTables(1, 60, 8, 2, np.zeros((68, 2)))


def test_tables_refuse_planes_of_another_shape():
    planes = lsh.hyperplanes(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"planes of shape \(10, 8\) do not make 2 tables of 4 \+ 0 bits"):
        lsh.LshTables(2, 4, 0, 8, planes)


def reference_packed(keys, bits):
    """One row's keys as bytes, one little-endian integer at a time."""
    width = 4 if bits <= 32 else 8
    return [b"".join(int(key).to_bytes(width, "little") for key in row) for row in keys]


@pytest.mark.parametrize("n", [0, 1, 3, 17])
@pytest.mark.parametrize("num_tables,bits", [(1, 1), (5, 22), (3, 32), (3, 33), (2, 48), (2, 63)])
def test_packed_keys_are_the_little_endian_bytes_and_unpack_to_the_keys(n, num_tables, bits):
    rng = np.random.default_rng(n * 100 + bits)
    keys = rng.integers(0, 2**bits, (n, num_tables), dtype=np.int64)
    keys[:, 0] = 2**bits - 1 if n else keys[:, 0]  # the top bit set somewhere
    packed = lsh.pack_keys(keys, bits)
    assert [row.tobytes() for row in packed] == reference_packed(keys, bits)
    unpacked = lsh.unpack_keys(packed, num_tables)
    assert unpacked.dtype == np.int64
    np.testing.assert_array_equal(unpacked, keys)


def test_packing_refuses_keys_wider_than_the_plan_and_rows_of_another_length():
    with pytest.raises(ValueError, match=r"0\.\.2\*\*4-1, got 0\.\.16"):
        lsh.pack_keys(np.array([[0, 16]]), 4)
    with pytest.raises(ValueError, match=r"got -1\.\.0"):
        lsh.pack_keys(np.array([[0, -1]]), 4)
    with pytest.raises(ValueError, match="expected 3 keys of 4 or 8 bytes a row, got rows of 8 bytes"):
        lsh.unpack_keys(np.zeros((2, 8), np.uint8), 3)


@pytest.mark.parametrize("bits", [22, 40])
def test_key_column_round_trips_through_arrow_slices_chunks_and_large_binary(bits):
    import pyarrow as pa

    from neardup_core.spark.arrow import key_column, key_matrix

    rng = np.random.default_rng(bits)
    keys = rng.integers(0, 2**bits, (11, 7), dtype=np.int64)
    column = key_column(keys, bits)
    assert column.type == pa.binary() and column.to_pylist() == reference_packed(keys, bits)
    np.testing.assert_array_equal(key_matrix(column, 7), keys)
    np.testing.assert_array_equal(key_matrix(column.slice(3, 5), 7), keys[3:8])
    np.testing.assert_array_equal(key_matrix(pa.chunked_array([column.slice(0, 4), column.slice(4)]), 7), keys)
    np.testing.assert_array_equal(key_matrix(column.cast(pa.large_binary()).slice(2), 7), keys[2:])
    assert key_matrix(column.slice(0, 0), 7).shape == (0, 7)
    with pytest.raises(ValueError, match="differ in length"):
        key_matrix(pa.array([b"\0" * 28, b"\0" * 56]), 7)
    with pytest.raises(ValueError, match="1 of 2 rows have no keys"):
        key_matrix(pa.array([b"\0" * 28, None]), 7)
