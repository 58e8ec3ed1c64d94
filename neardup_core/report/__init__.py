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
from .data import ReportData, ReportError, prepare, previous_thumbnails, read_finished_manifest
from .render import attach_thumbnails, write

__all__ = ["ReportData", "ReportError", "attach_thumbnails", "build", "prepare", "read_finished_manifest", "write"]

# (image id, path) pairs in; image id -> JPEG bytes, or why none could be made, out.
Thumbnailer = Callable[[list[tuple[str, str]]], dict[str, "bytes | str"]]


# What an image shows in the report of `neardup pairs` on a table without a path column.
NO_PATH_COLUMN = "the embeddings table has no path column"


def build(run: str, manifest: dict, folder: str, limits: ReportConfig, make_thumbnails: Thumbnailer,
          truth: Truth | None = None) -> dict:
    """Build the report of the run in ``run`` into the local ``folder`` (replaced whole).
    A run whose manifest says ``paths_are_ids`` (``neardup pairs`` of a table with no
    path column) gets no thumbnails: its paths are ids, never opened as files. An
    incremental run takes the thumbnails of unchanged images from its previous run's
    report (:func:`data.previous_thumbnails`) and makes the others.

    Returns:
        What the manifest records: written, groups and pairs shown, thumbnails (those
        reused among them) and failed, bytes.

    Raises:
        ReportError: the run lacks a dataset the report reads.
    """
    data = prepare(run, manifest, limits, truth)
    wanted = dict(sorted({image.id: image.path for image in data.images()}.items()))
    if manifest.get("paths_are_ids"):  # ids are not file names: nothing is read for them
        made, errors, reused = {image_id: NO_PATH_COLUMN for image_id in wanted}, 0, 0
    else:
        made = previous_thumbnails(run, manifest, list(wanted))
        reused = len(made)
        missing = [(image_id, path) for image_id, path in wanted.items() if image_id not in made]
        made.update(make_thumbnails(missing) if missing else {})
        errors = sum(not isinstance(v, bytes) for v in made.values())
    files = attach_thumbnails(data, made)
    size = write(data, files, folder)
    return {"written": True, "groups_shown": len(data.groups), "groups": data.total_groups,
            "pairs_shown": len(data.pairs), "pairs": data.total_pairs, "thumbnails": len(files),
            "thumbnails_reused": reused, "thumbnail_errors": errors, "bytes": size}
