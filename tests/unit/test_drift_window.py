"""The online service's drift window (taxi_fares_mlops.serving.window): judged once enough of it is new, at most
once per ``min_seconds``, and, in the background, a burst of requests is judged within ``min_seconds`` of its end
without waiting for another request. A one-feature reference profile: values uniform on 0..10."""
import time

import numpy as np

from taxi_fares.drift_detector import DriftDetector
from taxi_fares.drift_detector import PROFILE_VERSION
from taxi_fares_mlops.serving.window import DRIFT, INSUFFICIENT_DATA, OK, DriftWindow

EDGES = [float(e) for e in range(1, 10)]
REFERENCE = {"version": PROFILE_VERSION, "numeric": {"x": {"edges": EDGES, "cdf": [e / 10 for e in EDGES]}},
             "categorical": {}}


def _rows(n, scale=1.0, seed=0):
    return (np.random.default_rng(seed).uniform(0, 10, size=(n, 1)) * scale).astype("float64")


def _settled(window, seconds=5.0):
    deadline = time.monotonic() + seconds
    while window.rows_since_judged and time.monotonic() < deadline:
        time.sleep(0.02)
    return window.current


def test_the_window_is_judged_once_a_tenth_is_new_and_at_most_once_per_interval():
    window = DriftWindow(DriftDetector(REFERENCE), size=100, min_rows=50)
    assert window.add_values(_rows(40)).status == INSUFFICIENT_DATA
    assert window.add_values(_rows(20, seed=1)).status == OK and window.judgements == 1
    window.add_values(_rows(5, scale=3.0, seed=2))  # 5 new rows: a tenth of the window is 10
    assert window.judgements == 1
    assert window.add_values(_rows(100, scale=3.0, seed=3)).status == DRIFT and window.judgements == 2
    throttled = DriftWindow(DriftDetector(REFERENCE), size=100, min_rows=50, min_seconds=3600)
    throttled.add_values(_rows(60))
    throttled.add_values(_rows(100, scale=3.0, seed=3))  # due by its rows, held back by the interval
    assert throttled.current.status == OK and throttled.judgements == 1 and throttled.rows_since_judged == 100


def test_in_the_background_a_request_never_waits_and_a_burst_is_judged_after_it_ends():
    judged = []
    window = DriftWindow(DriftDetector(REFERENCE), size=100, min_rows=50, min_seconds=0.3, background=True,
                         on_judged=judged.append)
    try:
        window.add_values(_rows(60))
        assert _settled(window).status == OK
        started = time.monotonic()
        statuses = [window.add_values(_rows(10, scale=3.0, seed=seed)) for seed in range(10)]  # a burst
        if time.monotonic() - started < 0.3:  # inside one interval: every request reported the last judgement
            assert {s.status for s in statuses} == {OK} and statuses[-1].rows == 100
        assert _settled(window).status == DRIFT and window.rows_since_judged == 0
        assert [s.status for s in judged][-1] == DRIFT and judged[0].status == OK
    finally:
        window.stop()
