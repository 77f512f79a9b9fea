"""Drift: a reference profile of the model's inputs and predictions, and the statistics comparing a range with it.

The seeds' proof of concept judged drift with alibi-detect, which cannot install on this stack (it pins
numpy<2); the tests here are the standard ones, computed with Spark and numpy/scipy.

A profile is plain JSON data, computed in Spark without collecting rows (quantiles with ``approxQuantile``,
shares with one aggregation, category frequencies with one group-by over few values):

* numeric columns: the reference's decile edges, the share of rows at or below each edge (its CDF there),
  mean, standard deviation and null share;
* categorical columns (zips, hour, weekday, weekend flag): the share of each value and the null share.

Profile and compare the same representation: the model's input columns (``model_input_columns``, all double)
and its prediction.

``summarize`` counts a range against a profile with one aggregation for the numeric columns and one group-by
for all categorical columns; ``compare`` hands those counts to ``taxi_fares.drift_detector.DriftDetector``, which
holds the statistics (PSI, KS, chi-square) and judges them the same way for a pandas window of requests.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from taxi_fares.aggregates import one_row
from taxi_fares.drift_detector import PROFILE_VERSION, DriftDetector, FeatureDrift, Summary, finite
from taxi_fares.features import (DROPOFF_COUNT, DROPOFF_IS_WEEKEND, PICKUP_COUNT, PICKUP_HOUR, PICKUP_MEAN_FARE,
                                 PICKUP_WEEKDAY)
from taxi_fares.schema import DISTANCE, DROPOFF_ZIP, PICKUP_ZIP

PREDICTION = "prediction"
NUMERIC = (DISTANCE, PICKUP_MEAN_FARE, PICKUP_COUNT, DROPOFF_COUNT, PREDICTION)
CATEGORICAL = (PICKUP_ZIP, DROPOFF_ZIP, PICKUP_HOUR, PICKUP_WEEKDAY, DROPOFF_IS_WEEKEND)
QUANTILES = tuple(i / 10 for i in range(1, 10))

__all__ = ["CATEGORICAL", "NUMERIC", "DriftDetector", "FeatureDrift", "compare", "finite", "profile", "summarize"]


def _cdf_aggregates(numeric_edges: Mapping[str, Sequence[float]]) -> list[Column]:
    aggs = [F.count(F.lit(1)).alias("_rows")]
    for column, edges in numeric_edges.items():
        c = F.col(column).cast("double")
        aggs += [F.count(c).alias(f"{column}#n"), F.avg(c).alias(f"{column}#mean"),
                 F.stddev_pop(c).alias(f"{column}#std")]
        aggs += [F.count(F.when(c <= F.lit(float(e)), 1)).alias(f"{column}#le{i}") for i, e in enumerate(edges)]
    return aggs


def _categories(df: DataFrame, columns: Sequence[str]) -> dict[str, dict[str, int]]:
    """column -> value -> count, nulls left out, for all ``columns`` in one pass (each row becomes one (column,
    value) pair per column); the values of a categorical feature are few (zips, hours, days)."""
    if not columns:
        return {}
    pairs = F.explode(F.array(*[F.struct(F.lit(c).alias("k"), F.col(c).cast("string").alias("v")) for c in columns]))
    rows = (df.select(pairs.alias("p")).select("p.k", "p.v").filter(F.col("v").isNotNull())
            .groupBy("k", "v").count().collect())
    counts: dict[str, dict[str, int]] = {c: {} for c in columns}
    for r in rows:
        counts[r["k"]][r["v"]] = int(r["count"])
    return counts


def profile(df: DataFrame, numeric: Sequence[str] = NUMERIC,
            categorical: Sequence[str] = CATEGORICAL) -> dict[str, Any]:
    """The reference profile of ``df`` (training features with the model's predictions)."""
    missing = [c for c in (*numeric, *categorical) if c not in df.columns]
    if missing:
        raise ValueError(f"cannot profile: missing column(s) {missing}")
    quantiles = df.approxQuantile(list(numeric), list(QUANTILES), 0.001)
    edges = {c: sorted(set(float(q) for q in qs)) for c, qs in zip(numeric, quantiles)}
    row = one_row(df, *_cdf_aggregates(edges))
    rows = int(row["_rows"])
    if rows == 0:
        raise ValueError("cannot profile zero rows")
    numeric_profile: dict[str, Any] = {}
    categorical_profile: dict[str, Any] = {}
    out = {"version": PROFILE_VERSION, "rows": rows, "numeric": numeric_profile, "categorical": categorical_profile}
    for c in numeric:
        n = int(row[f"{c}#n"])
        numeric_profile[c] = {
            "edges": edges[c],
            "cdf": [int(row[f"{c}#le{i}"]) / n if n else 0.0 for i in range(len(edges[c]))],
            "mean": row[f"{c}#mean"], "std": row[f"{c}#std"], "null_share": 1 - n / rows}
    for c, counts in _categories(df, categorical).items():
        n = sum(counts.values())
        categorical_profile[c] = {"shares": {v: k / n for v, k in sorted(counts.items())} if n else {},
                                  "null_share": 1 - n / rows}
    return out


def summarize(df: DataFrame, detector: DriftDetector) -> Summary:
    """The counts ``detector`` judges, of ``df``: one aggregation for the numeric columns and one small group-by
    per categorical column (nothing but counts reaches the driver)."""
    missing = [c for c in detector.columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot compare with the reference profile: missing column(s) {missing}")
    edges = detector.numeric_edges
    row = one_row(df, *_cdf_aggregates(edges))
    rows = int(row["_rows"])
    numeric = {c: (int(row[f"{c}#n"]), [int(row[f"{c}#le{i}"]) for i in range(len(e))]) for c, e in edges.items()}
    categorical = _categories(df, detector.categorical) if rows else {c: {} for c in detector.categorical}
    moments = {c: (row[f"{c}#mean"], row[f"{c}#std"]) for c in edges}
    return Summary(rows, numeric, categorical, moments)


def compare(df: DataFrame,
            reference: Union[Mapping[str, Any], DriftDetector]) -> tuple[int, list[FeatureDrift]]:
    """(rows, per-feature drift) of ``df`` against ``reference`` (a ``profile``, or a detector holding one)."""
    detector = reference if isinstance(reference, DriftDetector) else DriftDetector(reference)
    summary = summarize(df, detector)
    return summary.rows, detector.judge(summary)
