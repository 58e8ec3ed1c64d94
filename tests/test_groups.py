"""Components and keep/drop decisions against union-find and a sequential loop."""

import itertools

import numpy as np
import pytest

from neardup_core import groups

from .references import sequential_decisions, union_find_components


def seeded_graph(seed, n):
    """Random pairs over n nodes: isolated pairs, chains, stars and cliques together."""
    rng = np.random.default_rng(seed)
    nodes = rng.permutation(n).tolist()
    pairs = set()
    while len(nodes) > 1:
        kind = rng.integers(4)
        size = int(min(len(nodes), rng.integers(2, 12)))
        part, nodes = nodes[:size], nodes[size:]
        if kind == 0:  # chain
            pairs |= set(zip(part, part[1:]))
        elif kind == 1:  # star
            pairs |= {(part[0], x) for x in part[1:]}
        elif kind == 2:  # clique
            pairs |= set(itertools.combinations(part, 2))
        else:  # random
            pairs |= {tuple(p) for p in rng.integers(0, n, (size, 2)) if p[0] != p[1]}
    pairs = {(min(p), max(p)) for p in pairs}
    pairs = sorted(pairs)
    return [(a, b, float(c)) for (a, b), c in zip(pairs, np.round(rng.uniform(0.7, 1.0, len(pairs)), 3))]


NAMED = {
    "long chain": [(i, i + 1, 0.9) for i in range(499)],
    "chain in reverse priority": [(i + 1, i, 0.9) for i in range(300)],
    "chain visited out of order": [(7, 2, 0.9), (2, 5, 0.8), (5, 0, 0.95), (0, 9, 0.71), (9, 1, 0.99)],
    "star": [(0, i, 0.8) for i in range(1, 200)],
    "star around a low-priority hub": [(199, i, 0.8) for i in range(199)],
    "clique": [(a, b, 0.9) for a, b in itertools.combinations(range(40), 2)],
    "isolated pairs": [(2 * i, 2 * i + 1, 0.75) for i in range(50)],
    "ties in cosine": [(0, 1, 0.9), (1, 2, 0.9), (0, 2, 0.9), (2, 3, 0.9)],
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_graphs_match_the_references(name):
    check(NAMED[name])


@pytest.mark.parametrize("seed", range(12))
def test_seeded_graphs_match_the_references(seed):
    check(seeded_graph(seed, n=int(np.random.default_rng(seed).integers(2, 400))))


def check(pairs):
    n = 1 + max(max(a, b) for a, b, _ in pairs)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    cos = np.array([p[2] for p in pairs])
    assert groups.components(n, a, b).tolist() == union_find_components(n, [(x, y) for x, y, _ in pairs])
    decided = groups.keep_or_drop(n, a, b, cos)
    kept_by, cosines = sequential_decisions(n, pairs)
    assert decided.kept_by.tolist() == kept_by
    assert [None if np.isnan(c) else c for c in decided.cosine] == cosines
    assert_invariants(n, pairs, decided)


def assert_invariants(n, pairs, decided):
    """Every dropped node has a pair with a kept node of higher priority; no pair has two
    kept ends; a node without any pair is kept."""
    edges = {(min(a, b), max(a, b)): c for a, b, c in pairs}
    for node, by in enumerate(decided.kept_by.tolist()):
        if by >= 0:
            assert by < node and decided.kept[by] and (by, node) in edges
            assert decided.cosine[node] == edges[(by, node)]
    for a, b in edges:
        assert not (decided.kept[a] and decided.kept[b])


def test_a_chain_keeps_every_other_image_not_one():
    """A-B-C with A and C distinct: dropping all but one of the group would delete C."""
    decided = groups.keep_or_drop(3, np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.8]))
    assert decided.kept.tolist() == [True, False, True]
    assert decided.kept_by.tolist() == [-1, 0, -1]


def test_no_pairs():
    assert groups.components(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]
    assert groups.keep_or_drop(2, np.array([], int), np.array([], int), np.array([])).kept.tolist() == [True, True]


@pytest.mark.parametrize("name", ["long chain", "star around a low-priority hub", "clique", "ties in cosine"])
def test_group_table_equals_the_references(name):
    """The one-task kernel on Arrow tables: groups named by their smallest id, decisions in
    priority order (here: most pixels first, ties broken by id)."""
    import pyarrow as pa

    from .references import expected_groups

    pairs = [(f"i{a:04d}", f"i{b:04d}", c) if a < b else (f"i{b:04d}", f"i{a:04d}", c) for a, b, c in NAMED[name]]
    ids = sorted({i for a, b, _ in pairs for i in (a, b)})
    rng = np.random.default_rng(len(name))
    nodes = [{"id": i, "path": f"/p/{i}", "width": int(rng.integers(1, 4)), "height": 1} for i in ids]
    criteria = [("pixels", True), ("id", False)]
    out = groups.group_table(pa.table({"id_a": [p[0] for p in pairs], "id_b": [p[1] for p in pairs],
                                       "cosine": [p[2] for p in pairs]}),
                             pa.Table.from_pylist(nodes), criteria)
    got = {r["id"]: (r["group_id"], r["group_size"], r["action"], r["kept_id"], r["cosine"]) for r in out.to_pylist()}
    assert got == expected_groups(pairs, nodes, criteria)
    assert out.column("group_id").to_pylist() == sorted(out.column("group_id").to_pylist())


def test_decisions_on_global_ranks_equal_those_on_local_numbers():
    pairs = seeded_graph(5, 60)
    ranks = np.random.default_rng(5).choice(10**9, 60, replace=False)
    ranks.sort()  # the same priority order, other numbers
    a = ranks[[p[0] for p in pairs]]
    b = ranks[[p[1] for p in pairs]]
    nodes, kept_by, cosine = groups.keep_or_drop_ranks(a, b, np.array([p[2] for p in pairs]))
    local = groups.keep_or_drop(60, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                                np.array([p[2] for p in pairs]))
    in_pairs = sorted({x for p in pairs for x in p[:2]})
    assert nodes.tolist() == ranks[in_pairs].tolist()
    assert kept_by.tolist() == [-1 if local.kept_by[i] < 0 else int(ranks[local.kept_by[i]]) for i in in_pairs]
    np.testing.assert_array_equal(cosine, local.cosine[in_pairs])
