"""Batch scoring: trips of the range + features -> predictions of the chosen model version -> Delta.

The range's rows in the predictions table are replaced in one commit: a rerun never duplicates, and a failure
leaves the table as it was.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from taxi_fares.schema import PICKUP_TS
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import SCORING_STAGE, ScoringConfig
from taxi_fares_mlops.datasets import trips_with_features
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.storage import PREDICTIONS, RAW_TRIPS
from taxi_fares_mlops.tracking import Registry, score


@stage(SCORING_STAGE)
def batch_scoring(spark: SparkSession, config: ScoringConfig, context: StageContext) -> dict:
    model = Registry(config.model_name).resolve(config.model_alias, config.model_version)
    trips = trips_with_features(spark, context.lakehouse, config)
    raw_columns = context.lakehouse.read(spark, RAW_TRIPS).columns
    predictions = score(spark, trips, model).select(
        *raw_columns,
        "prediction",
        F.lit(model.name).alias("model_name"),
        F.lit(model.version).alias("model_version"),
        F.lit(model.run_id).alias("model_run_id"),
        F.lit(context.mlflow_run_id).alias("mlflow_run_id"),
        F.current_timestamp().alias("scored_at"),
    )
    start = dt.datetime.combine(config.start_date, dt.time())
    end = dt.datetime.combine(config.end_date, dt.time())
    with telemetry.span("score and write predictions", table=PREDICTIONS, model_version=model.version) as step:
        rows = context.lakehouse.replace_range(spark, predictions, PREDICTIONS, PICKUP_TS, start, end)
        step.set_attribute("rows", rows)
    context.wrote(PREDICTIONS)
    return {"model_name": model.name, "model_version": model.version, "rows": rows, "table": PREDICTIONS}
