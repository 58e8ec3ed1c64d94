"""neardup: batch near-duplicate image detection on Spark.

Pure modules (config, sources, decode, embed, lsh, pairing) import no Spark; the Spark
stages live in pipeline, the job's order of stages in job, the entry point in cli.
"""

__version__ = "0.1.0"
