"""Incremental scoring: the trips committed to ``raw_trips`` since the last run, as a Delta stream, scored micro-batch
by micro-batch with the batch stage's own code (``predict_trips``).

Each micro-batch (``score_micro_batch``, the query's ``foreachBatch``) validates its trips, appends the invalid
ones to ``quarantined_trips`` with the rules they break (or fails the job, ``validation_mode=fail``), recomputes the
feature windows the valid ones fall in from ``raw_trips`` and merges them by key (``refresh_features``, with
``execute_feature_engineering``; a late trip updates its windows, within ``feature_watermark_hours``), scores the
valid ones over the days they were picked up on, and appends the predictions to the model's table (``predictions``
for the champion, ``shadow_predictions`` for another version, as in batch). Both appends are Delta's idempotent
writes (``txnAppId`` = the checkpoint's id, ``txnVersion`` = the batch id): a micro-batch replayed after a crash,
which Spark does with the same id and the same trips, changes nothing; so does merging its features again.

The query's progress (which commits of ``raw_trips`` it has read) is its checkpoint,
``<lakehouse>/checkpoints/scoring_stream/<model>.<alias or version>/query``, with ``owner.json`` beside it naming
the job, target and model it belongs to and the id its writes carry. A run for another target or model that
finds it is refused by name rather than carrying on from someone else's progress. Deleting the folder (marker and
all) starts over: the next run scores the whole table again under a new id.

``trigger_mode=available_now`` (the default) processes what has arrived and stops, for a scheduled or triggered job;
``continuous`` keeps running, one micro-batch every ``processing_interval_seconds``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.columns import PICKUP_WINDOW_SECONDS, TS
from taxi_fares.schema import DROPOFF_TS, FAIL, PICKUP_TS, VIOLATIONS_COLUMN, TripValidationError, \
    schema_violations, valid_rows, validate_trips
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import AVAILABLE_NOW, SCORING_STREAM_JOB, STREAMING_SCORING, ScoringStreamConfig
from taxi_fares_mlops.datasets import feature_window_trips
from taxi_fares_mlops.errors import DataError, StorageError
from taxi_fares_mlops.faults import crash_point
from taxi_fares_mlops.spark import session_conf
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.stages.batch_scoring import SCORING_CONF, predict_trips, predictions_table
from taxi_fares_mlops.stages.feature_engineering import merge_features
from taxi_fares_mlops.storage import PICKUP_FEATURES, QUARANTINED_TRIPS, RAW_TRIPS, Lakehouse

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
# A run's totals over its micro-batches: its outputs and its MLflow metrics (``streaming.<name>``).
TOTALS = ("micro_batches", "rows", "quarantined", "replayed", "feature_rows_merged", "late")
QUERY_FOLDER = "query"


def checkpoint_name(config: ScoringStreamConfig) -> str:
    """The checkpoint's folder name: the model and what chooses its version (a stream of the champion and one of
    a pinned version are two queries with two progresses)."""
    chosen = f"v{config.model_version}" if config.model_version else config.model_alias
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.model_name}.{chosen}")


def claim_checkpoint(lakehouse: Lakehouse, config: ScoringStreamConfig) -> tuple[str, str]:
    """(the query's checkpoint location, the id its writes carry): the checkpoint of this job, target and model,
    claimed with an ``owner.json`` beside it on first use. One that another target or model claimed is refused,
    naming both."""
    folder = lakehouse.checkpoint(SCORING_STREAM_JOB, checkpoint_name(config))
    owner = {"job": SCORING_STREAM_JOB, "target": config.target, "model_name": config.model_name,
             "model": config.model_reference}
    marker = f"{folder}/{OWNER_FILE}"
    found = _read_marker(marker)
    if found is None:
        owner["writer_id"] = f"{SCORING_STREAM_JOB}-{uuid.uuid4().hex}"
        _write_marker(marker, owner)
        logger.info("checkpoint %s claimed for %s", folder, owner)
        return f"{folder}/{QUERY_FOLDER}", owner["writer_id"]
    mine = {k: found.get(k) for k in owner}
    if mine != owner:
        raise DataError(f"checkpoint {folder} belongs to job '{found.get('job')}', target '{found.get('target')}', "
                        f"model '{found.get('model_name')}' ({found.get('model')}), not to job '{owner['job']}', "
                        f"target '{owner['target']}', model '{owner['model_name']}' ({owner['model']}): its "
                        f"progress is not this stream's; point this run at its own lakehouse, or remove the folder "
                        f"to start over")
    return f"{folder}/{QUERY_FOLDER}", str(found["writer_id"])


def _read_marker(path: str) -> Optional[dict]:
    local = _local(path)
    try:
        if local is not None:
            if not local.exists():
                return None
            text = local.read_text(encoding="utf-8")
        else:  # pragma: no cover - a workspace's volume or cloud path, through dbutils' file system
            from pyspark.dbutils import DBUtils

            dbutils = DBUtils(SparkSession.getActiveSession())
            try:
                text = dbutils.fs.head(path, 65536)
            except Exception as exc:
                if "FileNotFoundException" in str(exc) or "does not exist" in str(exc):
                    return None
                raise
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise StorageError(f"could not read checkpoint marker {path}: {exc}") from exc


def _write_marker(path: str, owner: dict) -> None:
    text = json.dumps(owner, sort_keys=True, indent=2)
    local = _local(path)
    try:
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(text, encoding="utf-8")
        else:  # pragma: no cover - see _read_marker
            from pyspark.dbutils import DBUtils

            DBUtils(SparkSession.getActiveSession()).fs.put(path, text, overwrite=False)
    except OSError as exc:
        raise StorageError(f"could not write checkpoint marker {path}: {exc}") from exc


def _local(path: str) -> Optional[Path]:
    """A local or FUSE-mounted path (``/Volumes/...`` is a file path on a cluster), else None."""
    if "://" in path or path.startswith("dbfs:"):
        return None
    return Path(path)


def check_raw_schema(spark: SparkSession, lakehouse: Lakehouse) -> None:
    """Refuse ``raw_trips`` whose columns are not the raw-trip schema, naming each column, before the stream reads
    a row: a column renamed, dropped or retyped upstream stops the job here, not in the middle of a batch."""
    problems = schema_violations(lakehouse.read(spark, RAW_TRIPS))
    if problems:
        raise DataError(f"table '{RAW_TRIPS}' changed its schema: {TripValidationError(problems)}; the stream stops "
                        f"until it is the raw-trip schema again")


@stage(STREAMING_SCORING)
def streaming_scoring(spark: SparkSession, config: ScoringStreamConfig, context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    model = registry.resolve(config.model_alias, config.model_version)
    table, _, _ = predictions_table(registry, model)
    context.tracking.check_inputs(model)
    context.tracking.check_artifacts(model)
    checkpoint, writer_id = claim_checkpoint(context.lakehouse, config)
    check_raw_schema(spark, context.lakehouse)
    totals: Counter = Counter()
    on_batch = _in_current_span(lambda batch, batch_id: totals.update(
        score_micro_batch(spark, config, context, model, table, writer_id, batch, batch_id)))
    stream = context.lakehouse.read_stream(spark, RAW_TRIPS, config.max_files_per_trigger)
    writer = (stream.writeStream.foreachBatch(on_batch).option("checkpointLocation", checkpoint)
              .queryName(f"{SCORING_STREAM_JOB}_{checkpoint_name(config)}".replace(".", "_").replace("-", "_")))
    if config.trigger_mode == AVAILABLE_NOW:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{config.processing_interval_seconds} seconds")
    logger.info("streaming %s into %s with model %s version %s (%s), checkpoint %s", RAW_TRIPS, table, model.name,
                model.version, config.trigger_mode, checkpoint)
    query = writer.start()
    try:
        query.awaitTermination()
    except Exception as exc:
        raise _cause(exc) from exc
    finally:
        if query.isActive:
            query.stop()
    context.wrote(table)
    if totals["quarantined"]:
        context.wrote(QUARANTINED_TRIPS)
    # the run's totals, as a batch run's stage outputs are: a stream's MLflow run reads like a batch one
    context.tracking.log_metrics({f"streaming.{name}": float(totals[name]) for name in TOTALS})
    return {"model_name": model.name, "model_version": model.version, "table": table, "checkpoint": checkpoint,
            **{name: totals[name] for name in TOTALS}}


def score_micro_batch(spark: SparkSession, config: ScoringStreamConfig, context: StageContext, model, table: str,
                      writer_id: str, batch: DataFrame, batch_id: int) -> Counter:
    """One micro-batch of raw trips: invalid ones quarantined, valid ones scored, both appended once per
    (``writer_id``, ``batch_id``). Returns its counts."""
    counts: Counter = Counter(micro_batches=1)
    batch = batch.persist()
    try:
        with telemetry.span("micro-batch", batch_id=batch_id, table=table) as step:
            try:
                validated = validate_trips(batch, mode=config.validation_mode)
            except TripValidationError as exc:
                raise DataError(f"table '{RAW_TRIPS}', micro-batch {batch_id}: {exc}") from exc
            step.set_attribute("rows_read", validated.rows or 0)
            if not validated.rows:
                return counts
            if config.validation_mode != FAIL and validated.violations:
                counts["quarantined"] = _quarantine(context, validated.quarantined, writer_id, batch_id)
            days = _trip_days(validated.valid)
            dates = (days[0]["day"], days[-1]["day"] + dt.timedelta(days=1)) if days else None
            if days and config.execute_feature_engineering:
                counts.update(refresh_features(spark, config, context, days))
            if dates is not None:
                predictions = predict_trips(spark, config, context, model, validated.valid, dates)
                # on the micro-batch's own session (Spark runs each on a copy of the job's): set on the job's,
                # the model was called on Spark's default 10k-row batches instead of batch scoring's
                with session_conf(predictions.sparkSession, SCORING_CONF):
                    counts["rows"] = context.lakehouse.append_once(
                        predictions, table, writer_id, batch_id,
                        stats_columns=[*validated.valid.columns, "prediction", "scored_at"])  # as batch scoring
                crash_point("streaming_scoring.after_predictions_append")
                if not counts["rows"]:
                    counts["replayed"] = 1
                    logger.info("micro-batch %d was written before (a replay): nothing appended", batch_id)
            step.set_attributes({"rows": counts["rows"], "quarantined": counts["quarantined"],
                                 "feature_rows_merged": counts["feature_rows_merged"], "late": counts["late"]})
            if dates is not None:
                lag = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                       - dt.datetime.combine(dates[1], dt.time())).total_seconds()
                step.set_attribute("lag_days", max(0.0, lag / 86400.0))
    finally:
        batch.unpersist()
    logger.info("micro-batch %d: %d predictions, %d quarantined", batch_id, counts["rows"], counts["quarantined"])
    return counts


def refresh_features(spark: SparkSession, config: ScoringStreamConfig, context: StageContext,
                     days: list) -> Counter:
    """The feature windows a micro-batch's trips fall in, recomputed from ``raw_trips`` and merged by key with
    feature engineering's own code (``merge_features``), so a trip that arrives late updates the windows it falls
    in, and the predictions that follow read them. ``days``: ``_trip_days`` of the micro-batch's valid trips. For
    each run of consecutive pickup days, the windows ending from the first day's midnight to the midnight after its
    last drop-off plus a pickup window (every window a trip is in ends within a window's length of it): days
    without trips are not recomputed, however far apart the trips are.

    The watermark: windows ending more than ``feature_watermark_hours`` before the newest feature row held (rows
    later than a day from now are not taken for the newest: a trip dated in the future cannot freeze the rest)
    are left as they are where there are any, and the trips picked up before then are counted as ``late``: scored
    with the windows held. Days before it that hold no window at all are computed (their trips need features)."""
    counts: Counter = Counter()
    newest = _newest_feature_time(spark, context)
    floor = _day(newest - dt.timedelta(hours=config.feature_watermark_hours)) if newest is not None else None
    for start, end, by_day in _day_runs(days):
        if floor is not None and start < floor and _features_held(spark, context, start, min(end, floor)):
            counts["late"] += sum(trips for day, trips in by_day if day < floor)
            start = floor
        if start >= end:
            continue
        raw = context.lakehouse.read(spark, RAW_TRIPS).filter(feature_window_trips(start, end))
        merged = merge_features(spark, context, valid_rows(raw), start, end)
        counts["feature_rows_merged"] += sum(m["inserted"] + m["updated"] for m in merged.values())
    if counts["late"]:
        logger.warning("%d trip(s) picked up before %s, feature_watermark_hours=%d before the newest feature row "
                       "(%s): scored with the feature windows held, which were not recomputed", counts["late"],
                       floor, config.feature_watermark_hours, newest)
    return counts


def _trip_days(trips: DataFrame) -> list:
    """Per pickup day of ``trips``, in order: the day (``day``), its trips (``trips``) and the latest of their
    pickups and drop-offs (``last``). One small aggregation: a row per day."""
    return (trips.groupBy(F.to_date(PICKUP_TS).alias("day"))
            .agg(F.count(F.lit(1)).alias("trips"), F.max(F.greatest(PICKUP_TS, DROPOFF_TS)).alias("last"))
            .orderBy("day").collect())


def _day_runs(days: list) -> list[tuple[dt.datetime, dt.datetime, list[tuple[dt.datetime, int]]]]:
    """The ranges of feature windows ``days`` touch, overlapping ones joined: (start, end, [(day, trips)])."""
    runs: list = []
    for row in days:
        start = dt.datetime.combine(row["day"], dt.time())
        end = _day(row["last"] + dt.timedelta(seconds=PICKUP_WINDOW_SECONDS)) + dt.timedelta(days=1)
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end), [*runs[-1][2], (start, row["trips"])])
        else:
            runs.append((start, end, [(start, row["trips"])]))
    return runs


def _day(value: dt.datetime) -> dt.datetime:
    return dt.datetime(value.year, value.month, value.day)


def _newest_feature_time(spark: SparkSession, context: StageContext) -> Optional[dt.datetime]:
    """The newest pickup feature row's time up to a day from now (None without features)."""
    if not context.lakehouse.exists(spark, PICKUP_FEATURES):
        return None
    tomorrow = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=1)
    return context.lakehouse.read(spark, PICKUP_FEATURES).filter(F.col(TS) <= F.lit(tomorrow)).agg(
        F.max(TS)).first()[0]


def _features_held(spark: SparkSession, context: StageContext, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether any pickup feature window ends in [start, end)."""
    return not context.lakehouse.read(spark, PICKUP_FEATURES).filter(
        (F.col(TS) >= F.lit(start)) & (F.col(TS) < F.lit(end))).isEmpty()


def _quarantine(context: StageContext, quarantined: DataFrame, writer_id: str, batch_id: int) -> int:
    """The micro-batch's invalid trips, as the batch jobs quarantine them: each with its rules, the run and the
    days it was picked up on (a later batch run over those days replaces them, as it replaces its own)."""
    day = F.to_date(F.col(PICKUP_TS))
    rows = (quarantined
            .withColumn("mlflow_run_id", F.lit(context.mlflow_run_id))
            .withColumn("range_start", day)
            .withColumn("range_end", F.date_add(day, 1))
            .withColumn("quarantined_at", F.current_timestamp()))
    written = context.lakehouse.append_once(rows, QUARANTINED_TRIPS, writer_id, batch_id)
    by_rule = (rows.select(F.explode(VIOLATIONS_COLUMN).alias("rule")).groupBy("rule").count().collect())
    for row in by_rule:
        logger.warning("micro-batch %d: %d trip(s) quarantined where %s", batch_id, row["count"], row["rule"])
    return written


def _in_current_span(fn: Callable[[DataFrame, int], object]) -> Callable[[DataFrame, int], None]:
    """``fn`` run under the caller's telemetry context: Spark calls ``foreachBatch`` from a thread of its own, whose
    spans would otherwise start new traces instead of sitting under the job's."""
    try:
        from opentelemetry import context as otel
    except ImportError:  # pragma: no cover - telemetry is an optional dependency
        def plain(batch: DataFrame, batch_id: int) -> None:
            fn(batch, batch_id)
        return plain
    parent = otel.get_current()

    def run(batch: DataFrame, batch_id: int) -> None:
        token = otel.attach(parent)
        try:
            fn(batch, batch_id)
        finally:
            otel.detach(token)
    return run


def _cause(exc: BaseException) -> BaseException:
    """A failed query's error as the micro-batch raised it, when it reached Python (our DataError naming the
    column, a StorageError naming the table) rather than Spark's wrapper of it; else Spark's, first line."""
    text = str(exc)
    for kind in (DataError, StorageError):
        marker = f"{kind.__name__}: "
        if marker in text:
            message = text.split(marker, 1)[1].strip().splitlines()[0]
            return kind(message)
    return StorageError(f"the stream over '{RAW_TRIPS}' stopped: {text.strip().splitlines()[0] if text else exc}")
