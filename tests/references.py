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
