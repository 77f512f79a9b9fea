"""Drift of what the service has been asked lately: a rolling window of the most recent trips (their model
inputs and predictions), judged by the bundle's drift detector. One request's drift means nothing; the window
(``size`` trips) does, once it holds ``min_rows`` of them."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import pandas as pd

from taxi_fares.drift_detector import DriftDetector

OK, DRIFT, INSUFFICIENT_DATA = "OK", "DRIFT", "INSUFFICIENT_DATA"


@dataclass(frozen=True)
class WindowStatus:
    status: str
    rows: int
    drifted_features: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"status": self.status, "window_rows": self.rows, "drifted_features": list(self.drifted_features)}


class DriftWindow:
    def __init__(self, detector: DriftDetector, size: int = 1000, min_rows: int = 200):
        if size < 1 or not 1 <= min_rows <= size:
            raise ValueError(f"drift window: need 1 <= min_rows ({min_rows}) <= size ({size})")
        self.detector = detector
        self.min_rows = min_rows
        self._rows: deque = deque(maxlen=size)
        self._lock = threading.Lock()
        self.current = WindowStatus(INSUFFICIENT_DATA, 0)

    def add(self, rows: pd.DataFrame) -> WindowStatus:
        """Append the request's rows (profiled columns) and judge the window."""
        columns = self.detector.columns
        with self._lock:
            self._rows.extend(rows[columns].itertuples(index=False, name=None))
            frame = pd.DataFrame(list(self._rows), columns=columns)
        if len(frame) < self.min_rows:
            status = WindowStatus(INSUFFICIENT_DATA, len(frame))
        else:
            judged = self.detector.predict(frame)
            drifted = judged.loc[judged["drifted"], "feature"].tolist()
            status = WindowStatus(DRIFT if drifted else OK, len(frame), drifted)
        self.current = status
        return status
