"""Random-hyperplane LSH for cosine similarity (Charikar, 2002). Pure NumPy.

Each of ``num_tables`` tables owns ``bits_per_table`` random hyperplanes through the
origin. An embedding's bit for a plane is the sign of its projection on the plane's
normal; a table's bucket key packs its bits into one non-negative int64. Two vectors at
angle theta agree on one bit with probability ``1 - theta / pi``.

The hyperplanes are drawn on the driver from a seed and shipped to the executors as data,
so every executor hashes with the same planes whatever NumPy version it runs.

Each table may own ``split_bits`` more planes than its key uses. They give every row a
*sub-key* per table, which splits a bucket that grew past ``lsh.max_bucket_size`` into
smaller ones by more bits of the same signature (:func:`pairing.group_buckets`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


def hyperplanes(seed: int, num_tables: int, bits_per_table: int, dim: int) -> np.ndarray:
    """Normals of the hyperplanes, one row per (table, bit), table-major.

    Args:
        seed: the same seed gives the same planes, so two runs give the same keys.
        num_tables, bits_per_table: L and k; 1 <= k <= 63 so that a key fits an int64.
        dim: embedding dimension.

    Returns:
        float32 array of shape (num_tables * bits_per_table, dim) (drawn in float64).
    """
    if not 1 <= bits_per_table <= 63:
        raise ValueError(f"bits_per_table must be in 1..63, got {bits_per_table}")
    if num_tables < 1 or dim < 1:
        raise ValueError(f"num_tables and dim must be positive, got {num_tables} and {dim}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_tables * bits_per_table, dim)).astype(np.float32)



@dataclass(frozen=True, eq=False)
class LshTables:
    """One run's hashing settings: L tables of k key bits and ``split_bits`` sub-key bits
    over ``dim``-wide embeddings, and their planes. Made once on the driver
    (:meth:`draw`) and shipped to the executors as one value, so every task hashes with
    the same planes and reads k, L and the dimension from here, not from array shapes.

    ``planes`` is float32 (num_tables * (bits_per_table + split_bits), dim), table-major:
    in each table the first k planes make the key and the next ``split_bits`` the sub-key.
    """

    num_tables: int
    bits_per_table: int
    split_bits: int
    dim: int
    planes: np.ndarray

    def __post_init__(self) -> None:
        expected = (self.num_tables * (self.bits_per_table + self.split_bits), self.dim)
        if self.bits_per_table < 1 or self.split_bits < 0 or tuple(self.planes.shape) != expected:
            raise ValueError(f"planes of shape {tuple(self.planes.shape)} do not make {self.num_tables} tables of "
                             f"{self.bits_per_table} + {self.split_bits} bits over {self.dim} dimensions")
        if self.bits_per_table + self.split_bits > 64:  # a row's bits of a table are packed in one word
            raise ValueError(f"a table's key and sub-key bits must be at most 64 in all, got "
                             f"{self.bits_per_table} + {self.split_bits}")

    @classmethod
    def draw(cls, seed: int, num_tables: int, bits_per_table: int, split_bits: int, dim: int) -> LshTables:
        """Tables with planes drawn by :func:`hyperplanes` (same seed, same keys)."""
        return cls(num_tables, bits_per_table, split_bits, dim,
                   hyperplanes(seed, num_tables, bits_per_table + split_bits, dim))

    def without_subkeys(self) -> LshTables:
        """The same tables with only their key planes (no sub-keys to project)."""
        per_table = self.bits_per_table + self.split_bits
        keys = self.planes.reshape(self.num_tables, per_table, self.dim)[:, :self.bits_per_table]
        return LshTables(self.num_tables, self.bits_per_table, 0, self.dim, keys.reshape(-1, self.dim))

def signature_keys(embeddings: np.ndarray, tables: LshTables, block_values: int = 1 << 23, threads: int = 1,
                   subkeys: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Bucket keys and split sub-keys of each embedding, each (n, num_tables) int64; with
    ``subkeys=False`` the sub-keys are None and their planes are not projected (a third
    less work at k = 16, split_bits = 8), for callers that need them only if a bucket
    must split.

    Bit j of key t is 1 when the projection on the table's plane j is positive. Rows are
    projected in float32 (half the time of float64; hashing is the largest cost of the
    pairing stage) in blocks of about ``block_values`` projections, so memory stays near
    4 * block_values bytes per thread whatever n and the number of planes. With
    ``threads`` > 1, blocks are hashed by that many threads at once (NumPy releases the
    GIL in the products). A sign can come out differently in float64, or under another
    BLAS build, only for a projection within about 1e-6 of zero: a vector lying on the
    hyperplane, whose bit is a coin toss anyway.
    """
    if not subkeys:
        return signature_keys(embeddings, tables.without_subkeys(), block_values, threads)[0], None
    num_tables, k, split_bits, planes = tables.num_tables, tables.bits_per_table, tables.split_bits, tables.planes
    bits_and_split = k + split_bits
    x = np.asarray(embeddings).reshape(-1, tables.dim)
    normals = np.asarray(planes, dtype=np.float32).T
    n = len(x)
    keys = np.empty((n, num_tables), dtype=np.int64)
    subkeys = np.zeros((n, num_tables), dtype=np.int64)
    step = max(1, block_values // max(planes.shape[0], 1))
    if threads > 1:  # small enough blocks that every thread gets some
        step = max(1, min(step, -(-n // threads)))

    def hash_block(start: int) -> None:
        block = np.asarray(x[start:start + step], dtype=np.float32)
        bits = ((block @ normals) > 0).reshape(len(block), num_tables, bits_and_split)
        # A table's key and sub-key bits packed at once (0.7 of the time of two packings).
        keys[start:start + step], subkeys[start:start + step] = _split_word(_pack_bits(bits), k, split_bits)

    starts = range(0, n, step)
    if threads > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(hash_block, starts))
    else:
        for start in starts:
            hash_block(start)
    return keys, subkeys


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(..., k) booleans, k <= 64, as int64 with bit j set when bits[..., j] is True (bit
    63 is the sign)."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    wide = np.zeros(packed.shape[:-1] + (8,), dtype=np.uint8)
    wide[..., :packed.shape[-1]] = packed
    return wide.view("<u8")[..., 0].astype(np.int64)


def _split_word(word: np.ndarray, k: int, split_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed signature bits (bit j of ``word`` = plane j; :func:`_pack_bits`, k +
    ``split_bits`` <= 64) as the key (its low k bits) and the sub-key (the next
    ``split_bits``, the first of them most significant, so that a sub-key's top d bits are
    the first d split planes)."""
    word = word.view(np.uint64)
    keys = (word & np.uint64((1 << k) - 1)).astype(np.int64) if k < 64 else word.astype(np.int64)
    if not split_bits:
        return keys, np.zeros_like(keys)
    low_first = ((word >> np.uint64(k)) & np.uint64((1 << split_bits) - 1)).astype(np.intp)
    return keys, _bits_reversed(split_bits)[low_first]


@functools.cache
def _bits_reversed(width: int) -> np.ndarray:
    """Each ``width``-bit value with its bits in reverse order (int64, indexed by the value)."""
    values = np.arange(1 << width, dtype=np.int64)
    reversed_ = np.zeros_like(values)
    for d in range(width):
        reversed_ |= ((values >> d) & 1) << (width - 1 - d)
    reversed_.setflags(write=False)
    return reversed_


def key_width(bits_per_table: int) -> int:
    """Bytes per stored bucket key: 4 when a key has at most 32 bits (k was 13 to 25 in
    every plan measured here, up to 1M rows), else 8."""
    return 4 if bits_per_table <= 32 else 8


def pack_keys(keys: np.ndarray, bits_per_table: int) -> np.ndarray:
    """(n, L) bucket keys as (n, L * key_width) bytes, little-endian, table by table: one
    binary value a row for ``embeddings/``. A list of L int64 costs Spark a conversion per
    key on the way to Parquet (100,000 rows of 137 keys: 2.2 s of 4.5 s); a binary value
    costs one copy a row, and 4-byte keys half the bytes."""
    width = key_width(bits_per_table)
    keys = np.asarray(keys)
    if keys.size and (keys.min() < 0 or keys.max() >> bits_per_table):
        raise ValueError(f"keys must be in 0..2**{bits_per_table}-1, got {keys.min()}..{keys.max()}")
    packed = np.ascontiguousarray(keys, dtype=f"<u{width}")
    return packed.view(np.uint8).reshape(len(keys), keys.shape[1] * width)


def unpack_keys(packed: np.ndarray, num_tables: int) -> np.ndarray:
    """The inverse of :func:`pack_keys`: (n, L * width) bytes as (n, L) int64 keys; the
    width follows from the row's length.

    Raises:
        ValueError: a row's length is not 4 or 8 bytes times ``num_tables``.
    """
    n, row_bytes = packed.shape
    width = row_bytes // num_tables if num_tables else 0
    if width not in (4, 8) or width * num_tables != row_bytes:
        raise ValueError(f"expected {num_tables} keys of 4 or 8 bytes a row, got rows of {row_bytes} bytes")
    return np.ascontiguousarray(packed).view(f"<u{width}").astype(np.int64).reshape(n, num_tables)
