"""The review report: ``report/index.html`` and its thumbnails, for a person to look at.

    data = prepare(run, manifest, cfg.report, truth)   # plain data from the run's outputs (data.py)
    made = make_thumbnails([(id, path), ...])          # the caller's: a Spark stage in the job
    write(data, attach_thumbnails(data, made), folder) # Jinja2, autoescaped; atomic (render.py)

Pure: no Spark. :mod:`neardup_core.spark.report` makes the thumbnails in Spark and puts
the folder into a run's output.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import ReportConfig
from ..evaluation import Truth
from .data import ReportData, ReportError, prepare, read_finished_manifest
from .render import attach_thumbnails, write

__all__ = ["ReportData", "ReportError", "attach_thumbnails", "build", "prepare", "read_finished_manifest", "write"]

# (image id, path) pairs in; image id -> JPEG bytes, or why none could be made, out.
Thumbnailer = Callable[[list[tuple[str, str]]], dict[str, "bytes | str"]]


def build(run: str, manifest: dict, folder: str, limits: ReportConfig, make_thumbnails: Thumbnailer,
          truth: Truth | None = None) -> dict:
    """Build the report of the run in ``run`` into the local ``folder`` (replaced whole).

    Returns:
        What the manifest records: written, groups and pairs shown, thumbnails made and
        failed, bytes.

    Raises:
        ReportError: the run lacks a dataset the report reads.
    """
    data = prepare(run, manifest, limits, truth)
    wanted = dict(sorted({image.id: image.path for image in data.images()}.items()))
    made = make_thumbnails(list(wanted.items())) if wanted else {}
    files = attach_thumbnails(data, made)
    size = write(data, files, folder)
    return {"written": True, "groups_shown": len(data.groups), "groups": data.total_groups,
            "pairs_shown": len(data.pairs), "pairs": data.total_pairs, "thumbnails": len(files),
            "thumbnail_errors": sum(not isinstance(v, bytes) for v in made.values()), "bytes": size}
