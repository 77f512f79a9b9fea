"""The one Spark session factory.

On Databricks the runtime owns the session and ``get_spark`` returns it. With ``MLOPS_SPARK_REMOTE``
(``sc://host:port``) it connects to a Spark Connect server, as serverless jobs compute and shared-access clusters
do: no ``sparkContext``, RDDs or JVM access there, so the stages use none. Elsewhere it builds a local session
with Delta Lake enabled: the Delta jars are fetched from Maven Central on first use (by Spark's Ivy) and cached
under ``~/.ivy2.5.2``. A local Spark Connect server gets the same jars and settings (``local_conf``).

Local settings can be tuned with environment variables:
``MLOPS_SPARK_MASTER`` (default ``local[2]``), ``MLOPS_SPARK_DRIVER_MEMORY`` (default ``2g``),
``MLOPS_SPARK_SHUFFLE_PARTITIONS`` (default ``4``) and ``MLOPS_SPARK_JAVA_OPTIONS`` (extra options for the driver
and executor JVMs; the test suite runs the JVMs that live for one job with ``-XX:TieredStopAtLevel=1``, the quick
compiler only: ``tests/jvm_options.py``).

A local JVM spends most of its start loading and verifying Spark's and Delta's classes. ``record_class_archive``
(``mlops warm``, run by ``make test``) records them once in a class-data-sharing archive (the JVM's own feature,
JEP 350); every later local driver maps it instead: on this project's 2-core machine a session's start drops from
~13 s to ~8 s (~6 s with the quick compiler only) and its first Delta writes get faster too. The archive belongs
to one JVM, one pyspark installation (down to its jars' times) and one Delta version (``class_archive()`` names it
after them); without it the JVM starts as before.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from importlib import metadata, resources
from pathlib import Path
from typing import Iterator, Mapping, Optional

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

SPARK_REMOTE_ENV = "MLOPS_SPARK_REMOTE"
JAVA_OPTIONS_ENV = "MLOPS_SPARK_JAVA_OPTIONS"


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
    """The active session if there is one (Databricks, tests), else a Spark Connect session when
    ``MLOPS_SPARK_REMOTE`` is set, else a new local Delta-enabled session. ``persistent_catalog`` gives the
    local session a catalog that outlives it (tables by name across job runs, as Unity Catalog keeps them)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    remote = os.environ.get(SPARK_REMOTE_ENV)
    if remote:
        logger.info("connecting to Spark Connect at %s", remote)
        return SparkSession.builder.remote(remote).getOrCreate()
    return _local_session(app_name, persistent_catalog)


def delta_package() -> str:
    """The Maven coordinate of the Delta jars matching the installed pyspark and delta-spark."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"


def _resolved_jars_file() -> Path:
    """Where the jar files Ivy resolved for ``delta_package()`` are listed, beside Ivy's own cache."""
    return Path.home() / ".ivy2.5.2" / f"mlops-{delta_package().replace(':', '_')}.jars"


def resolved_jars() -> list[str]:
    """The local jar files of the Delta package, once a session has resolved them (and all still exist)."""
    listing = _resolved_jars_file()
    if not listing.exists():
        return []
    jars = [line for line in listing.read_text().splitlines() if line]
    return jars if jars and all(Path(j.removeprefix("file:")).exists() for j in jars) else []


def _remember_resolved_jars(spark: SparkSession) -> None:
    jars = [j for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j.endswith(".jar")]
    if jars and not resolved_jars():
        try:
            _resolved_jars_file().write_text("\n".join(jars) + "\n")
        except OSError as exc:  # a read-only home only costs the next start an Ivy resolution
            logger.debug("could not record the resolved jars: %s", exc)


def _java() -> str:
    """The java binary spark-submit runs (``$JAVA_HOME/bin/java``, else the one on the PATH), with its mtime."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return "no java"
    real = os.path.realpath(java)
    return f"{real}@{os.stat(real).st_mtime_ns}"


def class_archive() -> Path:
    """Where the class-data-sharing archive of local Spark lives: one per JVM, pyspark installation and Delta
    package, since the JVM maps an archive only on the class path and JVM build it was recorded with. It also maps
    it only while every jar on that class path keeps the size and modification time it had at recording, and pip
    stamps a jar with the time it installed it: so the name carries those too, and a virtualenv made again at the
    same path (same jars, new times) gets an archive of its own instead of one the JVM would silently refuse."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    install = "\n".join([_java(), str(spark_home), pyspark.__version__, delta_package()])
    return _resolved_jars_file().parent / f"mlops-classes-{_digest(install)}-{_digest(_jar_stamps(spark_home))}.jsa"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jar_stamps(spark_home: Path) -> str:
    """The name, size and modification time of each jar on a local driver's class path (pyspark's ``jars``)."""
    return "\n".join(f"{jar.name}@{stat.st_size}@{stat.st_mtime_ns}"
                     for jar in sorted((spark_home / "jars").glob("*.jar")) for stat in [jar.stat()])


def _remove_superseded_archives(archive: Path) -> None:
    """Delete the archives recorded for the same installation path before its jars changed (~190 MB each): no
    JVM maps them any more. That includes one named before names carried the jars' times (``<install>.jsa``)."""
    install = archive.name.rsplit("-", 1)[0]
    for old in [*archive.parent.glob(f"{install}-*.jsa"), archive.parent / f"{install}.jsa"]:
        if old != archive and old.exists():
            old.unlink(missing_ok=True)
            logger.info("removed the class archive of a former installation: %s", old)


def _java_options(record_classes_to: Optional[Path] = None) -> dict[str, str]:
    extra = os.environ.get(JAVA_OPTIONS_ENV, "").strip()
    archive = class_archive()
    if record_classes_to is not None:  # what it loads matters, not how fast: the quick compiler is enough
        sharing = f"-XX:ArchiveClassesAtExit={record_classes_to} -XX:TieredStopAtLevel=1"
    else:
        sharing = f"-XX:SharedArchiveFile={archive}" if archive.exists() else ""
    # The JVM says on stdout when it cannot map or record a class; a job's output is no place for that.
    driver = " ".join(option for option in (sharing, "-Xlog:cds*=off" if sharing else "", extra) if option)
    return {**({"spark.driver.defaultJavaOptions": driver} if driver else {}),
            **({"spark.executor.defaultJavaOptions": extra} if extra else {})}


def catalog_conf(home: str) -> dict[str, str]:
    """A catalog that persists under ``home``: Spark's Hive metastore support on an embedded Derby database
    (``metastore_db``), managed tables in ``warehouse``. One process at a time may open it (Derby's rule)."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"{home}/warehouse",
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={home}/metastore_db;create=true",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={home}",
    }


def local_conf(persistent_catalog: bool = False, record_classes_to: Optional[Path] = None) -> dict[str, str]:
    """The settings of a local session (and of a local Spark Connect server): Delta, UTC, small shuffles, the
    JVM options (the class archive, ``MLOPS_SPARK_JAVA_OPTIONS``), and with ``persistent_catalog`` a catalog under
    the lakehouse root (``MLOPS_HOME``). ``record_classes_to`` makes the driver record its classes there on exit."""
    from taxi_fares_mlops.storage import default_root

    # Ivy resolves the Delta package on the first start (and prints its resolution); later starts use the jar
    # files it resolved, which is quieter and a little faster.
    jars = resolved_jars()
    conf = {
        **({"spark.jars": ",".join(jars)} if jars else {
            "spark.jars.packages": delta_package(),
            "spark.jars.ivySettings": str(resources.files("taxi_fares_mlops").joinpath("resources/ivysettings.xml"))}),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "in-memory",
        "spark.driver.memory": os.environ.get("MLOPS_SPARK_DRIVER_MEMORY", "2g"),
        "spark.sql.shuffle.partitions": os.environ.get("MLOPS_SPARK_SHUFFLE_PARTITIONS", "4"),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # The Python workers import pyspark from site-packages, not from the archives Spark puts first on their
        # path: before each task a worker re-reads every archive it imported from (taxi_fares_mlops.pyspark_daemon).
        "spark.python.daemon.module": "taxi_fares_mlops.pyspark_daemon",
        "spark.databricks.delta.snapshotPartitions": "2",
        # Timestamps as Parquet INT64 microseconds, as Databricks runtimes write them (delta-io/delta#400), not
        # open-source Spark's INT96 (deprecated by Parquet, PARQUET-323): 12-byte values that the writer hashes
        # for its dictionary on every row. Files ~6% smaller, the 4M-row scoring write ~0.7 s faster.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        **_java_options(record_classes_to),
    }
    return {**conf, **catalog_conf(default_root())} if persistent_catalog else conf


def _local_session(app_name: str, persistent_catalog: bool = False,
                   record_classes_to: Optional[Path] = None) -> SparkSession:
    # Executors must run the same interpreter as the driver; bind to loopback on shared machines.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    master = os.environ.get("MLOPS_SPARK_MASTER", "local[2]")
    logger.info("starting local Spark (%s) with Delta Lake", master)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in local_conf(persistent_catalog, record_classes_to).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    _remember_resolved_jars(spark)
    return spark


def record_class_archive() -> Path:
    """Record the classes a local driver loads into ``class_archive()`` (unless it exists): start a session whose
    JVM writes them on exit, run the kinds of work the stages run, stop it and wait for the JVM to write them.
    Written beside the archive and renamed into place, so a concurrent start never maps half an archive.
    Run it in a process of its own: it ends the process's Spark (``mlops warm`` does)."""
    archive = class_archive()
    if archive.exists():
        return archive
    if SparkSession.getActiveSession() is not None:
        raise RuntimeError("record_class_archive needs a process without a Spark session: run `mlops warm`")
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
    archive.parent.mkdir(parents=True, exist_ok=True)  # Ivy makes it under Java's user.home, which may not be $HOME
    spark = _local_session("mlops-warm", record_classes_to=partial)
    jvm = spark.sparkContext._gateway.proc
    try:
        _exercise(spark)
    finally:
        spark.stop()
        jvm.stdin.close()  # the gateway exits at the end of its input, and the JVM writes the archive as it exits
        jvm.wait(timeout=900)
        from pyspark import SparkContext

        SparkContext._gateway = SparkContext._jvm = None
    if jvm.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"the JVM exited with {jvm.returncode} before recording its classes")
    partial.replace(archive)
    _remove_superseded_archives(archive)
    return archive


def _exercise(spark: SparkSession) -> None:
    """A small run of what the stages do (Delta write, merge, read; joins, windows, aggregates; Arrow both ways),
    so that the classes those load are in the archive."""
    import tempfile

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    with tempfile.TemporaryDirectory(prefix="mlops-warm-") as folder:
        trips = spark.range(2_000).select(
            F.col("id"), (F.col("id") % 3).alias("zip"), (F.col("id") * 0.5).alias("fare"),
            F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id") * 60).alias("at"))
        trips.write.format("delta").partitionBy("zip").save(f"{folder}/trips")
        target = spark.read.format("delta").load(f"{folder}/trips")
        from delta.tables import DeltaTable

        DeltaTable.forPath(spark, f"{folder}/trips").alias("t").merge(
            trips.limit(100).alias("s"), "t.id = s.id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        window = Window.partitionBy("zip").orderBy("at")
        features = target.withColumn("lagged", F.lag("fare").over(window)).groupBy("zip").agg(
            F.avg("fare").alias("mean"), F.count("*").alias("n"))
        joined = target.join(F.broadcast(features), "zip").join(
            features.select("zip", F.col("n").alias("again")).hint("merge"), "zip")
        scored = joined.mapInPandas(lambda batches: (b.assign(fare=b["fare"] * 2) for b in batches), joined.schema)
        scored.write.format("delta").mode("overwrite").save(f"{folder}/scored")
        spark.read.format("delta").load(f"{folder}/scored").limit(1000).toPandas()
        spark.createDataFrame(features.limit(10).toPandas()).collect()
