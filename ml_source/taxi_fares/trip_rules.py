"""The rules a raw trip's values must keep: one rule set for batch validation and the online service.

Batch validation (``taxi_fares.schema``) evaluates each rule on Spark columns, the online service
(``taxi_fares_mlops.serving.app``) on one request's trip: the same functions, since Spark's ``Column`` and Python's
numbers share the comparison and arithmetic operators. Times are given as whole microseconds since the epoch in
both worlds (Spark's ``unix_micros``), so the trip-length rule is an exact duration there and here. No Spark
import here, so an online service can use it.

Bounds are beyond any real taxi trip (a typo or a unit error, not an outlier): such rows are invalid, while
extreme but possible values are left to the outlier model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from taxi_fares.columns import DISTANCE, DROPOFF_TS, FARE, PICKUP_TS

MAX_FARE = 10_000.0
MAX_DISTANCE_MILES = 1_000.0
MAX_TRIP_HOURS = 24
MICROS_PER_HOUR = 3600 * 10**6


@dataclass(frozen=True)
class RowRule:
    """A rule a row breaks: the column it is reported on, its wording for a count ("N row(s) <rule>"), the columns
    it reads, and the test that is true for a row that breaks it (times as epoch microseconds)."""

    column: str
    rule: str
    reads: tuple[str, ...]
    breaks: Callable[[Mapping[str, Any]], Any]


ROW_RULES = (
    RowRule(DISTANCE, "have a negative distance", (DISTANCE,), lambda v: v[DISTANCE] < 0),
    RowRule(DISTANCE, f"have a distance above {MAX_DISTANCE_MILES:,.0f} miles", (DISTANCE,),
            lambda v: v[DISTANCE] > MAX_DISTANCE_MILES),
    RowRule(FARE, "have a negative fare", (FARE,), lambda v: v[FARE] < 0),
    RowRule(FARE, f"have a fare above {MAX_FARE:,.0f}", (FARE,), lambda v: v[FARE] > MAX_FARE),
    RowRule(DROPOFF_TS, "have a dropoff before the pickup", (PICKUP_TS, DROPOFF_TS),
            lambda v: v[DROPOFF_TS] < v[PICKUP_TS]),
    RowRule(DROPOFF_TS, f"have a trip longer than {MAX_TRIP_HOURS} hours", (PICKUP_TS, DROPOFF_TS),
            lambda v: v[DROPOFF_TS] - v[PICKUP_TS] > MAX_TRIP_HOURS * MICROS_PER_HOUR),
)


def broken_rules(values: Mapping[str, Any]) -> list[RowRule]:
    """The rules one row of plain values breaks, of those whose columns it has (a request's trip has no fare)."""
    return [r for r in ROW_RULES if all(c in values for c in r.reads) and bool(r.breaks(values))]
