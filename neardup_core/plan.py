"""`neardup plan`: the LSH choice for a table of embeddings, read on the driver alone
(PyArrow, no Spark) before anything heavy runs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .config import Config
from .embed.batch import check_vector_column
from .sources import InputError
from .tuning import LshPlan, candidate_probability, plan_lsh


def sample_parquet_embeddings(path: str, column: str, size: int, seed: int) -> tuple[int, np.ndarray]:
    """(rows in the table, up to ``size`` of its good vectors drawn at random as float64).

    Reads only the row groups holding the sampled rows.

    Raises:
        InputError: unreadable table, missing column, or no good vector in the sample.
    """
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(path, format="parquet")
        rows = dataset.count_rows()
    except (OSError, ValueError) as err:  # pyarrow: ArrowInvalid is a ValueError
        raise InputError(f"--embeddings {path}: cannot read as Parquet: {err}") from err
    if column not in dataset.schema.names:
        raise InputError(f"--embeddings {path}: no column {column!r} (columns: {', '.join(dataset.schema.names)}); "
                         "set input.embedding_column")
    if rows == 0:
        raise InputError(f"--embeddings {path}: no rows")
    picked = np.sort(np.random.default_rng(seed).choice(rows, size=min(size, rows), replace=False))
    values = dataset.take(picked, columns=[column]).column(column).combine_chunks()
    binary = pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)
    if not (binary or pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)):
        raise InputError(f"--embeddings {path}: column {column!r} is {values.type}; expected a list of floats "
                         "or binary float32")
    present = values.drop_null()
    if len(present) == 0:
        raise InputError(f"--embeddings {path}: no embedding in the sampled rows")
    first = present[0].as_py()
    dim = len(first) // 4 if binary else len(first)
    vectors = check_vector_column(values, dim)[0].drop_null()
    if len(vectors) == 0:
        raise InputError(f"--embeddings {path}: no usable embedding in the sampled rows")
    return rows, vectors.flatten().to_numpy().reshape(len(vectors), dim).astype(np.float64)


def describe_plan(cfg: Config, plan: LshPlan, items: int, sample: np.ndarray, pair_cosines: np.ndarray) -> str:
    """The report `neardup plan` prints: the choice, and its neighbours for comparison
    (priced on the same ``pair_cosines`` of the ``sample``)."""
    t = cfg.pairs.cosine_threshold
    lines = [
        f"items: {items:,}, dimension {sample.shape[1]}, sample of {len(sample):,} "
        f"for the collision rate of unrelated pairs",
        f"target: recall >= {cfg.lsh.target_recall} at cosine >= {t}",
        f"choice: lsh.bits_per_table={plan.bits_per_table} lsh.num_tables={plan.num_tables}",
        f"  recall at cosine {t}: {plan.recall_at_threshold:.4f}; at {min(1.0, t + 0.05):.2f}: "
        f"{float(candidate_probability(min(1.0, t + 0.05), plan.bits_per_table, plan.num_tables)):.4f}",
        f"  expected candidate pairs: {plan.expected_candidates:,.0f}",
        f"  expected shuffle: {plan.bucket_shuffle_bytes / 1e9:.3f} GB for buckets "
        f"({plan.bucket_shuffle_bytes / max(items, 1):,.0f} B per item), "
        f"{plan.candidate_shuffle_bytes / 1e9:.3f} GB for scoring candidates (uncompressed)",
        f"  estimated pairing time: {plan.cost:,.0f} core-seconds (unit costs measured on a 2-core x86 machine)",
        "",
        "  bits  tables  recall@t  candidates  shuffle GB  core-s",
    ]
    for k in range(max(1, plan.bits_per_table - 3), plan.bits_per_table + 4):
        try:
            alt = plan_lsh(t, cfg.lsh.target_recall, pair_cosines, items, sample.shape[1], bits=k,
                           split_bits=cfg.lsh.split_bits)
        except ValueError:
            continue
        mark = "  <- chosen" if (alt.bits_per_table, alt.num_tables) == (plan.bits_per_table, plan.num_tables) else ""
        lines.append(f"  {k:4d}  {alt.num_tables:6d}  {alt.recall_at_threshold:8.4f}  "
                     f"{alt.expected_candidates:10,.0f}  "
                     f"{(alt.bucket_shuffle_bytes + alt.candidate_shuffle_bytes) / 1e9:10.3f}  {alt.cost:6,.0f}{mark}")
    return "\n".join(lines)
