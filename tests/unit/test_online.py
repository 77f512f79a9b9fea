"""Online model inputs (pandas, no Spark) against batch's (Spark's ``join_features``): the same trips must get
the same inputs, value for value, including the nulls of trips whose zip has no earlier feature row."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from taxi_fares.columns import MODEL_FEATURES, TRIP_ID
from taxi_fares.features import dropoff_features, join_features, model_input_columns, pickup_features
from taxi_fares.online import OnlineInputs, latest_rows, model_inputs
from taxi_fares.synthetic import generate_trips

START, END = "2016-01-04", "2016-01-06"


@pytest.fixture(scope="module")
def week(spark):
    trips = generate_trips(spark, 3_000, START, END, seed=11)
    # Features from the first day only for half of the zips: later trips of those zips take old rows, and trips
    # of the other zips on day one before their first window take none (nulls).
    pickup, dropoff = pickup_features(trips, START, END), dropoff_features(trips, START, END)
    thin = (F.col("zip") % 2 == 0) & (F.col("ts") >= F.lit("2016-01-05").cast("timestamp"))
    pickup, dropoff = pickup.filter(~thin), dropoff.filter(~thin)
    batch = (join_features(trips, pickup, dropoff).select(TRIP_ID, *model_input_columns())
             .toPandas().sort_values(TRIP_ID).reset_index(drop=True))
    return trips.toPandas().sort_values(TRIP_ID).reset_index(drop=True), pickup.toPandas(), dropoff.toPandas(), batch


@pytest.mark.slow
def test_online_inputs_equal_batch_inputs(week):
    trips, pickup, dropoff, batch = week
    online = model_inputs(trips, pickup, dropoff)
    assert list(online.columns) == list(MODEL_FEATURES) and len(online) == len(batch) == 3_000
    assert all(online[c].dtype == np.float64 for c in MODEL_FEATURES)
    assert batch[list(MODEL_FEATURES)].isna().any().any()  # the data has gaps
    pd.testing.assert_frame_equal(online, batch[list(MODEL_FEATURES)].astype("float64"), check_exact=True)


def test_the_request_path_gives_the_inputs_of_the_merge_path(week):
    """OnlineInputs (a binary search per trip, what the service runs) against model_inputs and batch: identical,
    for all the week's trips and for one trip at a time."""
    trips, pickup, dropoff, batch = week
    inputs = OnlineInputs(pickup, dropoff)
    expected = batch[list(MODEL_FEATURES)].astype("float64")
    pd.testing.assert_frame_equal(inputs(trips), expected, check_exact=True)
    for i in (0, 1, 1500, 2999):
        pd.testing.assert_frame_equal(inputs(trips.iloc[[i]]), expected.iloc[[i]].reset_index(drop=True),
                                      check_exact=True)


def test_latest_rows_keep_what_a_lookup_after_since_can_take(week):
    trips, pickup, dropoff, batch = week
    since = pd.Timestamp("2016-01-05 12:00")
    late = trips[trips["tpep_pickup_datetime"] >= since]
    kept = latest_rows(pickup, since), latest_rows(dropoff, since)
    assert len(kept[0]) < len(pickup)
    pd.testing.assert_frame_equal(model_inputs(late, *kept), model_inputs(late, pickup, dropoff), check_exact=True)


def test_feature_rows_in_microseconds_with_a_zone_give_the_same_inputs(week):
    """delta-rs reads Delta timestamps as microseconds in UTC; Spark's toPandas gives naive nanoseconds."""
    trips, pickup, dropoff, batch = week
    as_delta_rs = [f.assign(ts=f["ts"].dt.tz_localize("UTC").astype("datetime64[us, UTC]")) for f in (pickup, dropoff)]
    pd.testing.assert_frame_equal(model_inputs(trips, *as_delta_rs), batch[list(MODEL_FEATURES)].astype("float64"),
                                  check_exact=True)


def test_trips_without_a_needed_column_are_refused():
    with pytest.raises(ValueError, match=r"trips are missing column\(s\) \['trip_distance'\]"):
        model_inputs(pd.DataFrame({"tpep_pickup_datetime": [], "tpep_dropoff_datetime": [], "pickup_zip": [],
                                   "dropoff_zip": []}), pd.DataFrame(), pd.DataFrame())


def test_one_binary_search_finds_the_row_a_scan_of_the_rows_finds():
    """The request path's lookup (one binary search for all trips) against a scan: zips the table lacks, keys before
    a zip's first row and after its last, keys on a row's second, rows at fractions of a second, equal times."""
    from taxi_fares.columns import TS, ZIP
    from taxi_fares.online import NANOS_PER_SECOND, FeatureLookup, prepare

    rng = np.random.default_rng(3)
    base = pd.Timestamp("2016-01-04")
    seconds = rng.integers(0, 3 * 86400, 400)
    seconds[:40] = seconds[40:80]  # equal times
    features = pd.DataFrame({
        ZIP: rng.choice([10001, 10002, 10003, 20000], 400),
        TS: base + pd.to_timedelta(seconds * NANOS_PER_SECOND + rng.choice([0, 0, 1, NANOS_PER_SECOND - 1], 400),
                                   unit="ns"),
        "a": rng.normal(size=400), "b": rng.normal(size=400)})
    lookup = FeatureLookup(features, ["a", "b"])
    rows = prepare(features)
    row_ns = rows[TS].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    zips = rng.choice([10001, 10002, 10003, 20000, 5, 99999], 3000)
    keys = (base.value + rng.integers(-86400, 4 * 86400, 3000) * NANOS_PER_SECOND).astype(np.int64)
    keys[:400] = -(-row_ns // NANOS_PER_SECOND) * NANOS_PER_SECOND  # each row's own second
    zips[:400] = rows[ZIP].to_numpy()
    expected = np.full((3000, 2), np.nan)
    for i, (z, key) in enumerate(zip(zips, keys)):
        earlier = np.flatnonzero((rows[ZIP].to_numpy() == z) & (row_ns <= key))
        if len(earlier):
            expected[i] = rows.loc[earlier[-1], ["a", "b"]].to_numpy(dtype=float)
    got = lookup.lookup(zips, keys)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(lookup.lookup(np.array([10001]), np.array([0]))).all()  # 1970: before every row
    empty = FeatureLookup(features.iloc[:0], ["a", "b"])
    assert np.isnan(empty.lookup(zips[:5], keys[:5])).all()
