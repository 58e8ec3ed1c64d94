"""spark-submit entry point: ``spark-submit [spark options] jobs/dedup.py --input ... --output ...``.

The package must reach the executors (see README, "On a cluster").
"""

import sys

from neardup_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]], launched_by_spark_submit=True))
