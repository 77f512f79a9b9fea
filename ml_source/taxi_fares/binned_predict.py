"""Predicting with a fitted HistGradientBoostingRegressor through its own bins, without Spark (the online service
imports this; ``taxi_fares.model`` needs pyspark).

The trees compare bin numbers (``bin <= bin_threshold``) instead of values (``x <= num_threshold``): the path
scikit-learn itself takes for early stopping, equal to the value path by construction (``taxi_fares.model``'s
``BinnedHistGradientBoostingRegressor`` explains why and predicts through here). ``predict_inputs`` also skips
the input validation scikit-learn does on every call (about 2 ms, most of a small online request's prediction):
it checks once per call what that validation would establish for a ready-made float64 matrix of the fitted
columns, and otherwise hands the rows to the model's own ``predict``. It maps the rows to bins on the calling
thread's OpenMP thread count: the fitted bin mapper's own ``transform`` uses the count it was fitted with, so every
serving thread opened a parallel region of that many threads per request, and on a busy pod they spun against each
other (0.4 ms for 100 rows alone, several ms under load, against 0.04 ms on one thread).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.ensemble._hist_gradient_boosting._binning import _map_to_bins
from sklearn.ensemble._hist_gradient_boosting.common import X_BINNED_DTYPE
from sklearn.pipeline import Pipeline
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads


def raw_predict_binned(regressor: HistGradientBoostingRegressor, binned: np.ndarray,
                       n_threads: Optional[int] = None) -> np.ndarray:
    """The raw predictions (before the link) of rows already mapped to the regressor's bins."""
    raw = np.zeros((binned.shape[0], regressor.n_trees_per_iteration_),
                   dtype=regressor._baseline_prediction.dtype, order="F")
    raw += regressor._baseline_prediction
    regressor._predict_iterations(binned, regressor._predictors, raw, True, _openmp_effective_n_threads(n_threads))
    return raw


def bin_rows(regressor: HistGradientBoostingRegressor, rows: np.ndarray,
             n_threads: Optional[int] = None) -> np.ndarray:
    """``rows`` (float64, the fitted columns) mapped to the regressor's bins, as its bin mapper's ``transform`` maps
    them, on ``n_threads`` OpenMP threads (default: the calling thread's limit, not the count fitted with)."""
    mapper = regressor._bin_mapper
    binned = np.zeros_like(rows, dtype=X_BINNED_DTYPE, order="F")
    _map_to_bins(rows, mapper.bin_thresholds_, mapper.is_categorical_, mapper.missing_values_bin_idx_,
                 _openmp_effective_n_threads(n_threads), binned)
    return binned


def _regressor(model: Any, columns: Sequence[str]) -> Optional[HistGradientBoostingRegressor]:
    """The model's regressor when the fast path gives its predictions: a pipeline of one numeric-only
    HistGradientBoostingRegressor fitted on exactly ``columns``, in order."""
    regressor = model.steps[-1][1] if isinstance(model, Pipeline) and len(model.steps) == 1 else model
    if isinstance(regressor, HistGradientBoostingRegressor) and regressor.is_categorical_ is None \
            and list(getattr(regressor, "feature_names_in_", [])) == list(columns):
        return regressor
    return None


def predict_inputs(model: Any, values: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """``model.predict`` of the rows of ``values`` (float64, one column per name of ``columns``)."""
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(columns):
        raise ValueError(f"predict_inputs needs {len(columns)} columns, got an array of shape {rows.shape}")
    regressor = _regressor(model, columns)
    if regressor is None:
        return np.asarray(model.predict(pd.DataFrame(rows, columns=list(columns))), dtype=float)
    binned = bin_rows(regressor, np.ascontiguousarray(rows))
    return np.asarray(regressor._loss.link.inverse(raw_predict_binned(regressor, binned).ravel()), dtype=float)
