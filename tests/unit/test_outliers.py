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
