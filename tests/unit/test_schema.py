"""Validation of raw trips: every kind of bad schema and bad row, named with its column and count."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from taxi_fares.schema import (QUARANTINE, VIOLATIONS_COLUMN, TripValidationError, Violation, valid_rows,
                               validate_trips)

GOOD = ("2016-01-04 10:00", "2016-01-04 10:20", 2.0, 12.5, 10001, 10002)


def _messages(excinfo):
    return str(excinfo.value)


def test_good_trips_pass_unchanged(make_trips):
    trips = make_trips([GOOD, GOOD])
    result = validate_trips(trips)
    assert result.ok
    assert result.violations == []
    assertDataFrameEqual(result.valid, trips)


@pytest.mark.parametrize("column, index, spoken", [
    ("tpep_pickup_datetime", 0, "the pickup time"), ("tpep_dropoff_datetime", 1, "the dropoff time"),
    ("pickup_zip", 4, "the pickup zip"), ("dropoff_zip", 5, "the dropoff zip"),
])
def test_null_key_is_named_with_count(make_trips, column, index, spoken):
    bad = list(GOOD)
    bad[index] = None
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([GOOD, tuple(bad), tuple(bad)]))
    assert excinfo.value.violations == [Violation(column, f"{spoken} is missing", 2)]
    assert f"column '{column}': 2 row(s) where {spoken} is missing" in _messages(excinfo)


def test_negative_distance_is_named_with_count(make_trips):
    bad = ("2016-01-04 10:00", "2016-01-04 10:20", -1.5, 12.5, 10001, 10002)
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([GOOD, bad, bad, bad]))
    assert "column 'trip_distance': 3 row(s) where the trip distance is negative" in _messages(excinfo)


def test_dropoff_before_pickup_is_named_with_count(make_trips):
    bad = ("2016-01-04 10:00", "2016-01-04 09:59", 1.0, 12.5, 10001, 10002)
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([bad, GOOD]))
    assert "column 'tpep_dropoff_datetime': 1 row(s) where the dropoff is before the pickup" in _messages(excinfo)


def test_a_trip_of_exactly_the_longest_duration_is_valid_one_second_more_is_not(make_trips):
    longest = ("2016-01-04 10:00:00", "2016-01-05 10:00:00", 1.0, 12.5, 10001, 10002)
    longer = ("2016-01-04 10:00:00", "2016-01-05 10:00:01", 1.0, 12.5, 10001, 10002)
    assert validate_trips(make_trips([longest, GOOD])).ok
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([longest, longer, GOOD]))
    assert excinfo.value.violations == [Violation("tpep_dropoff_datetime", "the trip is longer than 24 hours", 1)]


def test_all_row_problems_are_reported_together(make_trips):
    negative = ("2016-01-04 10:00", "2016-01-04 10:20", -1.0, 12.5, 10001, 10002)
    backwards = ("2016-01-04 10:00", "2016-01-04 09:00", 1.0, 12.5, 10001, 10002)
    no_zip = ("2016-01-04 10:00", "2016-01-04 10:20", 1.0, 12.5, None, 10002)
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([negative, backwards, backwards, no_zip, GOOD]))
    assert sorted((v.column, v.count) for v in excinfo.value.violations) == [
        ("pickup_zip", 1), ("tpep_dropoff_datetime", 2), ("trip_distance", 1)]
    assert "3 problem(s)" in _messages(excinfo)


def test_quarantine_splits_rows_and_names_their_problems(make_trips):
    negative = ("2016-01-04 10:00", "2016-01-04 10:20", -1.0, 12.5, 10001, 10002)
    both = ("2016-01-04 10:00", "2016-01-04 09:00", -2.0, 12.5, 10001, 10002)
    result = validate_trips(make_trips([GOOD, negative, both]), mode=QUARANTINE)
    assert not result.ok
    assertDataFrameEqual(result.valid, make_trips([GOOD]))
    problems = sorted(tuple(sorted(r[VIOLATIONS_COLUMN])) for r in result.quarantined.collect())
    assert problems == [
        ("the dropoff is before the pickup", "the trip distance is negative"),
        ("the trip distance is negative",),
    ]


@pytest.mark.parametrize("distance, fare, column, rule", [
    (float("nan"), 12.5, "trip_distance", "the trip distance is not a number"),
    (2.0, float("nan"), "fare_amount", "the fare is not a number"),
    (float("inf"), 12.5, "trip_distance", "the trip distance is above 1,000 miles"),
    (float("-inf"), 12.5, "trip_distance", "the trip distance is negative"),
    (2.0, float("inf"), "fare_amount", "the fare is above 10,000"),
])
def test_nan_breaks_its_own_rule_and_infinity_the_bound_it_passes(make_trips, distance, fare, column, rule):
    bad = ("2016-01-04 10:00", "2016-01-04 10:20", distance, fare, 10001, 10002)
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([GOOD, bad]))
    assert excinfo.value.violations == [Violation(column, rule, 1)]
    quarantined = validate_trips(make_trips([GOOD, bad]), mode=QUARANTINE).quarantined.collect()
    assert [r[VIOLATIONS_COLUMN] for r in quarantined] == [[rule]]


def test_the_online_service_reads_nan_as_batch_does():
    from taxi_fares.trip_rules import broken_rules

    assert [r.rule for r in broken_rules({"trip_distance": float("nan")})] == ["the trip distance is not a number"]
    assert [r.rule for r in broken_rules({"fare_amount": float("nan")})] == ["the fare is not a number"]
    assert broken_rules({"trip_distance": 2.0, "fare_amount": 9.0}) == []


@pytest.mark.parametrize("pickup_zip, dropoff_zip, column, rule", [
    (0, 10002, "pickup_zip", "the pickup zip is outside 1 to 99,999"),
    (10001, 100000, "dropoff_zip", "the dropoff zip is outside 1 to 99,999"),
])
def test_a_zip_out_of_range_is_named(make_trips, pickup_zip, dropoff_zip, column, rule):
    bad = ("2016-01-04 10:00", "2016-01-04 10:20", 2.0, 12.5, pickup_zip, dropoff_zip)
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(make_trips([GOOD, bad]))
    assert excinfo.value.violations == [Violation(column, rule, 1)]


def test_missing_and_mistyped_columns_are_all_reported(make_trips):
    trips = make_trips([GOOD]).drop("fare_amount").withColumn("pickup_zip", F.col("pickup_zip").cast("string"))
    with pytest.raises(TripValidationError) as excinfo:
        validate_trips(trips, mode=QUARANTINE)  # schema problems fail even in quarantine mode
    message = _messages(excinfo)
    assert "column 'fare_amount': is missing" in message
    assert "column 'pickup_zip': has type string, expected int" in message


def test_extra_columns_pass_through(make_trips):
    trips = make_trips([GOOD]).withColumn("trip_id", F.lit(7))
    assert validate_trips(trips).valid.columns == trips.columns


def test_unknown_mode_is_rejected(make_trips):
    with pytest.raises(ValueError, match="validation mode"):
        validate_trips(make_trips([GOOD]), mode="ignore")


def test_valid_rows_are_the_rows_quarantine_mode_keeps(make_trips):
    longest = ("2016-01-04 10:00:00", "2016-01-05 10:00:00", 1.0, 12.5, 10001, 10002)
    bad = [("2016-01-04 10:00", "2016-01-04 10:20", -1.0, 12.5, 10001, 10002),
           ("2016-01-04 10:00", "2016-01-04 09:00", 1.0, 12.5, 10001, 10002),
           ("2016-01-04 10:00", "2016-01-05 10:00:01", 1.0, 12.5, 10001, 10002),
           ("2016-01-04 10:00", None, 1.0, 12.5, 10001, 10002),
           ("2016-01-04 10:00", "2016-01-04 10:20", 1.0, 10_001.0, 10001, 10002),
           ("2016-01-04 10:00", "2016-01-04 10:20", 1.0, 12.5, 10001, None)]
    trips = make_trips([GOOD, longest, *bad, GOOD])
    assertDataFrameEqual(valid_rows(trips), make_trips([GOOD, longest, GOOD]))
    assertDataFrameEqual(valid_rows(trips), validate_trips(trips, mode=QUARANTINE).valid)


def test_valid_rows_refuse_a_schema_problem(make_trips):
    with pytest.raises(TripValidationError, match="column 'fare_amount': is missing"):
        valid_rows(make_trips([GOOD]).drop("fare_amount"))


_DAY_US = 24 * 3600 * 10**6
_micros = st.integers(min_value=-3 * _DAY_US, max_value=3 * _DAY_US)
_distances = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1000.0, 1000.5]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_micros, st.one_of(_micros, st.sampled_from([_DAY_US, _DAY_US + 1, -1, 0])), _distances),
                min_size=1, max_size=30))
def test_rules_on_arrays_flag_exactly_the_rows_the_per_row_rules_break(rows):
    """The online service checks a request's trips as numpy arrays (``rows_breaking``) and words a refusal row by
    row (``broken_rules``): both must read the same rules the same way, NaN and the bounds included."""
    import numpy as np

    from taxi_fares.columns import DISTANCE, DROPOFF_TS, PICKUP_TS
    from taxi_fares.trip_rules import broken_rules, nan_key, rows_breaking

    pickup = np.array([p for p, _, _ in rows], dtype=np.int64)
    dropoff = pickup + np.array([d for _, d, _ in rows], dtype=np.int64)
    distance = np.array([x for _, _, x in rows], dtype=np.float64)
    flagged = rows_breaking({PICKUP_TS: pickup, DROPOFF_TS: dropoff, DISTANCE: distance,
                             nan_key(DISTANCE): np.isnan(distance)})
    expected = [bool(broken_rules({PICKUP_TS: int(p), DROPOFF_TS: int(d), DISTANCE: float(x)}))
                for p, d, x in zip(pickup, dropoff, distance)]
    assert flagged.tolist() == expected
