"""spark-submit entry point: ``spark-submit [spark options] jobs/dedup.py --input ... --output ...``.

The driver runs the full install; executors run the archive that ``make executor-env``
builds. The command for each cluster manager is in README.md, section "On a cluster".
"""

import sys

from neardup_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]], launched_by_spark_submit=True, whole_process=True))
