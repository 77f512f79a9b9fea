"""The model's inputs for trips in pandas, without Spark: what an online service computes for a request.

It follows ``taxi_fares.features`` rule for rule, so a trip gets the same inputs online as in batch scoring:

* lookup keys: the pickup time rounded down to the 15-minute grid, the dropoff time to the 30-minute grid
  (whole seconds since the epoch, as Spark's ``unix_timestamp``);
* time features: hour of day and day of week (1 = Sunday) of the pickup, read in UTC (the local Spark session's
  time zone and Databricks' default);
* features: per zip, the latest feature row with ``ts <= key`` (the as-of rule), nulls where there is none;
* every input as a double (``model_input_columns``), nulls as NaN.

Feature rows come as pandas frames with the feature tables' columns (``zip``, ``ts`` and the feature columns).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from taxi_fares.columns import (DISTANCE, DROPOFF_FEATURE_COLUMNS, DROPOFF_LOOKUP_TS, DROPOFF_TS,
                                DROPOFF_WINDOW_SECONDS, DROPOFF_ZIP, MODEL_FEATURES, PICKUP_FEATURE_COLUMNS,
                                PICKUP_HOUR, PICKUP_LOOKUP_TS, PICKUP_SLIDE_SECONDS, PICKUP_TS, PICKUP_WEEKDAY,
                                PICKUP_ZIP, TS, ZIP)

__all__ = ["FeatureLookup", "OnlineInputs", "keys_of_seconds", "latest_rows", "lookup_keys", "model_inputs",
           "prepare"]


def _utc(values: pd.Series) -> pd.Series:
    """Instants in UTC at nanosecond precision; naive values are read as UTC (as the local Spark session reads
    them). One precision for all: delta-rs reads Delta timestamps as microseconds, and an as-of merge needs
    both sides alike."""
    return pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """Whole seconds since the epoch, rounded down (Spark's ``unix_timestamp``)."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[s]").astype(np.int64)


def _round_down(ts: pd.Series, seconds: int) -> pd.Series:
    epoch = _epoch_seconds(ts) // seconds * seconds
    return pd.Series(pd.to_datetime(epoch, unit="s", utc=True), index=ts.index)


def prepare(features: pd.DataFrame) -> pd.DataFrame:
    """Feature rows as the as-of lookups read them (int zips, UTC nanosecond times, sorted by time)."""
    rows = features.copy()
    rows[TS] = _utc(rows[TS])
    rows[ZIP] = rows[ZIP].astype("int64")
    return rows.sort_values(TS, kind="stable").reset_index(drop=True)


def _as_of(left: pd.DataFrame, key: str, zip_col: str, rows: pd.DataFrame, columns: Sequence[str]
           ) -> pd.DataFrame:
    """``left`` with the latest feature row of its zip at or before ``key`` (nulls where there is none)."""
    ordered = left.reset_index().rename(columns={"index": "_order"})
    ordered["_zip"] = ordered[zip_col].astype("int64")
    right = rows[[ZIP, TS, *columns]].rename(columns={ZIP: "_zip", TS: "_ts"})
    merged = pd.merge_asof(ordered.sort_values(key), right, left_on=key, right_on="_ts", by="_zip",
                           direction="backward", allow_exact_matches=True)
    return merged.sort_values("_order").set_index("_order").drop(columns=["_zip", "_ts"]).rename_axis(None)


def model_inputs(trips: pd.DataFrame, pickup: pd.DataFrame, dropoff: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns (``MODEL_FEATURES``, all double) for ``trips`` (pickup and dropoff times, zips,
    distance), in the trips' order, from the pickup and dropoff feature rows given. (A service answering many
    small requests uses ``OnlineInputs``, which gives the same values without a merge per call.)"""
    missing = [c for c in (PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE) if c not in trips.columns]
    if missing:
        raise ValueError(f"trips are missing column(s) {missing}")
    frame = trips[[PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE]].reset_index(drop=True).copy()
    pickup_ts, dropoff_ts = _utc(frame[PICKUP_TS]), _utc(frame[DROPOFF_TS])
    frame[PICKUP_LOOKUP_TS] = _round_down(pickup_ts, PICKUP_SLIDE_SECONDS)
    frame[DROPOFF_LOOKUP_TS] = _round_down(dropoff_ts, DROPOFF_WINDOW_SECONDS)
    frame[PICKUP_HOUR] = pickup_ts.dt.hour
    frame[PICKUP_WEEKDAY] = (pickup_ts.dt.dayofweek + 1) % 7 + 1
    pickup, dropoff = prepare(pickup), prepare(dropoff)
    frame = _as_of(frame, PICKUP_LOOKUP_TS, PICKUP_ZIP, pickup, PICKUP_FEATURE_COLUMNS)
    frame = _as_of(frame, DROPOFF_LOOKUP_TS, DROPOFF_ZIP, dropoff, DROPOFF_FEATURE_COLUMNS)
    out = pd.DataFrame(index=frame.index)
    for c in MODEL_FEATURES:
        out[c] = pd.to_numeric(frame[c].astype("object").where(frame[c].notna(), np.nan), errors="coerce"
                               ).astype("float64")
    return out


def latest_rows(features: pd.DataFrame, since: Any) -> pd.DataFrame:
    """The feature rows an online service keeps: those at or after ``since``, plus each zip's latest row before
    it (the one a lookup key at ``since`` would take)."""
    ts = _utc(features[TS])
    since = pd.Timestamp(since).tz_localize("UTC") if pd.Timestamp(since).tzinfo is None else pd.Timestamp(since)
    recent = features[ts >= since]
    before = features[ts < since]
    last = before.loc[_utc(before[TS]).groupby(before[ZIP]).idxmax()] if len(before) else before
    return pd.concat([last, recent]).sort_values([ZIP, TS]).reset_index(drop=True)


NANOS_PER_SECOND = 1_000_000_000


def lookup_keys(trips: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each trip's pickup and dropoff lookup keys, as UTC nanoseconds since the epoch: its pickup time rounded down
    to the 15-minute grid, its dropoff time to the 30-minute grid (the keys ``model_inputs`` looks up)."""
    return keys_of_seconds(_epoch_seconds(_utc(trips[PICKUP_TS])), _epoch_seconds(_utc(trips[DROPOFF_TS])))


def keys_of_seconds(pickup_s: np.ndarray, dropoff_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lookup_keys`` of times given as whole UTC seconds since the epoch (rounded down)."""
    return (pickup_s // PICKUP_SLIDE_SECONDS * PICKUP_SLIDE_SECONDS * NANOS_PER_SECOND,
            dropoff_s // DROPOFF_WINDOW_SECONDS * DROPOFF_WINDOW_SECONDS * NANOS_PER_SECOND)


def _as_double(values: pd.Series) -> np.ndarray:
    """A column as float64, nulls (None, NaN, NaT-free booleans included) as NaN."""
    return pd.to_numeric(values.astype("object").where(values.notna(), np.nan), errors="coerce"
                         ).astype("float64").to_numpy()


class FeatureLookup:
    """One table's feature rows arranged for the as-of rule without a merge: ``model_inputs`` merges with pandas,
    which costs milliseconds however few the trips; this answers all of a request's trips with one binary search.

    Each row gets one sortable key: its zip's position among the table's zips times the table's span of seconds,
    plus its time in whole seconds after the first row's, rounded up (a lookup key is a whole second, and a row is
    at or before a whole second exactly when its time rounded up to seconds is). Rows sorted by that key hold each
    zip's rows together, by time; a trip's latest row is the last one at or before its own key, if it is of its zip.
    """

    def __init__(self, features: pd.DataFrame, columns: Sequence[str]):
        rows = prepare(features)  # sorted by time: a stable sort by the key keeps equal seconds in time order
        self.columns = tuple(columns)
        values = np.column_stack([_as_double(rows[c]) for c in columns]) if len(rows) else \
            np.empty((0, len(columns)))
        nanos = rows[TS].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        seconds = -(-nanos // NANOS_PER_SECOND)
        zips = rows[ZIP].to_numpy(dtype=np.int64)
        self.zips = np.unique(zips)
        self.first = int(seconds.min()) if len(seconds) else 0
        self.span = int(seconds.max()) - self.first + 1 if len(seconds) else 1
        position = np.searchsorted(self.zips, zips)
        keys = position * self.span + (seconds - self.first)
        order = np.argsort(keys, kind="stable")
        self.keys, self.row_zip, self.values = keys[order], position[order], values[order]

    def lookup(self, zips: np.ndarray, keys_ns: np.ndarray) -> np.ndarray:
        """The latest row at or before each key (whole seconds, in nanoseconds), of the key's zip; NaN rows where
        there is none."""
        out = np.full((len(zips), len(self.columns)), np.nan)
        if not len(self.keys):
            return out
        position = np.searchsorted(self.zips, zips)
        known = self.zips[np.minimum(position, len(self.zips) - 1)] == zips
        # before the first row: the slot before the zip's (another zip's, or none); after the last: the zip's last
        offset = np.clip(np.asarray(keys_ns, dtype=np.int64) // NANOS_PER_SECOND - self.first, -1, self.span - 1)
        at = np.searchsorted(self.keys, position * self.span + offset, side="right") - 1
        found = known & (at >= 0) & (self.row_zip[np.maximum(at, 0)] == position)
        out[found] = self.values[at[found]]
        return out


class OnlineInputs:
    """``model_inputs`` for requests: the same inputs for the same trips, from lookups built once per refresh."""

    def __init__(self, pickup: pd.DataFrame, dropoff: pd.DataFrame):
        self.pickup = FeatureLookup(pickup, PICKUP_FEATURE_COLUMNS)
        self.dropoff = FeatureLookup(dropoff, DROPOFF_FEATURE_COLUMNS)

    def __call__(self, trips: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in (PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE) if c not in trips.columns]
        if missing:
            raise ValueError(f"trips are missing column(s) {missing}")
        matrix = self.matrix(_epoch_seconds(_utc(trips[PICKUP_TS])), _epoch_seconds(_utc(trips[DROPOFF_TS])),
                             trips[PICKUP_ZIP].to_numpy(dtype=np.int64), trips[DROPOFF_ZIP].to_numpy(dtype=np.int64),
                             _as_double(trips[DISTANCE].reset_index(drop=True)))
        return pd.DataFrame(matrix, columns=list(MODEL_FEATURES))

    def matrix(self, pickup_s: np.ndarray, dropoff_s: np.ndarray, pickup_zip: np.ndarray, dropoff_zip: np.ndarray,
               distance: np.ndarray) -> np.ndarray:
        """The model's inputs as one float64 array (rows: trips, columns: ``MODEL_FEATURES``) from the trips' times
        as whole UTC seconds since the epoch, their zips and distances: what a request needs, without a frame
        per column (pandas costs milliseconds per request however few the trips)."""
        pickup_key, dropoff_key = keys_of_seconds(pickup_s, dropoff_s)
        found_pickup = self.pickup.lookup(pickup_zip, pickup_key)
        found_dropoff = self.dropoff.lookup(dropoff_zip, dropoff_key)
        columns = {
            DISTANCE: np.asarray(distance, dtype="float64"),
            PICKUP_ZIP: pickup_zip.astype("float64"),
            DROPOFF_ZIP: dropoff_zip.astype("float64"),
            PICKUP_HOUR: (pickup_s // 3600 % 24).astype("float64"),
            # 1970-01-01 was a Thursday, Spark's day 5 (1 = Sunday).
            PICKUP_WEEKDAY: ((pickup_s // 86400 + 4) % 7 + 1).astype("float64"),
            **{c: found_pickup[:, i] for i, c in enumerate(PICKUP_FEATURE_COLUMNS)},
            **{c: found_dropoff[:, i] for i, c in enumerate(DROPOFF_FEATURE_COLUMNS)},
        }
        return np.column_stack([columns[c] for c in MODEL_FEATURES])
