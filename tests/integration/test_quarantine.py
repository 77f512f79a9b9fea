"""validation_mode=quarantine keeps the invalid trips: in ``quarantined_trips``, with the rules each broke, the
run and the range; the valid trips are scored; rerunning the range replaces, never duplicates, them.
A trip without a pickup time belongs to no range: every run reads it, and it is kept under the range and run id of
the last run that quarantined it."""
import datetime as dt

from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from taxi_fares.schema import RAW_TRIP_SCHEMA
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import PREDICTIONS, QUARANTINED_TRIPS, RAW_TRIPS

T0 = dt.datetime(2016, 1, 10, 12, 0)
BAD = [  # (trip_id, pickup, dropoff, distance, fare, pickup_zip, dropoff_zip) -> the rules it breaks
    (9_000_001, T0, None, 2.0, 9.0, 10001, 10002),
    (9_000_002, T0, T0 + dt.timedelta(minutes=9), 2.0, 9.0, None, 10002),
    (9_000_003, T0, T0 + dt.timedelta(minutes=9), 2.0, 9.0, 10001, None),
    (9_000_004, T0, T0 + dt.timedelta(minutes=9), -1.5, 9.0, 10001, 10002),
    (9_000_005, T0, T0 - dt.timedelta(minutes=5), 2.0, 9.0, 10001, 10002),
    (9_000_006, T0, T0 - dt.timedelta(minutes=5), -3.0, 9.0, None, 10002),
    (9_000_007, None, T0, 2.0, 9.0, 10001, 10002),
    (9_000_008, None, None, 2.0, 9.0, 10001, 10002),
    (9_000_009, T0, T0 + dt.timedelta(minutes=9), float("nan"), float("nan"), 10001, 10002),
]
EXPECTED = {
    9_000_001: ["the dropoff time is missing"],
    9_000_002: ["the pickup zip is missing"],
    9_000_003: ["the dropoff zip is missing"],
    9_000_004: ["the trip distance is negative"],
    9_000_005: ["the dropoff is before the pickup"],
    9_000_006: ["the pickup zip is missing", "the trip distance is negative", "the dropoff is before the pickup"],
    9_000_007: ["the pickup time is missing"],
    9_000_008: ["the pickup time is missing", "the dropoff time is missing"],
    9_000_009: ["the trip distance is not a number", "the fare is not a number"],
}


def _with_bad_rows(spark, lakehouse):
    good = lakehouse.read(spark, RAW_TRIPS).localCheckpoint()
    schema = "trip_id long, " + ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in RAW_TRIP_SCHEMA.fields)
    bad = spark.createDataFrame(BAD, schema).select(*good.columns)
    lakehouse.write(good.unionByName(bad), RAW_TRIPS)
    return good.count()


def test_quarantined_trips_keep_their_rules_and_the_valid_ones_are_scored(
        spark, trips_lakehouse, mlflow_store, training_config, scoring_config):
    valid_rows = _with_bad_rows(spark, trips_lakehouse)
    trained = run_job(training_config(), spark)
    assert trained["stages"]["feature_engineering"]["quarantined"] == {
        "the dropoff zip is missing": 1, "the pickup zip is missing": 2, "the dropoff is before the pickup": 2,
        "the dropoff time is missing": 2, "the pickup time is missing": 2, "the trip distance is negative": 2,
        "the trip distance is not a number": 1, "the fare is not a number": 1}
    metrics = MlflowClient().get_run(trained["mlflow_run_id"]).data.metrics
    assert metrics["quarantined.the_trip_distance_is_negative"] == 2.0
    assert metrics["quarantined.the_pickup_time_is_missing"] == 2.0

    scored = run_job(scoring_config(), spark)
    quarantined = trips_lakehouse.read(spark, QUARANTINED_TRIPS)
    rows = {r["trip_id"]: r for r in quarantined.collect()}
    assert {trip: sorted(r["violations"]) for trip, r in rows.items()} == {
        trip: sorted(rules) for trip, rules in EXPECTED.items()}
    assert {r["mlflow_run_id"] for r in rows.values()} == {scored["mlflow_run_id"]}
    assert {(r["range_start"], r["range_end"]) for r in rows.values()} == {
        (dt.date(2016, 1, 4), dt.date(2016, 1, 18))}
    predictions = trips_lakehouse.read(spark, PREDICTIONS)
    assert predictions.count() == valid_rows == scored["stages"]["batch_scoring"]["rows"]
    assert predictions.filter(F.col("trip_id").isin(list(EXPECTED))).count() == 0
    # Data-skipping statistics for the trip's columns, the prediction and its time, not the model and run labels.
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{trips_lakehouse.table_path(PREDICTIONS)}`").first()
    assert [c.strip("`") for c in detail["properties"]["delta.dataSkippingStatsColumns"].split(",")] == [
        "trip_id", "tpep_pickup_datetime", "tpep_dropoff_datetime", "trip_distance", "fare_amount", "pickup_zip",
        "dropoff_zip", "prediction", "scored_at"]

    rerun = run_job(scoring_config(), spark)
    again = trips_lakehouse.read(spark, QUARANTINED_TRIPS)
    assert again.count() == len(EXPECTED) == again.select("trip_id").distinct().count()
    assert {r["mlflow_run_id"] for r in again.collect()} == {rerun["mlflow_run_id"]}


def test_fail_mode_writes_no_quarantine(spark, trips_lakehouse, mlflow_store, training_config):
    import pytest

    from taxi_fares_mlops.errors import StageError

    _with_bad_rows(spark, trips_lakehouse)
    with pytest.raises(StageError, match="DataError: table 'raw_trips'.*where the trip distance is negative"):
        run_job(training_config(validation_mode="fail"), spark)
    assert not trips_lakehouse.exists(spark, QUARANTINED_TRIPS)


def test_a_trip_without_a_pickup_time_is_kept_by_each_run_under_its_range(spark, trips_lakehouse, mlflow_store,
                                                                          training_config):
    _with_bad_rows(spark, trips_lakehouse)
    only_features = dict(execute_training=False, execute_promotion=False)
    first = run_job(training_config(**only_features), spark)
    second = run_job(training_config(start_date="2016-01-11", end_date="2016-01-18", **only_features), spark)
    rows = {r["trip_id"]: r for r in trips_lakehouse.read(spark, QUARANTINED_TRIPS).collect()}
    undated = {trip: (r["range_start"], r["mlflow_run_id"]) for trip, r in rows.items()
               if r["tpep_pickup_datetime"] is None}
    # the rows without a pickup time moved to the later run's range, once each; the dated ones stay where they were
    assert undated == {9_000_007: (dt.date(2016, 1, 11), second["mlflow_run_id"]),
                       9_000_008: (dt.date(2016, 1, 11), second["mlflow_run_id"])}
    assert {r["mlflow_run_id"] for t, r in rows.items() if t not in undated} == {first["mlflow_run_id"]}
    assert len(rows) == len(EXPECTED)
