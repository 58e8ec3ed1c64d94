"""The page: :class:`data.ReportData` laid out by the Jinja2 template next to this file,
with every value escaped (``autoescape``), written as a self-contained folder::

    index.html       inline CSS, inline SVG charts, one small inline script; no network
    thumbs/*.jpg     one per image shown, named by a hash of its id

The Content-Security-Policy allows only that script (by its hash), inline styles and
images from the folder or local files (``file:``, for browsers that give each local file
its own origin), so a page copied anywhere opens from ``file://`` and fetches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import uuid

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .data import ReportData
from .thumbs import thumbnail_name

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
THUMBS = "thumbs"
# Folders written beside the report while it is replaced. Named like the job's staging
# folders (output.STAGING_PREFIX), so a rebuild killed half-way inside a run's folder leaves
# nothing the next run calls foreign, and that run removes it.
TMP_PREFIX = "_staging-report-"


def environment() -> Environment:
    """Jinja2 with autoescape on for every template: values are text, never markup."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["size"] = _human_bytes
    return env


def _human_bytes(value: int | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def render(data: ReportData) -> str:
    """index.html's text."""
    env = environment()
    script = env.get_template("report.js").render()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return env.get_template("index.html.j2").render(
        data=data, script=script, script_hash=f"sha256-{digest}", thumbs=THUMBS,
        css=env.get_template("report.css").render())


def attach_thumbnails(data: ReportData, made: dict[str, bytes | str]) -> dict[str, bytes]:
    """Point each image view at its thumbnail (or the reason there is none).

    Args:
        made: image id -> JPEG bytes, or why none could be made.

    Returns:
        file name -> JPEG bytes, for ``thumbs/``.
    """
    files = {}
    for image in data.images():
        result = made.get(image.id, "no thumbnail was made")
        if isinstance(result, bytes):
            image.thumb = thumbnail_name(image.id)
            files[image.thumb] = result
        else:
            image.thumb_error = result
    return files


def write(data: ReportData, thumbnails: dict[str, bytes], folder: str) -> int:
    """Write the report into ``folder`` (a local path) atomically: into a new folder beside
    it, then renamed over it; an existing report is replaced whole. Returns its bytes."""
    parent = os.path.dirname(os.path.abspath(folder)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    os.makedirs(os.path.join(tmp, THUMBS))
    try:
        total = 0
        for name, jpeg in thumbnails.items():
            with open(os.path.join(tmp, THUMBS, name), "wb") as fh:
                fh.write(jpeg)
            total += len(jpeg)
        html = render(data).encode("utf-8")
        with open(os.path.join(tmp, "index.html"), "wb") as fh:
            fh.write(html)
        total += len(html)
        old = None
        if os.path.exists(folder):
            old = os.path.join(parent, f"{TMP_PREFIX}old-{uuid.uuid4().hex}")
            os.rename(folder, old)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return total
