"""The rules a raw trip's values must keep: one rule set for batch validation and the online service.

Batch validation (``taxi_fares.schema``) evaluates each rule on Spark columns, the online service
(``taxi_fares_mlops.serving.app``) on a request's trips as numpy arrays and, to word a refusal, on one trip's
values: the same functions, since Spark's ``Column``, numpy's arrays and Python's numbers share the comparison and
arithmetic operators. Times are given as whole microseconds since the epoch in
every world (Spark's ``unix_micros``), so the trip-length rule is an exact duration in each. No Spark
import here, so an online service can use it.

Bounds are beyond any real taxi trip (a typo or a unit error, not an outlier): such rows are invalid, while
extreme but possible values are left to the outlier model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, FARE, PICKUP_TS, PICKUP_ZIP

MAX_FARE = 10_000.0
MAX_DISTANCE_MILES = 1_000.0
MAX_TRIP_HOURS = 24
MICROS_PER_HOUR = 3600 * 10**6
MIN_ZIP, MAX_ZIP = 1, 99_999

# How a violation speaks of each column: a rule reads as a sentence about the row ("the fare is negative").
SPOKEN = {PICKUP_TS: "the pickup time", DROPOFF_TS: "the dropoff time", DISTANCE: "the trip distance",
          FARE: "the fare", PICKUP_ZIP: "the pickup zip", DROPOFF_ZIP: "the dropoff zip"}
# Columns of floating-point numbers: NaN breaks a rule of its own, and no other rule of the column sees it.
FLOAT_COLUMNS = (DISTANCE, FARE)


def nan_key(column: str) -> str:
    """The key under which a rule reads whether ``column`` is NaN. The two worlds disagree on NaN (Spark orders
    it above every number, so ``NaN > 1000`` is true there and false in Python): each gives the rules NaN-ness
    under this key, and Spark gives NaN as null to the comparisons, so only the NaN rule sees it."""
    return f"{column} is NaN"


@dataclass(frozen=True)
class RowRule:
    """A rule a row breaks: the column it is reported on, its wording as a sentence about the row ("the fare is
    negative"), the columns it reads, and the test that is true for a row that breaks it (times as epoch
    microseconds, NaN-ness of a float column under ``nan_key``)."""

    column: str
    rule: str
    reads: tuple[str, ...]
    breaks: Callable[[Mapping[str, Any]], Any]


def _not_a_number(column: str) -> RowRule:
    return RowRule(column, f"{SPOKEN[column]} is not a number", (column,), lambda v: v[nan_key(column)])


def _zip_outside(column: str) -> RowRule:
    return RowRule(column, f"{SPOKEN[column]} is outside {MIN_ZIP} to {MAX_ZIP:,}", (column,),
                   lambda v: (v[column] < MIN_ZIP) | (v[column] > MAX_ZIP))


ROW_RULES = (
    _not_a_number(DISTANCE),
    RowRule(DISTANCE, "the trip distance is negative", (DISTANCE,), lambda v: v[DISTANCE] < 0),
    RowRule(DISTANCE, f"the trip distance is above {MAX_DISTANCE_MILES:,.0f} miles", (DISTANCE,),
            lambda v: v[DISTANCE] > MAX_DISTANCE_MILES),
    _not_a_number(FARE),
    RowRule(FARE, "the fare is negative", (FARE,), lambda v: v[FARE] < 0),
    RowRule(FARE, f"the fare is above {MAX_FARE:,.0f}", (FARE,), lambda v: v[FARE] > MAX_FARE),
    _zip_outside(PICKUP_ZIP),
    _zip_outside(DROPOFF_ZIP),
    RowRule(DROPOFF_TS, "the dropoff is before the pickup", (PICKUP_TS, DROPOFF_TS),
            lambda v: v[DROPOFF_TS] < v[PICKUP_TS]),
    RowRule(DROPOFF_TS, f"the trip is longer than {MAX_TRIP_HOURS} hours", (PICKUP_TS, DROPOFF_TS),
            lambda v: v[DROPOFF_TS] - v[PICKUP_TS] > MAX_TRIP_HOURS * MICROS_PER_HOUR),
)


_NAN_KEYS = tuple((c, nan_key(c)) for c in FLOAT_COLUMNS)


def broken_rules(values: Mapping[str, Any]) -> list[RowRule]:
    """The rules one row of plain values breaks, of those whose columns it has (a request's trip has no fare).
    Called per trip of a request, so kept cheap."""
    plain = dict(values)
    for column, key in _NAN_KEYS:
        if column in plain:
            value = plain[column]
            plain[key] = isinstance(value, float) and math.isnan(value)
    return [r for r in ROW_RULES if all(c in plain for c in r.reads) and r.breaks(plain)]


def rows_breaking(columns: Mapping[str, Any]) -> Any:
    """Which rows break a rule, of those whose columns ``columns`` has: one truth value per row, for columns given
    as arrays that share the comparison and ``|`` operators (numpy's), NaN-ness of a float column under
    ``nan_key``; None when no rule reads only the columns given. ``broken_rules`` words a row's rules."""
    broken = None
    for rule in ROW_RULES:
        if all(c in columns for c in rule.reads):
            hit = rule.breaks(columns)
            broken = hit if broken is None else broken | hit
    return broken
