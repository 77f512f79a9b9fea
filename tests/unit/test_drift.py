"""Drift statistics: counted in Spark (monitoring) or in pandas (a window of requests), judged by one detector.
The two paths must agree exactly on the same rows, and a 1.5x shift of trip distances must be the drift found."""
import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from taxi_fares import drift
from taxi_fares.drift_detector import DriftDetector, category_label
from taxi_fares.features import dropoff_features, join_features, model_input_columns, pickup_features
from taxi_fares.synthetic import generate_trips

START, END = "2016-01-04", "2016-01-11"


def _inputs(spark, seed, **generate):
    """The profiled columns for a week of generated trips: the model's inputs and a stand-in prediction."""
    trips = generate_trips(spark, 4_000, START, END, seed=seed, **generate)
    joined = join_features(trips, pickup_features(trips, START, END), dropoff_features(trips, START, END))
    return joined.select(*model_input_columns(), (F.col("trip_distance") * 2.5 + 3).alias("prediction")).cache()


@pytest.fixture(scope="module")
def reference(spark):
    return drift.profile(_inputs(spark, seed=1))


def _same(a, b):
    """Equal to 1e-12; a pandas NaN stands for a statistic the feature's kind does not have (None)."""
    a = None if a is not None and math.isnan(a) else a
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("shift", [None, {"trip_distance": 1.5}], ids=["same", "distance-x1.5"])
def test_pandas_and_spark_counts_give_the_same_statistics(spark, reference, shift):
    current = _inputs(spark, seed=2, **({"shift": shift} if shift else {}))
    detector = DriftDetector(reference)
    rows, from_spark = drift.compare(current, detector)
    from_pandas = detector.predict(current.toPandas())
    assert rows == 4_000 and len(from_pandas) == len(from_spark) == 10
    for f, row in zip(from_spark, from_pandas.to_dict("records")):
        assert row["feature"] == f.feature and row["kind"] == f.kind
        assert _same(row["psi"], f.psi) and _same(row["ks"], f.ks)
        assert _same(row["chi2_pvalue"], f.chi2_pvalue) and _same(row["null_share"], f.null_share)
        assert row["drifted"] == detector.drifted(f)
    drifted = set(from_pandas.loc[from_pandas["drifted"], "feature"])
    if shift:
        # The prediction is a function of the distance here, so it drifts with it; nothing else does.
        assert drifted == {"trip_distance", "prediction"}
    else:
        assert drifted == set()


@pytest.mark.slow
def test_thresholds_decide_what_drifted(spark, reference):
    current = _inputs(spark, seed=3, shift={"trip_distance": 1.5}).toPandas()
    loose = DriftDetector(reference, psi_threshold=100.0, ks_threshold=1.0).predict(current)
    assert not loose["drifted"].any()
    strict = DriftDetector(reference).with_thresholds(psi_threshold=0.0, ks_threshold=0.0).predict(current)
    assert strict.loc[strict["kind"] == "numeric", "drifted"].all()


def test_category_labels_are_sparks_string_cast(spark):
    values = [13.0, 10001.0, 0.5, 1.0, None]
    frame = spark.createDataFrame([(v,) for v in values], "v double")
    cast = [r[0] for r in frame.select(F.col("v").cast("string")).collect()]
    assert [category_label(v) for v in values] == cast
    assert category_label(float("nan")) is None


def test_a_profile_of_another_version_is_refused(reference):
    with pytest.raises(ValueError, match="reference profile version 2 is not 1"):
        DriftDetector({**reference, "version": 2})
    detector = DriftDetector(reference)
    without_prediction = pd.DataFrame({c: [1.0] for c in detector.columns if c != "prediction"})
    with pytest.raises(ValueError, match=r"^cannot judge drift: missing column\(s\) \['prediction'\]$"):
        detector.predict(without_prediction)


def test_category_counts_label_values_as_spark_and_leave_out_nulls():
    from taxi_fares.drift_detector import category_counts

    assert category_counts(pd.Series([13.0, 13.0, 2.5, np.nan])) == {"13.0": 2, "2.5": 1}
    assert category_counts(pd.Series([7, 7, 1], dtype="int64")) == {"7": 2, "1": 1}
    assert category_counts(pd.Series([True, None, False, True], dtype="object")) == {"true": 2, "false": 1}
