"""The one Spark session factory.

On Databricks the runtime owns the session and ``get_spark`` returns it. With ``MLOPS_SPARK_REMOTE``
(``sc://host:port``) it connects to a Spark Connect server, as serverless jobs compute and shared-access clusters
do: no ``sparkContext``, RDDs or JVM access there, so the stages use none. Elsewhere it starts a plain local session
with Delta Lake enabled (the Delta jars come from Maven Central through Spark's Ivy on first use) and the settings
that decide results as a Databricks runtime does (UTC session time, INT64 timestamps).

Local tuning (the JVM's class archive, the Python daemon, resolved jars, memory) is the operator tool's business,
not the wheel's: ``orchestrator.local.spark`` starts tuned sessions itself, and hands its settings to a session the
wheel starts in a local job's process through ``MLOPS_SPARK_CONF_FILE`` (a JSON object of settings).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from importlib import metadata
from typing import Iterator, Mapping, Optional

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from taxi_fares_mlops import environment

logger = logging.getLogger(__name__)


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """``settings`` for the actions run inside the block (Spark reads them when a query executes), then the
    session's previous values back: a stage tunes its own queries without changing the job's session.

    The settings tune, they never decide a result: one the session refuses (serverless compute accepts a short
    list of settings; no session takes a static one at runtime) stays as it was, with a warning naming it, and the
    block runs with the others."""
    previous = {}
    for key, value in settings.items():
        try:
            before = spark.conf.get(key, None)
            spark.conf.set(key, value)
        except AnalysisException as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("Spark setting %s=%s refused by the session, left as it was: %s", key, value, reason)
            continue
        previous[key] = before
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(app_name: str = "taxi_fares", persistent_catalog: bool = False) -> SparkSession:
    """The active session if there is one (Databricks, tests, the operator tool's local session), else a Spark
    Connect session when ``MLOPS_SPARK_REMOTE`` is set, else a new local Delta-enabled session.
    ``persistent_catalog`` gives the local session a catalog that outlives it (tables by name across job runs, as
    Unity Catalog keeps them)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    remote = environment.SPARK_REMOTE.get()
    if remote:
        logger.info("connecting to Spark Connect at %s", remote)
        return SparkSession.builder.remote(remote).getOrCreate()
    return local_session(app_name, persistent_catalog, extra_conf_from_file())


def delta_package() -> str:
    """The Maven coordinate of the Delta jars matching the installed pyspark and delta-spark."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"


def catalog_conf(home: str) -> dict[str, str]:
    """A catalog that persists under ``home``: Spark's Hive metastore support on an embedded Derby database
    (``metastore_db``), managed tables in ``warehouse``. One process at a time may open it (Derby's rule)."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"{home}/warehouse",
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={home}/metastore_db;create=true",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={home}",
    }


def base_local_conf(persistent_catalog: bool = False) -> dict[str, str]:
    """What every local session needs to answer as a Databricks runtime does: Delta, UTC, Arrow, timestamps as
    Parquet INT64 microseconds as Databricks writes them (delta-io/delta#400; open-source Spark's default INT96 is
    deprecated by Parquet, PARQUET-323), and with ``persistent_catalog`` a catalog under ``MLOPS_HOME``."""
    from taxi_fares_mlops.storage import default_root

    conf = {
        "spark.jars.packages": delta_package(),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    return {**conf, **catalog_conf(default_root())} if persistent_catalog else conf


def merged_conf(base: Mapping[str, str], extra: Mapping[str, Optional[str]]) -> dict[str, str]:
    """``base`` with ``extra`` on top; an extra setting of ``None`` removes the base's."""
    conf = dict(base)
    for key, value in extra.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = str(value)
    return conf


def extra_conf_from_file() -> dict[str, Optional[str]]:
    """The settings ``MLOPS_SPARK_CONF_FILE`` names (none when unset). A file that cannot be read or is not a JSON
    object of strings is an error naming it: a session silently started without them would not be the one asked
    for."""
    path = environment.SPARK_CONF_FILE.get()
    if not path:
        return {}
    try:
        settings = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{environment.SPARK_CONF_FILE.name}={path}: cannot read Spark settings: {exc}") from exc
    if not isinstance(settings, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                 for k, v in settings.items()):
        raise RuntimeError(f"{environment.SPARK_CONF_FILE.name}={path}: expected a JSON object of strings")
    return settings


def local_session(app_name: str, persistent_catalog: bool = False,
                  extra_conf: Optional[Mapping[str, Optional[str]]] = None,
                  master: Optional[str] = None) -> SparkSession:
    """A local session with ``base_local_conf`` and ``extra_conf`` on top."""
    # Executors must run the same interpreter as the driver; bind to loopback on shared machines.
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    master = master or environment.SPARK_MASTER.get() or "local[2]"
    logger.info("starting local Spark (%s) with Delta Lake", master)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in merged_conf(base_local_conf(persistent_catalog), extra_conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
