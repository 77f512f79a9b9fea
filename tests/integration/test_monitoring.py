"""Monitoring at the end of batch scoring: a week like the training data is OK, a week whose trip distances
are 1.5x is DRIFT naming trip_distance, too few rows is INSUFFICIENT_DATA with nothing judged, and a rerun
replaces the range's monitoring rows instead of adding to them."""
import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.storage import DRIFT_METRICS, OUTLIER_METRICS, PERFORMANCE_METRICS, RAW_TRIPS

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
SAME_WEEK = ("2016-01-18", "2016-01-25")
SHIFTED_WEEK = ("2016-01-25", "2016-02-01")
OUTLIER_WEEK = ("2016-02-01", "2016-02-08")


def _monitor(spark, scoring_config, week, **changes):
    config = scoring_config(start_date=week[0], end_date=week[1], execute_monitoring="true", **changes)
    summary = run_job(config, spark)
    return summary["stages"]["monitoring"], summary["mlflow_run_id"]


def test_monitoring_reports_ok_drift_and_insufficient_data(spark, trips_lakehouse, mlflow_store, training_config,
                                                           scoring_config):
    lakehouse = trips_lakehouse
    later = (generate_trips(spark, 10_000, *SAME_WEEK, seed=6)
             .unionByName(generate_trips(spark, 10_000, *SHIFTED_WEEK, seed=7, shift={"trip_distance": 1.5}))
             .unionByName(generate_trips(spark, 10_000, *OUTLIER_WEEK, seed=8, outliers=0.03)))
    lakehouse.write(later.withColumn("trip_id", F.col("trip_id") + 1_000_000), RAW_TRIPS, mode="append")
    run_job(training_config(), spark)

    same, same_run = _monitor(spark, scoring_config, SAME_WEEK)
    assert same["monitoring_status"] == "OK", same
    assert same["drifted_features"] == []
    assert same["outlier_share"] < 0.03
    assert 9_000 < same["rows"] <= 10_000
    assert 0.5 < same["performance"]["rmse_ratio"] < 1.25
    assert MlflowClient().get_run(same_run).data.tags["monitoring.status"] == "OK"

    shifted, shifted_run = _monitor(spark, scoring_config, SHIFTED_WEEK)
    assert shifted["monitoring_status"] in ("DRIFT", "DEGRADED"), shifted
    assert "trip_distance" in shifted["drifted_features"]
    assert "pickup_zip" not in shifted["drifted_features"]
    drift = lakehouse.read(spark, DRIFT_METRICS)
    in_week = (F.col("window_start") == SHIFTED_WEEK[0]) & (F.col("feature") == "trip_distance")
    distance = {r["metric"]: r for r in drift.filter(in_week).collect()}
    assert distance["psi"]["value"] > 0.2 and distance["psi"]["breached"]
    assert distance["ks"]["value"] > 0.1

    _alerts_read_only_what_the_stage_emits(Path(lakehouse.path("runs", shifted_run, "telemetry.jsonl")))

    counts = {t: lakehouse.read(spark, t).count() for t in (DRIFT_METRICS, PERFORMANCE_METRICS)}
    rerun, rerun_id = _monitor(spark, scoring_config, SAME_WEEK)
    assert rerun["monitoring_status"] == "OK"
    assert {t: lakehouse.read(spark, t).count() for t in counts} == counts
    window = lakehouse.read(spark, DRIFT_METRICS).filter(F.col("window_start") == SAME_WEEK[0])
    assert window.select("mlflow_run_id").distinct().collect()[0][0] == rerun_id
    assert window.groupBy("feature", "metric").count().filter("count > 1").count() == 0

    few, few_run = _monitor(spark, scoring_config, SAME_WEEK, min_rows="1000000")
    assert few["monitoring_status"] == "INSUFFICIENT_DATA" and few["drifted_features"] == []
    assert MlflowClient().get_run(few_run).data.tags["monitoring.status"] == "INSUFFICIENT_DATA"

    extremes, _ = _monitor(spark, scoring_config, OUTLIER_WEEK)
    assert 0.02 <= extremes["outlier_share"] <= 0.06, extremes
    outlier_rows = lakehouse.read(spark, OUTLIER_METRICS).filter(F.col("window_start") == OUTLIER_WEEK[0]).collect()
    assert [(r["metric"], round(r["value"], 4)) for r in outlier_rows] == [("outlier_share", extremes["outlier_share"])]


def test_monitoring_refuses_an_outlier_detector_of_another_model_version(
        spark, trips_lakehouse, mlflow_store, training_config, scoring_config):
    first = run_job(training_config(), spark)
    second = run_job(training_config(execute_feature_engineering="false", force_promote="true"), spark)
    fare = second["stages"]["training"]["model_version"]
    other_detector = first["stages"]["training"]["outlier_model_version"]
    MlflowClient().set_model_version_tag("taxi_fares", fare, "outlier_model_version", other_detector)
    with pytest.raises(StageError) as excinfo:
        run_job(scoring_config(execute_monitoring="true"), spark)
    assert (f"model 'taxi_fares_outliers' version {other_detector} belongs to 'taxi_fares' version "
            f"{first['stages']['training']['model_version']}, not version {fare}") in str(excinfo.value)


def _alerts_read_only_what_the_stage_emits(telemetry_file):
    """Every custom dimension the alert queries read is one this run emitted, and the ARM rules run the .kql."""
    rows = [json.loads(line) for line in telemetry_file.read_text().splitlines()]
    drift_logs = [r for r in rows if r["type"] == "log" and r["body"].startswith("drift in feature")]
    stage_span = next(r for r in rows if r["type"] == "span" and r["name"] == "stage monitoring")
    assert {r["attributes"]["feature"] for r in drift_logs} >= {"trip_distance"}
    emitted = {"drift.kql": set().union(*(r["attributes"] for r in drift_logs)),
               "monitoring_status.kql": set(stage_span["attributes"])}
    for name, names in emitted.items():
        query = (MONITORING / "kql" / name).read_text()
        read = set(re.findall(r"Properties\.(\w+)", query))
        assert read and read <= names, f"{name} reads {sorted(read - names)}, which the stage does not emit"
    rules = json.loads((MONITORING / "alerts" / "scheduled_query_rules.json").read_text())["resources"]
    queries = {r["properties"]["criteria"]["allOf"][0]["query"] for r in rules}
    files = {"\n".join(line for line in (MONITORING / "kql" / n).read_text().splitlines()
                       if not line.startswith("//")).strip() for n in emitted}
    assert queries == files
