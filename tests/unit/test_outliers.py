"""The outlier scorer the online service uses gives scikit-learn's scores and flags, exactly."""
import numpy as np
import pandas as pd
import pytest

from taxi_fares.features import MODEL_FEATURES
from taxi_fares.outliers import OUTLIER, OutlierScorer, fit_outlier_detector


@pytest.fixture(scope="module")
def forest():
    rng = np.random.default_rng(0)
    sample = pd.DataFrame(rng.normal(size=(2000, len(MODEL_FEATURES))), columns=list(MODEL_FEATURES))
    return fit_outlier_detector(sample, seed=3)


@pytest.mark.parametrize("rows", [1, 7, 500])
def test_scores_and_flags_equal_scikit_learns(forest, rows):
    rng = np.random.default_rng(rows)
    frame = pd.DataFrame(rng.normal(scale=2.5, size=(rows, len(MODEL_FEATURES))), columns=list(MODEL_FEATURES))
    scorer = OutlierScorer(forest)
    scores = scorer.score_samples(frame)
    assert np.array_equal(scores, forest.score_samples(frame))
    assert np.array_equal(scorer.is_outlier(scores), forest.predict(frame) == OUTLIER)
    if rows == 500:
        assert 0 < scorer.is_outlier(scores).sum() < rows


def test_values_at_and_beside_every_threshold_reach_scikit_learns_leaves(forest):
    """Each split's threshold, and the float32 values just below and above it, in rows that otherwise vary: the
    flat walk takes each tree's own side at every edge (and leaves keep their node)."""
    rng = np.random.default_rng(11)
    rows = []
    for estimator in forest.estimators_[:40]:
        tree = estimator.tree_
        for node in np.flatnonzero(tree.children_left != -1)[:12]:
            for value in (tree.threshold[node], np.nextafter(np.float32(tree.threshold[node]), np.float32(-np.inf)),
                          np.nextafter(np.float32(tree.threshold[node]), np.float32(np.inf))):
                row = rng.normal(size=len(MODEL_FEATURES))
                row[tree.feature[node]] = value
                rows.append(row)
    frame = pd.DataFrame(rows, columns=list(MODEL_FEATURES))
    scorer = OutlierScorer(forest)
    expected = np.stack([e.tree_.apply(frame.to_numpy(dtype=np.float32)) for e in forest.estimators_])
    offsets = scorer.roots[:, None]
    assert np.array_equal(scorer.leaves(frame.to_numpy(dtype=np.float32)) - offsets, expected)
    assert np.array_equal(scorer.score_samples(frame), forest.score_samples(frame))
