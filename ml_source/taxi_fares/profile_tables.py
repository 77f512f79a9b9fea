"""A monitored range's drift in the shape of Databricks data profiling's metric tables, and the distributions a
person looks at, from the counts drift was judged on (no Spark, no rows).

``taxi_fares.drift.summarize`` counts a range against the reference profile (per numeric column the count at or
below each of the reference's decile edges, per categorical column the count of each value); the detector judges
those counts. From the same counts this module gives:

* ``distributions``: per feature the reference's and the range's shares per bin (numeric: the reference's decile
  bins; categorical: the reference's values plus one bin for values it never saw) and the two CDFs at the edges,
  which the drift report draws;
* ``drift_rows`` / ``profile_rows``: rows shaped like ``<table>_drift_metrics`` and ``<table>_profile_metrics``
  (``window`` {start, end}, ``granularity``, ``slice_key``/``slice_value`` NULL for the whole table,
  ``column_name``, ``drift_type`` BASELINE: the baseline is the model's training profile).

What the counts allow and what they do not: the KS statistic is the largest CDF gap at the reference's edges
(a lower bound of the exact two-sample statistic) and its p-value the two-sample KS distribution's for that gap;
the chi-square test is the detector's; the Jensen-Shannon distance (base 2, in [0, 1]) is over the same bins as
the PSI; the Wasserstein distance needs the values themselves, so it is NULL.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import stats
from scipy.spatial import distance

from taxi_fares.drift_detector import EPSILON, DriftDetector, FeatureDrift, Summary, bins, finite

BASELINE, CONSECUTIVE = "BASELINE", "CONSECUTIVE"
INPUT_LOG = "INPUT"
TABLE_COLUMN = ":table"  # Databricks' column_name of the rows about the whole table (counts, model quality)
UNSEEN = "(values the reference never saw)"

_WINDOW = "window struct<start: timestamp, end: timestamp>"
_TEST = "struct<statistic: double, pvalue: double>"
DRIFT_SCHEMA = (f"{_WINDOW}, granularity string, model_id string, slice_key string, slice_value string, "
                f"column_name string, data_type string, window_cmp struct<start: timestamp, end: timestamp>, "
                f"drift_type string, count_delta double, ks_test {_TEST}, chi_squared_test {_TEST}, "
                "js_distance double, wasserstein_distance double, population_stability_index double, "
                "drifted boolean")
PROFILE_SCHEMA = (f"{_WINDOW}, granularity string, model_id string, slice_key string, slice_value string, "
                  "column_name string, data_type string, log_type string, count bigint, num_nulls bigint, "
                  "percent_null double, avg double, stddev double, distinct_count bigint, "
                  "mean_squared_error double, root_mean_squared_error double, mean_absolute_error double, "
                  "outlier_share double")


@dataclass(frozen=True)
class Distribution:
    """One feature's reference and range, as shares of the same bins."""

    feature: str
    kind: str                          # numeric | categorical
    labels: list[str]                  # one per bin
    reference: list[float]             # shares per bin, summing to 1
    current: list[float]               # the range's shares per bin ([] when the range has no value)
    edges: list[float]                 # numeric only: the reference's decile edges
    reference_cdf: list[float]         # numeric only: shares at or below each edge
    current_cdf: list[float]
    reference_count: int               # non-null values behind the shares
    current_count: int


def _edge(value: float) -> str:
    return f"{value:.4g}"


def distributions(detector: DriftDetector, summary: Summary) -> dict[str, Distribution]:
    """Per profiled feature, the reference's and the range's shares of the bins the detector judges."""
    reference = detector.reference
    rows = int(reference.get("rows", 0))
    out: dict[str, Distribution] = {}
    for c, spec in reference["numeric"].items():
        n, at_or_below = summary.numeric[c]
        edges = [float(e) for e in spec["edges"]]
        cdf = [k / n for k in at_or_below] if n else []
        inner = [f"({_edge(a)}, {_edge(b)}]" for a, b in zip(edges, edges[1:])]
        labels = [f"<= {_edge(edges[0])}", *inner, f"> {_edge(edges[-1])}"] if edges else ["all"]
        out[c] = Distribution(c, "numeric", labels, bins(spec["cdf"]), bins(cdf) if n else [], edges,
                              list(spec["cdf"]), cdf, round(rows * (1 - spec["null_share"])), n)
    for c in detector.categorical:
        spec = reference["categorical"][c]
        shares, counts = spec["shares"], summary.categorical[c]
        values = sorted(shares)
        n = sum(counts.values())
        current = ([counts.get(v, 0) / n for v in values] + [sum(k for v, k in counts.items() if v not in shares) / n]
                   if n else [])
        out[c] = Distribution(c, "categorical", [*values, UNSEEN], [shares[v] for v in values] + [0.0], current, [],
                              [], [], round(rows * (1 - spec["null_share"])), n)
    return out


def js_distance(expected: Sequence[float], actual: Sequence[float]) -> Optional[float]:
    """Jensen-Shannon distance (base 2, 0 = same shares, 1 = disjoint) of two share vectors over the same bins."""
    if not actual or sum(actual) <= 0 or sum(expected) <= 0:
        return None
    return float(distance.jensenshannon(np.asarray(expected, float), np.asarray(actual, float), base=2))


def ks_pvalue(statistic: float, reference_count: int, current_count: int) -> Optional[float]:
    """The two-sample KS p-value of ``statistic`` for samples of these sizes (None without values on a side)."""
    if reference_count <= 0 or current_count <= 0:
        return None
    effective = reference_count * current_count / (reference_count + current_count)
    return float(stats.kstwo.sf(statistic, max(1, round(effective))))


def chi_squared(d: Distribution) -> Optional[tuple[float, float]]:
    """(statistic, p-value) of the range's counts against the reference's shares, as the detector tests them."""
    if d.kind != "categorical" or not d.current_count:
        return None
    observed = [share * d.current_count for share in d.current]
    expected = np.clip(np.asarray(d.reference), EPSILON, None)
    test = stats.chisquare(observed, expected / expected.sum() * d.current_count)
    return float(test.statistic), float(test.pvalue)


def granularity(start: dt.date, end: dt.date) -> str:
    """The window's length as Databricks writes granularities ('1 day', '1 week', '2 weeks', '1 month', '1 year';
    any other length as 'N days')."""
    days = (end - start).days
    if start.day == 1 and end.day == 1 and (end.year - start.year) * 12 + end.month - start.month == 1:
        return "1 month"
    if start.day == 1 and start.month == 1 and end == start.replace(year=start.year + 1):
        return "1 year"
    if days % 7 == 0 and 1 <= days // 7 <= 4:
        return f"{days // 7} week" + ("s" if days > 7 else "")
    return "1 day" if days == 1 else f"{days} days"


def _window(start: dt.date, end: dt.date) -> dict[str, dt.datetime]:
    return {"start": dt.datetime.combine(start, dt.time()), "end": dt.datetime.combine(end, dt.time())}


def drift_rows(detector: DriftDetector, summary: Summary, features: Sequence[FeatureDrift], drifted: Iterable[str],
               start: dt.date, end: dt.date, model_id: str) -> list[dict[str, Any]]:
    """One BASELINE row per judged feature, in ``DRIFT_SCHEMA``'s columns (the window against the training
    profile; ``window_cmp`` is NULL, the baseline having no window); ``drifted``: the features judged drifted."""
    drifted = set(drifted)
    shapes = distributions(detector, summary)
    rows = []
    for f in features:
        d = shapes[f.feature]
        chi2 = chi_squared(d)
        rows.append({
            "window": _window(start, end), "granularity": granularity(start, end), "model_id": model_id,
            "slice_key": None, "slice_value": None, "column_name": f.feature,
            "data_type": "double" if f.kind == "numeric" else "string", "window_cmp": None,
            "drift_type": BASELINE, "count_delta": float(d.current_count - d.reference_count),
            "ks_test": ({"statistic": finite(f.ks), "pvalue": ks_pvalue(f.ks, d.reference_count, d.current_count)}
                        if f.ks is not None else None),
            "chi_squared_test": {"statistic": finite(chi2[0]), "pvalue": finite(chi2[1])} if chi2 else None,
            "js_distance": js_distance(d.reference, d.current), "wasserstein_distance": None,
            "population_stability_index": finite(f.psi), "drifted": f.feature in drifted})
    return rows


def profile_rows(detector: DriftDetector, summary: Summary, start: dt.date, end: dt.date, model_id: str,
                 performance: Optional[dict[str, Optional[float]]] = None,
                 outlier_share: Optional[float] = None) -> list[dict[str, Any]]:
    """Rows in ``PROFILE_SCHEMA``'s columns: per profiled column, the range's (``log_type`` INPUT) and the training
    profile's (BASELINE) counts, nulls, mean and standard deviation (numeric) or distinct values (categorical);
    and one ``:table`` row with the range's row count, realized error (where fares are known) and outlier share."""
    reference = detector.reference
    base = {"window": _window(start, end), "granularity": granularity(start, end), "model_id": model_id,
            "slice_key": None, "slice_value": None, "mean_squared_error": None, "root_mean_squared_error": None,
            "mean_absolute_error": None, "outlier_share": None, "avg": None, "stddev": None, "distinct_count": None}
    out = []
    rows_ref = int(reference.get("rows", 0))
    for c, spec in reference["numeric"].items():
        n = summary.numeric[c][0]
        mean, std = summary.moments.get(c, (None, None))
        out.append({**base, "column_name": c, "data_type": "double", "log_type": INPUT_LOG, "count": n,
                    "num_nulls": summary.rows - n, "percent_null": _percent(summary.rows - n, summary.rows),
                    "avg": finite(mean), "stddev": finite(std)})
        ref_n = round(rows_ref * (1 - spec["null_share"]))
        out.append({**base, "column_name": c, "data_type": "double", "log_type": BASELINE, "count": ref_n,
                    "num_nulls": rows_ref - ref_n, "percent_null": 100 * float(spec["null_share"]),
                    "avg": finite(spec.get("mean")), "stddev": finite(spec.get("std"))})
    for c in detector.categorical:
        spec, counts = reference["categorical"][c], summary.categorical[c]
        n = sum(counts.values())
        out.append({**base, "column_name": c, "data_type": "string", "log_type": INPUT_LOG, "count": n,
                    "num_nulls": summary.rows - n, "percent_null": _percent(summary.rows - n, summary.rows),
                    "distinct_count": len(counts)})
        ref_n = round(rows_ref * (1 - spec["null_share"]))
        out.append({**base, "column_name": c, "data_type": "string", "log_type": BASELINE, "count": ref_n,
                    "num_nulls": rows_ref - ref_n, "percent_null": 100 * float(spec["null_share"]),
                    "distinct_count": len(spec["shares"])})
    performance = performance or {}
    rmse = finite(performance.get("rmse"))
    out.append({**base, "column_name": TABLE_COLUMN, "data_type": None, "log_type": INPUT_LOG, "count": summary.rows,
                "num_nulls": None, "percent_null": None, "root_mean_squared_error": rmse,
                "mean_squared_error": rmse * rmse if rmse is not None else None,
                "mean_absolute_error": finite(performance.get("mae")), "outlier_share": finite(outlier_share)})
    return out


def _percent(part: int, whole: int) -> Optional[float]:
    return 100 * part / whole if whole else None
