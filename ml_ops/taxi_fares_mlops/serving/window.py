"""Drift of what the service has been asked lately: a rolling window of the most recent trips (their model
inputs and predictions), judged by the bundle's drift detector. One request's drift means nothing; the window
(``size`` trips) does, once it holds ``min_rows`` of them. The window is judged again once a tenth of it is new
(``judge_every``), not on every request: the status of the last judgement is the one reported in between."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

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
    def __init__(self, detector: DriftDetector, size: int = 1000, min_rows: int = 200,
                 judge_every: Optional[int] = None):
        if size < 1 or not 1 <= min_rows <= size:
            raise ValueError(f"drift window: need 1 <= min_rows ({min_rows}) <= size ({size})")
        self.detector = detector
        self.min_rows = min_rows
        self.judge_every = judge_every or max(1, size // 10)
        self._rows: deque = deque(maxlen=size)
        self._new = 0
        self._lock = threading.Lock()
        self.current = WindowStatus(INSUFFICIENT_DATA, 0)

    def add(self, rows: pd.DataFrame) -> WindowStatus:
        """Append the request's rows (profiled columns); judge the window when enough of it is new."""
        columns = self.detector.columns
        with self._lock:
            self._rows.extend(rows[columns].itertuples(index=False, name=None))
            self._new += len(rows)
            held = len(self._rows)
            if held < self.min_rows:
                self.current = WindowStatus(INSUFFICIENT_DATA, held)
                return self.current
            if self._new < self.judge_every and self.current.status != INSUFFICIENT_DATA:
                self.current = WindowStatus(self.current.status, held, self.current.drifted_features)
                return self.current
            self._new = 0
            frame = pd.DataFrame(list(self._rows), columns=columns)
        judged = self.detector.predict(frame)
        drifted = judged.loc[judged["drifted"], "feature"].tolist()
        self.current = WindowStatus(DRIFT if drifted else OK, len(frame), drifted)
        return self.current
