"""``mlops demo``: the ML logic end to end on generated data, printing what it measured.

Generate trips, validate them, compute feature tables, build the point-in-time training set, train on a
bounded sample, and evaluate on a hash-split holdout in Spark against the mean-fare baseline.
"""
from __future__ import annotations

import sys
import time

from taxi_fares.features import LABEL, dropoff_features, join_features, model_input_columns, pickup_features
from taxi_fares.model import (ModelParams, bounded_sample, predict_spark, spark_regression_metrics,
                              split_holdout, train_model)
from taxi_fares.schema import validate_trips
from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.spark import get_spark
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, RAW_TRIPS, Lakehouse

START, END = "2016-01-01", "2016-03-01"


def _step(message: str, started: float) -> None:
    print(f"[demo] {message} ({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)


def run_demo(root: str, rows: int = 200_000, seed: int = 42) -> int:
    t0 = time.monotonic()
    lakehouse = Lakehouse(root)
    spark = get_spark("mlops-demo")
    _step("spark ready", t0)

    lakehouse.write(generate_trips(spark, rows, START, END, seed=seed), RAW_TRIPS)
    trips = lakehouse.read(spark, RAW_TRIPS)
    _step(f"generated {rows:,} trips into {lakehouse.table_path(RAW_TRIPS)}", t0)

    valid = validate_trips(trips).valid
    lakehouse.write(pickup_features(valid, START, END), PICKUP_FEATURES)
    lakehouse.write(dropoff_features(valid, START, END), DROPOFF_FEATURES)
    _step("validated trips and wrote the pickup and dropoff feature tables", t0)

    joined = join_features(valid, lakehouse.read(spark, PICKUP_FEATURES), lakehouse.read(spark, DROPOFF_FEATURES))
    training_set = joined.select(*model_input_columns(), LABEL)
    train, holdout = split_holdout(training_set, holdout_fraction=0.2, seed=seed)
    params = ModelParams()
    sample = bounded_sample(train, max_rows=500_000, seed=seed).toPandas()  # bounded, not the whole set
    model = train_model(sample, params)
    _step(f"trained on {len(sample):,} rows with {params.as_dict()}", t0)

    metrics = spark_regression_metrics(predict_spark(holdout, model), LABEL, "prediction",
                                       baseline=float(sample[LABEL].mean()))
    _step("evaluated on the holdout", t0)
    improvement = 1 - metrics["rmse"] / metrics["baseline_rmse"]
    print(f"holdout rows      {int(metrics['rows']):,}")
    print(f"model    rmse {metrics['rmse']:.3f}  mae {metrics['mae']:.3f}  r2 {metrics['r2']:.3f}")
    print(f"baseline rmse {metrics['baseline_rmse']:.3f}  mae {metrics['baseline_mae']:.3f}  "
          f"r2 {metrics['baseline_r2']:.3f}  (predicts the mean training fare)")
    print(f"rmse improvement over baseline: {improvement:.1%}")
    print(f"tables under {lakehouse.path('tables')}")
    return 0
