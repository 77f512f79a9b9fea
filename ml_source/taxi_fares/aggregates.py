"""Aggregations that reach the driver as one row of numbers, never as rows of the data."""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Row


def one_row(df: DataFrame, *aggregates: Column) -> Row:
    """The single row of a global aggregation of ``df`` (Spark returns exactly one, even for no input rows)."""
    row = df.agg(*aggregates).first()
    if row is None:  # pragma: no cover - a global aggregation always has its row
        raise ValueError("a global aggregation returned no row")
    return row
