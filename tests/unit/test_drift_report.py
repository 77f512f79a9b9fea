"""The drift report and the Databricks-shaped rows from a range's counts, without Spark: the statistics the counts
allow, the shape's columns, and a page whose every string from data is escaped."""
import datetime as dt
import math
from html.parser import HTMLParser

import pytest
from scipy import stats

from taxi_fares.drift_detector import DriftDetector, Summary
from taxi_fares.profile_tables import (DRIFT_SCHEMA, PROFILE_SCHEMA, distributions, drift_rows, granularity,
                                       js_distance, profile_rows)
from taxi_fares_mlops.drift_report import ReportHeader, WindowResult, render

HOSTILE = '<img src=x onerror="alert(1)">'
REFERENCE = {
    "version": 1, "rows": 1000,
    "numeric": {"trip_distance": {"edges": [1.0, 2.0, 3.0], "cdf": [0.25, 0.5, 0.75], "mean": 2.0, "std": 1.0,
                                  "null_share": 0.0}},
    "categorical": {HOSTILE: {"shares": {"a": 0.5, "b": 0.5}, "null_share": 0.1}},
}
# 400 rows: distances shifted up (the largest CDF gap 0.35, at the second edge), one zone value never seen.
SUMMARY = Summary(400, {"trip_distance": (400, [20, 60, 200])}, {HOSTILE: {"a": 200, "b": 150, "c": 10}},
                  {"trip_distance": (2.9, 1.1)})
START, END = dt.date(2016, 1, 4), dt.date(2016, 1, 18)


def _columns(ddl: str) -> set[str]:
    """The top-level column names of a DDL schema string."""
    names, depth, field = set(), 0, ""
    for ch in ddl + ",":
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            names.add(field.split()[0])
            field = ""
        else:
            field += ch
    return names


@pytest.fixture
def judged():
    detector = DriftDetector(REFERENCE)
    return detector, detector.judge(SUMMARY)


def test_the_drift_rows_carry_databricks_columns_and_the_detectors_statistics(judged):
    detector, features = judged
    rows = {r["column_name"]: r for r in drift_rows(detector, SUMMARY, features, ["trip_distance"], START, END, "2")}
    assert set(rows) == {"trip_distance", HOSTILE}
    expected_columns = _columns(DRIFT_SCHEMA)
    assert all(set(r) == expected_columns for r in rows.values())
    distance, zone = rows["trip_distance"], rows[HOSTILE]
    assert distance["window"] == {"start": dt.datetime(2016, 1, 4), "end": dt.datetime(2016, 1, 18)}
    assert (distance["granularity"], distance["drift_type"], distance["slice_key"], distance["model_id"]) == \
        ("2 weeks", "BASELINE", None, "2")
    f = {x.feature: x for x in features}
    assert distance["population_stability_index"] == f["trip_distance"].psi
    assert distance["ks_test"]["statistic"] == f["trip_distance"].ks == pytest.approx(0.35)
    assert distance["ks_test"]["pvalue"] == pytest.approx(stats.kstwo.sf(0.35, round(1000 * 400 / 1400)))
    assert distance["chi_squared_test"] is None and distance["wasserstein_distance"] is None
    assert distance["drifted"] and not zone["drifted"]
    assert zone["ks_test"] is None and zone["chi_squared_test"]["pvalue"] == pytest.approx(f[HOSTILE].chi2_pvalue)
    assert zone["chi_squared_test"]["statistic"] > 0
    # JS distance over the PSI's bins: 0 for the same shares, 1 for disjoint ones, base 2.
    assert js_distance([0.5, 0.5], [0.5, 0.5]) == 0 and js_distance([1, 0], [0, 1]) == pytest.approx(1)
    assert 0 < distance["js_distance"] < 1


def test_the_profile_rows_hold_the_range_and_the_baseline_per_column(judged):
    detector, _ = judged
    rows = profile_rows(detector, SUMMARY, START, END, "2", {"rmse": 3.0, "mae": 2.0}, 0.01)
    expected_columns = _columns(PROFILE_SCHEMA)
    assert all(set(r) == expected_columns for r in rows)
    by = {(r["column_name"], r["log_type"]): r for r in rows}
    assert by[("trip_distance", "INPUT")]["avg"] == 2.9 and by[("trip_distance", "BASELINE")]["avg"] == 2.0
    assert by[(HOSTILE, "INPUT")]["count"] == 360 and by[(HOSTILE, "INPUT")]["num_nulls"] == 40
    assert by[(HOSTILE, "INPUT")]["distinct_count"] == 3 and by[(HOSTILE, "BASELINE")]["count"] == 900
    table = by[(":table", "INPUT")]
    assert (table["count"], table["root_mean_squared_error"], table["mean_squared_error"],
            table["mean_absolute_error"], table["outlier_share"]) == (400, 3.0, 9.0, 2.0, 0.01)


@pytest.mark.parametrize("start, end, expected", [
    ("2016-01-04", "2016-01-05", "1 day"), ("2016-01-04", "2016-01-11", "1 week"),
    ("2016-03-01", "2016-04-01", "1 month"), ("2016-01-01", "2017-01-01", "1 year"),
    ("2016-01-04", "2016-01-14", "10 days")])
def test_granularity_names_the_window_as_databricks_does(start, end, expected):
    assert granularity(dt.date.fromisoformat(start), dt.date.fromisoformat(end)) == expected


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr" and "data-feature" in dict(attrs):
            self.rows.append(dict(attrs))


def test_the_report_escapes_every_string_and_marks_the_drifted_features(judged):
    detector, features = judged
    header = ReportHeader(f"fares{HOSTILE}", "2", "2016-01-04", "2016-01-18", "DRIFT", 400, 0.2, 0.1, 0.05, "run")
    history = [WindowResult("2016-01-04", "2016-01-18", 3.0, 2.8, 2.0, 0.01)]
    page = render(header, features, ["trip_distance"], distributions(detector, SUMMARY), history)
    parsed = _Text()
    parsed.feed(page)
    assert "script" not in parsed.tags and parsed.tags.count("img") == 4  # 2 features, statistics, windows
    assert HOSTILE not in page and 'onerror="alert(1)"' not in page
    rows = {r["data-feature"]: r for r in parsed.rows}
    assert set(rows) == {"trip_distance", HOSTILE}  # the attribute, unescaped by the parser, is the name
    assert rows["trip_distance"]["data-drifted"] == "true" and rows[HOSTILE]["data-drifted"] == "false"
    assert math.isclose(float(rows["trip_distance"]["data-psi"]), features[0].psi, rel_tol=0, abs_tol=0)
    # The same inputs draw the same page (a report can be compared across reruns).
    assert render(header, features, ["trip_distance"], distributions(detector, SUMMARY), history) == page


def test_the_demo_ends_saying_where_the_drift_report_is():
    """`make demo`'s last lines name the monitoring run's report by the URI the stage logged it at."""
    from orchestrator.demo import drift_report_location
    from taxi_fares_mlops.summary import JobSummary, StageResult

    def summary(outputs):
        return JobSummary("monitoring", "SUCCESS", "run", "1", "2016-03-01", "2016-04-01",
                          {"monitoring": StageResult("SUCCESS", outputs=outputs)}, {}, "taxi_fares", {})

    uri = "file:///work/.mlops/mlartifacts/1/run/artifacts/monitoring/drift_report.html"
    assert drift_report_location(summary({"drift_report": uri})) == uri
    assert drift_report_location(summary({})).startswith("none")
