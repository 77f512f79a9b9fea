"""The lakehouse: every table path, and every Delta read and write, goes through here.

A ``Lakehouse`` owns one root (a local folder, ``/Volumes/...`` or ``abfss://...``). Tables are named by the
constants below; no other code builds a table path. Failures are wrapped once as ``StorageError`` naming the
table and its path.

Locally the root comes from ``MLOPS_HOME`` (default ``.mlops/`` in the current directory, which is the
repository root for the ``mlops`` tool and ``make``).

Delta operations are SQL (``MERGE INTO``, ``DESCRIBE HISTORY``, ``DESCRIBE DETAIL``) and DataFrame writes, never
the Python ``DeltaTable`` API: that API needs JVM access, which Spark Connect (serverless jobs, shared-access
clusters) does not give, and the same SQL runs on a classic session.
"""
from __future__ import annotations

import copy
import functools
import logging
import random
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, BinaryType, BooleanType, DateType, MapType, StructType, TimestampType

from taxi_fares_mlops import environment
from taxi_fares_mlops.errors import MissingTableError, StorageError, first_line

logger = logging.getLogger(__name__)

RAW_TRIPS = "raw_trips"
PICKUP_FEATURES = "pickup_features"
DROPOFF_FEATURES = "dropoff_features"
PREDICTIONS = "predictions"  # the champion's: one row per scored trip, a range replaced by each champion scoring
SHADOW_PREDICTIONS = "shadow_predictions"  # any other version's, a range replaced per model version
QUARANTINED_TRIPS = "quarantined_trips"
DRIFT_METRICS = "drift_metrics"
OUTLIER_METRICS = "outlier_metrics"
PERFORMANCE_METRICS = "performance_metrics"
MODEL_VALIDATIONS = "model_validations"
# The monitoring stage's results per monitored table in Databricks data profiling's shape (<table>_profile_metrics,
# <table>_drift_metrics), beside the long tables above.
PROFILE_METRICS_SUFFIX, DRIFT_METRICS_SUFFIX = "_profile_metrics", "_drift_metrics"
# The online service's requests (Databricks' inference-table columns) and the A/B comparison read from them.
INFERENCE_REQUESTS = "inference_requests"
VARIANT_COMPARISON = "variant_comparison"
PROFILING_TABLES = tuple(t + suffix for t in (PREDICTIONS, SHADOW_PREDICTIONS, INFERENCE_REQUESTS)
                         for suffix in (PROFILE_METRICS_SUFFIX, DRIFT_METRICS_SUFFIX))
TABLES = (RAW_TRIPS, PICKUP_FEATURES, DROPOFF_FEATURES, PREDICTIONS, SHADOW_PREDICTIONS, QUARANTINED_TRIPS,
          DRIFT_METRICS, OUTLIER_METRICS, PERFORMANCE_METRICS, MODEL_VALIDATIONS, *PROFILING_TABLES,
          INFERENCE_REQUESTS, VARIANT_COMPARISON)

MLOPS_HOME_ENV = environment.HOME.name
CHECKPOINTS = "checkpoints"  # streaming queries' checkpoints, <root>/checkpoints/<job>/<name>

# Spark's error conditions for "no table there": a name the catalog lacks, a path that does not exist, a folder
# without a Delta log.
MISSING_TABLE_CONDITIONS = ("TABLE_OR_VIEW_NOT_FOUND", "PATH_NOT_FOUND", "DELTA_TABLE_NOT_FOUND",
                            "DELTA_MISSING_DELTA_TABLE")

# Delta's optimistic concurrency: a commit that conflicts with one another writer made since it read the table
# (jobs of overlapping ranges started together: two MERGEs into a feature table, two range replacements, two
# writers creating the same table) fails with one of these, and is safe to run again from the start. Names of the
# Java classes and of Delta's error conditions, as either may be all that reaches Python; "already exists": a
# table created by another writer between our check and our create.
CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
             "ConcurrentTransactionException", "MetadataChangedException", "ProtocolChangedException",
             "ConcurrentWriteException", "DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
             "DELTA_PATH_EXISTS", "TABLE_OR_VIEW_ALREADY_EXISTS")
CONFLICT_ATTEMPTS = 6
CONFLICT_BACKOFF_SECONDS = 0.5  # doubled after each conflict, with jitter so two writers do not retry in step

T = TypeVar("T")


def _conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a Delta write conflict."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if any(marker in text for marker in CONFLICTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retried_on_conflict(action: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Run a whole write again (its existence check included) when it meets a concurrent writer's commit, with
    backoff; after ``CONFLICT_ATTEMPTS`` a StorageError naming the table and the conflict."""
    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def retried(self: "Lakehouse", *args, **kwargs) -> T:
            table = kwargs.get("table") or next(a for a in args if isinstance(a, str))
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                try:
                    return method(self, *args, **kwargs)
                except Exception as exc:
                    if not _conflict(exc):
                        raise
                    cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ else exc
                    if attempt == CONFLICT_ATTEMPTS:
                        raise StorageError(
                            f"could not {action} table '{table}' at {self.location(table)}: gave up after "
                            f"{attempt} attempts, each in conflict with another writer of the table (the last: "
                            f"{first_line(cause, with_type=True)})") from exc
                    delay = CONFLICT_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                    logger.warning("%s table %s: in conflict with another writer (%s); retrying in %.1f s "
                                   "(attempt %d of %d)", action, table, first_line(cause, with_type=True), delay,
                                   attempt + 1, CONFLICT_ATTEMPTS)
                    time.sleep(delay)
            raise AssertionError("unreachable")
        return retried
    return decorate


def default_root() -> str:
    """``$MLOPS_HOME`` if set, else ``./.mlops`` (absolute)."""
    return str(Path(environment.HOME.get() or ".mlops").resolve())


class Lakehouse:
    """Delta tables under one root, ``<root>/tables/<name>`` (path mode: volumes, local folders), or, with a
    ``schema`` (``<catalog>.<schema>``), managed tables ``<catalog>.<schema>.<name>`` that Unity Catalog governs
    and SQL warehouses and dashboards query by name. The root still holds run folders and local stores."""

    def __init__(self, root: Optional[str] = None, schema: Optional[str] = None):
        self.root = (root or default_root()).rstrip("/")
        self.schema = schema or None
        self._pins: Optional[dict[str, int]] = None  # a view at fixed versions (``as_of``): table -> its version
        self._read_versions: dict[str, int] = {}

    def as_of(self, versions: Mapping[str, int]) -> "Lakehouse":
        """A view of this lakehouse that reads each table at one Delta version (time travel): the version
        ``versions`` gives, else the table's latest when the view first reads it, then that one for every later
        read. ``read_versions`` says which tables the view read at which version: what a run records is exactly
        what it read, whoever commits to the tables meanwhile, and reading those versions again reads the same
        rows (as long as ``VACUUM`` keeps their files)."""
        view = copy.copy(self)
        view._pins, view._read_versions = dict(versions), {}
        return view

    @property
    def read_versions(self) -> dict[str, int]:
        """table -> the Delta version this view read (empty for a lakehouse that is not an ``as_of`` view)."""
        return dict(self._read_versions)

    def version(self, spark: SparkSession, table: str) -> int:
        """The table's latest Delta version (the version of its last commit)."""
        with self._reading(table, "read the history of", missing=("DELTA_TABLE_ONLY_OPERATION",)):
            row = spark.sql(f"DESCRIBE HISTORY {self._sql_name(table)} LIMIT 1").select("version").first()
        if row is None:
            raise MissingTableError(f"table '{table}' does not exist at {self.location(table)}")
        return int(row["version"])

    def __repr__(self) -> str:
        return f"Lakehouse({self.root!r}, schema={self.schema!r})"

    @property
    def is_local(self) -> bool:
        return "://" not in self.root and not self.root.startswith("dbfs:")

    def path(self, *parts: str) -> str:
        """A path under the root for non-table files (run folders, the local MLflow store)."""
        return "/".join([self.root, *parts])

    def table_path(self, table: str) -> str:
        if table not in TABLES:
            raise StorageError(f"unknown table '{table}' (known tables: {', '.join(TABLES)})")
        return self.path("tables", table)

    def location(self, table: str) -> str:
        """Where ``table`` lives, as a person reads it: its three-level name, or its path."""
        path = self.table_path(table)  # also refuses an unknown table
        return f"{self.schema}.{table}" if self.schema else path

    def _ensure_schema(self, spark: SparkSession) -> None:
        if self.schema and not spark.catalog.databaseExists(self.schema):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {_quoted(self.schema)}")
            logger.info("created schema %s", self.schema)

    @contextmanager
    def _wrapped(self, action: str, table: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:  # one wrap at the IO boundary, with the table named
            raise StorageError(f"could not {action} table '{table}' at {self.location(table)}: "
                               f"{first_line(exc)}") from exc

    def _sql_name(self, table: str) -> str:
        if self.schema:
            return _quoted(self.location(table))
        return "delta.`" + self.table_path(table).replace("`", "``") + "`"

    def exists(self, spark: SparkSession, table: str) -> bool:
        from pyspark.errors import AnalysisException

        if self.schema:
            with self._wrapped("check", table):
                return spark.catalog.tableExists(self.location(table))
        try:
            detail = spark.sql(f"DESCRIBE DETAIL {self._sql_name(table)}").select("format").first()
        except AnalysisException:  # no table (or no Delta log) at the path
            return False
        except Exception as exc:
            raise StorageError(f"could not check table '{table}' at {self.location(table)}: "
                               f"{first_line(exc)}") from exc
        return detail is not None and detail["format"] == "delta"

    def read(self, spark: SparkSession, table: str) -> DataFrame:
        """The table (lazily); a StorageError saying so when it does not exist. One catalog or log lookup, not
        an ``exists`` check first: each lookup of a Delta table is a round of Spark jobs."""
        if self._pins is not None:
            return self._read_as_of(spark, table)
        with self._reading(table):
            if self.schema:
                return spark.table(self._sql_name(table))
            return spark.read.format("delta").load(self.table_path(table))
        raise AssertionError("unreachable")  # _reading raises or the block returns

    def _read_as_of(self, spark: SparkSession, table: str) -> DataFrame:
        assert self._pins is not None
        version = self._pins.get(table)
        if version is None:
            version = self.version(spark, table)
        try:
            with self._reading(table, f"read version {version} of"):
                df = spark.sql(f"SELECT * FROM {self._sql_name(table)} VERSION AS OF {int(version)}")
        except StorageError:
            if not self.exists(spark, table):  # a missing folder is not an AnalysisException at time travel
                raise MissingTableError(f"table '{table}' does not exist at {self.location(table)}") from None
            raise
        self._pins[table] = self._read_versions[table] = int(version)
        return df

    @contextmanager
    def _reading(self, table: str, action: str = "read", missing: Sequence[str] = ()) -> Iterator[None]:
        """A read's failure as a MissingTableError (no table there) or a StorageError, naming the table."""
        from pyspark.errors import AnalysisException

        try:
            yield
        except AnalysisException as exc:
            if exc.getCondition() in (*MISSING_TABLE_CONDITIONS, *missing):
                raise MissingTableError(f"table '{table}' does not exist at {self.location(table)}") from exc
            raise StorageError(f"could not {action} table '{table}' at {self.location(table)}: "
                               f"{first_line(exc)}") from exc
        except Exception as exc:
            raise StorageError(f"could not {action} table '{table}' at {self.location(table)}: "
                               f"{first_line(exc)}") from exc

    @_retried_on_conflict("write")
    def write(self, df: DataFrame, table: str, mode: str = "overwrite",
              partition_by: Sequence[str] = ()) -> None:
        """Write a whole table atomically (Delta commits are all-or-nothing)."""
        with self._wrapped("write", table):
            writer = df.write.format("delta").mode(mode)
            if mode == "overwrite":
                writer = writer.option("overwriteSchema", "true")
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            self._save(df.sparkSession, writer, table)
        logger.info("wrote table %s (%s)", table, mode)

    @_retried_on_conflict("merge into")
    def merge(self, spark: SparkSession, df: DataFrame, table: str, keys: Sequence[str]) -> dict[str, int]:
        """Upsert ``df`` into ``table`` on ``keys`` (one atomic Delta MERGE); create the table if missing.

        Rows whose values are unchanged are not rewritten, so merging the same rows twice changes nothing.
        Returns the MERGE's row counts (inserted, updated). A writer that creates or changes the table meanwhile
        makes it start again (a MERGE then), never overwrite the other's rows.
        """
        if not self.exists(spark, table):
            with self._wrapped("write", table):  # refused if another writer created it meanwhile: then a MERGE
                self._save(spark, df.write.format("delta").mode("error"), table)
            return {**self._last_metrics(spark, table, inserted="numOutputRows"), "updated": 0}
        source = f"merge_source_{uuid.uuid4().hex}"
        with self._wrapped("merge into", table):
            on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
            values = [c for c in df.columns if c not in keys]
            changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in values) or "false"
            df.createOrReplaceTempView(source)
            try:
                # the MERGE's own counts: the table's last commit may be another writer's
                merged = spark.sql(f"MERGE INTO {self._sql_name(table)} t USING {source} s ON {on} "
                                   f"WHEN MATCHED AND ({changed}) THEN UPDATE SET * "
                                   f"WHEN NOT MATCHED THEN INSERT *").first()
            finally:
                spark.catalog.dropTempView(source)
        counts = {"inserted": int(merged["num_inserted_rows"]), "updated": int(merged["num_updated_rows"])}
        logger.info("merged into table %s: %s", table, counts)
        return counts

    @_retried_on_conflict("replace a range of")
    def replace_range(self, spark: SparkSession, df: DataFrame, table: str, column: str,
                      start, end, stats_columns: Optional[Sequence[str]] = None, with_nulls: bool = False,
                      only: Optional[dict[str, str]] = None) -> int:
        """Atomically replace the rows with ``start <= column < end`` by ``df`` (one Delta commit); ``with_nulls``
        also the rows whose ``column`` is null (rows that belong to no range, which every writer of a range
        replaces: the quarantine's trips without a pickup time). ``only`` ({column: value}): of those, only the rows
        holding these values (one model version's rows of the range).

        ``df`` must only hold rows of that range. Rerunning the same range never duplicates rows.
        Returns the number of rows written. ``stats_columns``: the only columns a new table keeps data-skipping
        statistics for (``delta.dataSkippingStatsColumns``; Delta's default is the first 32). Statistics cost
        every written row a min/max update per column, a copy for a string, which is a waste on columns no
        query filters on. Columns of a type Delta keeps no statistics for are left out (naming one would fail
        the write). A table that exists keeps its own setting.
        """
        types = {field.name: field.dataType for field in df.schema.fields}
        kind = _nested_type(df.schema, column)
        name = _quoted(column)  # a dotted name is a struct's field (Databricks' window.start)
        condition = f"{name} >= {_literal(start, kind)} AND {name} < {_literal(end, kind)}"
        if with_nulls:
            condition = f"({condition}) OR {name} IS NULL"
        if only:
            condition = " AND ".join([f"({condition})", *(f"{_quoted_column(name)} = {_literal(value, types.get(name))}"
                                                          for name, value in only.items())])
        # No existence check first: on a missing table the same write creates it.
        with self._wrapped("replace a range of", table):
            commit = uuid.uuid4().hex  # finds this write's commit in the history, whoever committed after it
            writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
                      .option("userMetadata", commit))
            self._save(spark, _with_stats_columns(writer, df, stats_columns), table)
        # A file that held rows of the range and others is rewritten: its other rows count as output, copied.
        metrics = self._last_metrics(spark, table, commit=commit, output="numOutputRows", copied="numCopiedRows")
        written = metrics["output"] - metrics["copied"]
        logger.info("replaced %s in table %s with %d rows", condition, table, written)
        return written

    @_retried_on_conflict("append to")
    def append_once(self, df: DataFrame, table: str, app_id: str, version: int,
                    stats_columns: Optional[Sequence[str]] = None) -> int:
        """Append ``df`` to ``table`` unless this (``app_id``, ``version``) was appended before: Delta's idempotent
        writes (``txnAppId``/``txnVersion``; the table's log keeps each application's last version), so a
        streaming micro-batch replayed after a crash (the same batch id) changes nothing. Returns the rows
        appended: 0 for a replay. ``stats_columns``: as for ``replace_range``, for a table this append creates."""
        with self._wrapped("append to", table):
            commit = uuid.uuid4().hex
            writer = (df.write.format("delta").mode("append").option("txnAppId", app_id)
                      .option("txnVersion", int(version)).option("userMetadata", commit))
            self._save(df.sparkSession, _with_stats_columns(writer, df, stats_columns), table)
        appended = self._last_metrics(df.sparkSession, table, commit=commit, rows="numOutputRows")["rows"]
        logger.info("appended %d rows to table %s (%s, batch %d)", appended, table, app_id, version)
        return appended

    def read_stream(self, spark: SparkSession, table: str, max_files_per_trigger: int = 1000) -> DataFrame:
        """``table`` as a Delta stream: the rows of each commit after the ones a checkpoint has seen (a new
        checkpoint starts with the table as it is, then its later commits)."""
        with self._reading(table, "stream"):
            reader = spark.readStream.format("delta").option("maxFilesPerTrigger", max_files_per_trigger)
            if self.schema:
                return reader.table(self.location(table))
            return reader.load(self.table_path(table))
        raise AssertionError("unreachable")  # _reading raises or the block returns

    def checkpoint(self, job: str, name: str) -> str:
        """Where streaming job ``job`` keeps the progress of its query ``name`` (a folder under the root)."""
        return self.path(CHECKPOINTS, job, name)

    def _save(self, spark: SparkSession, writer, table: str) -> None:
        if self.schema:
            self._ensure_schema(spark)
            writer.saveAsTable(self._sql_name(table))
        else:
            writer.save(self.table_path(table))

    def _last_metrics(self, spark: SparkSession, table: str, commit: Optional[str] = None,
                      **names: str) -> dict[str, int]:
        """The last commit's operation metrics ``names`` (key -> Delta's metric name), read in one history query;
        with ``commit``, those of the recent commit whose ``userMetadata`` it is (other writers may have committed
        since)."""
        with self._wrapped("read the history of", table):
            history = spark.sql(f"DESCRIBE HISTORY {self._sql_name(table)} LIMIT {1 if commit is None else 100}")
            if commit is not None:
                history = history.filter(history["userMetadata"] == commit)
            row = history.select("operationMetrics").first()
        metrics = (row["operationMetrics"] if row else None) or {}
        return {key: int(metrics.get(name, 0)) for key, name in names.items()}


def _with_stats_columns(writer, df: DataFrame, stats_columns: Optional[Sequence[str]]):
    """``writer`` with ``delta.dataSkippingStatsColumns`` set to those of ``stats_columns`` that ``df`` has and Delta
    keeps statistics for (applied by a write that creates the table)."""
    types = {field.name: field.dataType for field in df.schema.fields}
    skippable = [c for c in stats_columns or () if c in types and _skippable(types[c])]
    if skippable:
        writer = writer.option("delta.dataSkippingStatsColumns", ",".join(_quoted_column(c) for c in skippable))
    return writer


def _skippable(kind) -> bool:
    """Whether Delta keeps min/max statistics for a column of this type (it refuses to be told to otherwise)."""
    return not isinstance(kind, (ArrayType, BinaryType, BooleanType, MapType))


def _nested_type(schema: StructType, column: str):
    """The type of ``column`` in ``schema``, a dotted name reaching into structs (None if there is none)."""
    kind: Any = schema
    for part in column.split("."):
        fields = {f.name: f.dataType for f in kind.fields} if isinstance(kind, StructType) else {}
        kind = fields.get(part)
    return kind


def _literal(value, kind) -> str:
    """``value`` as a SQL literal of the column's type. Delta checks a replaceWhere condition on every row it
    writes, without constant folding: a string literal would be parsed into a timestamp once per row."""
    if isinstance(kind, TimestampType):
        return f"TIMESTAMP '{value}'"
    if isinstance(kind, DateType):
        return f"DATE '{value}'"
    return f"'{value}'"


def _quoted_column(name: str) -> str:
    """One column's name quoted (a dot in it would otherwise name a nested field)."""
    return "`" + name.replace("`", "``") + "`"


def _quoted(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))
