"""neardup: batch near-duplicate image detection on Spark.

Pure modules (config, sources, decode, embed, lsh, tuning, buckets, blocks, pairing)
import no Spark; the Spark stages live in :mod:`neardup_core.spark`, the order of stages
in :mod:`neardup_core.job`, the entry point in :mod:`neardup_core.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neardup")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
