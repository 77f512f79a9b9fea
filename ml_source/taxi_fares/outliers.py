"""The outlier detector trained beside the fare model: an IsolationForest on the model's input features.

It is fitted on the same bounded training sample as the fare model. ``contamination`` sets the share of training
rows it calls outliers (its threshold), so a range like the training data shows about that share and a range
with injected extremes shows more. ``predict`` gives -1 for an outlier and 1 for an inlier (scikit-learn's
convention); ``score_samples`` the anomaly score (lower: more anomalous).
"""
from __future__ import annotations

import pandas as pd
from sklearn.ensemble import IsolationForest

from taxi_fares.features import MODEL_FEATURES

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
