"""Feature functions against hand-computed frames: window edges, sliding overlap, weekend flag, range ends,
and a point-in-time join that must never attach a future feature row."""
import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from taxi_fares.features import (DROPOFF_LOOKUP_TS, PICKUP_LOOKUP_TS, add_lookup_keys, dropoff_features,
                                 join_features, pickup_features, point_in_time_join, range_spans)


def ts(text):
    return dt.datetime.fromisoformat(text)


PICKUP_SCHEMA = T.StructType([
    T.StructField("zip", T.IntegerType()),
    T.StructField("ts", T.TimestampType()),
    T.StructField("mean_fare_window_1h_pickup_zip", T.DoubleType()),
    T.StructField("count_trips_window_1h_pickup_zip", T.LongType(), False),
])
DROPOFF_SCHEMA = T.StructType([
    T.StructField("zip", T.IntegerType()),
    T.StructField("ts", T.TimestampType()),
    T.StructField("count_trips_window_30m_dropoff_zip", T.LongType(), False),
    T.StructField("dropoff_is_weekend", T.BooleanType()),
])


def pickup(p, fare, pz=10001):
    return (p, "2016-01-04 23:59", 1.0, fare, pz, 10003)


def dropoff(d, dz=10003):
    return ("2016-01-04 00:00", d, 1.0, 10.0, 10001, dz)


def test_pickup_features_sliding_windows_and_range_ends(spark, make_trips):
    trips = make_trips([
        pickup("2016-01-04 08:50", 100.0),  # before the 1-hour lookback: in no window of the range
        pickup("2016-01-04 09:30", 40.0),   # lookback: counts in the windows ending 10:00 .. 10:30
        pickup("2016-01-04 10:05", 10.0),
        pickup("2016-01-04 10:20", 25.0),
        pickup("2016-01-04 11:10", 30.0),   # its windows end 11:15 .. 12:00; only 11:15 is before the end
        pickup("2016-01-04 11:40", 50.0),   # after the end
        pickup("2016-01-04 10:50", 12.0, pz=10002),
    ])
    actual = pickup_features(trips, "2016-01-04 10:00", "2016-01-04 11:30")
    expected = spark.createDataFrame([
        (10001, ts("2016-01-04 10:00"), 40.0, 1),   # [09:00, 10:00): the window ending at the range start
        (10001, ts("2016-01-04 10:15"), 25.0, 2),   # 09:30, 10:05
        (10001, ts("2016-01-04 10:30"), 25.0, 3),   # 09:30, 10:05, 10:20 (overlapping windows share trips)
        (10001, ts("2016-01-04 10:45"), 17.5, 2),   # 10:05, 10:20
        (10001, ts("2016-01-04 11:00"), 17.5, 2),   # [10:00, 11:00): 10:05, 10:20
        (10001, ts("2016-01-04 11:15"), 27.5, 2),   # 10:20, 11:10; 11:30 is the exclusive range end
        (10002, ts("2016-01-04 11:00"), 12.0, 1),
        (10002, ts("2016-01-04 11:15"), 12.0, 1),
    ], PICKUP_SCHEMA)
    assertSchemaEqual(actual.schema, expected.schema)
    assertDataFrameEqual(actual, expected)


def test_a_trip_exactly_on_a_window_end_belongs_to_the_next_window(spark, make_trips):
    trips = make_trips([pickup("2016-01-04 10:15", 20.0)])
    actual = pickup_features(trips, "2016-01-04 10:00", "2016-01-04 11:30")
    expected = spark.createDataFrame([
        (10001, ts(f"2016-01-04 {end}"), 20.0, 1) for end in ("10:30", "10:45", "11:00", "11:15")
    ], PICKUP_SCHEMA)
    assertDataFrameEqual(actual, expected)


def test_adjacent_ranges_produce_disjoint_keys_that_match_one_long_range(spark, make_trips):
    trips = make_trips([pickup(f"2016-01-04 {h:02d}:{m:02d}", 5.0 + h) for h in range(8, 14) for m in (7, 31, 52)])
    whole = pickup_features(trips, "2016-01-04 09:00", "2016-01-04 13:00")
    parts = pickup_features(trips, "2016-01-04 09:00", "2016-01-04 11:00").union(
        pickup_features(trips, "2016-01-04 11:00", "2016-01-04 13:00"))
    assertDataFrameEqual(parts, whole)
    assert parts.count() == parts.select("zip", "ts").distinct().count() == 16


def test_dropoff_features_tumbling_windows(spark, make_trips):
    trips = make_trips([dropoff(d) for d in (
        "2016-01-04 09:45", "2016-01-04 10:10", "2016-01-04 10:25", "2016-01-04 10:59", "2016-01-04 11:29",
    )])
    actual = dropoff_features(trips, "2016-01-04 10:00", "2016-01-04 11:30")
    expected = spark.createDataFrame([
        (10003, ts("2016-01-04 10:00"), 1, False),
        (10003, ts("2016-01-04 10:30"), 2, False),
        (10003, ts("2016-01-04 11:00"), 1, False),
    ], DROPOFF_SCHEMA)
    assertSchemaEqual(actual.schema, expected.schema)
    assertDataFrameEqual(actual, expected)


def test_weekend_flag_follows_the_day_the_window_starts(spark, make_trips):
    # 2016-01-08 is a Friday, 2016-01-10 a Sunday.
    trips = make_trips([dropoff(d) for d in (
        "2016-01-08 23:40", "2016-01-09 00:10", "2016-01-10 23:50", "2016-01-11 00:05",
    )])
    actual = dropoff_features(trips, "2016-01-08", "2016-01-12")
    expected = spark.createDataFrame([
        (10003, ts("2016-01-09 00:00"), 1, False),  # Friday 23:30-24:00
        (10003, ts("2016-01-09 00:30"), 1, True),   # Saturday
        (10003, ts("2016-01-11 00:00"), 1, True),   # Sunday 23:30-24:00
        (10003, ts("2016-01-11 00:30"), 1, False),  # Monday
    ], DROPOFF_SCHEMA)
    assertDataFrameEqual(actual, expected)


def test_empty_or_backwards_range_is_rejected(make_trips):
    with pytest.raises(ValueError, match="must be after start"):
        pickup_features(make_trips([pickup("2016-01-04 10:00", 1.0)]), "2016-01-05", "2016-01-05")


def test_lookup_keys_round_down_to_the_feature_grid(spark, make_trips):
    trips = make_trips([("2016-01-04 10:14:59", "2016-01-04 10:59:59", 1.0, 1.0, 1, 2),
                        ("2016-01-04 10:15:00", "2016-01-04 11:00:00", 1.0, 1.0, 1, 2)])
    keys = add_lookup_keys(trips).select(PICKUP_LOOKUP_TS, DROPOFF_LOOKUP_TS)
    expected = spark.createDataFrame([
        (ts("2016-01-04 10:00"), ts("2016-01-04 10:30")),
        (ts("2016-01-04 10:15"), ts("2016-01-04 11:00")),
    ], keys.schema)
    assertDataFrameEqual(keys, expected)


def test_point_in_time_join_takes_the_latest_row_at_or_before_never_later(spark):
    features = spark.createDataFrame([
        (1, ts("2016-01-04 10:00"), "A"),
        (1, ts("2016-01-04 10:15"), "B"),
        (1, ts("2016-01-04 10:30"), "C"),
        (2, ts("2016-01-04 09:00"), "Z"),
    ], "zip int, ts timestamp, value string")
    left = spark.createDataFrame([
        (101, 1, ts("2016-01-04 10:14:59")),   # between A and B -> A
        (102, 1, ts("2016-01-04 10:15:00")),   # exactly at B -> B
        (103, 1, ts("2016-01-04 10:29:00")),   # C is in its future -> B
        (104, 1, ts("2016-01-04 09:59:00")),   # nothing at or before -> null
        (105, 2, ts("2016-01-05 00:00:00")),   # latest of its own zip only -> Z
        (106, 3, ts("2016-01-05 00:00:00")),   # zip without features -> null
        (107, 1, ts("2016-01-04 10:15:00")),   # duplicates keep their own row
    ], "trip int, z int, key timestamp")
    actual = point_in_time_join(left, features, "z", "key", ["value"])
    expected = spark.createDataFrame([
        (101, 1, ts("2016-01-04 10:14:59"), "A"),
        (102, 1, ts("2016-01-04 10:15:00"), "B"),
        (103, 1, ts("2016-01-04 10:29:00"), "B"),
        (104, 1, ts("2016-01-04 09:59:00"), None),
        (105, 2, ts("2016-01-05 00:00:00"), "Z"),
        (106, 3, ts("2016-01-05 00:00:00"), None),
        (107, 1, ts("2016-01-04 10:15:00"), "B"),
    ], "trip int, z int, key timestamp, value string")
    assertDataFrameEqual(actual, expected)


def test_point_in_time_join_matches_brute_force_on_generated_data(spark):
    """On generated trips, every attached pickup feature row is the latest one at or before the trip's key,
    which is at or before its pickup: a future row leaking in would break one of the two checks."""
    from taxi_fares.synthetic import generate_trips

    trips = generate_trips(spark, 3000, "2016-01-04", "2016-01-06", seed=3)
    features = pickup_features(trips, "2016-01-04", "2016-01-06").withColumn("feature_ts", F.col("ts"))
    keyed = add_lookup_keys(trips)
    joined = point_in_time_join(keyed, features, "pickup_zip", PICKUP_LOOKUP_TS,
                                ["feature_ts", "mean_fare_window_1h_pickup_zip"])
    assert joined.count() == 3000
    assert joined.filter(F.col("feature_ts") > F.col("tpep_pickup_datetime")).count() == 0
    brute = (keyed.alias("t").join(features.alias("f"), (F.col("t.pickup_zip") == F.col("f.zip"))
                                   & (F.col("f.ts") <= F.col(f"t.{PICKUP_LOOKUP_TS}")), "left")
             .groupBy("t.trip_id").agg(F.max("f.ts").alias("feature_ts")))
    assertDataFrameEqual(joined.select("trip_id", "feature_ts"), brute)


def test_join_features_never_counts_the_trip_itself(spark, make_trips):
    # One trip alone: the windows that hold it all end after its pickup, so it finds no pickup row.
    trips = make_trips([("2016-01-04 10:05", "2016-01-04 10:40", 1.0, 99.0, 10001, 10002)])
    joined = join_features(trips, pickup_features(trips, "2016-01-04", "2016-01-05"),
                           dropoff_features(trips, "2016-01-04", "2016-01-05"))
    row = joined.first()
    assert row["mean_fare_window_1h_pickup_zip"] is None
    assert row["count_trips_window_30m_dropoff_zip"] is None
    assert (row["pickup_hour"], row["pickup_weekday"]) == (10, 2)  # Monday = 2 in Spark's dayofweek


@pytest.mark.slow
@pytest.mark.parametrize("grid_max_rows", [2_000_000, 50_000], ids=["both-grids", "pickup-grid-dropoff-sorted"])
def test_grid_join_gives_the_rows_of_the_as_of_join_on_data_with_gaps(spark, make_trips, monkeypatch, grid_max_rows):
    """The grid join (equi-join on filled (zip, slot) rows) against the sorted as-of join on the same inputs.

    The features have gaps of every kind: rows dropped at random, a zip whose rows stop mid-range, a zip with
    rows only before the range, hours with no rows at all; they also hold rows before the range (which the
    first slots must fall back to) and after it (which must never leak in). The trips include a dropoff weeks
    later (the dropoff span then exceeds the smaller grid limit, which sorts that join instead), a zip without
    features, and keys on the first and last slots.
    """
    import taxi_fares.features as features
    from taxi_fares.synthetic import generate_trips

    monkeypatch.setattr(features, "GRID_MAX_ROWS", grid_max_rows)
    start, end = "2016-01-05", "2016-01-07"
    history = generate_trips(spark, 6000, "2016-01-04", "2016-01-08", seed=11).drop("trip_id")
    pickup_rows = pickup_features(history, "2016-01-04", "2016-01-08")
    dropoff_rows = dropoff_features(history, "2016-01-04", "2016-01-08")

    def with_gaps(rows):
        kept = rows.filter(F.pmod(F.xxhash64("zip", "ts"), F.lit(10)) >= 3)              # 30% dropped
        kept = kept.filter(~((F.col("zip") == 10001) & (F.col("ts") >= ts("2016-01-06 12:00"))))
        kept = kept.filter(~((F.col("zip") == 10002) & (F.col("ts") >= ts(start))))
        return kept.filter(~((F.col("ts") >= ts("2016-01-05 03:00")) & (F.col("ts") < ts("2016-01-05 07:00"))))

    # Materialized once (small): every comparison below then joins the same rows instead of generating them again.
    pickup, dropoff = with_gaps(pickup_rows).localCheckpoint(), with_gaps(dropoff_rows).localCheckpoint()
    edge = make_trips([
        ("2016-01-05 00:00:00", "2016-01-05 00:30:00", 1.0, 9.0, 10001, 10002),    # on both grids' first slot
        ("2016-01-06 23:59:59", "2016-01-07 05:59:59", 2.0, 9.0, 10003, 10001),    # last pickup slot
        ("2016-01-06 10:00:00", "2016-01-09 00:00:00", 2.0, 9.0, 10003, 10001),    # after every feature row
        ("2016-01-06 10:00:00", "2016-02-20 00:00:00", 2.0, 9.0, 10003, 10003),    # weeks later
        ("2016-01-05 10:07:00", "2016-01-05 10:20:00", 1.0, 9.0, 99999, 99999),    # zip without features
        ("2016-01-05 10:07:00", "2016-01-05 10:20:00", 1.0, 9.0, None, None),      # no zip at all
    ])
    trips = (history.filter((F.col("tpep_pickup_datetime") >= ts(start)) & (F.col("tpep_pickup_datetime") < ts(end)))
             .unionByName(edge)).localCheckpoint()

    as_of = join_features(trips, pickup, dropoff, grid=False)
    on_grid = join_features(trips, pickup, dropoff)
    assert on_grid.columns == as_of.columns
    assert on_grid.count() == trips.count()
    assertDataFrameEqual(on_grid, as_of)
    # The gaps are real: some trips found no pickup row, some found an older one than their own key.
    assert on_grid.filter(F.col("mean_fare_window_1h_pickup_zip").isNull()).count() > 0
    assert on_grid.filter(F.col("count_trips_window_30m_dropoff_zip").isNull()).count() > 0
    final_plan = on_grid._jdf.queryExecution().executedPlan().toString().split("Initial Plan")[0]
    assert final_plan.count("BroadcastHashJoin") == (2 if grid_max_rows == 2_000_000 else 1)
    if grid_max_rows != 2_000_000:
        return  # the range's grids below are small enough for either limit: checked once

    # With the pickup range given (the stages' way: no pass over the trips for their span), on the trips a
    # validated range holds (every dropoff within 24 hours of its pickup): the same rows again, on both grids.
    held = trips.filter(F.col("tpep_dropoff_datetime") <= F.col("tpep_pickup_datetime") + F.expr("INTERVAL 24 HOURS"))
    assert held.count() == trips.count() - 2
    ranged = join_features(held, pickup, dropoff, spans=range_spans(pickup, dropoff, (start, end)))
    assertDataFrameEqual(ranged, join_features(held, pickup, dropoff, grid=False))
    ranged_plan = ranged._jdf.queryExecution().executedPlan().toString().split("Initial Plan")[0]
    assert ranged_plan.count("BroadcastHashJoin") == 2
