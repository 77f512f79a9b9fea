"""End to end through the operator command, exactly as a person runs it: generate data, then
`mlops run training --local`, then `mlops run batch_scoring --local`, each in its own process with the
notebook's %pip installing the real wheels."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from orchestrator.templates import job_parameters, render_job, target_variables
from taxi_fares_mlops.config import WHEEL_PARAMETERS

START, END = "2016-01-04", "2016-01-18"
RANGE = [f"start_date={START}", f"end_date={END}", "mlflow_experiment=e2e"]
MLOPS = [sys.executable, "-m", "orchestrator.cli"]

pytestmark = pytest.mark.slow


def mlops(root, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(root)
    done = subprocess.run([*MLOPS, *args], capture_output=True, text=True, env=env, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def run_json(root, job, *params):
    done = mlops(root, "run", job, "--local", "--json", *[f"--param={p}" for p in (*RANGE, *params)])
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lakehouse")
    mlops(root, "data", "generate", "--rows", "20000", "--start", START, "--end", END, "--seed", "5")
    return root


@pytest.fixture(scope="module")
def client(root):
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db", registry_uri=f"sqlite:///{root}/mlflow.db")


@pytest.fixture(scope="module")
def trained(root):
    return run_json(root, "training", "max_iter=40", "learning_rate=0.2")


@pytest.fixture(scope="module")
def scored(root, trained):
    return run_json(root, "batch_scoring")


def table(spark, root, name):
    return spark.read.format("delta").load(f"{root}/tables/{name}")


def version(spark, root, name):
    return DeltaTable.forPath(spark, f"{root}/tables/{name}").history(1).first()["version"]


def test_training_run_records_params_metrics_artifacts_and_model(root, client, trained):
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    defaults = job_parameters(render_job("training", target_variables("local", lakehouse=str(root))))
    given = {**defaults, **dict(p.split("=", 1) for p in (*RANGE, "max_iter=40", "learning_rate=0.2"))}
    expected = {k: v for k, v in given.items() if k not in WHEEL_PARAMETERS}
    assert run.data.params == expected
    for metric in ("rmse", "mae", "r2", "baseline_rmse", "baseline_mae", "baseline_r2", "train_rows"):
        assert metric in run.data.metrics, metric
    assert run.data.metrics["rmse"] < 0.7 * run.data.metrics["baseline_rmse"]
    reports = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reports")}
    assert reports == {"feature_statistics.csv", "predicted_vs_actual.png", "residuals.png"}
    assert {t: run.data.tags[f"stage.{t}"] for t in ("feature_engineering", "training", "promotion")} == {
        "feature_engineering": "SUCCESS", "training": "SUCCESS", "promotion": "SUCCESS"}
    versions = client.search_model_versions("name='taxi_fares'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    aliases = client.get_registered_model("taxi_fares").aliases
    assert {a: str(v) for a, v in aliases.items()} == {"champion": "1", "challenger": "1"}
    assert trained["stages"]["promotion"]["decision"] == "first_champion"
    assert trained["model"]["aliases"] == {"champion": "1", "challenger": "1"}


def test_scoring_covers_every_trip_in_the_range_exactly_once(spark, root, client, scored):
    assert client.get_run(scored["mlflow_run_id"]).info.status == "FINISHED"
    predictions = table(spark, root, "predictions")
    trips = table(spark, root, "raw_trips").filter(
        (F.col("tpep_pickup_datetime") >= START) & (F.col("tpep_pickup_datetime") < END))
    assertDataFrameEqual(predictions.select("trip_id"), trips.select("trip_id"))
    assert scored["stages"]["batch_scoring"]["rows"] == trips.count()
    meta = predictions.select("model_name", "model_version", "mlflow_run_id").distinct().collect()
    assert [tuple(r) for r in meta] == [("taxi_fares", "1", scored["mlflow_run_id"])]
    assert predictions.filter(F.col("prediction").isNull() | F.col("scored_at").isNull()).count() == 0


def test_rerun_without_feature_engineering_keeps_features_and_does_not_duplicate(spark, root, client, scored):
    features_before = {t: version(spark, root, t) for t in ("pickup_features", "dropoff_features")}
    pickup_rows = table(spark, root, "pickup_features").collect()
    count_before = table(spark, root, "predictions").count()

    rerun = run_json(root, "batch_scoring", "execute_feature_engineering=false")
    assert rerun["stages"]["feature_engineering"] == {"status": "SKIPPED"}
    assert {t: version(spark, root, t) for t in features_before} == features_before
    assertDataFrameEqual(table(spark, root, "pickup_features"), pickup_rows)
    predictions = table(spark, root, "predictions")
    assert predictions.count() == count_before == predictions.select("trip_id").distinct().count()
    assert [r[0] for r in predictions.select("mlflow_run_id").distinct().collect()] == [rerun["mlflow_run_id"]]


def test_a_failing_stage_exits_non_zero_and_leaves_predictions_alone(spark, root, client, scored):
    before = version(spark, root, "predictions")
    done = mlops(root, "run", "batch_scoring", "--local", *[f"--param={p}" for p in (*RANGE, "model_version=99")],
                 check=False)
    assert done.returncode == 1
    assert "stage 'batch_scoring' failed: RegistryError: model 'taxi_fares' has no version 99" in done.stdout
    experiment = client.get_experiment_by_name("e2e")
    last = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert last.info.status == "FAILED"
    assert last.data.tags["stage.batch_scoring"] == "FAILED"
    assert version(spark, root, "predictions") == before


def test_bad_parameters_are_reported_before_any_work(root):
    done = mlops(root, "run", "training", "--local", "--param", "execute_training=ture", "--param",
                 "end_date=2015-01-01", check=False)
    assert done.returncode == 1
    assert "execute_training: 'ture' is not 'true' or 'false'" in done.stdout
    assert "end_date: 2015-01-01 must be after start_date 2016-01-01" in done.stdout
    unknown = mlops(root, "run", "training", "--local", "--param", "colour=red", check=False)
    assert unknown.returncode == 2 and "unknown parameter(s) colour" in unknown.stderr
