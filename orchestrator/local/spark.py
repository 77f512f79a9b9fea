"""Local Spark for the embedded default, tuned for one small machine: the operator tool's side, not the wheel's.

The MLOps wheel starts a plain local session when nothing else did (``taxi_fares_mlops.spark``). The operator tool
(``mlops run --local``, ``mlops demo``, the Spark Connect server, the test suite) starts this one instead, which adds
to the wheel's ``base_local_conf``:

* the jar files Ivy resolved for the Delta package on the first start (later starts skip Ivy and its report);
* a class-data-sharing archive (the JVM's own feature, JEP 350) that ``mlops warm`` records once: a local driver
  spends most of its start loading and verifying Spark's and Delta's classes, and maps them from the archive instead.
  The archive belongs to one JVM, one pyspark installation (down to its jars' times) and one Delta version
  (``class_archive()`` names it after them); without it the JVM starts as before;
* Python workers that import pyspark from site-packages (``orchestrator.local.pyspark_daemon``);
* memory, shuffle partitions and JVM options from ``MLOPS_SPARK_*`` (``taxi_fares_mlops.environment``).

A local job's kernel starts its session through the wheel (the notebook calls it); ``write_conf_file`` puts these
settings where the wheel reads them (``MLOPS_SPARK_CONF_FILE``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

from pyspark.sql import SparkSession

from orchestrator import environment
from taxi_fares_mlops.spark import base_local_conf, delta_package, get_spark, local_session, merged_conf

logger = logging.getLogger(__name__)

JAVA_OPTIONS_ENV = environment.SPARK_JAVA_OPTIONS.name
DAEMON_MODULE = "orchestrator.local.pyspark_daemon"


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
    extra = (environment.SPARK_JAVA_OPTIONS.get() or "").strip()
    archive = class_archive()
    if record_classes_to is not None:  # what it loads matters, not how fast: the quick compiler is enough
        sharing = f"-XX:ArchiveClassesAtExit={record_classes_to} -XX:TieredStopAtLevel=1"
    else:
        sharing = f"-XX:SharedArchiveFile={archive}" if archive.exists() else ""
    # The JVM says on stdout when it cannot map or record a class; a job's output is no place for that.
    driver = " ".join(option for option in (sharing, "-Xlog:cds*=off" if sharing else "", extra) if option)
    return {**({"spark.driver.defaultJavaOptions": driver} if driver else {}),
            **({"spark.executor.defaultJavaOptions": extra} if extra else {})}


def tuning_conf(record_classes_to: Optional[Path] = None, daemon: Optional[bool] = None) -> dict[str, Optional[str]]:
    """The settings this module adds to the wheel's ``base_local_conf`` (``None``: remove the base's). The Python
    daemon shim is named only where the workers can import it (``daemon``; default: when the master is local, whose
    workers run this checkout's interpreter and path; a standalone cluster's or a Connect server's workers run the
    job environment, which holds the wheels but not the operator tool)."""
    if daemon is None:
        daemon = (environment.SPARK_MASTER.get() or "local").startswith("local")
    # Ivy resolves the Delta package on the first start (and prints its resolution); later starts use the jar
    # files it resolved, which is quieter and a little faster.
    jars = resolved_jars()
    return {
        **({"spark.jars": ",".join(jars), "spark.jars.packages": None} if jars else {
            "spark.jars.ivySettings": str(resources.files("orchestrator.local").joinpath("ivysettings.xml"))}),
        "spark.driver.memory": environment.SPARK_DRIVER_MEMORY.get() or "2g",
        "spark.sql.shuffle.partitions": environment.SPARK_SHUFFLE_PARTITIONS.get() or "4",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # The Python workers import pyspark from site-packages, not from the archives Spark puts first on their
        # path: before each task a worker re-reads every archive it imported from (orchestrator.local.pyspark_daemon).
        **({"spark.python.daemon.module": DAEMON_MODULE} if daemon else {}),
        "spark.databricks.delta.snapshotPartitions": "2",
        **_java_options(record_classes_to),
    }


def local_conf(persistent_catalog: bool = False) -> dict[str, str]:
    """Every setting of a tuned local session (the Spark Connect server starts with these: its workers run the job
    environment, so without the daemon shim)."""
    return merged_conf(base_local_conf(persistent_catalog), tuning_conf(daemon=False))


def write_conf_file(folder: Path) -> Path:
    """``tuning_conf`` as the JSON file ``MLOPS_SPARK_CONF_FILE`` names, for a session the wheel starts in another
    process (a local job's kernel). Written aside and renamed, so a reader never sees half of it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spark-conf.json"
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(tuning_conf(), indent=1, sort_keys=True))
    partial.replace(path)
    return path


def tuned_session(app_name: str, persistent_catalog: bool = False,
                  record_classes_to: Optional[Path] = None) -> SparkSession:
    """The active session if there is one, a Spark Connect session with ``MLOPS_SPARK_REMOTE``, else a new tuned
    local session (its resolved jars remembered)."""
    if record_classes_to is None and (SparkSession.getActiveSession() is not None or environment.SPARK_REMOTE.get()):
        return get_spark(app_name, persistent_catalog)
    spark = local_session(app_name, persistent_catalog, tuning_conf(record_classes_to))
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
    spark = tuned_session("mlops-warm", record_classes_to=partial)
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

    from delta.tables import DeltaTable
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    with tempfile.TemporaryDirectory(prefix="mlops-warm-") as folder:
        trips = spark.range(2_000).select(
            F.col("id"), (F.col("id") % 3).alias("zip"), (F.col("id") * 0.5).alias("fare"),
            F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id") * 60).alias("at"))
        trips.write.format("delta").partitionBy("zip").save(f"{folder}/trips")
        target = spark.read.format("delta").load(f"{folder}/trips")
        DeltaTable.forPath(spark, f"{folder}/trips").alias("t").merge(
            trips.limit(100).alias("s"), "t.id = s.id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        window = Window.partitionBy("zip").orderBy("at")
        features = target.withColumn("lagged", F.lag("fare").over(window)).groupBy("zip").agg(
            F.avg("fare").alias("mean"), F.count("*").alias("n"))
        joined = target.join(F.broadcast(features), "zip").join(
            features.select("zip", F.col("n").alias("again")).hint("merge"), "zip")

        def doubled(batches: Iterator[Any]) -> Iterator[Any]:  # pandas frames
            return (b.assign(fare=b["fare"] * 2) for b in batches)

        scored = joined.mapInPandas(doubled, joined.schema)  # type: ignore[arg-type]
        scored.write.format("delta").mode("overwrite").save(f"{folder}/scored")
        spark.read.format("delta").load(f"{folder}/scored").limit(1000).toPandas()
        spark.createDataFrame(features.limit(10).toPandas()).collect()
