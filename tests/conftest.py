"""One Spark session for the whole run; kernel tests never start it."""

import os
import sys

import pytest

# Local Python workers must run this interpreter (it has pyarrow, TensorFlow, ...).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CATALOG = os.path.join(REPO, "samples", "catalog")


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


def export_user_model(tmp_path, input_shape=(None, None, 3), pooled=True, seed=3):
    """A small seeded Keras CNN exported as a SavedModel, as a user would export theirs."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    if pooled:
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(24, name="embedding")(x)
    path = str(tmp_path / "user.savedmodel")
    keras.Model(inputs, x).export(path, verbose=False)
    return path
