"""`neardup pairs --embeddings` read by PyArrow in slices (neardup_core.vector_table),
against a simple whole-table read checked row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neardup_core.incremental import content_hash
from neardup_core.vector_table import open_table, pack_slices, plan_slices, read_slice, vector_hashes

from .test_embed_batch import check_vectors

DIM = 4


def values(seed: int, n: int, kind: str = "list<float>") -> list:
    """Vectors with bad rows among them: missing, short, NaN; ``binary``: float32 bytes."""
    rng = np.random.default_rng(seed)
    out = [list(map(float, v)) for v in rng.standard_normal((n, DIM)).astype(np.float32)]
    for i in range(0, n, 7):
        out[i] = [None, [0.5], [float("nan")] * DIM][(i // 7) % 3]
    if kind == "binary":
        out = [None if v is None else np.asarray(v, "<f4").tobytes() for v in out]
    return out


def write(folder, sizes: list[list[int]], kind: str = "list<float>") -> list[str]:
    """One file per entry of ``sizes``, each with row groups of those sizes; ids run on."""
    arrow = {"list<float>": pa.list_(pa.float32()), "binary": pa.binary()}[kind]
    names, start = [], 0
    for f, groups in enumerate(sizes):
        n = sum(groups)
        table = pa.table({"item": pa.array([f"r{i:04d}" for i in range(start, start + n)], pa.string()),
                          "vec": pa.array(values(start, n, kind), arrow)})
        name = folder / f"part-{f}.parquet"
        with pq.ParquetWriter(name, table.schema) as writer:
            at = 0
            for rows in groups:
                writer.write_table(table.slice(at, rows))
                at += rows
        names.append(str(name))
        start += n
    return names


def test_vector_hashes_equal_the_per_row_hash():
    column = pa.array(values(1, 40), pa.list_(pa.float32()))
    from neardup_core.embed.batch import check_vector_column

    vectors, _ = check_vector_column(column[3:], DIM)  # a slice, as batches can be
    expected = [None if v is None else content_hash(np.asarray(v, "<f4").tobytes()) for v in vectors.to_pylist()]
    assert vector_hashes(vectors, DIM).to_pylist() == expected
    assert vector_hashes(vectors[:0], DIM).to_pylist() == []


@pytest.mark.parametrize("per_slice", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("cap", [None, 1, 2, 3])
def test_slices_give_every_row_once_in_order(tmp_path, per_slice, cap):
    names = write(tmp_path, [[1, 2, 7], [0], [11, 3]])
    table = open_table(str(tmp_path))
    assert table.files == names and table.row_groups == [[1, 2, 7], [0], [11, 3]]
    slices = plan_slices(table.files, table.row_groups, per_slice, max_slices_per_group=cap)
    for name, groups in zip(table.files, table.row_groups):
        for index, rows in enumerate(groups):
            sizes = [s.stop - s.start for s in slices if (s.file, s.row_group) == (name, index)]
            wanted = -(-rows // per_slice)  # the fewest slices of at most per_slice rows
            assert len(sizes) == (wanted if cap is None else min(wanted, cap))
            assert all(size > 0 for size in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)
    # Every slice within per_slice unless the cap binds on the largest row group (11 rows).
    assert all(0 < s.stop - s.start <= per_slice for s in slices) == (cap is None or cap >= -(-11 // per_slice))
    tasks = pack_slices(slices, per_slice)
    assert sorted(i for t in tasks for i in t) == list(range(len(slices)))
    read = [b for i in (i for t in tasks for i in t) for b in read_slice(table.fs, slices[i], ["item", "vec"], 2)]
    whole = pa.concat_tables(pq.read_table(n) for n in names)
    assert pa.Table.from_batches(read, whole.schema).equals(whole)


@pytest.mark.spark
@pytest.mark.parametrize("kind", ["list<float>", "binary"])
def test_sliced_read_gives_the_rows_of_a_whole_table_read(spark, tmp_path, monkeypatch, kind):
    """Row groups of 1, 2, odd and more than a slice, over several files; and Spark's
    reader (the fallback) on the same table gives the same rows."""
    from neardup_core.spark import listing

    names = write(tmp_path, [[1, 2, 13], [9], [5, 5]], kind)
    whole = pa.concat_tables(pq.read_table(n) for n in names).to_pydict()
    vectors, stages, messages = check_vectors(whole["vec"], DIM)
    expected = sorted(zip(whole["item"], [None if v is None else v.tolist() for v in vectors],
                          [None if v is None else content_hash(v.tobytes()) for v in vectors], stages, messages),
                      key=lambda r: r[0])

    def rows(read):
        assert read.dim == DIM
        frame = read.rows.orderBy("id").toPandas()
        assert (frame.path == frame.id).all() and not frame.reused.any()
        return [(r.id, None if r.embedding is None else [float(v) for v in r.embedding], r.content_hash,
                 r.error_stage, r.error_message) for r in frame.itertuples()]

    arrow = listing.read_embeddings(spark, str(tmp_path), "item", "vec", slice_rows=7, batch_rows=3)
    # One task per slice of at most 7 rows, each row group in at most 2 slices (the
    # session's cores): 1 + 2 rows, then 6, 7 (13), 4, 5 (9), 5 and 5: none over 7, so not spread.
    assert arrow.rows.rdd.getNumPartitions() == 7
    assert rows(arrow) == expected
    # A slice also holds at most slice_bytes of float32 vectors: 7 rows here, as above.
    by_bytes = listing.read_embeddings(spark, str(tmp_path), "item", "vec", batch_rows=3, slice_bytes=7 * 4 * DIM + 3)
    assert by_bytes.rows.rdd.getNumPartitions() == 7
    assert rows(by_bytes) == expected
    # At most 4 rows a slice: the row groups of 13 and 9 rows are still cut in 2 slices
    # each, and the rows then spread by id (a shuffle, which adaptive execution sizes).
    spread = listing.read_embeddings(spark, str(tmp_path), "item", "vec", slice_rows=4, batch_rows=3)
    def spreads(read) -> bool:
        return "RepartitionByExpression [id" in read.rows._jdf.queryExecution().logical().toString()

    assert spreads(spread) and not spreads(arrow) and not spreads(by_bytes)
    assert rows(spread) == expected
    monkeypatch.setattr(listing, "_arrow_table", lambda *args: (None, "as the test says"))
    assert rows(listing.read_embeddings(spark, str(tmp_path), "item", "vec")) == expected


@pytest.mark.spark
def test_a_read_without_vectors_fetches_those_asked_for_as_read(spark, tmp_path):
    """read_embeddings(...).without_vectors(): the same rows with null vectors (hashes, errors
    and all); its fetch gives the good rows asked for with the vectors the whole read
    gives (error rows and ids not in the table give nothing), from slices cut as the read
    cuts them; a file rewritten after the read makes the fetch fail, naming it."""
    import os

    from neardup_core.spark import listing

    names = write(tmp_path, [[1, 2, 13], [9], [5, 5]])
    whole = listing.read_embeddings(spark, str(tmp_path), "item", "vec", slice_rows=4, batch_rows=3)
    lazy = whole.without_vectors()
    assert whole.fetch is None and lazy.fetch is not None
    full = whole.rows.orderBy("id").toPandas()
    bare = lazy.rows.orderBy("id").toPandas()
    assert bare.embedding.isna().all()
    pd.testing.assert_frame_equal(bare.drop(columns="embedding"), full.drop(columns="embedding"))
    good = full[full.error_stage.isna()]
    # Every third id (good and bad rows among them) and an id the table does not hold.
    asked = [*full.id[::3], "nope"]
    got = lazy.fetch(pa.array(asked)).orderBy("id").toPandas()
    want = good[good.id.isin(asked)]
    assert got.id.tolist() == want.id.tolist() and len(got) < len(asked) - 1
    assert got.path.tolist() == want.path.tolist()
    assert [list(v) for v in got.embedding] == [list(v) for v in want.embedding]
    os.utime(names[1], ns=(0, 0))
    with pytest.raises(Exception, match="part-1.parquet changed during the run"):
        lazy.fetch(pa.array(asked)).collect()


def test_out_of_memory_says_which_setting_to_raise_in_one_line():
    from neardup_core.spark.session import out_of_memory_advice

    try:
        try:
            raise RuntimeError("Job aborted\njava.lang.OutOfMemoryError: Java heap space\n\tat org.apache...")
        except RuntimeError as inner:
            raise ValueError("stage failed") from inner
    except ValueError as err:
        advice = out_of_memory_advice(err, None)
    assert advice == ("Spark ran out of Java memory (Java heap space); raise spark.driver.memory (now 1g), "
                      "e.g. --set 'spark.conf={spark.driver.memory: 4g}'")
    assert out_of_memory_advice(ValueError("no such column"), None) is None
