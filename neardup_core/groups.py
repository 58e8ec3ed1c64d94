"""Duplicate groups and keep/drop decisions on a graph of pairs. Pure NumPy.

Nodes are numbered in priority order: node 0 is the image a catalog owner would keep
first (``groups.keep``: most pixels, then largest file, then smallest id, by default).

A group is a connected component of the pair graph. Pairs chain (A looks like B, B like
C, A may not look like C), so a group is not "one image and its copies", and dropping all
but one image of a group would delete distinct images. The decision rule instead walks a
group in priority order: an image is kept unless it has a pair with an image already kept;
then it is dropped and names that image (the kept neighbour of highest priority). So every
dropped image has a direct pair with a kept image of higher priority, and no pair has two
kept ends (the kept images are the greedy maximal independent set in priority order).

The Spark stage (:mod:`neardup_core.spark.groups`) uses these kernels for graphs that
fit one task, and :func:`keep_or_drop` per group for larger ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrays import distinct_sorted


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each of ``n`` nodes, named by its smallest node.

    Min-label propagation with pointer jumping: every edge pulls both ends to the smaller
    of their labels, then every label jumps to its label's label, until nothing changes.
    Labels only fall and stay inside a component, so at the fixed point each component
    carries its minimum. Time O((n + edges) * rounds); rounds grow with the logarithm of
    a component's diameter for most graphs.
    """
    label = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, label[a], low)  # hook each end's label (a root-like node) too
        np.minimum.at(new, label[b], low)
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


class Decisions(NamedTuple):
    kept_by: np.ndarray  # int64 per node: -1 for a kept node, else the kept node it duplicates
    cosine: np.ndarray  # float64 per node: cosine to kept_by (NaN for a kept node)

    @property
    def kept(self) -> np.ndarray:
        return self.kept_by < 0


def keep_or_drop(n: int, a: np.ndarray, b: np.ndarray, cosine: np.ndarray) -> Decisions:
    """The decision for each of ``n`` nodes numbered in priority order (see the module
    docstring), from pairs (a[i], b[i]) with their cosines; each pair once, a != b.

    Nodes are visited in order, and each looks only at its neighbours of higher priority
    (smaller number), in order, stopping at the first kept one. Time O(n + pairs) in a
    Python loop over those lists (about a microsecond a pair); memory O(n + pairs).
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    earlier, later = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((earlier, later))  # by the later node, then its earlier neighbours in order
    earlier_list = earlier[order].tolist()
    pair_of = order.tolist()
    bounds = np.searchsorted(later[order], np.arange(n + 1)).tolist()
    kept = [False] * n
    kept_by = [-1] * n
    via = [-1] * n
    for node in range(n):
        for j in range(bounds[node], bounds[node + 1]):
            if kept[earlier_list[j]]:
                kept_by[node], via[node] = earlier_list[j], pair_of[j]
                break
        else:
            kept[node] = True
    via_pair = np.asarray(via, dtype=np.int64)
    dropped = via_pair >= 0
    cos = np.full(n, np.nan)
    cos[dropped] = np.asarray(cosine, dtype=np.float64)[via_pair[dropped]]
    return Decisions(np.asarray(kept_by, dtype=np.int64), cos)


def keep_or_drop_ranks(a: np.ndarray, b: np.ndarray, cosine: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`keep_or_drop` on pairs of global ranks (any int64, smaller first in priority):
    (the ranks in the pairs, sorted; for each, the rank it duplicates or -1; the cosine)."""
    nodes = distinct_sorted(np.concatenate([a, b]))  # sorted: local numbers keep the priority order
    decided = keep_or_drop(len(nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b), cosine)
    return nodes, np.where(decided.kept, -1, nodes[np.maximum(decided.kept_by, 0)]), decided.cosine


def priority_order(facts: pa.Table, criteria: list[tuple[str, bool]]) -> np.ndarray:
    """Row indices of ``facts`` in priority order, as Spark's ``orderBy`` of the same
    criteria sorts them (:func:`spark.groups.priority_order`): ``pixels`` is width x
    height; a null sorts last in either direction; NaN is larger than any number; strings
    compare by their UTF-8 bytes. The criteria must end in a unique column (id)."""
    keys, columns = [], {}
    for i, (name, descending) in enumerate(criteria):
        if name == "pixels":
            value = pc.multiply(facts.column("width").cast(pa.int64()), facts.column("height").cast(pa.int64()))
        else:
            value = facts.column(name)
        columns[f"null{i}"] = pc.is_null(value)
        keys.append((f"null{i}", "ascending"))
        if pa.types.is_floating(value.type):
            columns[f"nan{i}"] = pc.fill_null(pc.is_nan(value), False)
            keys.append((f"nan{i}", "descending" if descending else "ascending"))
        columns[f"value{i}"] = value
        keys.append((f"value{i}", "descending" if descending else "ascending"))
    return pc.sort_indices(pa.table(columns), sort_keys=keys).to_numpy()


def group_table(pairs: pa.Table, members: pa.Table, criteria: list[tuple[str, bool]]) -> pa.Table:
    """``groups/`` rows for one graph that fits in memory: the images (``members``: id,
    path and the criteria's columns, each image in a pair once) ranked by
    :func:`priority_order`, their components (:func:`components`) named by the smallest id,
    and the decisions (:func:`keep_or_drop`) from ``pairs`` (id_a, id_b, cosine). Sorted by
    group_id, then priority; columns as ``spark.groups.GROUP_SCHEMA``."""
    ranked = members.take(priority_order(members, criteria))
    ids = ranked.column("id").combine_chunks()
    n = len(ids)
    a = pc.index_in(pairs.column("id_a"), value_set=ids).to_numpy()
    b = pc.index_in(pairs.column("id_b"), value_set=ids).to_numpy()
    label = components(n, a, b)
    decided = keep_or_drop(n, a, b, pairs.column("cosine").to_numpy())
    per_group = pa.table({"label": label, "id": ids}).group_by("label").aggregate([("id", "min"), ("id", "count")])
    group_labels = per_group.column("label").to_numpy()
    by_label = np.argsort(group_labels)
    which = pa.array(by_label[np.searchsorted(group_labels[by_label], label)])
    kept = decided.kept
    return pa.table({
        "id": ids, "path": ranked.column("path").combine_chunks(),
        "group_id": per_group.column("id_min").take(which),
        "group_size": per_group.column("id_count").take(which).cast(pa.int32()),
        "action": pa.array(np.where(kept, "keep", "drop"), pa.string()),
        "kept_id": pc.if_else(pa.array(kept), pa.scalar(None, pa.string()),
                              ids.take(pa.array(np.maximum(decided.kept_by, 0)))),
        "cosine": pa.array(decided.cosine, pa.float64(), mask=kept),
        "rank": pa.array(np.arange(n)),
    }).sort_by([("group_id", "ascending"), ("rank", "ascending")]).drop_columns(["rank"])
