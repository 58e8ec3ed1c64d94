"""One Spark session for the whole run; kernel tests never start it."""

import os
import sys

import pytest

# Local Python workers must run this interpreter (it has pyarrow, TensorFlow, ...).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CATALOG = os.path.join(REPO, "samples", "catalog")


def pytest_configure(config):
    config.addinivalue_line("markers", "spark: starts the shared local Spark session")
    config.addinivalue_line("markers", "model: loads the default TensorFlow model")
    config.addinivalue_line("markers", "gpu: needs a GPU and TensorRT; skipped without them")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("neardup-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("warehouse")))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
