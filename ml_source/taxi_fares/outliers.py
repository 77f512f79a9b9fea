"""The outlier detector trained beside the fare model: an IsolationForest on the model's input features.

It is fitted on the same bounded training sample as the fare model. ``contamination`` sets the share of training
rows it calls outliers (its threshold), so a range like the training data shows about that share and a range
with injected extremes shows more. ``predict`` gives -1 for an outlier and 1 for an inlier (scikit-learn's
convention); ``score_samples`` the anomaly score (lower: more anomalous).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from taxi_fares.columns import MODEL_FEATURES

CONTAMINATION = 0.02
OUTLIER = -1


def fit_outlier_detector(sample: pd.DataFrame, seed: int, contamination: float = CONTAMINATION) -> IsolationForest:
    missing = [c for c in MODEL_FEATURES if c not in sample.columns]
    if missing:
        raise ValueError(f"outlier training frame is missing column(s) {missing}")
    if sample.empty:
        raise ValueError("outlier training frame has no rows")
    detector = IsolationForest(n_estimators=200, max_samples=min(256, len(sample)), contamination=contamination,
                               random_state=seed)
    # Nulls (a trip without an earlier feature row) read as 0: no trips seen in the window.
    return detector.fit(sample[list(MODEL_FEATURES)].fillna(0.0))


class OutlierScorer:
    """A fitted IsolationForest's ``score_samples`` and outlier rule for small batches (an online request).

    scikit-learn scores each tree through joblib and input validation, about 40 microseconds of overhead per tree
    per call (8 ms for 200 trees and one row). This computes the same sum directly: per tree, the leaf each row
    reaches (the tree's own ``apply``) and that leaf's precomputed depth; the arithmetic is scikit-learn's, in
    its order, so the scores are identical (a test compares them). Flags follow ``predict``: an outlier scores
    below ``offset_``.
    """

    def __init__(self, forest: IsolationForest):
        from sklearn.ensemble._iforest import _average_path_length

        if forest._max_features != forest.n_features_in_:
            raise ValueError("OutlierScorer needs a forest fitted on all its features (max_features=1.0)")
        self.forest = forest
        self.trees = [estimator.tree_ for estimator in forest.estimators_]
        self.leaf_depths = [lengths + averages - 1.0 for lengths, averages in
                            zip(forest._decision_path_lengths, forest._average_path_length_per_tree)]
        self.denominator = len(self.trees) * _average_path_length([forest._max_samples])
        self.offset = forest.offset_

    def score_samples(self, X: Any) -> np.ndarray:
        rows = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        depths = np.zeros(int(rows.shape[0]), order="F")
        for tree, leaf_depth in zip(self.trees, self.leaf_depths):
            depths += leaf_depth[tree.apply(rows)]
        scores = 2 ** (-np.divide(depths, self.denominator, out=np.ones_like(depths),
                                  where=self.denominator != 0))
        return -scores

    def is_outlier(self, scores: np.ndarray) -> np.ndarray:
        return scores - self.offset < 0
