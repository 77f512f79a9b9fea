"""Online features: the feature rows a request's lookup can take, from the bundle's snapshot and then, on a
schedule, from the Delta feature tables themselves (read with delta-rs, no Spark).

What is kept per table are the rows of the last ``lookback_hours`` before the newest row, plus each zip's
latest row before those (``taxi_fares.online.latest_rows``): a request's lookup key then finds the row batch
scoring would give it, under the same as-of rule. A refresh that fails (storage down, a table being rewritten)
keeps the rows already loaded and is logged; the next refresh tries again.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from taxi_fares.columns import TS
from taxi_fares.online import OnlineInputs, latest_rows

logger = logging.getLogger(__name__)

PICKUP_TABLE, DROPOFF_TABLE = "pickup_features", "dropoff_features"


@dataclass(frozen=True)
class Snapshot:
    """Feature rows, the lookups built from them (``taxi_fares.online.OnlineInputs``), and where they came from."""

    pickup: pd.DataFrame
    dropoff: pd.DataFrame
    loaded_at: dt.datetime
    source: str
    inputs: OnlineInputs

    @property
    def newest(self) -> Optional[str]:
        times = [pd.to_datetime(f[TS], utc=True).max() for f in (self.pickup, self.dropoff) if len(f)]
        return max(times).isoformat() if times else None


def keep(features: pd.DataFrame, lookback_hours: float) -> pd.DataFrame:
    """The rows an online lookup can take: ``lookback_hours`` before the newest row, and each zip's row before."""
    if features.empty:
        return features
    newest = pd.to_datetime(features[TS], utc=True).max()
    return latest_rows(features, newest - pd.Timedelta(hours=lookback_hours))


def read_delta(tables_root: str, table: str, lookback_hours: float) -> pd.DataFrame:
    """A feature table's rows for online lookups, read with delta-rs (only recent files' rows are scanned)."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    dataset = DeltaTable(f"{tables_root.rstrip('/')}/{table}").to_pyarrow_dataset()
    newest = pc.max(dataset.to_table(columns=[TS])[TS]).as_py()
    if newest is None:
        return dataset.to_table().to_pandas()
    # A day before the lookback keeps each zip's last earlier row for zips quiet for up to a day.
    horizon = newest - dt.timedelta(hours=lookback_hours + 24)
    frame = dataset.to_table(filter=pc.field(TS) >= pc.scalar(horizon)).to_pandas()
    return keep(frame, lookback_hours)


class OnlineFeatures:
    """The current snapshot, swapped atomically by ``refresh``."""

    def __init__(self, pickup: pd.DataFrame, dropoff: pd.DataFrame, tables_root: Optional[str] = None,
                 lookback_hours: float = 24.0):
        self.tables_root = tables_root
        self.lookback_hours = lookback_hours
        self.snapshot = Snapshot(pickup, dropoff, dt.datetime.now(dt.timezone.utc), "bundle",
                                 OnlineInputs(pickup, dropoff))
        self.refreshes = self.refresh_failures = 0
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Reload from the Delta tables; False (and the old rows kept) when that fails or nothing is configured."""
        if not self.tables_root:
            return False
        try:
            pickup = read_delta(self.tables_root, PICKUP_TABLE, self.lookback_hours)
            dropoff = read_delta(self.tables_root, DROPOFF_TABLE, self.lookback_hours)
            inputs = OnlineInputs(pickup, dropoff)
        except Exception as exc:  # storage errors of any kind: keep serving the rows we have
            with self._lock:
                self.refresh_failures += 1
            logger.warning("online features not refreshed from %s: %s: %s", self.tables_root, type(exc).__name__,
                           str(exc)[:300])
            return False
        with self._lock:
            self.snapshot = Snapshot(pickup, dropoff, dt.datetime.now(dt.timezone.utc), self.tables_root, inputs)
            self.refreshes += 1
        logger.info("online features refreshed: %d pickup and %d dropoff rows, newest %s", len(pickup),
                    len(dropoff), self.snapshot.newest)
        return True
