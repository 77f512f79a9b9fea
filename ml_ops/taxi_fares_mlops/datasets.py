"""The inputs stages share: valid raw trips of a range, the feature tables, and the training/holdout sets.

Training and promotion build the holdout the same way (same range, same split seed), so the champion and
the challenger are compared on identical rows.
"""
from __future__ import annotations

import datetime as dt
import logging
from contextlib import contextmanager
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.columns import DROPOFF_WINDOW_SECONDS, PICKUP_WINDOW_SECONDS
from taxi_fares.features import (DROPOFF_LOOKUP_TS, LABEL, PICKUP_LOOKUP_TS, in_range, join_features,
                                 model_input_columns, range_spans)
from taxi_fares.model import split_holdout
from taxi_fares.schema import (DROPOFF_TS, FAIL, PICKUP_TS, VIOLATIONS_COLUMN, TripValidationError,
                               ValidationResult, valid_rows, validate_trips)
from taxi_fares_mlops.config import JobConfig, TrainingConfig
from taxi_fares_mlops.errors import DataError, MissingTableError
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, QUARANTINED_TRIPS, RAW_TRIPS, Lakehouse

logger = logging.getLogger(__name__)


def validated_trips(spark: SparkSession, lakehouse: Lakehouse, config: JobConfig, with_lookback: bool = False
                    ) -> ValidationResult:
    """Raw trips of the config's range, validated: bad rows fail the job (``validation_mode=fail``) or come back
    apart, each with the rules it breaks (``quarantine``).

    ``with_lookback`` also reads the trips the first feature windows of the range reach back to. Trips without a
    pickup time belong to no range: every run reads them (they are invalid), so they are counted, and quarantined
    under the run's range and run id, by whichever run comes, rather than by none.
    """
    start, end = config.time_range
    if with_lookback:
        rows = feature_window_trips(start, end)
    else:
        rows = in_range(F.col(PICKUP_TS), start, end)
    rows = rows | F.col(PICKUP_TS).isNull()
    with _raw_trips_checked():
        result = validate_trips(lakehouse.read(spark, RAW_TRIPS).filter(rows), mode=config.validation_mode)
    if result.rows == 0:
        raise _no_trips(config)
    for violation in result.violations:
        logger.warning("quarantining invalid trips: %s", violation.message())
    return result


def feature_window_trips(start: dt.datetime, end: dt.datetime):
    """The trips the feature windows ending in [start, end) hold: picked up from one pickup window before
    ``start``, or dropped off from one dropoff window before it, until ``end`` (a filter on raw_trips)."""
    return (in_range(F.col(PICKUP_TS), start - dt.timedelta(seconds=PICKUP_WINDOW_SECONDS), end)
            | in_range(F.col(DROPOFF_TS), start - dt.timedelta(seconds=DROPOFF_WINDOW_SECONDS), end))


def valid_trips(spark: SparkSession, lakehouse: Lakehouse, config: JobConfig) -> DataFrame:
    """The trips picked up in the range that pass validation.

    With ``validation_mode=quarantine`` (the default) the invalid trips are feature engineering's to count and
    quarantine: here they are filtered out within the caller's query, which spares a pass over the range (one
    more read of every trip before the first prediction), and only a probe for one trip of the range runs
    first. ``fail`` counts every rule first, as it must refuse before anything is written.
    """
    if config.validation_mode == FAIL:
        return validated_trips(spark, lakehouse, config).valid
    start, end = config.time_range
    with _raw_trips_checked():
        raw = lakehouse.read(spark, RAW_TRIPS).filter(in_range(F.col(PICKUP_TS), start, end))
        valid = valid_rows(raw)
    if raw.isEmpty():
        raise _no_trips(config)
    return valid


@contextmanager
def _raw_trips_checked():
    try:
        yield
    except TripValidationError as exc:
        raise DataError(f"table '{RAW_TRIPS}': {exc}") from exc


def _no_trips(config: JobConfig) -> DataError:
    return DataError(f"table '{RAW_TRIPS}' has no trips for {config.start_date}..{config.end_date}: "
                     f"load that range first, or choose a range it holds")


def quarantine(spark: SparkSession, lakehouse: Lakehouse, config: JobConfig, quarantined: DataFrame,
               mlflow_run_id: str) -> dict[str, int]:
    """Replace the range's rows of ``quarantined_trips`` by ``quarantined`` (trips of the range, and the trips
    without a pickup time, which belong to no range: each run replaces them under its own range and run id), each
    with the rules it broke, the run and the range: a rerun never duplicates them. Returns the count per rule."""
    start, end = config.time_range
    ours = in_range(F.col(PICKUP_TS), start, end) | F.col(PICKUP_TS).isNull()
    rows = (quarantined.filter(ours)
            .withColumn("mlflow_run_id", F.lit(mlflow_run_id))
            .withColumn("range_start", F.lit(config.start_date))
            .withColumn("range_end", F.lit(config.end_date))
            .withColumn("quarantined_at", F.current_timestamp()))
    lakehouse.replace_range(spark, rows, QUARANTINED_TRIPS, PICKUP_TS, start, end, with_nulls=True)
    by_rule = (lakehouse.read(spark, QUARANTINED_TRIPS)
               .filter(ours & (F.col("mlflow_run_id") == mlflow_run_id))
               .select(F.explode(VIOLATIONS_COLUMN).alias("rule")).groupBy("rule").count().collect())
    return {row["rule"]: int(row["count"]) for row in sorted(by_rule, key=lambda r: r["rule"])}


def with_features(spark: SparkSession, lakehouse: Lakehouse, config: JobConfig, trips: DataFrame,
                  dates: Optional[tuple[dt.date, dt.date]] = None) -> DataFrame:
    """``trips`` (valid trips picked up in the config's range, or in ``dates`` ``[start, end)`` when given: a
    micro-batch's days) with their point-in-time features, or a DataError saying which stage to turn on when a
    feature table is missing or has no rows for the range."""
    start_date, end_date = dates or (config.start_date, config.end_date)
    time_range = (dt.datetime.combine(start_date, dt.time()), dt.datetime.combine(end_date, dt.time()))
    tables = {}
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        try:
            tables[table] = lakehouse.read(spark, table)
        except MissingTableError as exc:
            raise DataError(f"feature table '{table}' does not exist: run the job with "
                            f"execute_feature_engineering=true") from exc
    pickup, dropoff = tables[PICKUP_FEATURES], tables[DROPOFF_FEATURES]
    spans = range_spans(pickup, dropoff, time_range)  # one query: each join's zips, rows in the range
    for table, key in ((PICKUP_FEATURES, PICKUP_LOOKUP_TS), (DROPOFF_FEATURES, DROPOFF_LOOKUP_TS)):
        if not spans[key].rows_in_range:
            raise DataError(f"feature table '{table}' has no rows for {start_date}..{end_date}: "
                            f"run the job with execute_feature_engineering=true for that range")
    return join_features(trips, pickup, dropoff, spans=spans)


def trips_with_features(spark: SparkSession, lakehouse: Lakehouse, config: JobConfig) -> DataFrame:
    return with_features(spark, lakehouse, config, valid_trips(spark, lakehouse, config))


def labelled_set(spark: SparkSession, lakehouse: Lakehouse, config: TrainingConfig) -> DataFrame:
    """Model-input rows with their label: the trips of the range that have a fare, with their features."""
    labelled = trips_with_features(spark, lakehouse, config).filter(F.col(LABEL).isNotNull())
    return labelled.select(*model_input_columns(), F.col(LABEL).cast("double").alias(LABEL))


def holdout_split(labelled: DataFrame, config: TrainingConfig) -> tuple[DataFrame, DataFrame]:
    """(train, holdout) of ``labelled``, split deterministically by the model's seed."""
    return split_holdout(labelled, config.holdout_fraction, seed=config.model_params.random_state)


def training_and_holdout(spark: SparkSession, lakehouse: Lakehouse, config: TrainingConfig
                         ) -> tuple[DataFrame, DataFrame]:
    """(train, holdout) model-input frames with the label, split deterministically by the model's seed."""
    return holdout_split(labelled_set(spark, lakehouse, config), config)
