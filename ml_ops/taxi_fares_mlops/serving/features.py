"""Online features: the feature rows a request's lookup can take, from the bundle's snapshot and then, on a
schedule, from the Delta feature tables themselves (read with delta-rs, no Spark).

What is kept per table are the rows at or after ``since`` (``lookback_hours`` before the table's newest row), plus
each zip's latest row before ``since`` (``taxi_fares.online.latest_rows``). A lookup key at or after ``since``
then finds exactly the row batch scoring would give it, under the same as-of rule; a key before ``since`` may not
(the rows that would answer it were left behind), so ``since`` is where the window the service holds begins, and
a trip whose lookup key lies before it is refused (``Snapshot.outside``) rather than answered with other features.
A key after the newest row takes the newest row, as batch scoring would: features are as-of, and how old they are
is in every answer and, past a maximum age, in the readiness (``taxi_fares_mlops.serving.app``).

A refresh that fails (storage down, a table being rewritten) keeps the rows already loaded and is logged; the next
refresh tries again.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pandas as pd

from taxi_fares.columns import DROPOFF_TS, PICKUP_TS, TS, ZIP
from taxi_fares.online import OnlineInputs, latest_rows, lookup_keys

logger = logging.getLogger(__name__)

PICKUP_TABLE, DROPOFF_TABLE = "pickup_features", "dropoff_features"

# How delta-rs (object_store) authenticates to ADLS with a pod's Azure workload identity: the identity's client id,
# its tenant and the federated token file the AKS webhook mounts, all three set by the webhook in these variables.
WORKLOAD_IDENTITY = "workload-identity"
IDENTITIES = (WORKLOAD_IDENTITY,)
WORKLOAD_IDENTITY_OPTIONS = {"azure_client_id": "AZURE_CLIENT_ID", "azure_tenant_id": "AZURE_TENANT_ID",
                             "azure_federated_token_file": "AZURE_FEDERATED_TOKEN_FILE",
                             "azure_authority_host": "AZURE_AUTHORITY_HOST"}


def storage_options(identity: Optional[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """delta-rs storage options for ``identity`` (None: delta-rs' defaults, e.g. a local folder). A workload
    identity without the webhook's variables is a ValueError naming them: the pod is missing its identity label or
    service account."""
    if identity is None:
        return {}
    if identity != WORKLOAD_IDENTITY:
        raise ValueError(f"unknown feature storage identity {identity!r}: one of {', '.join(IDENTITIES)}")
    options = {key: environ[name] for key, name in WORKLOAD_IDENTITY_OPTIONS.items() if environ.get(name)}
    missing = [name for key, name in WORKLOAD_IDENTITY_OPTIONS.items()
               if key not in options and key != "azure_authority_host"]
    if missing:
        raise ValueError(f"workload identity: {', '.join(missing)} not set (the pod needs the label "
                         f"azure.workload.identity/use=true and a service account bound to the identity)")
    return options


@dataclass(frozen=True)
class Held:
    """One table's rows and the window of lookup keys they answer exactly: ``since`` .. ``newest`` (UTC)."""

    rows: pd.DataFrame
    since: Optional[pd.Timestamp]
    newest: Optional[pd.Timestamp]

    @classmethod
    def of(cls, rows: pd.DataFrame, lookback_hours: float) -> "Held":
        if rows.empty:
            return cls(rows, None, None)
        newest = pd.to_datetime(rows[TS], utc=True).max()
        return cls(rows, newest - pd.Timedelta(hours=lookback_hours), newest)


@dataclass(frozen=True)
class Snapshot:
    """Feature rows, the lookups built from them (``taxi_fares.online.OnlineInputs``), and where they came from:
    ``source`` read at ``loaded_at`` (the bundle's rows: when they were packaged)."""

    pickup_held: Held
    dropoff_held: Held
    loaded_at: dt.datetime
    source: str
    inputs: OnlineInputs

    @property
    def pickup(self) -> pd.DataFrame:
        return self.pickup_held.rows

    @property
    def dropoff(self) -> pd.DataFrame:
        return self.dropoff_held.rows

    @property
    def newest(self) -> Optional[str]:
        times = [h.newest for h in (self.pickup_held, self.dropoff_held) if h.newest is not None]
        return max(times).isoformat() if times else None

    @property
    def as_of(self) -> Optional[pd.Timestamp]:
        """The time the features describe: the older of the two tables' newest rows (a trip's inputs come from
        both)."""
        times = [h.newest for h in (self.pickup_held, self.dropoff_held)]
        return None if any(t is None for t in times) else min(times)

    @property
    def window_start(self) -> Optional[pd.Timestamp]:
        """The earliest lookup key both tables answer exactly."""
        times = [h.since for h in (self.pickup_held, self.dropoff_held)]
        return None if any(t is None for t in times) else max(times)

    def outside(self, trips: pd.DataFrame) -> list[tuple[int, str, str]]:
        """(trip position, field, why) for each trip whose pickup or dropoff lookup key lies before the window its
        table holds: its features are not held, and any answer would be given with other features."""
        pickup_keys, dropoff_keys = lookup_keys(trips)
        return self.outside_keys(pickup_keys, dropoff_keys,
                                 lambda i, column: pd.Timestamp(trips[column].iloc[i]))

    def outside_keys(self, pickup_keys: np.ndarray, dropoff_keys: np.ndarray,
                     time_of: Callable[[int, str], Any]) -> list[tuple[int, str, str]]:
        """``outside`` of trips given by their lookup keys (``time_of(i, column)``: trip i's time, for the message)."""
        problems = []
        for field, held, column, keys in (("pickup_time", self.pickup_held, PICKUP_TS, pickup_keys),
                                          ("dropoff_time", self.dropoff_held, DROPOFF_TS, dropoff_keys)):
            if held.since is None or held.newest is None:
                continue
            for i in np.flatnonzero(keys < held.since.value).tolist():
                when = _naive(pd.Timestamp(time_of(i, column)))
                problems.append((i, field, f"{field} {when}: features held cover {_naive(held.since)}.."
                                           f"{_naive(held.newest)}; older trips are scored by batch"))
        return sorted(problems, key=lambda problem: problem[0])  # by trip, the pickup first


def _naive(ts: pd.Timestamp) -> str:
    """A UTC instant as the request writes it (no zone)."""
    return (ts.tz_convert("UTC") if ts.tzinfo else ts).tz_localize(None).isoformat()


def keep(features: pd.DataFrame, lookback_hours: float) -> pd.DataFrame:
    """The rows an online lookup can take: ``lookback_hours`` before the newest row, and each zip's row before."""
    if features.empty:
        return features
    newest = pd.to_datetime(features[TS], utc=True).max()
    return latest_rows(features, newest - pd.Timedelta(hours=lookback_hours))


def read_delta(tables_root: str, table: str, lookback_hours: float,
               options: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
    """A feature table's rows for online lookups, read with delta-rs from a folder or an ``abfss://`` URI
    (``options``: delta-rs storage options). Two columns of the whole table are scanned to find the newest row and
    each zip's latest row before the window; only those rows and the window's are read in full."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    dataset = DeltaTable(f"{tables_root.rstrip('/')}/{table}", storage_options=dict(options or {})
                         ).to_pyarrow_dataset()
    keys = dataset.to_table(columns=[ZIP, TS])
    newest = pc.max(keys[TS]).as_py()
    if newest is None:
        return dataset.to_table().to_pandas()
    since = pa.scalar(newest - dt.timedelta(hours=lookback_hours), type=keys.schema.field(TS).type)
    earlier = keys.filter(pc.less(keys[TS], since)).group_by(ZIP).aggregate([(TS, "max")])
    wanted = pc.field(TS) >= since
    if earlier.num_rows:
        wanted = wanted | pc.field(TS).isin(pc.unique(earlier[f"{TS}_max"]))
    return keep(dataset.to_table(filter=wanted).to_pandas(), lookback_hours)


class OnlineFeatures:
    """The current snapshot, swapped atomically by ``refresh``. The bundle's rows hold the window the packager
    kept (``bundle_lookback_hours`` before each table's newest row, packaged at ``bundle_read_at``)."""

    def __init__(self, pickup: pd.DataFrame, dropoff: pd.DataFrame, tables_root: Optional[str] = None,
                 lookback_hours: float = 24.0, *, bundle_lookback_hours: Optional[float] = None,
                 bundle_read_at: Optional[dt.datetime] = None, identity: Optional[str] = None):
        self.tables_root = tables_root
        self.lookback_hours = lookback_hours
        self.identity = identity
        packaged = bundle_lookback_hours or lookback_hours
        self.snapshot = Snapshot(Held.of(pickup, packaged), Held.of(dropoff, packaged),
                                 bundle_read_at or dt.datetime.now(dt.timezone.utc), "bundle",
                                 OnlineInputs(pickup, dropoff))
        self.refreshes = self.refresh_failures = 0
        self.last_failure: Optional[str] = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Reload from the Delta tables; False (and the old rows kept) when that fails or nothing is configured."""
        if not self.tables_root:
            return False
        try:
            options = storage_options(self.identity)
            pickup = read_delta(self.tables_root, PICKUP_TABLE, self.lookback_hours, options)
            dropoff = read_delta(self.tables_root, DROPOFF_TABLE, self.lookback_hours, options)
            inputs = OnlineInputs(pickup, dropoff)
        except Exception as exc:  # storage errors of any kind: keep serving the rows we have
            with self._lock:
                self.refresh_failures += 1
                self.last_failure = f"{type(exc).__name__}: {str(exc)[:300]}"
            logger.warning("online features not refreshed from %s: %s", self.tables_root, self.last_failure)
            return False
        with self._lock:
            self.snapshot = Snapshot(Held.of(pickup, self.lookback_hours), Held.of(dropoff, self.lookback_hours),
                                     dt.datetime.now(dt.timezone.utc), self.tables_root, inputs)
            self.refreshes += 1
            self.last_failure = None
        logger.info("online features refreshed: %d pickup and %d dropoff rows, newest %s", len(pickup),
                    len(dropoff), self.snapshot.newest)
        return True
