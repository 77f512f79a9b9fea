"""Drift: a reference profile of the model's inputs and predictions, and the statistics comparing a range with it.

The seeds' proof of concept judged drift with alibi-detect, which cannot install on this stack (it pins
numpy<2); the tests here are the standard ones, computed with Spark and numpy/scipy.

A profile is plain JSON data, computed in Spark without collecting rows (quantiles with ``approxQuantile``,
shares with one aggregation, category frequencies with a group-by over few values):

* numeric columns: the reference's decile edges, the share of rows at or below each edge (its CDF there),
  mean, standard deviation and null share;
* categorical columns (zips, hour, weekday, weekend flag): the share of each value and the null share.

Profile and compare the same representation: the model's input columns (``model_input_columns``, all double)
and its prediction.

``compare`` measures a range against a profile with one aggregation for the numeric columns and one group-by
per categorical column, then per column: PSI over the reference's bins (numeric) or categories (categorical,
with unseen values pooled), the KS statistic as the largest CDF gap at the reference's edges (numeric), and a
chi-square p-value of the range's counts against the reference's shares (categorical).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import stats

from taxi_fares.features import (DROPOFF_COUNT, DROPOFF_IS_WEEKEND, PICKUP_COUNT, PICKUP_HOUR, PICKUP_MEAN_FARE,
                                 PICKUP_WEEKDAY)
from taxi_fares.schema import DISTANCE, DROPOFF_ZIP, PICKUP_ZIP

PREDICTION = "prediction"
NUMERIC = (DISTANCE, PICKUP_MEAN_FARE, PICKUP_COUNT, DROPOFF_COUNT, PREDICTION)
CATEGORICAL = (PICKUP_ZIP, DROPOFF_ZIP, PICKUP_HOUR, PICKUP_WEEKDAY, DROPOFF_IS_WEEKEND)
QUANTILES = tuple(i / 10 for i in range(1, 10))
PROFILE_VERSION = 1
OTHER = "__other__"
# Shares are floored here before a logarithm, so an empty bin gives a large but finite PSI.
EPSILON = 1e-4


def _cdf_aggregates(numeric_edges: Mapping[str, Sequence[float]]) -> list:
    aggs = [F.count(F.lit(1)).alias("_rows")]
    for column, edges in numeric_edges.items():
        c = F.col(column).cast("double")
        aggs += [F.count(c).alias(f"{column}#n"), F.avg(c).alias(f"{column}#mean"),
                 F.stddev_pop(c).alias(f"{column}#std")]
        aggs += [F.count(F.when(c <= F.lit(float(e)), 1)).alias(f"{column}#le{i}") for i, e in enumerate(edges)]
    return aggs


def _categories(df: DataFrame, column: str) -> dict[str, int]:
    """value -> count, nulls left out; the values of a categorical feature are few (zips, hours, days)."""
    rows = df.groupBy(F.col(column).cast("string").alias("v")).count().filter(F.col("v").isNotNull()).collect()
    return {r["v"]: int(r["count"]) for r in rows}


def profile(df: DataFrame, numeric: Sequence[str] = NUMERIC, categorical: Sequence[str] = CATEGORICAL) -> dict:
    """The reference profile of ``df`` (training features with the model's predictions)."""
    missing = [c for c in (*numeric, *categorical) if c not in df.columns]
    if missing:
        raise ValueError(f"cannot profile: missing column(s) {missing}")
    quantiles = df.approxQuantile(list(numeric), list(QUANTILES), 0.001)
    edges = {c: sorted(set(float(q) for q in qs)) for c, qs in zip(numeric, quantiles)}
    row = df.agg(*_cdf_aggregates(edges)).first()
    rows = int(row["_rows"])
    if rows == 0:
        raise ValueError("cannot profile zero rows")
    out = {"version": PROFILE_VERSION, "rows": rows, "numeric": {}, "categorical": {}}
    for c in numeric:
        n = int(row[f"{c}#n"])
        out["numeric"][c] = {
            "edges": edges[c],
            "cdf": [int(row[f"{c}#le{i}"]) / n if n else 0.0 for i in range(len(edges[c]))],
            "mean": row[f"{c}#mean"], "std": row[f"{c}#std"], "null_share": 1 - n / rows}
    for c in categorical:
        counts = _categories(df, c)
        n = sum(counts.values())
        out["categorical"][c] = {"shares": {v: k / n for v, k in sorted(counts.items())} if n else {},
                                 "null_share": 1 - n / rows}
    return out


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _bins(cdf: Sequence[float]) -> list[float]:
    """Shares per bin (-inf, e0], (e0, e1], ..., (e_last, inf) from the CDF at the edges."""
    points = [0.0, *cdf, 1.0]
    return [max(0.0, hi - lo) for lo, hi in zip(points, points[1:])]


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str                   # numeric | categorical
    psi: float
    ks: Optional[float]         # numeric only
    chi2_pvalue: Optional[float]  # categorical only
    null_share: float

    def metrics(self) -> dict[str, float]:
        out = {"psi": self.psi, "null_share": self.null_share}
        if self.ks is not None:
            out["ks"] = self.ks
        if self.chi2_pvalue is not None:
            out["chi2_pvalue"] = self.chi2_pvalue
        return out


def compare(df: DataFrame, reference: Mapping) -> tuple[int, list[FeatureDrift]]:
    """(rows, per-feature drift) of ``df`` against ``reference`` (a ``profile``)."""
    if reference.get("version") != PROFILE_VERSION:
        raise ValueError(f"reference profile version {reference.get('version')!r} is not {PROFILE_VERSION}")
    numeric = {c: spec["edges"] for c, spec in reference["numeric"].items()}
    categorical = list(reference["categorical"])
    missing = [c for c in (*numeric, *categorical) if c not in df.columns]
    if missing:
        raise ValueError(f"cannot compare with the reference profile: missing column(s) {missing}")
    row = df.agg(*_cdf_aggregates(numeric)).first()
    rows = int(row["_rows"])
    results = []
    if rows == 0:
        return 0, results
    for c, spec in reference["numeric"].items():
        n = int(row[f"{c}#n"])
        cdf = [int(row[f"{c}#le{i}"]) / n if n else 0.0 for i in range(len(spec["edges"]))]
        ks = max((abs(a - b) for a, b in zip(cdf, spec["cdf"])), default=0.0)
        results.append(FeatureDrift(c, "numeric", psi(_bins(spec["cdf"]), _bins(cdf)), ks, None, 1 - n / rows))
    for c in categorical:
        shares = reference["categorical"][c]["shares"]
        counts = _categories(df, c)
        n = sum(counts.values())
        values = sorted(shares)
        actual = [counts.get(v, 0) for v in values] + [sum(k for v, k in counts.items() if v not in shares)]
        expected = [shares[v] for v in values] + [0.0]
        pvalue = None
        if n:
            # Expected counts floored like the PSI's shares, rescaled to the observed total (chi-square's rule).
            exp = np.clip(np.asarray(expected), EPSILON, None)
            pvalue = float(stats.chisquare(actual, exp / exp.sum() * n).pvalue)
        drift = psi(expected, [k / n for k in actual]) if n else 0.0
        results.append(FeatureDrift(c, "categorical", drift, None, pvalue, 1 - n / rows))
    return rows, results


def finite(value: Optional[float]) -> Optional[float]:
    """``value`` if it is a finite number, else None (what a table or a metric store can hold)."""
    return value if value is not None and math.isfinite(value) else None
