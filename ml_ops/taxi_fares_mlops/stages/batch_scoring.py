"""Batch scoring: trips of the range + features -> predictions of the chosen model version -> Delta (+ Blob).

The champion's outputs are the champion's: scoring with the version behind ``champion`` replaces the range's rows
of the ``predictions`` table; scoring with any other version (``model_alias=challenger``, ``model_version=N``)
writes ``shadow_predictions`` and replaces only that version's rows of the range, so the champion's rows are never
touched. One commit each: a rerun never duplicates, and a failure leaves the table as it was. When a storage
connection is configured (or ``publish_predictions=true``) the run's rows are then published to Blob storage as
Parquet parts, a manifest and the range's current pointer (``taxi_fares_mlops.blob``; another version's under
``shadow_predictions/``).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.features import in_range
from taxi_fares.schema import PICKUP_TS
from taxi_fares_mlops import blob, telemetry
from taxi_fares_mlops.config import BATCH_SCORING, CHAMPION, JobConfig, ScoringConfig
from taxi_fares_mlops.datasets import valid_trips, with_features
from taxi_fares_mlops.errors import StorageError
from taxi_fares_mlops.faults import crash_during, crash_point
from taxi_fares_mlops.spark import session_conf
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.storage import PREDICTIONS, SHADOW_PREDICTIONS

logger = logging.getLogger(__name__)

# Rows per Arrow batch handed to the model: the model is called once per batch, so larger batches spread its
# per-call cost (MLflow's input checks, the pandas frame) over more rows; 100k rows of features are ~8 MB.
# That row bound is the batch's only bound: with a byte bound as well (Spark 4's default, 64 MiB, which 8 MB never
# reaches) Spark re-measures the Arrow batch's buffers after every row it adds; Int.MaxValue turns that check off
# (``BatchedPythonArrowInput``). One core-second of the JVM's 26 at 4M rows (Flight Recorder), paired runs 0.4-1.4 s
# faster.
SCORING_CONF = {"spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
                "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}


@stage(BATCH_SCORING)
def batch_scoring(spark: SparkSession, config: ScoringConfig, context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    model = registry.resolve(config.model_alias, config.model_version)
    table, only, shadow = predictions_table(registry, model)
    context.tracking.check_inputs(model)  # a model of other inputs is refused before anything is read
    context.tracking.check_artifacts(model)  # so is one whose files are not those registered (and score re-checks)
    target = _blob_target(config, context)  # a misconfigured publish fails before anything is written
    trips = valid_trips(spark, context.lakehouse, config)
    predictions = predict_trips(spark, config, context, model, trips)
    start, end = config.time_range
    # Data-skipping statistics for the trip's columns, the prediction and its time; not for the model and run
    # labels, strings that are the same on every row of a run (and a range's files are one run's anyway).
    with telemetry.span("score and write predictions", table=table, model_version=model.version) as step:
        with session_conf(spark, SCORING_CONF):
            rows = context.lakehouse.replace_range(spark, predictions, table, PICKUP_TS, start, end,
                                                   stats_columns=[*trips.columns, "prediction", "scored_at"], only=only)
        step.set_attribute("rows", rows)
    context.wrote(table)
    crash_point("batch_scoring.after_predictions_commit")
    outputs = {"model_name": model.name, "model_version": model.version, "rows": rows, "table": table}
    if target is not None:
        # The Delta table is the system of record: publish this run's rows of the range from it.
        written = (context.lakehouse.read(spark, table)
                   .filter(in_range(F.col(PICKUP_TS), start, end) & (F.col("mlflow_run_id") == context.mlflow_run_id)))
        folder = blob.prefix(model.name, config.start_date, config.end_date, context.mlflow_run_id,
                             model.version if shadow else None)
        with telemetry.span("publish predictions to blob", container=target.container) as step, \
                crash_during("batch_scoring.during_part_uploads", lambda: blob.has_parts(target, folder)):
            manifest = blob.publish(written, target, folder, {
                "model_name": model.name, "model_version": model.version, "mlflow_run_id": context.mlflow_run_id,
                "start_date": str(config.start_date), "end_date": str(config.end_date)},
                rows_per_part=config.blob_rows_per_part, rows=rows)  # this run's rows of the range: all it wrote
            step.set_attributes({"rows": manifest["rows"], "files": len(manifest["files"])})
        outputs["blob"] = {"container": target.container, "manifest": f"{folder}/{blob.MANIFEST}",
                           "files": len(manifest["files"]), "rows": manifest["rows"]}
    return outputs


def predict_trips(spark: SparkSession, config: JobConfig, context: StageContext, model, trips: DataFrame,
                  dates: Optional[tuple[dt.date, dt.date]] = None) -> DataFrame:
    """The predictions rows of ``trips`` (valid trips picked up in the config's range, or in ``dates``): each trip
    as it came, its prediction by ``model``, the model and the run. What the batch stage writes for a range and
    the streaming stage for each micro-batch: one function, so both give the same rows for the same trips."""
    featured = with_features(spark, context.lakehouse, config, trips, dates)
    return context.tracking.score(spark, featured, model).select(
        *trips.columns,
        "prediction",
        F.lit(model.name).alias("model_name"),
        F.lit(model.version).alias("model_version"),
        F.lit(model.run_id).alias("model_run_id"),
        F.lit(context.mlflow_run_id).alias("mlflow_run_id"),
        F.current_timestamp().alias("scored_at"),
    )


def predictions_table(registry, model) -> tuple[str, dict | None, bool]:
    """Where ``model``'s predictions go: (table, the rows a range replaces beyond the range, shadow?). The champion's
    to ``predictions`` (the range's rows); any other version's to ``shadow_predictions`` (that version's rows)."""
    champion = registry.by_alias(CHAMPION)
    if champion is not None and champion.version == model.version:
        return PREDICTIONS, None, False
    return SHADOW_PREDICTIONS, {"model_version": model.version}, True


def _blob_target(config: ScoringConfig, context: StageContext):
    if config.publish_predictions == "false":
        return None
    connection = context.credentials.get(blob.STORAGE_SECRET, blob.STORAGE_ENV)
    if connection is None:
        if config.publish_predictions == "true":
            raise StorageError(f"publish_predictions=true but no storage connection: add the secret "
                               f"'{blob.STORAGE_SECRET}' to scope '{config.secret_scope}' or set {blob.STORAGE_ENV}")
        logger.info("no storage connection configured: predictions stay in the Delta table only")
        return None
    target = blob.BlobTarget(connection, config.blob_container)
    blob.ensure_container(target)  # storage that is down or refuses fails the stage before the table is touched
    return target
