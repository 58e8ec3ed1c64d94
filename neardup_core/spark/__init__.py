"""The Spark stages: each turns Arrow batches into arrays, calls a pure function, and
turns the result back; the maths lives in the pure modules beside this package.

    session   the job's SparkSession and what it is asked (cores, parallelism)
    listing   inputs as rows: a directory, a manifest, or embeddings made elsewhere
    vector_table  embeddings made elsewhere read by PyArrow in row-group slices, one task each
    embed     the embed stage: read, decode, embed, with the model loaded once per worker
    pairing   the pairing stage: hash, bucket, pair, score, name; and keyed embeddings/
    tally     per-task counts sent back to the driver for the manifest
    arrow     Arrow <-> NumPy helpers the stages share
    jvm       the three things taken from Spark's JVM that have no public Python API
"""
