"""Simple references that the optimised kernels are tested against; never used by the job."""


from neardup_core import lsh, pairing


def bucket_keys(embeddings, planes, num_tables):
    """One bucket key per table for each embedding, from a planes array of
    ``num_tables * k`` rows (no sub-keys): :func:`lsh.signature_keys` on those planes."""
    dim = planes.shape[1]
    tables = lsh.LshTables(num_tables, planes.shape[0] // num_tables, 0, dim, planes)
    return lsh.signature_keys(embeddings, tables)[0]


def pairs_within_runs(lengths):
    """All index pairs (i, j), i < j, with i and j in the same run of consecutive rows."""
    return pairing.pairs_from_partners(pairing.partners_per_row(lengths))


def union_find_components(n, pairs):
    """Each node's component, named by its smallest node: union-find with path halving."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(x) for x in range(n)]


def sequential_decisions(n, pairs):
    """(kept_by, cosine) per node, nodes in priority order 0..n-1, from (a, b, cosine)
    triples: a node is kept unless a kept node of higher priority is its neighbour; then
    it names the first such node."""
    neighbours = {}
    for a, b, cos in pairs:
        neighbours.setdefault(a, {})[b] = cos
        neighbours.setdefault(b, {})[a] = cos
    kept_by, cosines = [], []
    for node in range(n):
        kept_earlier = [m for m in sorted(neighbours.get(node, {})) if m < node and kept_by[m] == -1]
        kept_by.append(kept_earlier[0] if kept_earlier else -1)
        cosines.append(neighbours[node][kept_earlier[0]] if kept_earlier else None)
    return kept_by, cosines


def pairs_needing_a_verdict(n, pairs, states):
    """Indices of the (a, b) pairs whose verdict the groups or decisions need, from one
    state per pair (0 unknown, 1 or 2 accepted, 3 or 4 rejected): an unknown pair across
    two components of the accepted pairs, or one the decision walk looks at, with every
    unknown pair taken as rejected. A node walks its higher-priority neighbours in order,
    skips those not kept, notes the unknown pairs to kept ones, and stops at the first
    kept one over an accepted pair (then it is dropped)."""
    accepted = [p for p, s in zip(pairs, states) if s in (1, 2)]
    label = union_find_components(n, accepted)
    needed = {i for i, ((a, b), s) in enumerate(zip(pairs, states)) if s == 0 and label[a] != label[b]}
    towards = {}  # node -> [(earlier neighbour, pair index)] over pairs the walk looks at
    for i, ((a, b), s) in enumerate(zip(pairs, states)):
        if s not in (3, 4):
            towards.setdefault(max(a, b), []).append((min(a, b), i))
    kept = []
    for node in range(n):
        dropped = False
        for other, i in sorted(towards.get(node, [])):
            if kept[other] and states[i] == 0:
                needed.add(i)
            elif kept[other]:
                dropped = True
                break
        kept.append(not dropped)
    return sorted(needed)


def priority_ranks(nodes, criteria):
    """Rank of each node dict (0 = kept first) under groups.keep criteria [(name, descending)]:
    pixels = width * height; None sorts last either way; NaN is larger than any number."""
    import functools
    import math

    def value(node, name):
        if name == "pixels":
            w, h = node.get("width"), node.get("height")
            return None if w is None or h is None else w * h
        return node.get(name)

    def compare(x, y):
        for name, descending in criteria:
            u, v = value(x, name), value(y, name)
            if u is None or v is None:
                if (u is None) != (v is None):
                    return 1 if u is None else -1
                continue
            u_nan = isinstance(u, float) and math.isnan(u)
            v_nan = isinstance(v, float) and math.isnan(v)
            if u_nan or v_nan:
                if u_nan == v_nan:
                    continue
                bigger = 1 if u_nan else -1
            elif u == v:
                continue
            else:
                bigger = 1 if u > v else -1
            return -bigger if descending else bigger
        return 0

    ordered = sorted(nodes, key=functools.cmp_to_key(compare))
    return {node["id"]: rank for rank, node in enumerate(ordered)}


def expected_groups(pairs, nodes, criteria):
    """groups/ rows as {id: (group_id, group_size, action, kept_id, cosine)} from pairs
    [(id_a, id_b, cosine)] and node dicts, by union-find and the sequential decisions."""
    in_pairs = {i for a, b, _ in pairs for i in (a, b)}
    rank = priority_ranks([n for n in nodes if n["id"] in in_pairs], criteria)
    by_rank = {r: i for i, r in rank.items()}
    n = len(rank)
    labels = union_find_components(n, [(rank[a], rank[b]) for a, b, _ in pairs])
    kept_by, cosines = sequential_decisions(n, [(rank[a], rank[b], c) for a, b, c in pairs])
    members = {}
    for r, label in enumerate(labels):
        members.setdefault(label, []).append(by_rank[r])
    out = {}
    for r, label in enumerate(labels):
        group = members[label]
        out[by_rank[r]] = (min(group), len(group), "keep" if kept_by[r] < 0 else "drop",
                           None if kept_by[r] < 0 else by_rank[kept_by[r]], cosines[r])
    return out


def check_groups_output(run_dir):
    """The invariants every run's groups/ must hold, read from its Parquet outputs:
    one row per image in a pair; groups are the connected components, named by their
    smallest id; a dropped image has a pair in pairs/ with its kept image, which is kept;
    no pair has two kept ends; the manifest counts them."""
    import json
    import os

    import pandas as pd

    pairs = pd.read_parquet(os.path.join(run_dir, "pairs"))
    groups = pd.read_parquet(os.path.join(run_dir, "groups"))
    in_pairs = set(pairs.id_a) | set(pairs.id_b)
    assert len(groups) == groups.id.nunique() and set(groups.id) == in_pairs
    ids = sorted(in_pairs)
    index = {i: k for k, i in enumerate(ids)}
    labels = union_find_components(len(ids), [(index[a], index[b]) for a, b in zip(pairs.id_a, pairs.id_b)])
    row = groups.set_index("id")
    for i in ids:
        assert row.at[i, "group_id"] == ids[labels[index[i]]]
    assert (groups.groupby("group_id").size() == groups.groupby("group_id").group_size.first()).all()
    cosine = {(a, b): c for a, b, c in zip(pairs.id_a, pairs.id_b, pairs.cosine)}
    action = dict(zip(groups.id, groups.action))
    # An exact copy (spark.exact) is paired with its representative only, and may be dropped
    # for the image its representative was dropped for, with the representative's cosine.
    exact_partners = {}
    if "exact" in pairs.columns:
        for a, b in zip(pairs.id_a[pairs.exact], pairs.id_b[pairs.exact]):
            exact_partners.setdefault(a, []).append(b)
            exact_partners.setdefault(b, []).append(a)
    kept_of = dict(zip(groups.id, groups.kept_id))
    cosine_of = dict(zip(groups.id, groups.cosine))
    # A near copy (spark.near) is never kept; it may be dropped for the image its
    # representative was dropped for, with its own cosine to it (no pair in pairs/).
    near_partners = {}
    if "near_copy" in pairs.columns:
        for a, b in zip(pairs.id_a[pairs.near_copy], pairs.id_b[pairs.near_copy]):
            near_partners.setdefault(a, []).append(b)
            near_partners.setdefault(b, []).append(a)
    for i, kept_id, cos in zip(groups.id, groups.kept_id, groups.cosine):
        if action[i] == "drop":
            assert action[kept_id] == "keep"
            if (min(i, kept_id), max(i, kept_id)) in cosine:
                assert cosine[(min(i, kept_id), max(i, kept_id))] == cos
            elif any(action[r] == "drop" and kept_of[r] == kept_id for r in near_partners.get(i, ())):
                assert -1.0 <= cos <= 1.0
            else:
                assert any(action[r] == "drop" and kept_of[r] == kept_id and cosine_of[r] == cos
                           for r in exact_partners.get(i, ())), i
        else:
            assert kept_id is None and pd.isna(cos)
    assert not any(action[a] == "keep" and action[b] == "keep" for a, b in cosine)
    with open(os.path.join(run_dir, "_manifest.json")) as fh:
        counts = json.load(fh)["counts"]
    assert counts["groups"] == groups.group_id.nunique()
    assert counts["kept"] == (groups.action == "keep").sum() and counts["dropped"] == (groups.action == "drop").sum()
    assert counts["largest_group"] == (groups.group_size.max() if len(groups) else 0)


def brute_force_matches(a, b, ratio):
    """Lowe's ratio-test matches (indices into a, into b) from OpenCV's brute-force L2
    matcher, one Python object per match: what verify.good_matches computed before."""
    import cv2
    import numpy as np

    if len(a.descriptors) < 1 or len(b.descriptors) < 2:
        return [], []
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2)
    kept = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    return [m.queryIdx for m in kept], [m.trainIdx for m in kept]
