"""The raw-trip schema and its validation.

``validate_trips`` checks the schema first (missing or mistyped columns are always fatal, since no row can be
trusted then) and then counts every kind of bad row in one Spark pass. It reports all problems at once, with
the column and the count, and either fails or quarantines the bad rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from taxi_fares.aggregates import one_row
from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, FARE, PICKUP_TS, PICKUP_ZIP, TRIP_ID
from taxi_fares.trip_rules import (FLOAT_COLUMNS, MAX_DISTANCE_MILES, MAX_FARE, MAX_TRIP_HOURS, ROW_RULES, SPOKEN,
                                   nan_key)

__all__ = ["DISTANCE", "DROPOFF_TS", "DROPOFF_ZIP", "FARE", "MAX_DISTANCE_MILES", "MAX_FARE", "MAX_TRIP_HOURS",
           "PICKUP_TS", "PICKUP_ZIP", "TRIP_ID"]

RAW_TRIP_SCHEMA = T.StructType([
    T.StructField(PICKUP_TS, T.TimestampType(), True),
    T.StructField(DROPOFF_TS, T.TimestampType(), True),
    T.StructField(DISTANCE, T.DoubleType(), True),
    T.StructField(FARE, T.DoubleType(), True),
    T.StructField(PICKUP_ZIP, T.IntegerType(), True),
    T.StructField(DROPOFF_ZIP, T.IntegerType(), True),
])

# Columns that identify a trip in time and space: a null here makes the row unusable for features.
KEY_COLUMNS = (PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP)

VIOLATIONS_COLUMN = "violations"
# Columns the product adds to raw rows (the quarantine table's): a raw column of one of these names would be
# overwritten or clash, so it is refused.
RESERVED_COLUMNS = (VIOLATIONS_COLUMN, "mlflow_run_id", "range_start", "range_end", "quarantined_at")

# The row rules and their bounds (MAX_FARE, MAX_DISTANCE_MILES, MAX_TRIP_HOURS) live in taxi_fares.trip_rules,
# shared with the online service: one rule set.

FAIL = "fail"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Violation:
    """One kind of problem: the column it concerns, the rule it breaks, and how many rows (None for schema). A row
    rule is a sentence about the row ("the fare is negative"), as quarantined rows carry it."""

    column: str
    rule: str
    count: Optional[int] = None

    def message(self) -> str:
        if self.count is None:
            return f"column '{self.column}': {self.rule}"
        return f"column '{self.column}': {self.count} row(s) where {self.rule}"


class TripValidationError(ValueError):
    """Raised when raw trips break the schema, or have bad rows and the mode is ``fail``."""

    def __init__(self, violations: list[Violation]):
        self.violations = list(violations)
        problems = "; ".join(v.message() for v in self.violations)  # one line: it survives first-line summaries
        super().__init__(f"raw trips failed validation ({len(self.violations)} problem(s)): {problems}")


@dataclass(frozen=True)
class ValidationResult:
    """Valid rows, quarantined rows (with a ``violations`` array column) and the counted violations."""

    valid: DataFrame
    quarantined: DataFrame
    violations: list[Violation] = field(default_factory=list)
    rows: Optional[int] = None  # rows validated (counted in the same pass as the rules)

    @property
    def ok(self) -> bool:
        return not self.violations


def schema_violations(df: DataFrame) -> list[Violation]:
    """Missing or mistyped required columns, and extra columns of a reserved name. Other extra columns are
    allowed and passed through."""
    actual = {f.name: f.dataType for f in df.schema.fields}
    problems = [Violation(name, "is reserved (the product adds it to quarantined rows): rename it in the raw data")
                for name in RESERVED_COLUMNS if name in actual]
    for expected in RAW_TRIP_SCHEMA.fields:
        if expected.name not in actual:
            problems.append(Violation(expected.name, "is missing"))
        elif actual[expected.name] != expected.dataType:
            problems.append(Violation(
                expected.name,
                f"has type {actual[expected.name].simpleString()}, expected {expected.dataType.simpleString()}",
            ))
    return problems


def _row_rules() -> list[tuple[str, str, Column]]:
    """(column, rule, condition-that-flags-a-bad-row). Null checks guard the comparisons below them."""
    rules = [(c, f"{SPOKEN[c]} is missing", F.col(c).isNull()) for c in KEY_COLUMNS]
    # Times as whole microseconds since the epoch, as the online service gives them to the same rules:
    # `timestamp + INTERVAL` would convert every row through the session's time zone (java.time), a cost of the
    # scoring job's every row; an interval of hours is an exact duration, so the rule is the same.
    values = {c: F.unix_micros(c) if c in (PICKUP_TS, DROPOFF_TS) else F.col(c) for c in RAW_TRIP_SCHEMA.names}
    # NaN as the rules read it (taxi_fares.trip_rules.nan_key): its own rule sees it, the comparisons see a null
    # (Spark orders NaN above every number: "NaN > 1000" would call a NaN distance one above 1,000 miles).
    for c in FLOAT_COLUMNS:
        values[nan_key(c)] = F.isnan(c)
        values[c] = F.nanvl(F.col(c), F.lit(None).cast(T.DoubleType()))
    rules += [(r.column, r.rule, r.breaks(values)) for r in ROW_RULES]
    return rules


def validate_trips(df: DataFrame, mode: str = FAIL) -> ValidationResult:
    """Validate raw trips.

    mode ``fail`` raises ``TripValidationError`` listing every violation with its count; mode ``quarantine``
    returns the good rows in ``valid`` and the bad ones in ``quarantined`` with a ``violations`` column.
    Schema problems always raise. Costs one aggregation pass over ``df`` (``valid_rows`` costs none).
    """
    if mode not in (FAIL, QUARANTINE):
        raise ValueError(f"validation mode must be '{FAIL}' or '{QUARANTINE}', got {mode!r}")
    problems = schema_violations(df)
    if problems:
        raise TripValidationError(problems)

    rules = _row_rules()
    counts = one_row(df, F.count(F.lit(1)).alias("rows"), *[
        F.sum(F.when(cond, 1).otherwise(0)).alias(f"r{i}") for i, (_, _, cond) in enumerate(rules)
    ])
    violations = [
        Violation(column, rule, int(counts[f"r{i}"] or 0))
        for i, (column, rule, _) in enumerate(rules)
        if (counts[f"r{i}"] or 0) > 0
    ]
    if violations and mode == FAIL:
        raise TripValidationError(violations)

    broken = _broken(rules)
    # Quarantined rows carry the rules they break, each a sentence about the row ("the fare is negative").
    flags = F.filter(F.array(*[F.when(b, F.lit(rule)) for b, (_, rule, _) in zip(broken, rules)]),
                     lambda x: x.isNotNull())
    quarantined = df.filter(_any(broken)).withColumn(VIOLATIONS_COLUMN, flags)
    return ValidationResult(valid=_valid(df, broken), quarantined=quarantined, violations=violations,
                            rows=int(counts["rows"]))


def valid_rows(df: DataFrame) -> DataFrame:
    """The rows of ``df`` that break no rule, without counting anything: a filter within the caller's query (no
    pass of its own), for jobs that only read valid trips and leave counting and quarantining the others to
    ``validate_trips``. Schema problems raise ``TripValidationError`` as there."""
    problems = schema_violations(df)
    if problems:
        raise TripValidationError(problems)
    return _valid(df, _broken(_row_rules()))


def _broken(rules: list[tuple[str, str, Column]]) -> list[Column]:
    # coalesce so a null comparison counts as "not broken" (the null checks above it flag the row instead).
    return [F.coalesce(cond, F.lit(False)) for _, _, cond in rules]


def _any(broken: list[Column]) -> Column:
    return reduce(lambda a, b: a | b, broken)


def _valid(df: DataFrame, broken: list[Column]) -> DataFrame:
    # Valid rows by a plain boolean filter: Spark compiles it into the query, where the array of rule names
    # (a higher-order function) would be interpreted row by row and slow every query on valid trips.
    return df.filter(~_any(broken))
