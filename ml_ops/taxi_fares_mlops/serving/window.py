"""Drift of what the service has been asked lately: a rolling window of the most recent trips (their model
inputs and predictions), judged by the bundle's drift detector. One request's drift means nothing; the window
(``size`` trips) does, once it holds ``min_rows`` of them. The window is judged again once a tenth of it is new
(``judge_every``) and at most once per ``min_seconds``, not on every request: the status of the last judgement is
the one reported in between. With ``background`` (the service's choice) the judgement runs on a thread of its
own, so no request waits for it (judging a thousand rows costs milliseconds; a request of 100 trips would pay it
every time), and rows that came in a burst are judged within ``min_seconds`` without waiting for the next request."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd

from taxi_fares.drift_detector import DriftDetector

logger = logging.getLogger(__name__)

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
                 judge_every: Optional[int] = None, min_seconds: float = 0.0, background: bool = False,
                 on_judged: Optional[Callable[[WindowStatus], None]] = None):
        if size < 1 or not 1 <= min_rows <= size:
            raise ValueError(f"drift window: need 1 <= min_rows ({min_rows}) <= size ({size})")
        self.detector = detector
        self.columns = list(detector.columns)
        self.min_rows = min_rows
        self.judge_every = judge_every or max(1, size // 10)
        self.min_seconds = min_seconds
        self.on_judged = on_judged  # told each new status (the service's drift metric)
        self._rows: deque = deque(maxlen=size)
        self._new = 0
        self._in_judgement = 0  # rows taken by the judgement under way
        self._last_judged = -float("inf")
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stop = threading.Event()
        self.judgements = 0
        self.current = WindowStatus(INSUFFICIENT_DATA, 0)
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._judge_when_due, name="drift-window", daemon=True)
            self._thread.start()

    def add(self, rows: pd.DataFrame) -> WindowStatus:
        """Append the request's rows (a frame holding the profiled columns)."""
        return self.add_values(rows[self.columns].to_numpy(dtype="float64"))

    def add_values(self, values: np.ndarray) -> WindowStatus:
        """Append the request's rows, given as an array of the profiled columns (``columns``, in that order);
        judge the window when enough of it is new (in the background: the last judgement's status is returned)."""
        with self._lock:
            self._rows.extend(values.tolist())
            self._new += len(values)
            held = len(self._rows)
            if held < self.min_rows:
                self.current = WindowStatus(INSUFFICIENT_DATA, held)
                return self.current
            if not self._is_due():
                self.current = WindowStatus(self.current.status, held, self.current.drifted_features)
                return self.current
            if self._thread is not None:
                self._due.set()
                return self.current
            frame = self._take()
        return self._judge(frame)

    def _is_due(self) -> bool:
        """Enough is new (or nothing was judged yet), and the last judgement is ``min_seconds`` old. Under the lock."""
        return len(self._rows) >= self.min_rows and self._new > 0 \
            and (self._new >= self.judge_every or self.current.status == INSUFFICIENT_DATA) \
            and time.monotonic() - self._last_judged >= self.min_seconds

    def _take(self) -> pd.DataFrame:
        """The window as a frame, counted as judged now. Under the lock."""
        self._in_judgement, self._new = self._new, 0
        self._last_judged = time.monotonic()
        return pd.DataFrame(list(self._rows), columns=self.columns)

    def _judge(self, frame: pd.DataFrame) -> WindowStatus:
        try:
            judged = self.detector.predict(frame)
            drifted = judged.loc[judged["drifted"], "feature"].tolist()
            with self._lock:  # add_values carries the status forward under the same lock: no judgement is lost
                self.current = WindowStatus(DRIFT if drifted else OK, len(self._rows), drifted)
                self.judgements += 1
                current = self.current
        finally:
            self._in_judgement = 0
        if self.on_judged is not None:
            self.on_judged(current)
        return current

    def _judge_when_due(self) -> None:
        """The background thread: woken by a request that makes a judgement due, and every ``min_seconds`` for one
        the throttle held back (rows that came in a burst are judged without waiting for the next request)."""
        while not self._stop.is_set():
            self._due.wait(timeout=max(self.min_seconds, 0.05))
            self._due.clear()
            with self._lock:
                frame = self._take() if self._is_due() else None
            if frame is not None:
                try:
                    self._judge(frame)
                except Exception:  # a judgement that fails keeps the last status; the next one tries again
                    logger.exception("judging the drift window failed")

    @property
    def rows_since_judged(self) -> int:
        """Rows added since the last finished judgement (0: the reported status covers the whole window)."""
        return self._new + self._in_judgement

    def stop(self) -> None:
        self._stop.set()
        self._due.set()
