"""The model: hyperparameters are honoured and validated, metrics are right, and it beats the baseline."""
import math

import numpy as np
import pandas as pd
import pytest

from taxi_fares.features import LABEL, MODEL_FEATURES, dropoff_features, join_features, model_input_columns
from taxi_fares.features import pickup_features
from sklearn.ensemble import HistGradientBoostingRegressor

from taxi_fares.binned_predict import predict_inputs
from taxi_fares.model import (BinnedHistGradientBoostingRegressor, ModelParams, bounded_sample, build_model,
                              predict_spark, regression_metrics, spark_regression_metrics, split_holdout,
                              train_model)
from taxi_fares.synthetic import generate_trips


def test_hyperparameters_reach_the_estimator_unchanged():
    params = ModelParams(learning_rate=0.05, max_iter=17, max_depth=4, max_leaf_nodes=9, min_samples_leaf=3,
                         l2_regularization=0.5, random_state=3)
    regressor = build_model(params).named_steps["regressor"]
    assert (regressor.learning_rate, regressor.max_iter, regressor.max_depth, regressor.max_leaf_nodes,
            regressor.min_samples_leaf, regressor.l2_regularization, regressor.random_state) == (
        0.05, 17, 4, 9, 3, 0.5, 3)
    assert build_model(ModelParams(max_depth=0)).named_steps["regressor"].max_depth is None


def test_predicting_through_the_bins_gives_scikit_learns_predictions_bit_for_bit():
    rng = np.random.default_rng(7)
    n = 4000
    train = pd.DataFrame({
        "distance": rng.gamma(2.0, 2.0, n),
        "hour": rng.integers(0, 24, n).astype(float),
        "count": rng.poisson(30, n).astype(float),
        "sparse": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),  # missing values in training
        "flag": np.where(rng.random(n) < 0.5, np.nan, 1.0),  # one value or missing: splits "on nans"
    })
    y = (3 * train["distance"] + np.sin(train["hour"]) + train["sparse"].fillna(2.0)
         + 5 * train["flag"].isna() + rng.normal(size=n))
    binned = build_model(ModelParams(max_iter=60)).fit(train, y)
    regressor = binned.named_steps["regressor"]
    assert type(regressor) is BinnedHistGradientBoostingRegressor
    plain = HistGradientBoostingRegressor(**regressor.get_params()).fit(train, y)
    nodes = [p.nodes for (p,) in regressor._predictors]
    assert all(np.array_equal(a, b) for a, b in zip(nodes, [p.nodes for (p,) in plain._predictors]))  # same fit
    splits = np.concatenate([t[t["is_leaf"] == 0] for t in nodes])
    assert np.isinf(splits["num_threshold"]).any() and splits["missing_go_to_left"].any()  # both kinds covered

    # Every split's threshold, and the doubles just below and above it, on rows that otherwise vary.
    rows = []
    for split in splits:
        for value in (split["num_threshold"], np.nextafter(split["num_threshold"], -np.inf),
                      np.nextafter(split["num_threshold"], np.inf)):
            row = train.iloc[len(rows) % n].to_numpy(copy=True)
            row[split["feature_idx"]] = value
            rows.append(row)
    for value in (np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, -0.0):  # missing, infinite, far outside training
        for column in range(train.shape[1]):
            row = train.iloc[len(rows) % n].to_numpy(copy=True)
            row[column] = value
            rows.append(row)
    probe = pd.concat([pd.DataFrame(rows, columns=train.columns),
                       pd.DataFrame(rng.normal(5, 10, (5000, train.shape[1])), columns=train.columns)])
    expected = plain.predict(probe)
    assert np.array_equal(binned.predict(probe), expected)
    assert np.array_equal(regressor.predict(probe.iloc[:1]), expected[:1])  # one row, as the service asks
    assert not np.array_equal(regressor.predict(probe.fillna(0.0)), expected)  # the probe does reach the missing side

    # The online service's path: a ready-made float64 matrix, no per-call validation, the same predictions.
    columns = list(train.columns)
    assert np.array_equal(predict_inputs(binned, probe.to_numpy(), columns), expected)
    assert np.array_equal(predict_inputs(plain, probe.to_numpy()[:1], columns), expected[:1])
    assert predict_inputs.__module__ == "taxi_fares.binned_predict"
    with pytest.raises(ValueError, match="needs 5 columns"):
        predict_inputs(binned, probe.to_numpy()[:, :4], columns)
    # A model fitted on other columns (or in another order) is not given a matrix it cannot vouch for: its own
    # predict sees a frame, and refuses names it was not fitted on, as scikit-learn does.
    with pytest.raises(ValueError, match="feature names"):
        predict_inputs(binned, probe.to_numpy(), columns[::-1])


def test_bad_hyperparameters_are_all_reported():
    with pytest.raises(ValueError) as excinfo:
        ModelParams(learning_rate=0, max_iter=-5, l2_regularization=-1.0)
    message = str(excinfo.value)
    assert "learning_rate must be in (0, 1], got 0" in message
    assert "max_iter must be an integer >= 1, got -5" in message
    assert "l2_regularization must be >= 0, got -1.0" in message


def test_regression_metrics_on_known_values():
    metrics = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    assert metrics["rmse"] == pytest.approx(1.0)       # sqrt(4 / 4)
    assert metrics["mae"] == pytest.approx(0.5)        # 2 / 4
    assert metrics["r2"] == pytest.approx(1 - 4 / 5)   # ss_tot = 5


def test_spark_metrics_equal_numpy_metrics(spark):
    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, 500)
    p = y + rng.normal(0, 1, 500)
    df = spark.createDataFrame(pd.DataFrame({"y": y, "p": p}))
    in_spark = spark_regression_metrics(df, "y", "p", baseline=10.0)
    in_numpy = regression_metrics(y, p)
    baseline = regression_metrics(y, np.full(500, 10.0))
    for key in ("rmse", "mae", "r2"):
        assert in_spark[key] == pytest.approx(in_numpy[key])
        assert in_spark[f"baseline_{key}"] == pytest.approx(baseline[key])
    assert in_spark["rows"] == 500


def test_training_frame_must_have_the_columns():
    with pytest.raises(ValueError, match="missing column"):
        train_model(pd.DataFrame({"trip_distance": [1.0]}), ModelParams())


def test_holdout_split_is_deterministic_and_disjoint(spark):
    df = spark.range(10_000).withColumnRenamed("id", "x")
    train, holdout = split_holdout(df, 0.2, seed=1)
    train2, holdout2 = split_holdout(df.repartition(7), 0.2, seed=1)
    assert sorted(r.x for r in holdout.collect()) == sorted(r.x for r in holdout2.collect())
    assert train.join(holdout, "x").count() == 0
    assert train.count() + holdout.count() == 10_000
    assert 1800 < holdout.count() < 2200
    assert train2.count() == train.count()


def test_bounded_sample_never_exceeds_its_bound(spark):
    df = spark.range(50_000)
    assert bounded_sample(df, 1000, seed=1).count() <= 1000
    assert bounded_sample(df, 100_000, seed=1).count() == 50_000


@pytest.mark.slow
def test_model_on_200k_generated_rows_beats_the_mean_fare_baseline_by_30_percent(spark):
    start, end = "2016-01-01", "2016-03-01"
    trips = generate_trips(spark, 200_000, start, end, seed=42).cache()
    joined = join_features(trips, pickup_features(trips, start, end), dropoff_features(trips, start, end))
    training_set = joined.select(*model_input_columns(), LABEL)
    train, holdout = split_holdout(training_set, 0.2, seed=42)
    sample = bounded_sample(train, 200_000, seed=42).toPandas()
    assert list(sample.columns) == [*MODEL_FEATURES, LABEL]
    model = train_model(sample, ModelParams(max_iter=100))
    metrics = spark_regression_metrics(predict_spark(holdout, model), LABEL, "prediction",
                                       baseline=float(sample[LABEL].mean()))
    trips.unpersist()
    assert metrics["rows"] > 35_000
    assert metrics["rmse"] <= 0.7 * metrics["baseline_rmse"], metrics
    assert math.isfinite(metrics["r2"]) and metrics["r2"] > 0.5
