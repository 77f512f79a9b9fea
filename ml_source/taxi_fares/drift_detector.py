"""Judging drift from counts: a range's statistics against a reference profile, with no Spark.

Wherever a range is counted (the monitoring stage counts it in Spark with ``taxi_fares.drift.summarize``, an
online service counts its window of recent requests in pandas with ``DriftDetector.summarize_frame``), the
counts come here as a ``Summary`` and ``DriftDetector.judge`` applies one rule to them:

* numeric columns: PSI over the reference's bins, and the KS statistic as the largest gap between the two CDFs
  at the reference's edges;
* categorical columns: PSI over the reference's categories (values it never saw pooled into one bin) and a
  chi-square p-value of the range's counts against the reference's shares.

A feature has drifted when its PSI is above ``psi_threshold`` or its KS statistic above ``ks_threshold``. The
detector (reference profile + thresholds) is what training registers as ``<model>_drift``; a monitoring run or
a request may override the thresholds.

Categorical values are compared as Spark's string cast of the column writes them (the model's inputs are
doubles: hour 13 is "13.0"); ``category_label`` gives the same text for a pandas value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

PROFILE_VERSION = 1
PSI_THRESHOLD = 0.2
KS_THRESHOLD = 0.1
# Shares are floored here before a logarithm, so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
OUTPUT_COLUMNS = ("feature", "kind", "psi", "ks", "chi2_pvalue", "null_share", "drifted")


@dataclass(frozen=True)
class Summary:
    """The counts drift is judged on: rows; per numeric column its non-null count and the count at or below each
    of the reference's edges; per categorical column the count of each value (nulls left out). ``moments``: per
    numeric column its mean and standard deviation where the counting had them (the profile tables report them)."""

    rows: int
    numeric: Mapping[str, tuple[int, Sequence[int]]]
    categorical: Mapping[str, Mapping[str, int]]
    moments: Mapping[str, tuple[Optional[float], Optional[float]]] = field(default_factory=dict)


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


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def bins(cdf: Sequence[float]) -> list[float]:
    """Shares per bin (-inf, e0], (e0, e1], ..., (e_last, inf) from the CDF at the edges."""
    points = [0.0, *cdf, 1.0]
    return [max(0.0, hi - lo) for lo, hi in zip(points, points[1:])]


def finite(value: Optional[float]) -> Optional[float]:
    """``value`` if it is a finite number, else None (what a table or a metric store can hold)."""
    return value if value is not None and math.isfinite(value) else None


def category_label(value: Any) -> Optional[str]:
    """``value`` as Spark's cast to string writes it (integral doubles keep their ".0"); None for a null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value.is_integer() and abs(value) < 1e7:
            return f"{value:.1f}"
        return repr(value)
    return str(value)


def category_counts(values: pd.Series) -> dict[str, int]:
    """label -> count of a column's non-null values, labelled as ``category_label`` (and Spark) write them.
    Numeric columns are counted per distinct value first (a window of requests holds few), then labelled."""
    counts: dict[str, int] = {}
    pairs: Iterable[tuple[Optional[str], int]]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        integral = pd.api.types.is_integer_dtype(values)
        array = values.to_numpy(dtype="int64" if integral else "float64")
        if not integral:
            array = array[~np.isnan(array)]
        distinct, seen = np.unique(array, return_counts=True)
        pairs = zip((str(int(v)) if integral else category_label(float(v)) for v in distinct.tolist()),
                    seen.tolist())
    else:
        pairs = ((category_label(v), 1) for v in values.tolist())
    for label, k in pairs:
        if label is not None:
            counts[label] = counts.get(label, 0) + k
    return counts


class DriftDetector:
    """A reference profile (``taxi_fares.drift.profile``) with the thresholds that call a feature drifted."""

    def __init__(self, reference: Mapping[str, Any], psi_threshold: float = PSI_THRESHOLD,
                 ks_threshold: float = KS_THRESHOLD):
        if reference.get("version") != PROFILE_VERSION:
            raise ValueError(f"reference profile version {reference.get('version')!r} is not {PROFILE_VERSION}")
        self.reference = reference
        self.psi_threshold = float(psi_threshold)
        self.ks_threshold = float(ks_threshold)

    @property
    def numeric_edges(self) -> dict[str, list[float]]:
        return {c: list(spec["edges"]) for c, spec in self.reference["numeric"].items()}

    @property
    def categorical(self) -> list[str]:
        return list(self.reference["categorical"])

    @property
    def columns(self) -> list[str]:
        return [*self.reference["numeric"], *self.reference["categorical"]]

    def with_thresholds(self, psi_threshold: Optional[float] = None, ks_threshold: Optional[float] = None
                        ) -> "DriftDetector":
        return DriftDetector(self.reference, self.psi_threshold if psi_threshold is None else psi_threshold,
                             self.ks_threshold if ks_threshold is None else ks_threshold)

    def drifted(self, f: FeatureDrift) -> bool:
        return f.psi > self.psi_threshold or (f.ks is not None and f.ks > self.ks_threshold)

    def judge(self, summary: Summary) -> list[FeatureDrift]:
        """Per-feature drift of the counted range; [] for a range without rows."""
        if summary.rows == 0:
            return []
        results = []
        for c, spec in self.reference["numeric"].items():
            n, at_or_below = summary.numeric[c]
            cdf = [k / n if n else 0.0 for k in at_or_below]
            ks = max((abs(a - b) for a, b in zip(cdf, spec["cdf"])), default=0.0)
            results.append(FeatureDrift(c, "numeric", psi(bins(spec["cdf"]), bins(cdf)), ks, None,
                                        1 - n / summary.rows))
        for c in self.categorical:
            shares = self.reference["categorical"][c]["shares"]
            counts = summary.categorical[c]
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
            results.append(FeatureDrift(c, "categorical", drift, None, pvalue, 1 - n / summary.rows))
        return results

    def summarize_frame(self, frame: pd.DataFrame) -> Summary:
        """The counts of a pandas frame of the profiled columns (a window of recent requests)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"cannot judge drift: missing column(s) {missing}")
        numeric = {}
        for c, edges in self.numeric_edges.items():
            values = pd.to_numeric(frame[c], errors="coerce").astype(float).to_numpy()
            present = values[~np.isnan(values)]
            numeric[c] = (int(present.size), [int(np.count_nonzero(present <= e)) for e in edges])
        categorical = {c: category_counts(frame[c]) for c in self.categorical}
        return Summary(len(frame), numeric, categorical)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per profiled feature: its statistics for ``frame`` and whether it drifted."""
        rows = [{"feature": f.feature, "kind": f.kind, "psi": f.psi, "ks": f.ks, "chi2_pvalue": f.chi2_pvalue,
                 "null_share": f.null_share, "drifted": self.drifted(f)}
                for f in self.judge(self.summarize_frame(frame))]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
