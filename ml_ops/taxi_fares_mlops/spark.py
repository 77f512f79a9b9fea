"""The one Spark session factory.

On Databricks the runtime owns the session and ``get_spark`` returns it. Elsewhere it builds a local session
with Delta Lake enabled: the Delta jars are fetched from Maven Central on first use (by Spark's Ivy, through
``delta.configure_spark_with_delta_pip``) and cached under ``~/.ivy2.5.2``.

Local settings can be tuned with environment variables:
``MLOPS_SPARK_MASTER`` (default ``local[2]``), ``MLOPS_SPARK_DRIVER_MEMORY`` (default ``2g``) and
``MLOPS_SPARK_SHUFFLE_PARTITIONS`` (default ``4``).
"""
from __future__ import annotations

import logging
import os
import sys
from importlib import resources

from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(app_name: str = "taxi_fares") -> SparkSession:
    """The active session if there is one (Databricks, tests), else a new local Delta-enabled session."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    return _local_session(app_name)


def _local_session(app_name: str) -> SparkSession:
    from delta import configure_spark_with_delta_pip

    # Executors must run the same interpreter as the driver; bind to loopback on shared machines.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    master = os.environ.get("MLOPS_SPARK_MASTER", "local[2]")
    ivy_settings = resources.files("taxi_fares_mlops").joinpath("resources/ivysettings.xml")
    logger.info("starting local Spark (%s) with Delta Lake", master)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.jars.ivySettings", str(ivy_settings))
        .config("spark.driver.memory", os.environ.get("MLOPS_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.shuffle.partitions", os.environ.get("MLOPS_SPARK_SHUFFLE_PARTITIONS", "4"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
    )
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
