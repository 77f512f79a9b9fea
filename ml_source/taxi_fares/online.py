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

from typing import Sequence

import numpy as np
import pandas as pd

from taxi_fares.columns import (DISTANCE, DROPOFF_FEATURE_COLUMNS, DROPOFF_LOOKUP_TS, DROPOFF_TS,
                                DROPOFF_WINDOW_SECONDS, DROPOFF_ZIP, MODEL_FEATURES, PICKUP_FEATURE_COLUMNS,
                                PICKUP_HOUR, PICKUP_LOOKUP_TS, PICKUP_SLIDE_SECONDS, PICKUP_TS, PICKUP_WEEKDAY,
                                PICKUP_ZIP, TS, ZIP)

__all__ = ["latest_rows", "model_inputs", "prepare"]


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
    """Feature rows as the as-of lookup reads them (int zips, UTC nanosecond times, sorted by time). A service
    prepares its rows once per refresh and passes ``prepared=True`` to ``model_inputs``."""
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


def model_inputs(trips: pd.DataFrame, pickup: pd.DataFrame, dropoff: pd.DataFrame, prepared: bool = False
                 ) -> pd.DataFrame:
    """The model's input columns (``MODEL_FEATURES``, all double) for ``trips`` (pickup and dropoff times, zips,
    distance), in the trips' order, from the pickup and dropoff feature rows given (``prepare``d already when
    ``prepared``)."""
    missing = [c for c in (PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE) if c not in trips.columns]
    if missing:
        raise ValueError(f"trips are missing column(s) {missing}")
    frame = trips[[PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE]].reset_index(drop=True).copy()
    pickup_ts, dropoff_ts = _utc(frame[PICKUP_TS]), _utc(frame[DROPOFF_TS])
    frame[PICKUP_LOOKUP_TS] = _round_down(pickup_ts, PICKUP_SLIDE_SECONDS)
    frame[DROPOFF_LOOKUP_TS] = _round_down(dropoff_ts, DROPOFF_WINDOW_SECONDS)
    frame[PICKUP_HOUR] = pickup_ts.dt.hour
    frame[PICKUP_WEEKDAY] = (pickup_ts.dt.dayofweek + 1) % 7 + 1
    if not prepared:
        pickup, dropoff = prepare(pickup), prepare(dropoff)
    frame = _as_of(frame, PICKUP_LOOKUP_TS, PICKUP_ZIP, pickup, PICKUP_FEATURE_COLUMNS)
    frame = _as_of(frame, DROPOFF_LOOKUP_TS, DROPOFF_ZIP, dropoff, DROPOFF_FEATURE_COLUMNS)
    out = pd.DataFrame(index=frame.index)
    for c in MODEL_FEATURES:
        out[c] = pd.to_numeric(frame[c].astype("object").where(frame[c].notna(), np.nan), errors="coerce"
                               ).astype("float64")
    return out


def latest_rows(features: pd.DataFrame, since) -> pd.DataFrame:
    """The feature rows an online service keeps: those at or after ``since``, plus each zip's latest row before
    it (the one a lookup key at ``since`` would take)."""
    ts = _utc(features[TS])
    since = pd.Timestamp(since).tz_localize("UTC") if pd.Timestamp(since).tzinfo is None else pd.Timestamp(since)
    recent = features[ts >= since]
    before = features[ts < since]
    last = before.loc[_utc(before[TS]).groupby(before[ZIP]).idxmax()] if len(before) else before
    return pd.concat([last, recent]).sort_values([ZIP, TS]).reset_index(drop=True)
