"""Monitoring's companion models in process: a fare model's outlier and drift models must be its own (a
mismatch is refused naming both versions), and the registered drift model judges a pandas frame of requests.
The monitoring statuses themselves are tested through the CLI in tests/e2e/test_monitoring_job.py; the drift report
and the Databricks-shaped tables of a run here."""
import base64
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from taxi_fares.features import join_features, model_input_columns
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, PREDICTIONS


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One lakehouse and MLflow store for the module: both tests read what two trainings made."""
    return tmp_path_factory.mktemp("monitoring")


@pytest.fixture
def versions(spark, trips_lakehouse, mlflow_store, training_config):
    """The tags of fare model versions 1 and 2, each trained with its companions; 2, trained after 1 and forced,
    is the champion. Trained by the first test that asks."""
    client = MlflowClient()
    if not client.search_model_versions("name = 'taxi_fares'"):
        run_job(training_config(), spark)
        run_job(training_config(execute_feature_engineering="false", force_promote="true"), spark)
    return {version: client.get_model_version("taxi_fares", version).tags for version in ("1", "2")}


def test_monitoring_refuses_companions_of_another_model_version(spark, versions, scoring_config):
    client = MlflowClient()
    for kind, tag in (("outliers", "outlier_model_version"), ("drift", "drift_model_version")):
        mine, other = versions["2"][tag], versions["1"][tag]
        client.set_model_version_tag("taxi_fares", "2", tag, other)
        try:
            with pytest.raises(StageError) as excinfo:
                run_job(scoring_config(execute_monitoring="true"), spark)
        finally:
            client.set_model_version_tag("taxi_fares", "2", tag, mine)
        assert (f"model 'taxi_fares_{kind}' version {other} belongs to 'taxi_fares' version 1, not version 2"
                in str(excinfo.value))


def test_the_registered_drift_model_judges_a_frame_of_requests(spark, trips_lakehouse, versions, scoring_config):
    """``taxi_fares_drift@champion`` loads with plain ``mlflow.pyfunc`` (no Spark needed to judge) and finds the
    drift of shifted trip distances in a pandas frame; the params override its thresholds."""
    scored = run_job(scoring_config(execute_monitoring="true"), spark)
    assert scored["stages"]["monitoring"]["model_version"] == "2"
    tags = MlflowClient().get_model_version("taxi_fares_drift", versions["2"]["drift_model_version"]).tags
    assert tags["fare_model_version"] == "2"

    model = mlflow.pyfunc.load_model("models:/taxi_fares_drift@champion")
    columns = model.metadata.get_input_schema().input_names()
    read = trips_lakehouse.read
    frame = (join_features(read(spark, PREDICTIONS), read(spark, PICKUP_FEATURES), read(spark, DROPOFF_FEATURES))
             .select(*model_input_columns(), "prediction").limit(3000).toPandas()[columns])
    assert not model.predict(frame)["drifted"].any()
    shifted = frame.assign(trip_distance=frame["trip_distance"] * 1.5)
    judged = model.predict(shifted).set_index("feature")
    assert judged.loc["trip_distance", "drifted"] and judged.loc["trip_distance", "psi"] > 0.2
    assert not model.predict(shifted, params={"psi_threshold": 100.0, "ks_threshold": 1.0})["drifted"].any()


def test_scoring_another_version_leaves_the_champions_rows_and_monitoring_reads_them(
        spark, trips_lakehouse, versions, scoring_config):
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from taxi_fares_mlops.storage import DRIFT_METRICS, SHADOW_PREDICTIONS

    champion = run_job(scoring_config(execute_monitoring="true"), spark)
    assert champion["stages"]["batch_scoring"]["table"] == PREDICTIONS
    rows = trips_lakehouse.read(spark, PREDICTIONS)
    before = rows.collect()
    assert {r["model_version"] for r in before} == {"2"}
    metrics = trips_lakehouse.read(spark, DRIFT_METRICS).filter(F.col("model_version") == "2").collect()
    assert metrics

    other = run_job(scoring_config(model_version="1", execute_monitoring="true"), spark)
    assertDataFrameEqual(trips_lakehouse.read(spark, PREDICTIONS), before)  # the champion's rows, as they were
    assert other["stages"]["batch_scoring"]["table"] == SHADOW_PREDICTIONS
    assert other["stages"]["monitoring"]["model_version"] == "1"
    shadow = trips_lakehouse.read(spark, SHADOW_PREDICTIONS)
    assert {r["model_version"] for r in shadow.select("model_version").distinct().collect()} == {"1"}
    assert shadow.count() == len(before)
    # monitoring version 1 replaced its own rows of the window, not the champion's
    assertDataFrameEqual(trips_lakehouse.read(spark, DRIFT_METRICS).filter(F.col("model_version") == "2"), metrics)

    # Monitoring without a version says nothing of another: it reports on the champion's rows.
    again = run_job(scoring_config(execute_batch_scoring="false", execute_monitoring="true"), spark)
    assert again["stages"]["monitoring"]["model_version"] == "2"
    assert again["stages"]["monitoring"]["rows"] == len(before)
    assertDataFrameEqual(trips_lakehouse.read(spark, PREDICTIONS), before)


class _Report(HTMLParser):
    """What a reader of the drift report sees: the per-feature table's rows and the inlined PNG figures."""

    def __init__(self):
        super().__init__()
        self.features, self.images, self.status, self._in_status = {}, [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-feature" in attrs:
            self.features[attrs["data-feature"]] = attrs
        elif tag == "img":
            self.images.append(attrs["src"])
        self._in_status = attrs.get("id") == "status"

    def handle_data(self, data):
        if self._in_status:
            self.status, self._in_status = data, False


def test_each_monitoring_run_logs_a_drift_report_a_browser_opens(
        spark, trips_lakehouse, versions, scoring_config, tmp_path):
    """The report names every profiled feature with the PSI the drift tables hold for the run, marks the drifted
    ones, inlines valid PNGs, and the Databricks-shaped tables hold the same statistics. A PSI threshold below most
    features' PSI on these (undrifted) trips makes some of them drifted and leaves others not."""
    from pyspark.sql import functions as F

    from taxi_fares.drift import CATEGORICAL, NUMERIC
    from taxi_fares_mlops.storage import DRIFT_METRICS

    summary = run_job(scoring_config(execute_feature_engineering="false", execute_monitoring="true",
                                     psi_threshold="0.003", ks_threshold="0.02"), spark)
    monitored = summary["stages"]["monitoring"]
    run_id = summary["mlflow_run_id"]
    artifact = f"runs:/{run_id}/monitoring/drift_report.html"
    page = Path(mlflow.artifacts.download_artifacts(artifact, dst_path=str(tmp_path))).read_text(encoding="utf-8")
    # What the stage (and `make demo`) says: the local store's file, a URL a browser opens.
    assert monitored["drift_report"].startswith("file:///") and monitored["drift_report"].endswith(
        "/monitoring/drift_report.html")
    assert Path(urlparse(monitored["drift_report"]).path).read_text(encoding="utf-8") == page
    report = _Report()
    report.feed(page)

    long = trips_lakehouse.read(spark, DRIFT_METRICS).filter(F.col("mlflow_run_id") == run_id).collect()
    psi = {r["feature"]: r["value"] for r in long if r["metric"] == "psi"}
    shaped = {r["column_name"]: r for r in trips_lakehouse.read(spark, "predictions_drift_metrics")
              .filter(F.col("mlflow_run_id") == run_id).collect()}
    assert set(report.features) == set(psi) == set(shaped) == {*NUMERIC, *CATEGORICAL}
    for feature, row in report.features.items():
        assert float(row["data-psi"]) == psi[feature] == shaped[feature]["population_stability_index"]
        assert (row["data-drifted"] == "true") == (feature in monitored["drifted_features"]) \
            == shaped[feature]["drifted"]
    drifted = set(monitored["drifted_features"])
    assert drifted and drifted != set(psi), "the thresholds should leave some features drifted and some not"
    assert report.status == monitored["monitoring_status"]

    # Databricks data profiling's columns: the window, the whole table (no slice), a baseline drift, the tests.
    distance = shaped["trip_distance"]
    assert (distance["window"]["start"].date().isoformat(), distance["window"]["end"].date().isoformat()) == \
        ("2016-01-04", "2016-01-18")
    assert distance["granularity"] == "2 weeks" and distance["drift_type"] == "BASELINE"
    assert distance["slice_key"] is None and distance["slice_value"] is None and distance["model_id"] == "2"
    ks = next(r["value"] for r in long if r["feature"] == "trip_distance" and r["metric"] == "ks")
    assert distance["ks_test"]["statistic"] == ks and 0 <= distance["ks_test"]["pvalue"] <= 1
    assert distance["chi_squared_test"] is None and distance["wasserstein_distance"] is None
    assert 0 <= distance["js_distance"] <= 1
    zone = shaped["pickup_zip"]
    assert zone["ks_test"] is None and 0 <= zone["chi_squared_test"]["pvalue"] <= 1
    profile = {(r["column_name"], r["log_type"]): r for r in trips_lakehouse.read(spark, "predictions_profile_metrics")
               .filter(F.col("mlflow_run_id") == run_id).collect()}
    assert profile[(":table", "INPUT")]["count"] == monitored["rows"]
    assert profile[(":table", "INPUT")]["root_mean_squared_error"] == pytest.approx(monitored["performance"]["rmse"],
                                                                                    abs=1e-4)

    assert all(src.startswith("data:image/png;base64,") for src in report.images)
    assert len(report.images) == len(psi) + 2  # a figure per feature, the statistics, the recent windows
    for src in report.images:
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2_000


def test_online_traffic_is_monitored_from_the_inference_table_as_batch_predictions_are(
        spark, trips_lakehouse, versions, tmp_path):
    """The champion packaged and served (in process) with its inference table in the lakehouse; the range's trips
    sent as requests; the monitoring job over `inference_requests` judges the trips the champion answered online,
    with their realized error (the fares are in raw_trips), and writes the profiling tables of that table."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from pyspark.sql import functions as F

    from fakes.serving import call_asgi, loaded_app
    from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, PICKUP_TS, PICKUP_ZIP
    from taxi_fares_mlops.config import MONITORING_PARAMETERS, MonitoringConfig
    from taxi_fares_mlops.serving.app import Settings
    from taxi_fares_mlops.serving.package import package
    from taxi_fares_mlops.signing import public_pem
    from taxi_fares_mlops.storage import INFERENCE_REQUESTS, RAW_TRIPS

    key = Ed25519PrivateKey.generate()
    (tmp_path / "trusted.pub").write_bytes(public_pem(key))
    package(spark, trips_lakehouse, tmp_path / "bundle", "taxi_fares", lookback_hours=15 * 24, signing_key=key)
    app = loaded_app(Settings(bundle=str(tmp_path / "bundle"), trusted_key=str(tmp_path / "trusted.pub"),
                              lookback_hours=15 * 24, inference_table=trips_lakehouse.table_path(INFERENCE_REQUESTS)))
    rows = (trips_lakehouse.read(spark, RAW_TRIPS).filter(F.col(DISTANCE).between(0.1, 50))
            .orderBy("trip_id").limit(1200).collect())
    trips = [{"pickup_time": r[PICKUP_TS].isoformat(), "dropoff_time": r[DROPOFF_TS].isoformat(),
              "pickup_zip": r[PICKUP_ZIP], "dropoff_zip": r[DROPOFF_ZIP], "trip_distance": r[DISTANCE]} for r in rows]
    answered = 0
    for start in range(0, len(trips), 200):
        status, body, _ = call_asgi(app, "POST", "/v1/predict", {"trips": trips[start:start + 200]})
        answered += len(body["predictions"]) if status == 200 else 0
    assert app.state.service.inference_log.flush()
    app.state.service.stop()
    assert answered > 1000

    values = {p.name: p.default for p in MONITORING_PARAMETERS}
    values.update(start_date="2016-01-04", end_date="2016-01-18", lakehouse_root=trips_lakehouse.root,
                  mlflow_experiment="tests", monitored_source="inference_requests", min_rows="500",
                  retrain_on_drift="false", execute_feature_engineering="false")
    summary = run_job(MonitoringConfig.from_mapping(values), spark)
    monitored = summary["stages"]["monitoring"]
    assert monitored["rows"] == answered
    assert monitored["monitoring_status"] in ("OK", "DRIFT") and monitored["performance"]["rmse"] > 0
    # the comparison the approval step reads: here the champion alone answered, all of it
    [compared] = monitored["variant_comparison"]
    assert (compared["variant"], compared["trips"]) == ("champion", answered)
    metrics = MlflowClient().get_run(summary["mlflow_run_id"]).data.metrics
    assert metrics[f"comparison.champion_v{monitored['model_version']}.trips"] == answered
    shaped = trips_lakehouse.read(spark, "inference_requests_drift_metrics").filter(
        F.col("mlflow_run_id") == summary["mlflow_run_id"])
    assert shaped.count() > 0
