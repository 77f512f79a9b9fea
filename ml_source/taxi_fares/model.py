"""The fare model: a scikit-learn pipeline, its hyperparameters, the train/holdout split and metrics.

Hyperparameters come only from ``ModelParams``; nothing here overrides them. Metrics are computed either in
numpy (for a bounded in-memory sample) or as one Spark aggregation (for a holdout of any size).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from taxi_fares.aggregates import one_row
from taxi_fares.binned_predict import raw_predict_binned
from taxi_fares.features import LABEL, MODEL_FEATURES


@dataclass(frozen=True)
class ModelParams:
    """Hyperparameters of the HistGradientBoostingRegressor. ``max_depth`` 0 means unlimited."""

    learning_rate: float = 0.1
    max_iter: int = 200
    max_depth: int = 0
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    random_state: int = 42

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid model parameters: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every out-of-range value, each as a message naming the parameter."""
        out = []
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 1):
            out.append(f"learning_rate must be in (0, 1], got {self.learning_rate!r}")
        for name, minimum in (("max_iter", 1), ("max_depth", 0), ("max_leaf_nodes", 2),
                              ("min_samples_leaf", 1), ("random_state", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                out.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not (isinstance(self.l2_regularization, (int, float)) and self.l2_regularization >= 0):
            out.append(f"l2_regularization must be >= 0, got {self.l2_regularization!r}")
        return out

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BinnedHistGradientBoostingRegressor(HistGradientBoostingRegressor):  # type: ignore[misc]
    """scikit-learn's HistGradientBoostingRegressor, predicting through its own bins.

    Fitting is scikit-learn's, untouched. To predict, the trees compare each value with the split's threshold
    (``x <= num_threshold``); here the values are first mapped to the bins the trees were grown on (a binary
    search per value over the same thresholds) and the trees compare bin numbers (``bin <= bin_threshold``),
    the path scikit-learn itself takes for early stopping. The two agree by construction: a value's bin is the
    first threshold it does not exceed, and ``num_threshold`` is the threshold of ``bin_threshold``; missing
    values take the same side; the leaves are summed in the same order. The trees read 9 bytes per row instead
    of 72 and compare bytes instead of doubles: the bench's single-core predict of a million rows went from 4.2 s
    to 3.0 s (``make bench``, same machine and hour). Equality with the parent's predictions, bit for bit, is a
    unit test (``tests/unit/test_model.py``). Categorical features use the parent's path.
    """

    def _raw_predict(self, X: Any, n_threads: Optional[int] = None) -> np.ndarray:
        # During fit scikit-learn passes data that is binned already (``_in_fit``): nothing to do here.
        if getattr(self, "_in_fit", False) or self.is_categorical_ is not None:
            return super()._raw_predict(X, n_threads=n_threads)
        return raw_predict_binned(self, self._bin_mapper.transform(self._preprocess_X(X, reset=False)), n_threads)


def build_model(params: ModelParams) -> Pipeline:
    """An unfitted pipeline configured exactly by ``params``."""
    regressor = BinnedHistGradientBoostingRegressor(
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_depth=params.max_depth or None,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        random_state=params.random_state,
        early_stopping=False,
    )
    return Pipeline([("regressor", regressor)])


def train_model(train: pd.DataFrame, params: ModelParams) -> Pipeline:
    """Fit a new pipeline on a pandas frame holding ``MODEL_FEATURES`` and the label."""
    missing = [c for c in (*MODEL_FEATURES, LABEL) if c not in train.columns]
    if missing:
        raise ValueError(f"training frame is missing column(s) {missing}")
    if train.empty:
        raise ValueError("training frame has no rows")
    model = build_model(params)
    model.fit(train[list(MODEL_FEATURES)], train[LABEL])
    return model


def split_holdout(df: DataFrame, holdout_fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Deterministic (train, holdout) split by a hash of each row, independent of partitioning."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    bucket = F.pmod(F.xxhash64(*[F.col(c) for c in df.columns], F.lit(seed)), F.lit(10_000))
    cut = int(round(holdout_fraction * 10_000))
    return df.filter(bucket >= cut), df.filter(bucket < cut)


def bounded_sample(df: DataFrame, max_rows: int, seed: int) -> DataFrame:
    """At most ``max_rows`` rows of ``df``, sampled uniformly and deterministically.

    Training needs its rows in one process; this bound (not the table size) sets the driver memory.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    total = df.count()
    if total <= max_rows:
        return df
    fraction = min(1.0, max_rows * 1.05 / total)
    return df.sample(withReplacement=False, fraction=fraction, seed=seed).limit(max_rows)


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """rmse, mae and r2 of predictions against labels (numpy)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on zero rows")
    err = y_pred - y_true
    ss_res = float(np.sum(err ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "rmse": math.sqrt(ss_res / y_true.size),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }


def spark_regression_metrics(df: DataFrame, label: str, prediction: str,
                             baseline: Optional[float] = None) -> dict[str, float]:
    """rmse, mae, r2 (and the same for a constant ``baseline`` prediction) in one Spark aggregation."""
    y, p = F.col(label).cast("double"), F.col(prediction).cast("double")
    aggs = [
        F.count(F.lit(1)).alias("n"),
        F.avg(y).alias("mean_y"),
        F.sum((p - y) ** 2).alias("ss_res"),
        F.sum(F.abs(p - y)).alias("abs_err"),
        F.sum(y * y).alias("sum_y2"),
        F.sum(y).alias("sum_y"),
    ]
    if baseline is not None:
        aggs += [F.sum((F.lit(baseline) - y) ** 2).alias("b_ss_res"), F.sum(F.abs(F.lit(baseline) - y)).alias("b_abs")]
    row = one_row(df, *aggs)
    n = int(row["n"])
    if n == 0:
        raise ValueError("cannot compute metrics on zero rows")
    ss_tot = float(row["sum_y2"]) - float(row["sum_y"]) ** 2 / n

    def pack(ss_res: float, abs_err: float, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}rmse": math.sqrt(ss_res / n),
            f"{prefix}mae": abs_err / n,
            f"{prefix}r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        }

    out = pack(float(row["ss_res"]), float(row["abs_err"]))
    if baseline is not None:
        out.update(pack(float(row["b_ss_res"]), float(row["b_abs"]), prefix="baseline_"))
    out["rows"] = float(n)
    return out


def predict_spark(df: DataFrame, model: Pipeline, output_col: str = "prediction") -> DataFrame:
    """``df`` with a column of the model's predictions, computed in Arrow batches on the executors.

    Nothing is collected to the driver: the fitted model is shipped to the executors once and applied to
    each batch of rows.
    """
    from taxi_fares.features import model_input_columns

    names = list(MODEL_FEATURES)

    def predict(batch: pd.DataFrame) -> pd.Series:
        return pd.Series(model.predict(batch[names]), index=batch.index, dtype="float64")

    _predict = F.pandas_udf(predict, "double")  # type: ignore[call-overload]

    return df.withColumn(output_col, _predict(F.struct(*model_input_columns())))
