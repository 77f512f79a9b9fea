"""The synthetic trip generator: exact size, deterministic by seed, independent of partitioning, in range."""
import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from taxi_fares.schema import RAW_TRIP_SCHEMA, validate_trips
from taxi_fares.synthetic import ALL_ZIPS, AIRPORT_ZIPS, generate_trips


def test_row_count_is_exact(spark):
    for rows in (0, 1, 999, 12_345):
        assert generate_trips(spark, rows, "2016-01-01", "2016-02-01").count() == rows


def test_same_seed_same_rows_whatever_the_partitioning(spark):
    first = generate_trips(spark, 5000, "2016-01-01", "2016-03-01", seed=7, partitions=1)
    second = generate_trips(spark, 5000, "2016-01-01", "2016-03-01", seed=7, partitions=5)
    assertDataFrameEqual(first, second, checkRowOrder=False, rtol=0, atol=0)


def test_another_seed_gives_other_rows(spark):
    a = generate_trips(spark, 2000, "2016-01-01", "2016-03-01", seed=1)
    b = generate_trips(spark, 2000, "2016-01-01", "2016-03-01", seed=2)
    assert a.exceptAll(b).count() > 1900


def test_schema_and_validity(spark):
    trips = generate_trips(spark, 20_000, "2016-01-01", "2016-03-01", seed=11)
    assertSchemaEqual(trips.drop("trip_id").schema, RAW_TRIP_SCHEMA, ignoreNullable=True)
    assert validate_trips(trips).ok
    assert trips.select("trip_id").distinct().count() == 20_000


def test_pickups_fall_in_the_half_open_range_even_for_partial_days(spark):
    trips = generate_trips(spark, 20_000, "2016-01-01", "2016-01-02T12:00:00", seed=5)
    bounds = trips.agg(F.min("tpep_pickup_datetime"), F.max("tpep_pickup_datetime")).first()
    assert bounds[0] >= dt.datetime(2016, 1, 1)
    assert bounds[1] < dt.datetime(2016, 1, 2, 12)


def test_distributions_look_like_new_york(spark):
    trips = generate_trips(spark, 100_000, "2016-01-04", "2016-01-18", seed=9)  # two whole weeks
    zips = {r[0] for r in trips.select("pickup_zip").union(trips.select("dropoff_zip")).distinct().collect()}
    assert zips <= set(ALL_ZIPS)
    airport_share = trips.filter(F.col("dropoff_zip").isin(*AIRPORT_ZIPS)).count() / 100_000
    assert 0.04 < airport_share < 0.06
    weekday = trips.filter(F.dayofweek("tpep_pickup_datetime").between(2, 6))
    by_hour = dict(weekday.groupBy(F.hour("tpep_pickup_datetime")).count().collect())
    assert by_hour[8] > 2 * by_hour[3]   # morning rush beats the small hours
    assert by_hour[18] > 2 * by_hour[3]  # evening rush too
    stats = trips.agg(F.expr("percentile(trip_distance, 0.5)"), F.min("fare_amount")).first()
    assert 1.5 < stats[0] < 3.5
    assert stats[1] >= 3.0


def test_bad_arguments_are_rejected(spark):
    with pytest.raises(ValueError, match="must be after start"):
        generate_trips(spark, 10, "2016-02-01", "2016-01-01")
    with pytest.raises(ValueError, match="rows must be >= 0"):
        generate_trips(spark, -1, "2016-01-01", "2016-02-01")
