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
# Up to this many rows (an online request's), all trees are walked at once; beyond, tree by tree.
FLAT_WALK_ROWS = 32
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
    per call (8 ms for 200 trees and one row); calling each tree's own ``apply`` still costs 10 microseconds per
    tree. For a request's few rows this lays the forest's nodes end to end in flat arrays and walks every row down
    every tree at once, one level per numpy step (isolation trees are at most ``ceil(log2(max_samples))`` deep:
    8 for 256 samples), with the tree's own test (``x <= threshold``, x as float32 as scikit-learn casts it,
    leaves keeping their node); for more rows it calls each tree's ``apply``. The depths are then summed tree by
    tree (one running sum down a trees-by-rows array, not a numpy step per tree) and the arithmetic is
    scikit-learn's, in its order, so the scores are identical (a test compares them,
    on values at and beside every threshold). Flags follow ``predict``: an
    outlier scores below ``offset_``.
    """

    def __init__(self, forest: IsolationForest):
        from sklearn.ensemble._iforest import _average_path_length

        if forest._max_features != forest.n_features_in_:
            raise ValueError("OutlierScorer needs a forest fitted on all its features (max_features=1.0)")
        self.forest = forest
        self.trees = trees = [estimator.tree_ for estimator in forest.estimators_]
        leaf_depths = [lengths + averages - 1.0 for lengths, averages in
                       zip(forest._decision_path_lengths, forest._average_path_length_per_tree)]
        offsets = np.cumsum([0] + [tree.node_count for tree in trees])
        self.roots = offsets[:-1].astype(np.intp)
        features, thresholds, lefts, rights = [], [], [], []
        for tree, offset in zip(trees, offsets[:-1]):
            leaf = tree.children_left == -1
            own = np.arange(tree.node_count) + offset
            features.append(np.where(leaf, 0, tree.feature))
            thresholds.append(tree.threshold)
            lefts.append(np.where(leaf, own, tree.children_left + offset))   # a leaf keeps its node
            rights.append(np.where(leaf, own, tree.children_right + offset))
        self.feature = np.concatenate(features).astype(np.intp)
        self.threshold = np.concatenate(thresholds).astype(np.float64)
        self.left = np.concatenate(lefts).astype(np.intp)
        self.right = np.concatenate(rights).astype(np.intp)
        self.leaf_depth = np.concatenate(leaf_depths).astype(np.float64)
        self.levels = max(int(tree.max_depth) for tree in trees)
        self.denominator = len(trees) * _average_path_length([forest._max_samples])
        self.offset = forest.offset_

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """(trees, rows): the node each row reaches in each tree (indices into the flat arrays)."""
        nodes = np.repeat(self.roots[:, None], rows.shape[0], axis=1)
        columns = np.arange(rows.shape[0])[None, :]
        for _ in range(self.levels):
            values = rows[columns, self.feature[nodes]].astype(np.float64)
            nodes = np.where(values <= self.threshold[nodes], self.left[nodes], self.right[nodes])
        return nodes

    def score_samples(self, X: Any) -> np.ndarray:
        rows = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        if rows.shape[0] <= FLAT_WALK_ROWS:
            leaves = self.leaves(rows)
        else:  # many rows: each tree's own apply costs less than walking them all level by level
            leaves = np.empty((len(self.trees), rows.shape[0]), dtype=np.intp)
            for index, tree in enumerate(self.trees):
                leaves[index] = tree.apply(rows)
            leaves += self.roots[:, None]
        # summed tree by tree, in scikit-learn's order: a running sum down the trees, not numpy's pairwise sum
        depths = np.cumsum(self.leaf_depth[leaves], axis=0)[-1] if len(self.trees) else np.zeros(rows.shape[0])
        scores = 2 ** (-np.divide(depths, self.denominator, out=np.ones_like(depths),
                                  where=self.denominator != 0))
        return -scores

    def is_outlier(self, scores: np.ndarray) -> np.ndarray:
        return scores - self.offset < 0
