"""Feature functions: windowed pickup/dropoff aggregates, lookup keys and the point-in-time join.

Time semantics (all timestamps are instants; hours and weekdays are read in the Spark session time zone, which
the local session sets to UTC):

* A feature row keyed ``(zip, ts)`` describes the trips of the window ``[ts - length, ts)``: it only ever
  contains trips that started (pickup) or ended (dropoff) strictly before ``ts``.
* ``pickup_features(trips, start, end)`` returns the rows whose ``ts`` lies in ``[start, end)``. The first windows
  of the range reach back before ``start``, so ``trips`` should cover ``[start - 1 hour, end)``; rows outside
  that span are ignored. Adjacent ranges therefore produce disjoint keys, and recomputing a range with the
  same trips yields the same rows.
* A trip's lookup key is its timestamp rounded *down* to the feature grid, and the point-in-time join attaches
  the latest feature row with ``ts <= key``. Because ``key <= trip time`` and a row only holds trips before its
  ``ts``, no trip ever sees itself or anything later.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from pyspark.sql import Column, DataFrame, GroupedData, Window
from pyspark.sql import functions as F

from taxi_fares.aggregates import one_row
from taxi_fares.columns import (DROPOFF_COUNT, DROPOFF_FEATURE_COLUMNS, DROPOFF_IS_WEEKEND, DROPOFF_LOOKUP_TS,
                                DROPOFF_TS, DROPOFF_WINDOW_SECONDS, DROPOFF_ZIP, FARE, FEATURE_KEYS, LABEL,
                                MODEL_FEATURES, PICKUP_COUNT, PICKUP_FEATURE_COLUMNS, PICKUP_HOUR, PICKUP_LOOKUP_TS,
                                PICKUP_MEAN_FARE, PICKUP_SLIDE_SECONDS, PICKUP_TS, PICKUP_WEEKDAY,
                                PICKUP_WINDOW_SECONDS, PICKUP_ZIP, TS, ZIP)
from taxi_fares.schema import MAX_TRIP_HOURS

DateLike = Union[str, dt.date, dt.datetime]
# Names re-exported for callers that read them from here.
__all__ = ["DROPOFF_COUNT", "DROPOFF_IS_WEEKEND", "FEATURE_KEYS", "LABEL", "MODEL_FEATURES", "PICKUP_COUNT",
           "PICKUP_MEAN_FARE", "PICKUP_HOUR", "PICKUP_WEEKDAY", "DROPOFF_LOOKUP_TS", "PICKUP_LOOKUP_TS",
           "add_lookup_keys", "add_time_features", "dropoff_features", "filled_grid", "in_range", "join_features",
           "model_input_columns", "pickup_features", "point_in_time_join", "range_spans", "round_down", "to_datetime",
           "DateLike", "GRID_MAX_ROWS", "Span"]


def to_datetime(value: DateLike) -> dt.datetime:
    """A date, datetime or ISO string as a naive datetime (dates mean midnight)."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return dt.datetime.fromisoformat(str(value))


def _check_range(start: DateLike, end: DateLike) -> tuple[dt.datetime, dt.datetime]:
    start_dt, end_dt = to_datetime(start), to_datetime(end)
    if end_dt <= start_dt:
        raise ValueError(f"end ({end_dt.isoformat()}) must be after start ({start_dt.isoformat()})")
    return start_dt, end_dt


def in_range(ts: Column, start: DateLike, end: DateLike) -> Column:
    """``start <= ts < end``: the half-open range used everywhere in this package."""
    start_dt, end_dt = _check_range(start, end)
    return (ts >= F.lit(start_dt)) & (ts < F.lit(end_dt))


def round_down(ts: Column, seconds: int) -> Column:
    """Round a timestamp down to a multiple of ``seconds`` since the epoch (the feature-window grid)."""
    return F.timestamp_seconds(F.floor(F.unix_timestamp(ts) / seconds) * seconds)


def _windowed(trips: DataFrame, ts_col: str, zip_col: str, length_s: int, slide_s: int,
              start: DateLike, end: DateLike) -> tuple[GroupedData, dt.datetime, dt.datetime]:
    """Trips grouped by zip and (sliding) window, reading only the trips those windows can hold.

    Returns (grouped data, start, end) so the caller can keep the windows whose end lies in [start, end).
    """
    start_dt, end_dt = _check_range(start, end)
    lookback = start_dt - dt.timedelta(seconds=length_s)
    window = F.window(F.col(ts_col), f"{length_s} seconds", f"{slide_s} seconds")
    return (
        trips
        .filter(in_range(F.col(ts_col), lookback, end_dt) & F.col(zip_col).isNotNull())
        .groupBy(F.col(zip_col).alias(ZIP), window.alias("w"))
    ), start_dt, end_dt


def _keep_range(df: DataFrame, start_dt: dt.datetime, end_dt: dt.datetime) -> DataFrame:
    return df.filter(in_range(F.col(TS), start_dt, end_dt))


def pickup_features(trips: DataFrame, start_date: DateLike, end_date: DateLike) -> DataFrame:
    """Per pickup zip: mean fare and trip count over a 1-hour window sliding every 15 minutes."""
    grouped, start_dt, end_dt = _windowed(trips, PICKUP_TS, PICKUP_ZIP, PICKUP_WINDOW_SECONDS,
                                          PICKUP_SLIDE_SECONDS, start_date, end_date)
    features = grouped.agg(
        F.mean(FARE).alias(PICKUP_MEAN_FARE),
        F.count(F.lit(1)).alias(PICKUP_COUNT),
    ).select(ZIP, F.col("w.end").alias(TS), PICKUP_MEAN_FARE, PICKUP_COUNT)
    return _keep_range(features, start_dt, end_dt)


def dropoff_features(trips: DataFrame, start_date: DateLike, end_date: DateLike) -> DataFrame:
    """Per dropoff zip: trip count over a 30-minute tumbling window, and whether that window is on a weekend.

    The weekend flag is read from the window's start, the day its trips ended on.
    """
    grouped, start_dt, end_dt = _windowed(trips, DROPOFF_TS, DROPOFF_ZIP, DROPOFF_WINDOW_SECONDS,
                                          DROPOFF_WINDOW_SECONDS, start_date, end_date)
    features = grouped.agg(F.count(F.lit(1)).alias(DROPOFF_COUNT)).select(
        ZIP,
        F.col("w.end").alias(TS),
        DROPOFF_COUNT,
        F.dayofweek(F.col("w.start")).isin(1, 7).alias(DROPOFF_IS_WEEKEND),
    )
    return _keep_range(features, start_dt, end_dt)


def add_lookup_keys(trips: DataFrame) -> DataFrame:
    """Add the pickup (15-minute grid) and dropoff (30-minute grid) lookup timestamps, rounded down."""
    return trips.withColumns({
        PICKUP_LOOKUP_TS: round_down(F.col(PICKUP_TS), PICKUP_SLIDE_SECONDS),
        DROPOFF_LOOKUP_TS: round_down(F.col(DROPOFF_TS), DROPOFF_WINDOW_SECONDS),
    })


def add_time_features(trips: DataFrame) -> DataFrame:
    """Hour of day and day of week (1 = Sunday) of the pickup: known when the trip starts."""
    return trips.withColumns({
        PICKUP_HOUR: F.hour(PICKUP_TS),
        PICKUP_WEEKDAY: F.dayofweek(PICKUP_TS),
    })


def point_in_time_join(left: DataFrame, features: DataFrame, left_zip: str, left_ts: str,
                       feature_cols: Sequence[str]) -> DataFrame:
    """Attach to each ``left`` row the latest feature row of the same zip with ``ts <= left_ts``.

    Implemented as an as-of join: features and left rows are unioned, sorted per zip by time (a feature row
    sorts before a left row with the same timestamp, so "at" counts), and each left row takes the last
    feature struct seen. It scales like a sort, unlike a range join. Left rows with no earlier feature row get
    nulls. ``left`` keeps its row count and columns.
    """
    helper = ["_pit_zip", "_pit_ts", "_pit_order", "_pit_features"]
    clash = [c for c in list(feature_cols) + helper if c in left.columns]
    if clash:
        raise ValueError(f"left frame already has column(s) {clash}")
    feature_rows = features.select(
        F.col(ZIP).alias("_pit_zip"),
        F.col(TS).alias("_pit_ts"),
        F.lit(0).alias("_pit_order"),
        F.struct(*feature_cols).alias("_pit_features"),
    )
    left_rows = left.select(
        "*",
        F.col(left_zip).alias("_pit_zip"),
        F.col(left_ts).alias("_pit_ts"),
        F.lit(1).alias("_pit_order"),
    )
    window = (Window.partitionBy("_pit_zip").orderBy("_pit_ts", "_pit_order")
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    return (
        left_rows.unionByName(feature_rows, allowMissingColumns=True)
        .withColumn("_pit_match", F.last("_pit_features", ignorenulls=True).over(window))
        .filter(F.col("_pit_order") == 1)
        .select(*[F.col(c) for c in left.columns], *[F.col(f"_pit_match.{c}").alias(c) for c in feature_cols])
    )


def filled_grid(features: DataFrame, feature_cols: Sequence[str], zips: Sequence[int], first_epoch: int,
                last_epoch: int, step_seconds: int) -> DataFrame:
    """The as-of rule applied to a grid: each of ``zips`` times each slot ``first``, ``first + step``, ...,
    ``last`` (epoch seconds), with the latest feature row at or before the slot (nulls where there is none).

    Columns ``_grid_zip``, ``_grid_key`` and ``feature_cols``; len(zips) x slots rows, however many trips.
    """
    spark = features.sparkSession
    slots = (last_epoch - first_epoch) // step_seconds + 1
    zip_type = features.schema[ZIP].dataType.simpleString()
    grid = (spark.createDataFrame([(z,) for z in zips], f"_grid_zip {zip_type}")
            .crossJoin(spark.range(slots).select(
                F.timestamp_seconds(F.lit(first_epoch) + F.col("id") * step_seconds).alias("_grid_key"))))
    # Only these zips' rows, and none after the last slot, can be the latest at or before a slot.
    relevant = features.filter(F.col(ZIP).isin(list(zips)) & (F.col(TS) <= F.timestamp_seconds(F.lit(last_epoch))))
    return point_in_time_join(grid, relevant, "_grid_zip", "_grid_key", feature_cols)


# A filled grid (zips x slots) up to this many rows is worth building and broadcast to every task; beyond it (a
# range of years, thousands of zips) the joins sort instead.
GRID_MAX_ROWS = 2_000_000

_JOINS = (
    (PICKUP_ZIP, PICKUP_LOOKUP_TS, PICKUP_FEATURE_COLUMNS, PICKUP_SLIDE_SECONDS),
    (DROPOFF_ZIP, DROPOFF_LOOKUP_TS, DROPOFF_FEATURE_COLUMNS, DROPOFF_WINDOW_SECONDS),
)


@dataclass(frozen=True)
class Span:
    """Where one join's lookup keys lie: grid slots ``first``..``last`` (epoch seconds) and ``zips``, the zips of
    its feature rows up to ``last``. ``rows_in_range``: whether any feature row lies in the pickup range itself
    (``range_spans``; spans taken from the trips leave it True)."""

    first: int
    last: int
    zips: tuple[int, ...]
    rows_in_range: bool = True


def join_features(trips: DataFrame, pickup: DataFrame, dropoff: DataFrame, grid: bool = True,
                  spans: Optional[dict[str, Span]] = None) -> DataFrame:
    """Trips with lookup keys, time features, and their point-in-time pickup and dropoff features.

    The lookup keys lie on a fixed grid (15 and 30 minutes), and so do the feature rows (window ends). With
    ``grid`` (the default), the as-of rule is applied once to every (zip, slot) of the span the trips' keys lie
    in (``filled_grid``, small), and each trip takes its features by an equi-join on (zip, key) with the filled
    grid broadcast: no sort or shuffle of the trips. The spans come from ``spans`` when the caller knows them
    (``range_spans`` of the range the trips were picked up in), so the trips are read only once, by the join;
    without them one aggregation over the trips finds their keys' span and zips. A span too large for that
    (``GRID_MAX_ROWS``) falls back, per join, to ``point_in_time_join``, which sorts trips and feature rows
    together; ``grid=False`` always does. All give the same rows.
    """
    keyed = add_time_features(add_lookup_keys(trips))
    if grid:
        clash = [c for c in ("_grid_zip", "_grid_key", "_grid_id") if c in keyed.columns]
        if clash:
            raise ValueError(f"trips already have column(s) {clash}")
        spans = spans or _trip_spans(keyed)
    joined = keyed
    for features, (zip_col, key, columns, step) in zip((pickup, dropoff), _JOINS):
        span = spans[key] if grid and spans is not None else None
        if span is None or not span.zips or len(span.zips) * ((span.last - span.first) // step + 1) > GRID_MAX_ROWS:
            joined = point_in_time_join(joined, features, zip_col, key, columns)
            continue
        filled = filled_grid(features, columns, span.zips, span.first, span.last, step).select(
            _grid_id(F.col("_grid_zip"), F.col("_grid_key"), step).alias("_grid_id"), *columns)
        on = _grid_id(F.col(zip_col), F.col(key), step) == F.col("_grid_id")
        joined = joined.join(F.broadcast(filled), on, "left").drop("_grid_id")
    return joined


def _grid_id(zip_code: Column, key: Column, step: int) -> Column:
    """(zip, grid slot) as one long: the broadcast join then probes a hash table of longs, about a quarter faster
    than of (int, timestamp) pairs. Unique for any int zip and slot (slot numbers fit in 32 bits); null
    when either is."""
    return zip_code.cast("long") * F.lit(1 << 32) + F.floor(F.unix_timestamp(key) / F.lit(step))


def _trip_spans(keyed: DataFrame) -> dict[str, Span]:
    """{lookup key: its Span} of the trips, by one aggregation over them."""
    row = one_row(keyed, *[agg for zip_col, key, _, _ in _JOINS for agg in (
        F.min(F.unix_timestamp(key)).alias(f"first_{key}"), F.max(F.unix_timestamp(key)).alias(f"last_{key}"),
        F.collect_set(zip_col).alias(f"zips_{key}"))])
    return {key: Span(row[f"first_{key}"], row[f"last_{key}"], tuple(sorted(row[f"zips_{key}"] or [])))
            for _, key, _, _ in _JOINS}


# Margin added on each side of a span derived from a range: it absorbs any difference between this process's
# reading of a naive date and the Spark session's time zone; the extra grid slots match no trip.
_SPAN_MARGIN_SECONDS = 2 * 86_400


def range_spans(pickup: DataFrame, dropoff: DataFrame, pickup_range: tuple[DateLike, DateLike]
                ) -> dict[str, Span]:
    """{lookup key: its Span} for trips picked up in ``pickup_range``: every pickup lies in it and every dropoff
    at most ``MAX_TRIP_HOURS`` after its pickup, as validated trips of a range do. One small query over both
    feature tables finds each span's zips and whether the range itself has feature rows (a zip without feature
    rows gets nulls either way)."""
    start, end = _check_range(*pickup_range)
    reach = {PICKUP_LOOKUP_TS: 0, DROPOFF_LOOKUP_TS: MAX_TRIP_HOURS * 3600}
    bounds, per_zip = {}, []
    for index, (features, (_, key, _, step)) in enumerate(zip((pickup, dropoff), _JOINS)):
        first = (int(start.timestamp()) - _SPAN_MARGIN_SECONDS) // step * step
        last = (int(end.timestamp()) + reach[key] + _SPAN_MARGIN_SECONDS) // step * step
        bounds[key] = (first, last)
        per_zip.append(features.filter(F.col(TS) <= F.timestamp_seconds(F.lit(last)))
                       .groupBy(F.lit(index).alias("_join"), F.col(ZIP).alias("_zip"))
                       .agg(F.max(in_range(F.col(TS), start, end)).alias("_in_range")))
    rows = per_zip[0].unionByName(per_zip[1]).collect()
    spans = {}
    for index, (_, key, _, _) in enumerate(_JOINS):
        mine = [row for row in rows if row["_join"] == index]
        spans[key] = Span(*bounds[key], tuple(sorted(row["_zip"] for row in mine)),
                          any(row["_in_range"] for row in mine))
    return spans


def model_input_columns() -> list[Column]:
    """The model's input columns as double, for training and scoring alike."""
    return [F.col(c).cast("double").alias(c) for c in MODEL_FEATURES]
