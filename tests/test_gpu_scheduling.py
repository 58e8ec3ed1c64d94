"""GPU executors without a GPU: Spark's local-cluster mode with a discovery script that
reports two fake GPUs, so tasks really get GPU addresses from Spark's scheduler.

Runs in its own process (one SparkContext per process; the shared session is local[2])."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO, SAMPLE_CATALOG

pytestmark = pytest.mark.spark

SCRIPT = textwrap.dedent("""
    import json, sys
    from pyspark.sql import SparkSession
    from neardup_core.config import EmbedConfig, InputConfig, ModelConfig
    from neardup_core.embed import PreparedModel
    from neardup_core.spark.embed import embed_images, task_backend
    from neardup_core.spark.listing import list_inputs

    discovery, catalog, onnx = sys.argv[1:4]
    builder = SparkSession.builder.master("local-cluster[1,2,1024]").config("spark.ui.enabled", "false")
    for key, value in {
        "spark.worker.resource.gpu.amount": "2", "spark.worker.resource.gpu.discoveryScript": discovery,
        "spark.executor.resource.gpu.amount": "2", "spark.executor.resource.gpu.discoveryScript": discovery,
        "spark.task.resource.gpu.amount": "1", "spark.executor.cores": "2", "spark.executor.memory": "1g",
        "spark.task.maxFailures": "1",
    }.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    picks = spark.sparkContext.parallelize(range(6), 6).mapPartitions(
        lambda _: [task_backend("auto")]).collect()
    forced_cpu = spark.sparkContext.parallelize(range(2), 2).mapPartitions(
        lambda _: [task_backend("onnxruntime")]).collect()
    listing = list_inputs(spark, InputConfig(path=catalog), "directory").limit(2)
    try:
        prepared = PreparedModel(onnx, 1280, shipped=True)
        embed_images(listing, prepared, ModelConfig(), EmbedConfig(), InputConfig()).collect()
        embed_error = None
    except Exception as err:
        embed_error = str(err)
    print("RESULT " + json.dumps({"picks": picks, "forced_cpu": forced_cpu, "embed_error": embed_error}))
    spark.stop()
""")


@pytest.fixture(scope="module")
def fake_gpu_run(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from neardup_core.config import ModelConfig
    from neardup_core.embed.models import resolve_model_path
    from neardup_core.embed.onnx_export import onnx_model_path

    model = ModelConfig()
    onnx = onnx_model_path(resolve_model_path(model), None, 224, os.path.expanduser(model.cache_dir))
    tmp = tmp_path_factory.mktemp("fake-gpu")
    discovery = tmp / "discover.sh"
    discovery.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    discovery.chmod(0o755)
    # local-cluster workers keep executor directories under $SPARK_HOME/work: point
    # SPARK_HOME at a temporary copy of the installed one (links) instead of site-packages.
    import pyspark

    spark_home = tmp / "spark-home"
    spark_home.mkdir()
    for entry in os.listdir(os.path.dirname(pyspark.__file__)):
        (spark_home / entry).symlink_to(os.path.join(os.path.dirname(pyspark.__file__), entry))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": str(spark_home)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(discovery), SAMPLE_CATALOG, onnx],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def test_each_task_runs_tensorrt_on_the_gpu_spark_gave_it(fake_gpu_run):
    picks = fake_gpu_run["picks"]
    assert len(picks) == 6
    assert {backend for backend, _ in picks} == {"tensorrt"}
    assert {device for _, device in picks} <= {0, 1}
    assert len({device for _, device in picks}) == 2  # two tasks at once hold both GPUs


def test_a_forced_cpu_backend_ignores_the_gpu(fake_gpu_run):
    assert fake_gpu_run["forced_cpu"] == [["onnxruntime", None]] * 2


def test_embed_stage_on_a_gpu_task_without_tensorrt_fails_with_the_fix(fake_gpu_run):
    """Never a silent fall-back to the CPU: the job fails and says what to install."""
    assert "embed.backend tensorrt needs the tensorrt and cuda-python packages" in fake_gpu_run["embed_error"]
