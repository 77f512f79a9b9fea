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
