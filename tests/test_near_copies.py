"""Near copies (neardup_core.near_copies): clusters, the at-risk bound, and the components
of the collapsed graph against brute force over every row, on seeded data with planted
stars, chains, cliques, ties and bridges."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from neardup_core import cli
from neardup_core import near_copies as nc

from .references import check_groups_output, expected_groups, union_find_components

THRESHOLD = 0.9
COPY = 0.99


def rotate(v: np.ndarray, u: np.ndarray, angle: float) -> np.ndarray:
    """Unit v turned by ``angle`` towards the direction u (made orthogonal to v)."""
    u = u - (u @ v) * v
    u /= np.linalg.norm(u)
    return math.cos(angle) * v + math.sin(angle) * u


def planted(seed: int, dim: int = 16) -> np.ndarray:
    """Unit rows, shuffled (row order is the priority): random images; stars (one image and
    copies within COPY); chains of small steps; a clique of equal vectors (ties); and
    bridges: an image just beyond the threshold of a cluster's first member but within it
    of another member, which only the at-risk expansion finds."""
    rng = np.random.default_rng(seed)
    theta_t, theta_c = math.acos(THRESHOLD), math.acos(COPY)
    rows = [v / np.linalg.norm(v) for v in rng.standard_normal((40, dim))]
    for _ in range(4):  # stars
        base = rows[int(rng.integers(len(rows)))]
        rows += [rotate(base, rng.standard_normal(dim), rng.uniform(0, 1.3 * theta_c)) for _ in range(
            int(rng.integers(2, 30)))]
    for _ in range(3):  # chains
        v = rng.standard_normal(dim)
        v /= np.linalg.norm(v)
        for _ in range(int(rng.integers(3, 12))):
            v = rotate(v, rng.standard_normal(dim), rng.uniform(0.5, 1.5) * theta_c)
            rows.append(v)
    v = rng.standard_normal(dim)
    rows += [v / np.linalg.norm(v)] * 6  # a clique of ties
    for _ in range(8):  # bridges (a fine key may split r from its copy; then no expansion is needed)
        r = rng.standard_normal(dim)
        r /= np.linalg.norm(r)
        u = rng.standard_normal(dim)
        alpha = rng.uniform(0.5, 0.95) * theta_c
        rows += [r, rotate(r, u, alpha), rotate(r, u, theta_t + 0.8 * alpha)]
    x = np.array(rows)
    return x[rng.permutation(len(x))]


def collapse(x: np.ndarray, seed: int, copy_cosine: float = COPY) -> nc.Clusters:
    """The job's clusters: leader clusters inside each fine key, rows in priority order."""
    keys = nc.fine_keys(x, nc.fine_planes(seed, nc.fine_bits(len(x)), x.shape[1]))
    rep, cos = np.arange(len(x)), np.ones(len(x))
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)  # ascending: priority order
        found = nc.leader_clusters(x[rows], copy_cosine)
        rep[rows], cos[rows] = rows[found.representative], found.cosine
    return nc.Clusters(rep, cos)


def brute_labels(n: int, a, b) -> list[int]:
    return union_find_components(n, list(zip(np.asarray(a).tolist(), np.asarray(b).tolist())))


def same_partition(x_labels, y_labels) -> bool:
    pairs = set(zip(x_labels, y_labels))
    return len(pairs) == len(set(x_labels)) == len(set(y_labels))


def representative_pairs(x: np.ndarray, rep: np.ndarray, lowest: float):
    """Every pair of representatives at cosine >= lowest (what LSH finds at full recall)."""
    reps = np.flatnonzero(rep == np.arange(len(rep)))
    gram = nc.unit_rows(x[reps]) @ nc.unit_rows(x[reps]).T
    i, j = np.nonzero(np.triu(gram >= lowest, 1))
    return reps[i], reps[j], gram[i, j]


def test_leader_clusters_star_chain_and_ties():
    e = np.eye(4)
    star = np.array([e[0], e[0] + 0.05 * e[1], e[0] - 0.05 * e[2], e[0] + 0.05 * e[3]])
    found = nc.leader_clusters(star, COPY)
    assert found.representative.tolist() == [0, 0, 0, 0]
    assert (found.cosine >= COPY).all()
    # A chain of steps each within COPY of the last, but not of the first: new leaders.
    chain = np.array([rotate(e[0], e[1], k * math.acos(COPY) * 0.9) for k in range(5)])
    found = nc.leader_clusters(chain, COPY)
    assert found.representative.tolist() == [0, 0, 2, 2, 4]
    # Ties: equal vectors go to the first in priority order.
    found = nc.leader_clusters(np.array([e[1], e[0], e[0], e[1]]), COPY)
    assert found.representative.tolist() == [0, 1, 1, 0]
    # Clusters under min_rows are left alone: only floods collapse.
    found = nc.leader_clusters(np.array([e[1], e[0], e[0], e[1], e[1], e[2]]), COPY, min_rows=3)
    assert found.representative.tolist() == [0, 1, 2, 0, 0, 5] and found.cosine[[1, 2, 5]].tolist() == [1, 1, 1]
    assert nc.leader_clusters(np.zeros((0, 4)), COPY).representative.shape == (0,)
    zero = nc.leader_clusters(np.array([[0.0, 0], [0, 0]]), COPY)  # a zero vector is nobody's copy
    assert zero.representative.tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_collapsed_components_equal_brute_force(seed):
    x = planted(seed)
    rep, cos = collapse(x, seed)
    n = len(x)
    rows = np.arange(n)
    # Every copy is within COPY of its representative, which ranks first in its cluster.
    assert (cos[rep != rows] >= COPY).all() and (rep <= rows).all() and (rep[rep] == rep).all()
    assert (rep != rows).sum() > 10
    gram = nc.unit_rows(x) @ nc.unit_rows(x).T
    i, j = np.nonzero(np.triu(gram >= THRESHOLD, 1))
    truth = brute_labels(n, i, j)
    largest = max(nc.radius(cos[rep == r]) for r in np.unique(rep))
    a, b, c = representative_pairs(x, rep, nc.lowest_cosine_at_risk(THRESHOLD, largest))
    ea, eb = nc.preserved_edges(x, rep, cos, a, b, c, THRESHOLD)
    assert same_partition(brute_labels(n, ea, eb), truth)
    # Every kept edge is a true edge; only far fewer than the full graph's.
    assert (gram[ea, eb] >= THRESHOLD - 1e-12).all() and len(ea) < len(i)
    # Without the at-risk expansion, the planted bridges split groups.
    keep = c >= THRESHOLD
    copies = rows[rep != rows]
    plain = brute_labels(n, np.concatenate([copies, a[keep]]), np.concatenate([rep[copies], b[keep]]))
    assert not same_partition(plain, truth)


@pytest.mark.parametrize("seed", range(4))
def test_no_edge_beyond_the_at_risk_bound(seed):
    """Members of two clusters whose representatives are below the threshold and not at
    risk never have an edge (the bound the expansion relies on)."""
    rng = np.random.default_rng(seed)
    dim, theta_c = 8, math.acos(0.97)
    checked = 0
    for _ in range(300):
        r, s = (rotate(np.eye(dim)[0], rng.standard_normal(dim), rng.uniform(0, 0.9)) for _ in range(2))
        cr = np.array([r] + [rotate(r, rng.standard_normal(dim), rng.uniform(0, theta_c)) for _ in range(5)])
        cs = np.array([s] + [rotate(s, rng.standard_normal(dim), rng.uniform(0, theta_c)) for _ in range(5)])
        alpha_r, alpha_s = nc.radius(cr @ r), nc.radius(cs @ s)
        risky = nc.at_risk(np.array([r @ s]), np.array([alpha_r]), np.array([alpha_s]), THRESHOLD)[0]
        if r @ s < THRESHOLD and not risky:
            checked += 1
            assert len(nc.cross_edges(cr, cs, THRESHOLD)[0]) == 0
    assert checked > 50


def test_cross_edges_blocks_and_fine_bits():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((37, 5)), rng.standard_normal((11, 5))
    i, j, c = nc.cross_edges(a, b, 0.5, block=4)
    sims = nc.unit_rows(a) @ nc.unit_rows(b).T
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(*map(list, np.nonzero(sims >= 0.5))))
    assert np.allclose(c, sims[i, j])
    assert nc.cross_edges(np.zeros((0, 5)), b, 0.5)[0].shape == (0,)
    assert nc.fine_bits(1) == nc.MIN_FINE_BITS and nc.fine_bits(20_000) == 19
    assert nc.fine_bits(10**30) == nc.MAX_FINE_BITS
    keys = nc.fine_keys(rng.standard_normal((1000, 16)), nc.fine_planes(0, 62, 16))
    assert len(np.unique(keys)) == 1000 and keys.min() >= 0


def flood_table(seed: int, images: int = 3, copies: int = 60, dim: int = 16):
    """``images`` floods of ``copies`` noisy copies each (cosine >= COPY to their image),
    planted bridges and random images, with random ``bytes`` (the priority), shuffled."""
    rng = np.random.default_rng(seed)
    rows = [v for v in planted(seed, dim)]
    for _ in range(images):
        base = rng.standard_normal(dim)
        base /= np.linalg.norm(base)
        rows += [rotate(base, rng.standard_normal(dim), rng.uniform(0, 0.9 * math.acos(COPY))) for _ in range(copies)]
    x = np.array(rows)[rng.permutation(len(rows))]
    return pd.DataFrame({"item": [f"r{i:04d}" for i in range(len(x))], "vec": [list(map(float, v)) for v in x],
                         "bytes": rng.integers(1, 10**6, len(x))})


@pytest.mark.spark
def test_a_near_copy_flood_in_spark(spark, tmp_path):
    """Groups equal brute force over every row (bridges included); images that are no
    copy take the decisions of the graph without the copies; copies are dropped; the
    pairing scores a few representatives' pairs instead of every pair of each flood."""
    frame = flood_table(11)
    frame.to_parquet(tmp_path / "emb.parquet")
    out = tmp_path / "out"
    assert cli.main(["pairs", "--embeddings", str(tmp_path / "emb.parquet"), "--output", str(out),
                     "--set", "input.id_column=item", "--set", "input.embedding_column=vec",
                     "--set", f"pairs.cosine_threshold={THRESHOLD}", "--set", "groups.keep=[bytes desc]",
                     "--set", "spark.shuffle_partitions=4", "--set", "pairs.copy_min_rows=2",
                     "--set", f"pairs.copy_cosine={COPY}",
                     # Tables that find the at-risk pairs (cosine down to 0.74 here) with recall 1 - 1e-6:
                     # groups are exact as far as LSH finds those representatives' pairs.
                     "--set", "lsh.bits_per_table=8", "--set", "lsh.num_tables=60"]) == 0
    check_groups_output(out)
    x = np.array(frame.vec.tolist(), dtype=np.float32).astype(np.float64)
    gram = nc.unit_rows(x) @ nc.unit_rows(x).T
    i, j = np.nonzero(np.triu(gram >= THRESHOLD - 1e-9, 1))
    ids = frame.item.tolist()
    truth = brute_labels(len(x), i, j)
    groups = pd.read_parquet(out / "groups")
    labels = {r.id: r.group_id for r in groups.itertuples()}
    got = [labels.get(k, k) for k in ids]
    assert same_partition(got, truth)
    pairs = pd.read_parquet(out / "pairs")
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    copies = set(pairs.id_a[pairs.near_copy]) | set(pairs.id_b[pairs.near_copy])
    action = dict(zip(groups.id, groups.action))
    near_ids = {k for k in copies if k in action and action[k] == "drop"}
    assert counts["near_copies"] >= 150 and len(near_ids) >= counts["near_copies"]
    stage = next(s for s in manifest["stages"] if s["name"] == "pairs")
    assert stage["near_copies"]["at_risk_pairs"] >= 1  # the bridges
    assert not pairs.near_copy[~pairs.id_a.isin(copies) & ~pairs.id_b.isin(copies)].any()
    # Three floods of 60 are 5,310 true pairs (each found in most of the 60 tables); the
    # pairing scores the 130-odd representatives' candidates instead.
    assert counts["candidate_pairs"] < 4000 and counts["pairs"] < 1500, counts
    # Images that are nobody's copy: the sequential decisions on the graph of those images.
    near_copy_ids = set(groups.id[groups.action == "drop"]) & copies - set(
        groups.kept_id.dropna())  # a copy never is anyone's kept image
    others = [k for k in range(len(ids)) if ids[k] not in near_copy_ids]
    pair_list = [(min(ids[a], ids[b]), max(ids[a], ids[b]), gram[a, b]) for a, b in zip(i, j)
                 if ids[a] not in near_copy_ids and ids[b] not in near_copy_ids]
    expected = expected_groups(pair_list, [{"id": ids[k], "bytes": int(frame.bytes[k])} for k in others],
                               [("bytes", True), ("id", False)])
    row = groups.set_index("id")
    for k, (_, _, act, kept_id, _) in expected.items():
        assert (row.at[k, "action"], row.at[k, "kept_id"]) == (act, kept_id), k
