"""A deterministic synthetic NYC-taxi trip generator, built on ``spark.range``.

Every random draw is a hash of (row id, seed, draw number), so the rows depend only on the seed and the row
count: not on the number of partitions, the cluster or the order of evaluation. 100 million rows cost the
same code as 1,000; Spark does the work in parallel.

The fare follows a known formula plus Gaussian noise (``FARE_NOISE_SD``), so a good model's rmse should approach
that noise level while a constant (mean-fare) prediction cannot.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Mapping, Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.features import DateLike, to_datetime
from taxi_fares.schema import (DISTANCE, DROPOFF_TS, DROPOFF_ZIP, FARE, PICKUP_TS, PICKUP_ZIP,
                               RAW_TRIP_SCHEMA, TRIP_ID)

# Manhattan first (most pickups), then Brooklyn and Queens; the last two are the airports.
MANHATTAN_ZIPS = (10001, 10002, 10003, 10009, 10010, 10011, 10012, 10013, 10014, 10016, 10017, 10018, 10019,
                  10021, 10022, 10023, 10024, 10025, 10028, 10036, 10038, 10065, 10075, 10128, 10280)
OUTER_ZIPS = (11201, 11211, 11215, 11217, 11101, 11106, 11375, 11377)
AIRPORT_ZIPS = (11371, 11430)  # LaGuardia, JFK
ALL_ZIPS = MANHATTAN_ZIPS + OUTER_ZIPS + AIRPORT_ZIPS
# Numeric columns a drift specification may scale.
SHIFTABLE = (DISTANCE, FARE)

BASE_FARE = 3.0
PER_MILE = 2.5
PER_MINUTE = 0.35
RUSH_SURCHARGE = 1.0
NIGHT_SURCHARGE = 0.5
AIRPORT_SURCHARGE = 5.0
FARE_NOISE_SD = 1.0
MIN_FARE = 3.0

_TWO_53 = float(2 ** 53)


def _uniform(seed: int, draw: int) -> Column:
    """A uniform number in [0, 1) from the row id, the seed and the draw number."""
    h = F.xxhash64(F.col("id"), F.lit(seed), F.lit(draw))
    return F.pmod(h, F.lit(2 ** 53)).cast("double") / F.lit(_TWO_53)


def _normal(seed: int, draw: int) -> Column:
    """A standard normal number (Box-Muller on two uniform draws)."""
    u1 = F.lit(1.0) - _uniform(seed, draw)  # (0, 1], safe for log
    u2 = _uniform(seed, draw + 1)
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2 * math.pi) * u2)


def _pick(values: tuple[object, ...], u: Column) -> Column:
    """values[floor(u * len)], for u in [0, 1)."""
    index = F.least(F.floor(u * len(values)).cast("int"), F.lit(len(values) - 1)) + 1
    return F.element_at(F.array(*[F.lit(v) for v in values]), index)


def generate_trips(spark: SparkSession, rows: int, start: DateLike, end: DateLike, seed: int = 42,
                   partitions: Optional[int] = None, shift: Optional[Mapping[str, float]] = None,
                   outliers: float = 0.0) -> DataFrame:
    """``rows`` synthetic trips with pickups in [start, end) (UTC), with ``trip_id`` plus the raw-trip schema.

    ``shift`` multiplies numeric columns (``{"trip_distance": 1.5}``) after generation: a drifted range for the
    monitoring to find (the fares stay those of the unshifted trips, as when a meter is miscalibrated).
    ``outliers`` is the share of trips made extreme (distance x25, fare x8): valid values no model has seen.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    shift = dict(shift or {})
    unknown = sorted(set(shift) - set(SHIFTABLE))
    if unknown:
        raise ValueError(f"cannot shift column(s) {unknown}: shiftable columns are {', '.join(SHIFTABLE)}")
    bad = {k: v for k, v in shift.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"shift factors must be finite numbers > 0, got {bad}")
    if not (isinstance(outliers, (int, float)) and 0 <= outliers <= 1):
        raise ValueError(f"outliers must be a share in [0, 1], got {outliers!r}")
    start_dt, end_dt = to_datetime(start), to_datetime(end)
    if end_dt <= start_dt:
        raise ValueError(f"end ({end_dt.date()}) must be after start ({start_dt.date()})")
    start_epoch = int(start_dt.replace(tzinfo=dt.timezone.utc).timestamp())
    span_seconds = int((end_dt - start_dt).total_seconds())
    days = max(1, math.ceil(span_seconds / 86400))
    if partitions is None:
        # An even number of parts of at most 1M rows: the table a job reads then has at least two files, so even
        # a small range keeps two cores busy, and larger ones split into balanced waves.
        partitions = min(2000, 2 * max(1, math.ceil(rows / 2_000_000)))

    base = spark.range(0, rows, numPartitions=partitions)

    # Day of the trip, and whether it is a weekend (1970-01-01 was a Thursday: Monday=0 => (days + 3) % 7).
    day = F.floor(_uniform(seed, 0) * days)
    day_epoch = F.lit(start_epoch) + day * 86400
    weekday_mon0 = F.pmod(F.floor(day_epoch / 86400) + 3, F.lit(7))
    weekend = weekday_mon0 >= 5

    # Second of the day: rush-hour peaks on weekdays, a broad afternoon/evening bump at weekends.
    mix = _uniform(seed, 1)
    z_time = _normal(seed, 2)
    uniform_day = _uniform(seed, 4) * 86400
    weekday_secs = (F.when(mix < 0.3, 8.5 * 3600 + z_time * 1.2 * 3600)
                    .when(mix < 0.6, 18.0 * 3600 + z_time * 1.5 * 3600)
                    .otherwise(uniform_day))
    weekend_secs = F.when(mix < 0.5, 15.0 * 3600 + z_time * 4.0 * 3600).otherwise(uniform_day)
    second_of_day = F.pmod(F.floor(F.when(weekend, weekend_secs).otherwise(weekday_secs)), F.lit(86400))
    # Wrap into [start, end) when the range does not end on a day boundary.
    pickup_epoch = F.lit(start_epoch) + F.pmod(day * 86400 + second_of_day, F.lit(span_seconds))
    hour = F.floor(second_of_day / 3600)

    rush = (~weekend) & (((hour >= 7) & (hour < 10)) | ((hour >= 16) & (hour < 20)))
    night = (hour < 6) | (hour >= 22)

    # Zips: pickups skewed to Manhattan; 5% of dropoffs at an airport.
    non_airport = MANHATTAN_ZIPS + OUTER_ZIPS
    pickup_zip = _pick(non_airport, F.pow(_uniform(seed, 5), F.lit(2.0)))
    airport = _uniform(seed, 6) < 0.05
    dropoff_zip = F.when(airport, _pick(AIRPORT_ZIPS, _uniform(seed, 7))).otherwise(
        _pick(non_airport, F.pow(_uniform(seed, 8), F.lit(1.5))))

    # Distance: log-normal in town, 8-20 miles to an airport.
    town_distance = F.exp(F.lit(math.log(2.2)) + 0.6 * _normal(seed, 9))
    distance = F.round(F.least(F.greatest(
        F.when(airport, 8.0 + 12.0 * _uniform(seed, 11)).otherwise(town_distance), F.lit(0.1)), F.lit(30.0)), 2)

    # Duration from a speed that depends on the time of day.
    speed_mph = F.when(rush, 8.0).when(night, 18.0).otherwise(12.0) * (1.0 + 0.15 * _normal(seed, 12))
    minutes = F.lit(1.0) + distance / F.greatest(speed_mph, F.lit(3.0)) * 60.0

    fare = (F.lit(BASE_FARE) + PER_MILE * distance + PER_MINUTE * minutes
            + F.when(rush, RUSH_SURCHARGE).otherwise(0.0)
            + F.when(night, NIGHT_SURCHARGE).otherwise(0.0)
            + F.when(airport, AIRPORT_SURCHARGE).otherwise(0.0)
            + FARE_NOISE_SD * _normal(seed, 14))

    columns = {
        TRIP_ID: F.col("id"),
        PICKUP_TS: F.timestamp_seconds(pickup_epoch),
        DROPOFF_TS: F.timestamp_seconds(pickup_epoch + F.floor(minutes * 60)),
        DISTANCE: distance,
        FARE: F.round(F.greatest(fare, F.lit(MIN_FARE)), 2),
        PICKUP_ZIP: pickup_zip,
        DROPOFF_ZIP: dropoff_zip,
    }
    for name, factor in shift.items():
        columns[name] = columns[name] * F.lit(float(factor))
    if outliers:
        extreme = _uniform(seed, 20) < F.lit(float(outliers))  # a draw no other column uses
        columns[DISTANCE] = F.when(extreme, columns[DISTANCE] * 25).otherwise(columns[DISTANCE])
        columns[FARE] = F.when(extreme, columns[FARE] * 8).otherwise(columns[FARE])
    types = {f.name: f.dataType for f in RAW_TRIP_SCHEMA.fields}
    return base.select(columns[TRIP_ID].cast("long").alias(TRIP_ID),
                       *[columns[name].cast(data_type).alias(name) for name, data_type in types.items()])
