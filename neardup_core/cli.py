"""Command line.

    neardup run --input PATH --output DIR [--previous RUN] [--config FILE] [--set K=V ...] [--overwrite]
    neardup pairs --embeddings PATH --output DIR [--previous RUN] [--config FILE] [--set K=V ...] [--overwrite]
    neardup plan --embeddings PATH [--config FILE] [--set K=V ...]
    neardup build-engine [--config FILE] [--set K=V ...] [--device N]
    neardup build-jvm-archive [--config FILE] [--set K=V ...]
    neardup report --run DIR [--output FOLDER] [--truth FILE] [--config FILE] [--set K=V ...]

Exit codes: 0 success, 2 bad invocation (config, input, output, model; one message on
stderr, before any Spark job runs), 1 any other failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .config import ConfigError, load_config
from .console import caused_by_interrupt, configure_logging, exit_on_interrupt
from .embed import ModelError
from .lock import LockError
from .output import OutputError
from .sources import InputError

USAGE_ERRORS = (ConfigError, InputError, ModelError, OutputError, LockError)


def parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="YAML file overriding conf/default.yaml")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set lsh.num_tables=16 (repeatable)")
    config.add_argument("--verbose", action="store_true",
                        help="also show Spark's, TensorFlow's and the converters' own logs")
    p = argparse.ArgumentParser(prog="neardup", description="Batch near-duplicate image detection on Spark.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[config], help="embed, hash and pair a catalog of images")
    run.add_argument("--input", required=True, help="directory of images, or a Parquet/CSV manifest")
    run.add_argument("--output", required=True, help="where results go")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    run.add_argument("--break-lock", action="store_true",
                     help="take over a stale lock on --output (a run that died without removing it)")
    run.add_argument("--previous", help="a finished run's folder: reuse its images that did not change")
    pairs = sub.add_parser("pairs", parents=[config],
                           help="hash, pair and score embeddings made elsewhere (Parquet: id + embedding)")
    pairs.add_argument("--embeddings", required=True,
                       help="Parquet file or folder with input.id_column and input.embedding_column")
    pairs.add_argument("--output", required=True, help="where results go")
    pairs.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    pairs.add_argument("--break-lock", action="store_true",
                     help="take over a stale lock on --output (a run that died without removing it)")
    pairs.add_argument("--previous", help="a finished run's folder: pair only the vectors that are new or changed")
    plan = sub.add_parser("plan", parents=[config],
                          help="print the LSH tables that `pairs`/`run` would choose, and their expected cost")
    plan.add_argument("--embeddings", required=True, help="Parquet file or folder, e.g. a run's embeddings/")
    engine = sub.add_parser(
        "build-engine", parents=[config],
        help="build the TensorRT plan for the configured model on this machine's GPU (into embed.engine_dir)")
    engine.add_argument("--device", type=int, default=0, help="CUDA device index to build on (default 0)")
    sub.add_parser("build-jvm-archive", parents=[config],
                   help="record the JVM class-data archive local runs start from (about 6 s sooner; "
                        "into model.cache_dir/jvm)")
    report = sub.add_parser("report", parents=[config],
                            help="build the review page (report/index.html) again for a finished run")
    report.add_argument("--run", required=True, help="a finished run's folder")
    report.add_argument("--output", help="local folder for the report (default: RUN/report), replaced whole")
    report.add_argument("--truth", help="labelled truth.csv (benchmarks/quality): adds precision, recall, PR curve")
    return p


def main(argv: list[str] | None = None, launched_by_spark_submit: bool | None = None, whole_process: bool = False
         ) -> int:
    """Run one command; returns its exit code. ``whole_process``: the caller is the
    process's entry point, which ends when this returns; then a Ctrl-C after a run's commit
    ends the process at once, saying the output is complete (:func:`exit_on_interrupt`),
    a handler an in-process caller (a test, a notebook) must not be left with."""
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    if launched_by_spark_submit is None:
        # spark-submit starts the Python driver with a gateway to its own JVM.
        launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if args.command == "build-engine":
        return _build_engine(args)
    if args.command == "build-jvm-archive":
        return _build_jvm_archive(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "report":
        return _report(args, launched_by_spark_submit)
    try:
        cfg = load_config(args.config, args.set)
        # Paths are taken verbatim, not parsed as YAML like --set values.
        cfg = cfg.replace(
            input=dataclasses.replace(cfg.input, path=getattr(args, "input", None)),
            output=dataclasses.replace(cfg.output, path=args.output,
                                       overwrite=args.overwrite or cfg.output.overwrite,
                                       break_lock=args.break_lock or cfg.output.break_lock),
        )
        from . import job  # Spark and TensorFlow load only once the invocation is valid

        if args.command == "pairs":
            result = job.run_pairs(cfg, args.embeddings, launched_by_spark_submit, args.verbose, args.previous)
        else:
            result = job.run(cfg, launched_by_spark_submit, args.verbose, args.previous)
    except USAGE_ERRORS as err:
        return _usage_error(err)
    except BaseException as err:
        if not caused_by_interrupt(err):  # also a JVM call that failed after the Ctrl-C, as a lock's release
            raise
        # The run's own staging folder and its output lock are already removed (finally blocks).
        print("neardup: interrupted; the output folder holds what it held before", file=sys.stderr)
        return 130
    # The run is committed and its lock released: a Ctrl-C from here (the interpreter's
    # shutdown included) ends the process at once, saying so; one since the commit was noted.
    after = f"neardup: interrupted after the run was committed; {result.output} is complete"
    if whole_process:
        exit_on_interrupt(after)
    counts = result.counts
    reuse = f" ({counts.embedded} embedded, {counts.reused} reused)" if args.previous else ""
    print(f"neardup: {counts.inputs} images{reuse}, {counts.errors} errors, "
          f"{counts.pairs} near-duplicate pairs (cosine >= {cfg.pairs.cosine_threshold}), "
          f"{counts.groups} groups, {counts.dropped} images to drop -> {result.output}")
    if result.interrupted is not None and result.interrupted.is_set():
        print(after, file=sys.stderr)
        return 130
    return 0


def _usage_error(err: Exception) -> int:
    print(f"neardup: error: {err}", file=sys.stderr)
    return 2


def _plan(args: argparse.Namespace) -> int:
    from .plan import describe_plan, sample_parquet_embeddings
    from .tuning import plan_for, unit_pair_cosines

    try:
        cfg = load_config(args.config, args.set)
        items, sample = sample_parquet_embeddings(args.embeddings, cfg.input.embedding_column, cfg.lsh.sample_size,
                                                  cfg.lsh.seed)
        cosines = unit_pair_cosines(sample)
        try:
            plan = plan_for(cfg.lsh, cfg.pairs.cosine_threshold, cosines, items, sample.shape[1])
        except ValueError as err:
            raise ConfigError(str(err)) from err
    except USAGE_ERRORS as err:
        return _usage_error(err)
    print(describe_plan(cfg, plan, items, sample, cosines))
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    from .embed import engine_dir, prepare_model
    from .embed.tensorrt_backend import ensure_plan

    try:
        cfg = load_config(args.config, args.set)
        # The export TensorRT builds from: FP32, whatever embed.cpu_precision says for CPU tasks.
        prepared = prepare_model(cfg.model, dataclasses.replace(cfg.embed, backend="tensorrt"))
        plan = ensure_plan(prepared.file, engine_dir(cfg.model, cfg.embed), args.device, cfg.embed.precision,
                           cfg.embed.batch_size, cfg.model.input_size)
    except USAGE_ERRORS as err:
        return _usage_error(err)
    print(plan)
    return 0


def _build_jvm_archive(args: argparse.Namespace) -> int:
    from .spark.class_archive import ArchiveError, build

    try:
        cfg = load_config(args.config, args.set)
        path = build(cfg.model.cache_dir)
    except ConfigError as err:
        return _usage_error(err)
    except ArchiveError as err:
        print(f"neardup: the JVM class archive was not built: {err}", file=sys.stderr)
        return 1
    print(f"neardup: JVM class archive ({os.path.getsize(path) / 2**20:.0f} MB) -> {path}")
    return 0


def _report(args: argparse.Namespace, launched_by_spark_submit: bool) -> int:
    from .evaluation import read_truth_csv
    from .report import ReportError, read_finished_manifest
    from .sources import is_local, local_path

    try:
        cfg = load_config(args.config, args.set)
        manifest = read_finished_manifest(args.run)
        folder = args.output
        if folder is None:
            if not is_local(args.run):
                raise ReportError(f"--run {args.run}: not a local folder; give --output, a local folder")
            folder = os.path.join(local_path(args.run), "report")
        elif not is_local(folder):
            raise ReportError(f"--output {folder}: must be a local folder")
        try:
            truth = read_truth_csv(args.truth) if args.truth else None
        except ValueError as err:
            raise ReportError(str(err)) from err
        from .spark.class_archive import configured_archive
        from .spark.report import build_report
        from .spark.session import build_session

        spark = build_session(cfg.spark, cfg.embed.batch_size, launched_by_spark_submit, args.verbose,
                              configured_archive(cfg))
        record = build_report(spark, args.run, manifest, local_path(folder), cfg, truth)
    except (*USAGE_ERRORS, ReportError) as err:
        return _usage_error(err)
    print(f"neardup: report of {record['groups_shown']} of {record['groups']} groups and {record['pairs_shown']} "
          f"of {record['pairs']} pairs, {record['thumbnails']} thumbnails -> {os.path.join(folder, 'index.html')}")
    return 0


def main_entry() -> None:
    """Console-script wrapper: exit with main()'s code."""
    sys.exit(main(whole_process=True))


if __name__ == "__main__":
    main_entry()
