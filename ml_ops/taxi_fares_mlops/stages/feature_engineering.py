"""Feature engineering: valid trips of the range -> pickup and dropoff features, upserted by key."""
from __future__ import annotations

from pyspark.sql import SparkSession

from taxi_fares.features import FEATURE_KEYS, dropoff_features, pickup_features
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import FEATURE_ENGINEERING, JobConfig
from taxi_fares_mlops.datasets import valid_trips
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES


@stage(FEATURE_ENGINEERING)
def feature_engineering(spark: SparkSession, config: JobConfig, context: StageContext) -> dict:
    trips = valid_trips(spark, context.lakehouse, config, with_lookback=True)
    outputs = {}
    for table, compute in ((PICKUP_FEATURES, pickup_features), (DROPOFF_FEATURES, dropoff_features)):
        features = compute(trips, config.start_date, config.end_date)
        with telemetry.span(f"merge {table}", table=table) as step:
            outputs[table] = context.lakehouse.merge(spark, features, table, FEATURE_KEYS)
            step.set_attributes({"rows_inserted": outputs[table]["inserted"],
                                 "rows_updated": outputs[table]["updated"]})
        context.wrote(table)
    return outputs
