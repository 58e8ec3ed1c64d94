"""What the report shows, as plain data, read from a run's Parquet outputs and manifest.
Pure (PyArrow, NumPy): the same code reads a staged run inside the job and a finished one
for ``neardup report``.

Everything the page holds is bounded by ``report.*``: the largest ``max_groups`` groups
(``max_images_per_group`` images each), the ``max_pairs`` pairs closest to the threshold,
a few paths per error reason. Reading costs one pass over a few columns: ``group_id`` and
``group_size`` of groups/, ``cosine`` of pairs/, ``stage`` and ``message`` of errors/;
the rows shown are then read with a filter, and so are the pairs of the drops shown with
their kept images (for how each was accepted: ``verified``, ``inliers``, ``exact``; runs
written before verification lack those columns, and the page then says nothing of it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs

from ..config import ReportConfig
from ..evaluation import Truth, pr_curve, score_pairs
from ..sources import is_local, local_path
from . import charts
from .thumbs import thumbnail_name

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
MAX_ERROR_REASONS = 50
PATHS_PER_ERROR_REASON = 10
CURVE_POINTS = 41
ACCEPTANCE_COLUMNS = ("verified", "inliers", "exact")  # pairs/ columns a run may lack (older runs)


class ReportError(ValueError):
    """The run cannot be reported on (missing, unfinished, unreadable); the message says why."""


@dataclass
class ImageView:
    id: str
    path: str
    action: str | None = None  # keep | drop in a group; None at a pair's end
    kept_id: str | None = None
    cosine: float | None = None  # a drop's cosine to kept_id; None: linked through other images
    accepted: str | None = None  # how the drop's pair with kept_id was accepted (acceptance()); None: no such pair
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    thumb: str | None = None  # file name under thumbs/, once made
    thumb_error: str | None = None


@dataclass
class GroupView:
    group_id: str
    size: int
    images: list[ImageView]
    hidden: int  # images of the group not shown (report.max_images_per_group)


@dataclass
class PairView:
    a: ImageView
    b: ImageView
    cosine: float
    accepted: str | None = None  # acceptance(); None where pairs/ has no verification columns


@dataclass
class ErrorReason:
    stage: str
    reason: str
    count: int
    paths: list[str]


@dataclass
class TruthView:
    labelled_pairs: int
    unlabelled_pairs: int  # pairs with an image the truth file does not name
    true_positives: int
    false_positives: int
    false_negatives: int
    ambiguous: int
    precision: float
    recall: float
    f1: float
    curve: charts.Curve


@dataclass
class ReportData:
    run: dict[str, str]
    summary: list[tuple[str, str]]
    settings: list[tuple[str, str]]
    stages: list[tuple[str, float]]
    threshold: float
    limits: ReportConfig
    accept_cosine: float | None = None  # pairs.accept_cosine, where the manifest has it
    groups: list[GroupView] = field(default_factory=list)
    total_groups: int = 0
    pairs: list[PairView] = field(default_factory=list)
    total_pairs: int = 0
    histogram: charts.Histogram | None = None
    errors: list[ErrorReason] = field(default_factory=list)
    total_errors: int = 0
    total_error_reasons: int = 0
    truth: TruthView | None = None

    def images(self) -> list[ImageView]:
        """Every image view on the page (an image shown twice has two views)."""
        return [i for g in self.groups for i in g.images] + [i for p in self.pairs for i in (p.a, p.b)]


def acceptance(row: dict) -> str | None:
    """How a pairs/ row was accepted, as the page says it: ``exact copy``, ``verified: N
    inliers`` or ``embedding``; None where the row has none of the columns that tell (an
    older run). An unknown ``verified`` value is shown as it is (the template escapes it)."""
    verified, inliers = row.get("verified"), row.get("inliers")
    if row.get("exact"):
        return "exact copy"
    if verified == "geometry":
        return f"verified: {inliers} inliers" if inliers is not None else "verified"
    if verified == "unverified":  # its verdict could change no group or decision, so it was not matched
        return "not verified: same group either way"
    if verified is not None:
        return str(verified)
    return None


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if is_local(path):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(local_path(path))
    parsed = urlparse(path)
    scheme = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}.get(parsed.scheme, parsed.scheme)
    fs, inner = pyarrow.fs.FileSystem.from_uri(f"{scheme}://{parsed.netloc}{parsed.path}")
    return fs, inner


def read_finished_manifest(run: str) -> dict:
    """The manifest of the finished run in folder ``run``.

    Raises:
        ReportError: no such folder, no ``_SUCCESS`` (an unfinished run), or an unreadable manifest.
    """
    fs, inner = _filesystem(run)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        raise ReportError(f"--run {run}: no such directory")
    if fs.get_file_info(f"{inner}/{SUCCESS}").type != pyarrow.fs.FileType.File:
        raise ReportError(f"--run {run}: holds no finished run (no {SUCCESS})")
    try:
        with fs.open_input_stream(f"{inner}/{MANIFEST}") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"--run {run}: unreadable {MANIFEST}: {err}") from err


def previous_thumbnails(run: str, manifest: dict, ids: list[str]) -> dict[str, bytes]:
    """Thumbnails the previous run of an incremental run (``manifest["incremental"]``)
    already made, for the images of ``ids`` whose content did not change: image id ->
    JPEG bytes from its ``report/thumbs/``. Only between two runs over image files, with
    the same neardup version and thumbnail settings (``report.thumbnail_px``,
    ``input.max_pixels``), and for images whose ``content_hash`` in embeddings/ is the
    same on both nights; an id with no thumbnail there is left out. Anything unreadable
    gives nothing: the thumbnails are then made again.
    """
    incremental = manifest.get("incremental") or {}
    if not ids or not incremental.get("reused") or not incremental.get("previous"):
        return {}
    previous = incremental["previous"]
    try:
        before = read_finished_manifest(previous)
    except ReportError:
        return {}
    if any(m.get("config", {}).get("input", {}).get("path") is None for m in (manifest, before)):
        return {}  # `neardup pairs`: an unchanged vector says nothing about the file at its path
    settings = [(m.get("neardup_version"), m["config"].get("report", {}).get("thumbnail_px"),
                 m["config"]["input"].get("max_pixels")) for m in (manifest, before)]
    if settings[0] != settings[1]:
        return {}
    wanted = pa.array(sorted(ids), pa.string())
    hashes = []
    for folder in (run, previous):
        try:
            dataset = _dataset(f"{folder}/embeddings")
            if dataset is None or "content_hash" not in dataset.schema.names:
                return {}
            table = dataset.to_table(columns=["id", "content_hash"], filter=pc.field("id").isin(wanted))
        except (OSError, ValueError):  # pyarrow's errors: ArrowIOError, ArrowInvalid
            return {}
        hashes.append(dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist())))
    fs, inner = _filesystem(f"{previous}/report/thumbs")
    found = {}
    for image_id, digest in hashes[0].items():
        if digest is None or hashes[1].get(image_id) != digest:
            continue
        try:
            with fs.open_input_stream(f"{inner}/{thumbnail_name(image_id)}") as fh:
                found[image_id] = fh.read()
        except (OSError, ValueError):  # not made last night (it failed, or was not shown)
            continue
    return found


def _dataset(folder: str) -> ds.Dataset | None:
    """A Parquet folder as Spark wrote it (``_SUCCESS`` and ``.crc`` files are skipped), or
    None where there is none."""
    fs, inner = _filesystem(folder)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return None
    return ds.dataset(inner, filesystem=fs, format="parquet")


def prepare(run: str, manifest: dict, limits: ReportConfig, truth: Truth | None = None) -> ReportData:
    """Read the run in folder ``run`` (finished or staged: pairs/, groups/, errors/, and
    embeddings/ where written) and choose what the page shows.

    Raises:
        ReportError: a dataset the run must have is missing.
    """
    config = manifest.get("config", {})
    threshold = float(config.get("pairs", {}).get("cosine_threshold", 0.0))
    accept = config.get("pairs", {}).get("accept_cosine")
    data = ReportData(run=_run_facts(manifest), summary=_summary(manifest), settings=_settings(manifest, threshold),
                      stages=[(s["name"], float(s.get("seconds", 0.0))) for s in manifest.get("stages", [])],
                      threshold=threshold, limits=limits, accept_cosine=None if accept is None else float(accept))
    pairs, groups, errors = (_dataset(f"{run}/{name}") for name in ("pairs", "groups", "errors"))
    for name, dataset in (("pairs", pairs), ("groups", groups), ("errors", errors)):
        if dataset is None:
            raise ReportError(f"{run}: no {name}/ dataset")
    data.groups, data.total_groups = _groups(groups, limits.max_groups, limits.max_images_per_group)
    _add_acceptance(pairs, [i for g in data.groups for i in g.images if i.action == "drop" and i.kept_id])
    cosines = pairs.to_table(columns=["cosine"]).column("cosine").to_numpy()
    data.total_pairs = len(cosines)
    data.histogram = charts.histogram(cosines, threshold, data.accept_cosine)
    data.pairs = _borderline_pairs(pairs, cosines, threshold, limits.max_pairs)
    data.errors, data.total_errors, data.total_error_reasons = _errors(errors)
    _add_image_facts(_dataset(f"{run}/embeddings"), data.images())
    if truth is not None:
        data.truth = _truth(pairs, truth, threshold)
    return data


def _run_facts(manifest: dict) -> dict[str, str]:
    config = manifest.get("config", {})
    return {"run_id": str(manifest.get("run_id", "")), "started_at": str(manifest.get("started_at", "")),
            "finished_at": str(manifest.get("finished_at", "")),
            "version": str(manifest.get("neardup_version", "")),
            "input": str(config.get("input", {}).get("path") or "")}


def _summary(manifest: dict) -> list[tuple[str, str]]:
    counts = manifest.get("counts", {})
    names = [("images", "inputs"), ("errors", "errors"), ("pairs", "pairs"), ("verified pairs", "verified_pairs"),
             ("rejected pairs", "rejected_pairs"), ("unverified pairs", "unverified_pairs"),
             ("over-budget pairs", "over_budget_pairs"), ("exact copies", "exact_copies"), ("groups", "groups"),
             ("kept", "kept"), ("dropped", "dropped")]
    return [(label, f"{counts[key]:,}") for label, key in names if key in counts]


def _settings(manifest: dict, threshold: float) -> list[tuple[str, str]]:
    config = manifest.get("config", {})
    model = config.get("model", {})
    stage_names = {s.get("name") for s in manifest.get("stages", [])}
    if "read-embeddings" in stage_names:
        model_text = "embeddings made elsewhere (neardup pairs)"
    else:
        model_text = model.get("path") or model.get("name") or "built-in EfficientNet-Lite0"
        model_text += f", {model.get('input_size', '?')} px, {model.get('colour', '?')}"
        # What ran: INT8 or FP32 (embed.cpu_precision); absent from runs older than the key.
        loaded = [s for s in manifest.get("stages", []) if s.get("name") == "load-model"]
        precision = loaded[0].get("precision") if loaded else None
        if precision:
            model_text += f", {str(precision).upper()}"
    lsh = manifest.get("lsh")
    if lsh:
        plan = (f"{lsh['num_tables']} tables of {lsh['bits_per_table']} bits; recall "
                f"{lsh['recall_at_threshold']:.4f} at the threshold")
    else:
        plan = "none (nothing to hash)"
    return [("cosine threshold", f"{threshold:g}"), *_verification_settings(config.get("pairs", {}), threshold),
            ("model", model_text), ("LSH plan", plan),
            ("keep priority", ", ".join(config.get("groups", {}).get("keep", [])))]


def _verification_settings(pairs: dict, threshold: float) -> list[tuple[str, str]]:
    """``pairs.accept_cosine`` and ``pairs.min_inliers``, where the manifest has them."""
    settings = []
    if "accept_cosine" in pairs:
        accept = float(pairs["accept_cosine"])
        note = "" if accept > threshold else " (at or below the threshold: no verification)"
        settings.append(("accept cosine", f"{accept:g}{note}"))
    if "min_inliers" in pairs:
        settings.append(("min inliers", f"{pairs['min_inliers']}"))
    return settings


def _groups(dataset: ds.Dataset, max_groups: int, per_group: int) -> tuple[list[GroupView], int]:
    """The largest ``max_groups`` groups (ties by group id), each with its kept images
    first, then its drops by kept image and falling cosine, cut to ``per_group``."""
    sizes = dataset.to_table(columns=["group_id", "group_size"]).group_by("group_id").aggregate(
        [("group_size", "max")])
    total = sizes.num_rows
    if total == 0 or max_groups == 0:
        return [], total
    order = pc.sort_indices(sizes, sort_keys=[("group_size_max", "descending"), ("group_id", "ascending")])
    top = sizes.take(order[:max_groups])
    chosen = top.column("group_id")
    rows = dataset.to_table(columns=["id", "path", "group_id", "group_size", "action", "kept_id", "cosine"],
                            filter=pc.field("group_id").isin(chosen)).to_pylist()
    members: dict[str, list[dict]] = {}
    for row in rows:
        members.setdefault(row["group_id"], []).append(row)
    views = []
    for group_id, size in zip(chosen.to_pylist(), top.column("group_size_max").to_pylist()):
        found = members.get(group_id, [])
        kept = sorted((r for r in found if r["action"] == "keep"), key=lambda r: r["id"])
        position = {r["id"]: i for i, r in enumerate(kept)}
        dropped = sorted((r for r in found if r["action"] != "keep"),
                         key=lambda r: (position.get(r["kept_id"], len(kept)), -(r["cosine"] or -2.0), r["id"]))
        shown = (kept + dropped)[:per_group]
        images = [ImageView(r["id"], r["path"] or "", r["action"], r["kept_id"], r["cosine"]) for r in shown]
        views.append(GroupView(group_id, int(size), images, max(int(size) - len(images), 0)))
    return views, total


def _borderline_pairs(dataset: ds.Dataset, cosines: np.ndarray, threshold: float, max_pairs: int
                      ) -> list[PairView]:
    """The ``max_pairs`` pairs whose cosine is closest to the threshold (ties by id)."""
    if max_pairs == 0 or len(cosines) == 0:
        return []
    gap = np.abs(cosines - threshold)
    k = min(max_pairs, len(gap))
    limit = float(np.partition(gap, k - 1)[k - 1])
    near = (pc.field("cosine") >= threshold - limit) & (pc.field("cosine") <= threshold + limit)
    columns = ["id_a", "id_b", "path_a", "path_b", "cosine", *_acceptance_columns(dataset)]
    rows = dataset.to_table(columns=columns, filter=near).to_pylist()
    rows.sort(key=lambda r: (abs(r["cosine"] - threshold), r["id_a"], r["id_b"]))
    return [PairView(ImageView(r["id_a"], r["path_a"] or ""), ImageView(r["id_b"], r["path_b"] or ""), r["cosine"],
                     acceptance(r))
            for r in rows[:k]]


def _acceptance_columns(dataset: ds.Dataset) -> list[str]:
    return [c for c in ACCEPTANCE_COLUMNS if c in dataset.schema.names]


def _add_acceptance(pairs: ds.Dataset, drops: list[ImageView]) -> None:
    """How each drop's pair with its kept image was accepted, from that pair's row in
    pairs/ (``id_a < id_b``); a drop linked through other images has no such row."""
    columns = _acceptance_columns(pairs)
    if not columns or not drops:
        return
    ids = pa.array(sorted({i.id for i in drops} | {i.kept_id for i in drops}), pa.string())
    rows = pairs.to_table(columns=["id_a", "id_b", *columns],
                          filter=pc.field("id_a").isin(ids) & pc.field("id_b").isin(ids)).to_pylist()
    found = {(r["id_a"], r["id_b"]): r for r in rows}
    for image in drops:
        row = found.get((min(image.id, image.kept_id), max(image.id, image.kept_id)))
        if row is not None:
            image.accepted = acceptance(row)


def _errors(dataset: ds.Dataset) -> tuple[list[ErrorReason], int, int]:
    """Errors counted by (stage, message), most frequent first, with a few paths each."""
    table = dataset.to_table(columns=["stage", "message", "path"])
    if table.num_rows == 0:
        return [], 0, 0
    table = pa.table({"stage": pc.fill_null(table.column("stage"), ""),
                      "message": pc.fill_null(table.column("message"), ""),
                      "path": pc.fill_null(table.column("path"), "")})
    counts = table.group_by(["stage", "message"]).aggregate([("path", "count")])
    order = pc.sort_indices(counts, sort_keys=[("path_count", "descending"), ("stage", "ascending"),
                                               ("message", "ascending")])
    reasons = []
    for row in counts.take(order[:MAX_ERROR_REASONS]).to_pylist():
        mask = pc.and_(pc.equal(table.column("stage"), row["stage"]), pc.equal(table.column("message"), row["message"]))
        paths = sorted(table.filter(mask).column("path").to_pylist())[:PATHS_PER_ERROR_REASON]
        reasons.append(ErrorReason(row["stage"], row["message"], row["path_count"], paths))
    return reasons, table.num_rows, counts.num_rows


def _add_image_facts(embeddings: ds.Dataset | None, images: list[ImageView]) -> None:
    """Width, height and bytes of each image from embeddings/, where it was written."""
    if embeddings is None or not images:
        return
    columns = [c for c in ("id", "width", "height", "bytes") if c in embeddings.schema.names]
    if len(columns) == 1:
        return
    ids = pa.array(sorted({i.id for i in images}), pa.string())
    facts = {r["id"]: r for r in embeddings.to_table(columns=columns, filter=pc.field("id").isin(ids)).to_pylist()}
    for image in images:
        row = facts.get(image.id, {})
        image.width, image.height, image.bytes = row.get("width"), row.get("height"), row.get("bytes")


def _truth(dataset: ds.Dataset, truth: Truth, threshold: float) -> TruthView:
    """Precision and recall of the run's pairs against labelled groups (images named by
    the last part of their id, as the benchmark names them), and the curve over the
    thresholds from the run's own up (lower ones would need pairs the run did not keep)."""
    table = dataset.to_table(columns=["id_a", "id_b", "cosine"]).to_pydict()
    scored, unlabelled = [], 0
    for a, b, c in zip(table["id_a"], table["id_b"], table["cosine"]):
        a, b = a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]
        if a in truth.group and b in truth.group:
            scored.append((a, b, c))
        else:
            unlabelled += 1
    scores = score_pairs([(a, b) for a, b, _ in scored], truth)
    top = max((c for _, _, c in scored), default=1.0)
    thresholds = np.linspace(threshold, max(top, threshold), CURVE_POINTS)
    curve = pr_curve(scored, truth, thresholds)
    return TruthView(len(scored), unlabelled, scores.true_positives, scores.false_positives, scores.false_negatives,
                     scores.ambiguous, scores.precision, scores.recall, scores.f1,
                     charts.pr_curve([(p.threshold, p.precision, p.recall) for p in curve]))
