"""Feature engineering: valid trips of the range -> pickup and dropoff features, upserted by key; the range's
invalid trips (``validation_mode=quarantine``) -> ``quarantined_trips`` with the rules they broke. The incremental
scoring job merges its micro-batches' days with the same ``merge_features``."""
from __future__ import annotations

import re

from pyspark.sql import DataFrame, SparkSession

from taxi_fares.features import FEATURE_KEYS, dropoff_features, pickup_features
from taxi_fares.schema import QUARANTINE
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import FEATURE_ENGINEERING, JobConfig
from taxi_fares_mlops.datasets import quarantine, validated_trips
from taxi_fares_mlops.faults import crash_during, new_files
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, QUARANTINED_TRIPS


@stage(FEATURE_ENGINEERING)
def feature_engineering(spark: SparkSession, config: JobConfig, context: StageContext) -> dict:
    validated = validated_trips(spark, context.lakehouse, config, with_lookback=True)
    outputs: dict = merge_features(spark, context, validated.valid, config.start_date, config.end_date)
    if config.validation_mode == QUARANTINE:
        with telemetry.span(f"write {QUARANTINED_TRIPS}") as step:
            by_rule = quarantine(spark, context.lakehouse, config, validated.quarantined, context.mlflow_run_id)
            step.set_attribute("rows", sum(by_rule.values()))
        context.wrote(QUARANTINED_TRIPS)
        context.tracking.log_metrics({f"quarantined.{_metric_name(rule)}": float(count)
                                      for rule, count in by_rule.items()})
        outputs["quarantined"] = by_rule
    return outputs


def merge_features(spark: SparkSession, context: StageContext, trips: DataFrame, start, end) -> dict:
    """The pickup and dropoff feature rows of the windows ending in [start, end), computed from ``trips`` (valid,
    the range's and its windows' lookback), upserted by key: table -> the MERGE's counts. The batch stage merges
    its range; the incremental scoring job the days of each micro-batch's trips."""
    outputs: dict = {}
    for table, compute in ((PICKUP_FEATURES, pickup_features), (DROPOFF_FEATURES, dropoff_features)):
        features = compute(trips, start, end)
        with telemetry.span(f"merge {table}", table=table) as step, \
                crash_during("feature_engineering.during_merge", new_files(context.lakehouse.location(table))):
            outputs[table] = context.lakehouse.merge(spark, features, table, FEATURE_KEYS)
            step.set_attributes({"rows_inserted": outputs[table]["inserted"],
                                 "rows_updated": outputs[table]["updated"]})
        context.wrote(table)
    return outputs


def _metric_name(rule: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", rule.lower()).strip("_")
