"""Typed, validated configuration.

One :class:`Config` object is built at the edge (the CLI) from the defaults below
(documented key by key in ``conf/default.yaml``; a test keeps the two equal), an
optional user YAML file and ``--set KEY=VALUE`` overrides, and then handed to every
stage. No stage reads files or environment variables on its own.

Every section checks its values when it is constructed (also by ``dataclasses.replace``),
so an invalid configuration cannot exist: an unknown key, a wrong type or an
out-of-range value raises :class:`ConfigError` naming the key and the value.

One module on purpose (under 400 lines): the sections, their checks and the loader that
builds them are one contract, kept equal to ``conf/default.yaml`` by a test.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type or out of range."""


class _Section:
    """Base of the config sections: on construction, each value is coerced to its
    annotated type (:func:`_coerce`) and then :meth:`_check` checks ranges."""

    NAME: ClassVar[str]

    def __post_init__(self) -> None:
        for key, hint in get_type_hints(type(self)).items():
            if key != "NAME":
                object.__setattr__(self, key, _coerce(f"{self.NAME}.{key}", getattr(self, key), hint))
        self._check()

    def _check(self) -> None:
        pass


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


@dataclass(frozen=True)
class InputConfig(_Section):
    NAME: ClassVar[str] = "input"

    path: str | None = None
    format: Literal["auto", "directory", "parquet", "csv"] = "auto"
    id_column: str = "id"
    path_column: str = "path"
    embedding_column: str = "embedding"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    max_file_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    rows_per_partition: int = 2000
    slice_rows: int = 500_000  # `neardup pairs`: most rows of the --embeddings table in one partition (and
    # at most pairs.partition_mb of vectors; spark.vector_table.read_rows)

    def _check(self) -> None:
        _require(bool(self.id_column), "input.id_column", self.id_column, "must not be empty")
        _require(bool(self.path_column), "input.path_column", self.path_column, "must not be empty")
        _require(len(self.extensions) > 0, "input.extensions", self.extensions, "must not be empty")
        for ext in self.extensions:
            _require(ext.isalnum(), "input.extensions", self.extensions,
                     f"entries must be bare extensions like 'jpg', got {ext!r}")
        _in_range("input.max_file_bytes", self.max_file_bytes, 1, 2**31 - 1)
        _in_range("input.max_pixels", self.max_pixels, 1, 2**40)
        _in_range("input.rows_per_partition", self.rows_per_partition, 1, 10**7)
        _in_range("input.slice_rows", self.slice_rows, 1, 10**9)


@dataclass(frozen=True)
class ModelConfig(_Section):
    NAME: ClassVar[str] = "model"

    path: str | None = None
    name: str | None = None
    input_size: int = 224
    preprocess: Literal["none", "unit", "tf", "torch"] = "none"
    output: str | None = None
    cache_dir: str = "~/.cache/neardup"
    trim_borders: bool = True
    colour: Literal["grayscale", "rgb"] = "grayscale"

    def _check(self) -> None:
        _in_range("model.input_size", self.input_size, 16, 2048)
        _require(self.path is None or self.name is None, "model.name", self.name,
                 f"set either model.path or model.name, not both (model.path is {self.path!r})")
        _require(bool(self.cache_dir), "model.cache_dir", self.cache_dir, "must not be empty")


@dataclass(frozen=True)
class EmbedConfig(_Section):
    NAME: ClassVar[str] = "embed"

    batch_size: int = 32
    threads_per_task: int = 1
    backend: Literal["auto", "onnxruntime", "tensorflow", "tensorrt"] = "auto"
    precision: Literal["fp16", "fp32"] = "fp16"
    engine_dir: str | None = None
    decode_threads: int = 1
    cpu_precision: Literal["auto", "int8", "fp32"] = "auto"

    def _check(self) -> None:
        _in_range("embed.batch_size", self.batch_size, 1, 4096)
        _in_range("embed.decode_threads", self.decode_threads, 0, 64)
        _in_range("embed.threads_per_task", self.threads_per_task, 0, 1024)
        _require(self.engine_dir is None or bool(self.engine_dir), "embed.engine_dir", self.engine_dir,
                 "must not be empty (null means {model.cache_dir}/engines)")


# A bucket key packs k bits into an int64 (lsh.signature_keys); up to 48 bits, a bucket
# sorts on one int64 with the table number above the key (pairing.group_buckets). A packed
# bucket entry numbers tables and holds sub-keys in 16 bits (blocks.ENTRY).
MAX_TABLES = 256
MAX_BITS_PER_TABLE = 48
MAX_SPLIT_BITS = 10


@dataclass(frozen=True)
class LshConfig(_Section):
    NAME: ClassVar[str] = "lsh"

    num_tables: int | Literal["auto"] = "auto"
    bits_per_table: int | Literal["auto"] = "auto"
    target_recall: float = 0.99
    sample_size: int = 2000
    max_bucket_size: int = 2000
    split_bits: int = 8
    seed: int = 20261122

    def _check(self) -> None:
        if self.num_tables != "auto":
            _in_range("lsh.num_tables", self.num_tables, 1, MAX_TABLES)
        if self.bits_per_table != "auto":
            _in_range("lsh.bits_per_table", self.bits_per_table, 1, MAX_BITS_PER_TABLE)
        _in_range("lsh.target_recall", self.target_recall, 0.5, 0.999999)
        _in_range("lsh.sample_size", self.sample_size, 100, 100_000)
        _in_range("lsh.max_bucket_size", self.max_bucket_size, 2, 1_000_000)
        _in_range("lsh.split_bits", self.split_bits, 0, MAX_SPLIT_BITS)
        _in_range("lsh.seed", self.seed, 0, 2**63 - 1)


@dataclass(frozen=True)
class PairsConfig(_Section):
    NAME: ClassVar[str] = "pairs"

    cosine_threshold: float = 0.625
    partition_mb: int = 64
    one_task_mb: int = 512
    # Geometric verification of borderline pairs (neardup_core.verify).
    accept_cosine: float = 0.75
    min_inliers: int = 15
    features: Literal["sift", "orb"] = "sift"
    transform: Literal["similarity", "affine", "homography"] = "homography"
    max_keypoints: int = 1000
    max_side: int = 512
    ratio: float = 0.75
    keep_rejected: bool = True
    max_verified_per_image: float = 2.0
    # Near copies (neardup_core.near_copies): collapsed onto a representative before pairing.
    copy_cosine: float = 0.97
    copy_min_rows: int = 32

    def _check(self) -> None:
        _in_range("pairs.cosine_threshold", self.cosine_threshold, -1.0, 1.0)
        _in_range("pairs.copy_cosine", self.copy_cosine, 0.0, 1.0)
        _in_range("pairs.copy_min_rows", self.copy_min_rows, 2, 10**9)
        _in_range("pairs.partition_mb", self.partition_mb, 1, 4096)
        _in_range("pairs.one_task_mb", self.one_task_mb, 0, 65536)
        _in_range("pairs.accept_cosine", self.accept_cosine, -1.0, 1.0)
        _in_range("pairs.min_inliers", self.min_inliers, 1, 100_000)
        _in_range("pairs.max_keypoints", self.max_keypoints, 10, 100_000)
        _in_range("pairs.max_side", self.max_side, 64, 8192)
        _in_range("pairs.ratio", self.ratio, 0.1, 1.0)
        _in_range("pairs.max_verified_per_image", self.max_verified_per_image, 0.0, 1_000_000.0)

    @property
    def verifies(self) -> bool:
        """Whether any pair is verified: some cosines lie in [cosine_threshold, accept_cosine)."""
        return self.accept_cosine > self.cosine_threshold

    @property
    def partition_bytes(self) -> int:
        """``partition_mb`` in bytes: what one task of a sized stage holds."""
        return self.partition_mb * 2**20

    @property
    def one_task_bytes(self) -> int:
        """``one_task_mb`` in bytes: the most the pairing may hold to run in one task."""
        return self.one_task_mb * 2**20

    @property
    def near_copy_cosine(self) -> float | None:
        """The cosine at which a row is a near copy of its representative: ``copy_cosine``,
        raised to ``cosine_threshold`` if below it (a copy must be a pair); None when 1
        (near copies off)."""
        return None if self.copy_cosine >= 1.0 else max(self.copy_cosine, self.cosine_threshold)


# groups.keep criteria that every source has; any other name is a manifest column, except
# the names the groups stage uses for its own columns.
KEEP_BUILTINS = ("pixels", "bytes", "modified", "id", "path", "width", "height")
KEEP_RESERVED = ("id_a", "id_b", "cosine", "rank", "label", "content", "size", "error_message", "error_stage",
                 "embedding", "keys", "content_hash", "previous_hash", "reused", "fresh")


@dataclass(frozen=True)
class GroupsConfig(_Section):
    NAME: ClassVar[str] = "groups"

    keep: tuple[str, ...] = ("pixels desc", "bytes desc", "id asc")
    max_pairs_in_one_task: int = 1_000_000

    def _check(self) -> None:
        _require(len(self.keep) > 0, "groups.keep", self.keep, "must name at least one criterion")
        names = []
        for item in self.keep:
            parts = item.split()
            ok = (len(parts) == 2 and parts[1] in ("asc", "desc")
                  and parts[0].replace("_", "a").isalnum() and not parts[0][0].isdigit())
            _require(ok, "groups.keep", self.keep, f"entries must be 'NAME asc' or 'NAME desc' ({item!r} is not)")
            names.append(parts[0])
        _require(len(set(names)) == len(names), "groups.keep", self.keep, "names a criterion twice")
        reserved = sorted(set(names) & set(KEEP_RESERVED))
        _require(not reserved, "groups.keep", self.keep, f"cannot sort by {', '.join(reserved)} (used by the stage)")
        _in_range("groups.max_pairs_in_one_task", self.max_pairs_in_one_task, 0, 10**9)

    def criteria(self) -> list[tuple[str, bool]]:
        """(name, descending) in priority order, ending with ("id", False) as the tie-breaker
        that makes the order total."""
        order = [(item.split()[0], item.split()[1] == "desc") for item in self.keep]
        return order if any(name == "id" for name, _ in order) else [*order, ("id", False)]

    def manifest_columns(self) -> list[str]:
        """Criteria that are not built in: columns the input must provide."""
        return [name for name, _ in self.criteria() if name not in KEEP_BUILTINS]


@dataclass(frozen=True)
class OutputConfig(_Section):
    NAME: ClassVar[str] = "output"

    path: str | None = None
    overwrite: bool = False
    write_embeddings: bool | Literal["auto"] = "auto"  # auto: vectors for `run`, keys only for `pairs`
    break_lock: bool = False  # take over a stale output lock (neardup_core.lock)

    def _check(self) -> None:
        _require(self.path is None or bool(self.path.strip()), "output.path", self.path, "must not be empty")

    def required_path(self) -> str:
        """The output folder; raises :class:`ConfigError` when none was given."""
        if self.path is None:
            raise ConfigError("--output is required (output.path is not set)")
        return self.path


# The master URLs Spark itself accepts (SparkContext's master parser).
# Memory settings checked before the JVM starts (too little heap makes it exit with JVM
# messages of its own), and the least heap Spark runs with (its reserved 300 MB x 1.5).
_SPARK_MEMORY_KEYS = ("spark.driver.memory", "spark.executor.memory")
_SPARK_MIN_HEAP = 512 * 2**20
_JVM_SIZE = re.compile(r"([0-9]{1,15})\s*([kmgtp]?)b?", re.IGNORECASE)


def _jvm_bytes(value: str) -> int | None:
    """Bytes in a JVM memory string as Spark reads it (a bare number is MiB), or None."""
    match = _JVM_SIZE.fullmatch(value.strip())
    if match is None:
        return None
    unit = match.group(2).lower() or "m"
    return int(match.group(1)) * 2 ** (10 * "kmgtp".index(unit) + 10)


_SPARK_MASTER = re.compile(r"local(\[[0-9*]+(,\s*[0-9]+)?\])?|local-cluster\[.+\]|yarn|(spark|k8s|mesos)://.+")


@dataclass(frozen=True)
class ReportConfig(_Section):
    NAME: ClassVar[str] = "report"

    enabled: bool = True
    max_groups: int = 100
    max_images_per_group: int = 24
    max_pairs: int = 50
    thumbnail_px: int = 160

    def _check(self) -> None:
        _in_range("report.max_groups", self.max_groups, 0, 100_000)
        _in_range("report.max_images_per_group", self.max_images_per_group, 2, 10_000)
        _in_range("report.max_pairs", self.max_pairs, 0, 100_000)
        _in_range("report.thumbnail_px", self.thumbnail_px, 16, 1024)


@dataclass(frozen=True)
class SparkConfig(_Section):
    NAME: ClassVar[str] = "spark"

    master: str | None = None
    app_name: str = "neardup"
    shuffle_partitions: int = 0
    conf: dict[str, str] = field(default_factory=dict)
    class_archive: bool = True  # start the driver's JVM from `neardup build-jvm-archive`'s archive, where built

    def _check(self) -> None:
        _in_range("spark.shuffle_partitions", self.shuffle_partitions, 0, 10**6)
        _require(self.master is None or bool(_SPARK_MASTER.fullmatch(self.master)), "spark.master", self.master,
                 "must be local, local[N], local[*], local-cluster[...], yarn, or a URL spark://, k8s://, mesos://")
        for name in _SPARK_MEMORY_KEYS:
            if name in self.conf:
                value = str(self.conf[name])
                size = _jvm_bytes(value)
                _require(size is not None and size >= _SPARK_MIN_HEAP, f"spark.conf.{name}", value,
                         "must be a JVM memory size (512m, 4g) of at least 512m: Spark needs 450 MB of heap")


@dataclass(frozen=True)
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    lsh: LshConfig = field(default_factory=LshConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) for the run manifest and ``--print-config``."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def load_config(config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the effective configuration.

    Args:
        config_file: optional YAML file whose keys override the defaults.
        overrides: ``KEY=VALUE`` strings (``lsh.num_tables=16``); VALUE is parsed as YAML.

    Returns:
        A validated :class:`Config`.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    merged = Config().to_dict()
    if config_file is not None:
        try:
            with open(config_file, encoding="utf-8") as fh:
                user = _load_yaml(fh.read(MAX_CONFIG_BYTES + 1)) or {}
        except OSError as err:
            raise ConfigError(f"--config {config_file}: cannot read: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"--config {config_file}: not a UTF-8 text file (byte {err.start})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {config_file}: not valid YAML: {_one_line(err)}") from err
        if not isinstance(user, dict):
            raise ConfigError(f"--config {config_file}: must hold a mapping of sections, got {type(user).__name__}")
        _merge(merged, user, source=config_file)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {_brief(item)}: expected SECTION.KEY=VALUE, e.g. lsh.num_tables=16")
        section, name = key.strip().split(".", 1)
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {_brief(item)}: value is not valid YAML: {_one_line(err)}") from err
        if section == "spark" and name.startswith("conf.") and len(name) > 5:  # one Spark setting
            current = merged.get("spark", {}).get("conf")
            value = {**(current if isinstance(current, dict) else {}), name[5:]: "" if value is None else str(value)}
            name = "conf"
        _merge(merged, {section: {name: value}}, source="--set")
    return from_dict(merged)


# A config file is a few kilobytes; this bounds what a mistaken --config (a data file) costs.
MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors' aliases (``*name``, ``<<: *name``): a few lines of
    aliases can expand to billions of nodes (a "billion laughs"), and a config needs none."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a neardup config",
                                              mark)
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise yaml.YAMLError(f"over {MAX_CONFIG_BYTES} bytes, too large for a configuration")
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: no Python objects


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxset = 2, 4, 4, 4, 4
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 80, 80, 40


def _brief(value: Any) -> str:
    """A value for an error message, cut short: never the whole of a huge value."""
    return _BRIEF.repr(value)


def _one_line(err: Exception, limit: int = 300) -> str:
    return " ".join(str(err).split())[:limit]


def from_dict(data: dict[str, Any]) -> Config:
    """Typed :class:`Config` from nested plain data; unknown keys and wrong types raise."""
    sections = {}
    hints = get_type_hints(Config)
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(f"unknown configuration section {_brief(name)}; known: {', '.join(hints)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping of keys, got {_brief(value)}")
        sections[name] = _section(hints[name], name, value)
    return Config(**sections)


def _section(cls: type, section: str, values: dict[str, Any]) -> Any:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown configuration key {section}.{_brief(str(key))[1:-1]}; "
                              f"known in {section}: {', '.join(known)}")
    return cls(**values)  # coerced and checked on construction


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    options = [a for a in args if a is not type(None)]
    if origin in (Union, types.UnionType) and len(options) > 1:  # e.g. int | Literal["auto"]
        if value is None and type(None) in args:
            return None
        for option in options:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {' or '.join(_describe(o) for o in options)}, got {_brief(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {_brief(value)}")
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {_brief(value)}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_brief(value)}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_brief(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_brief(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, got {_brief(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {_brief(value)}")
        return str(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " or ".join(map(repr, get_args(hint)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _merge(base: dict, update: dict, source: str) -> None:
    for section, values in update.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {_brief(values)}")
        base.setdefault(section, {})
        if not isinstance(base[section], dict):
            base[section] = {}
        base[section].update(values)


def _require(ok: bool, key: str, value: Any, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {problem}, got {_brief(value)}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{key} must be in {lo}..{hi}, got {_brief(value)}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
