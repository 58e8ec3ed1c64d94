"""The things neardup needs from Spark that PySpark has no public API for, each
behind one function. Checked on Spark 4.1 and 4.3 (``pyspark>=4.1,<4.4``, setup); a
Spark upgrade re-checks this module first.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession


def hadoop_filesystem(spark: SparkSession, path: str):
    """(Hadoop FileSystem for ``path``, the ``org.apache.hadoop.fs.Path`` class): the file
    system Spark itself writes with, so local paths, HDFS and object stores behave alike.
    Private: ``SparkContext._jvm`` and ``_jsc`` (no Python API for Hadoop's FileSystem)."""
    jvm = spark.sparkContext._jvm
    path_class = jvm.org.apache.hadoop.fs.Path
    fs = path_class(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path_class


def read_text(spark: SparkSession, path: str) -> str:
    """A small UTF-8 file read through Hadoop's FileSystem (Spark's readers skip names
    starting with ``_``, like ``_manifest.json``). Private: as :func:`hadoop_filesystem`,
    and Commons IO from Spark's own jars."""
    fs, path_class = hadoop_filesystem(spark, path)
    stream = fs.open(path_class(path))
    try:
        return spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def indexed_paths(frame: DataFrame) -> DataFrame | None:
    """The files of a file-based frame's index (``DataFrame.inputFiles``) as a one-column
    frame ``value`` of URIs, built in the JVM; None when the index lists no more files
    than the frame has rows. Public ``inputFiles()`` would pull every path through py4j
    one by one (minutes for millions of files). Private: ``DataFrame._jdf``,
    ``SparkContext._jvm`` and ``SparkSession._jsparkSession``."""
    indexed = frame._jdf.inputFiles()
    if len(indexed) <= frame.count():
        return None
    spark = frame.sparkSession
    jvm, jspark = spark.sparkContext._jvm, spark._jsparkSession
    seq = jvm.scala.collection.immutable.ArraySeq.unsafeWrapArray(indexed)
    return DataFrame(jspark.createDataset(seq, jvm.org.apache.spark.sql.Encoders.STRING()).toDF(), spark)


def shuffle_bytes_written(spark: SparkSession) -> int:
    """Shuffle bytes written by all stages so far, from Spark's status store, or -1 if it
    cannot be read (a diagnostic for the manifest, never a reason to fail). Private:
    ``SparkContext._jsc`` and ``_gateway``; the public status tracker has no byte counts."""
    try:
        sc = spark.sparkContext
        no_quantiles = sc._gateway.new_array(sc._gateway.jvm.double, 0)
        stages = sc._jsc.sc().statusStore().stageList(None, False, False, no_quantiles, None)
        total = 0
        iterator = stages.iterator()
        while iterator.hasNext():
            total += iterator.next().shuffleWriteBytes()
        return int(total)
    except Exception:  # noqa: BLE001 - the status store API is internal and may change
        return -1


def registered_executors(spark: SparkSession) -> int:
    """Executors registered with the driver now (the driver itself not counted), or -1 if
    it cannot be read. Private: ``SparkContext._jsc``; PySpark's status tracker has no
    executor list (Scala's ``getExecutorMemoryStatus`` lists the driver and each executor)."""
    try:
        return int(spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()) - 1
    except Exception:  # noqa: BLE001 - internal API; the count is a progress hint, never a reason to fail
        return -1


def submit_settings() -> dict[str, str]:
    """The Spark settings spark-submit was given (``--conf``, ``--properties-file``,
    ``spark-defaults.conf``), read before any SparkContext starts: the JVM that
    spark-submit launched holds them as system properties. Call only under spark-submit,
    where connecting to that JVM costs milliseconds; elsewhere it would start one.
    Private: ``SparkContext._ensure_initialized`` (PySpark's ``SparkConf`` reads the JVM only
    once a gateway is up)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def silence_jvm_logs(spark: SparkSession) -> None:
    """Turn every JVM logger off, including those the quiet profile sets by name (which
    ``setLogLevel`` leaves alone): used once a run is interrupted, when the cancelled tasks'
    stack traces say nothing. Private: ``SparkContext._jvm`` and Log4j 2's Configurator."""
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setAllLevels(
        "", jvm.org.apache.logging.log4j.Level.OFF)
