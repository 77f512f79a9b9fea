"""End to end through the operator command, exactly as a person runs it: generate data, then
`mlops run training --local`, then `mlops run batch_scoring --local`, each in its own process with the
notebook's %pip installing the real wheels.

Every command runs with secrets set (a storage account key in the connection string the scoring job publishes
with, an Application Insights connection string the jobs export telemetry with, a Databricks token); the last test
looks for them in everything the product wrote."""
import functools
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from fakes.ingestion import INSTRUMENTATION_KEY, IngestionCapture
from orchestrator.local import cluster, runner
from orchestrator.local.azurite import ACCOUNT_KEY, Azurite
from orchestrator.templates import job_parameters, render_job, target_variables
from taxi_fares_mlops.config import WHEEL_PARAMETERS

START, END = "2016-01-04", "2016-01-18"
RANGE = [f"start_date={START}", f"end_date={END}", "mlflow_experiment=e2e"]
MLOPS = [sys.executable, "-m", "orchestrator.cli"]

pytestmark = pytest.mark.slow


# Set by the `services` fixture: the environment every command of this module runs with, and what they printed.
SECRET_ENV: dict = {}
CONSOLE: list = []
DATABRICKS_TOKEN = "dapi-e2e-secret-token-9f8e7d6c5b4a"


def mlops(root, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env.update(SECRET_ENV)
    env["MLOPS_HOME"] = str(root)
    done = subprocess.run([*MLOPS, *args], capture_output=True, text=True, env=env, timeout=900)
    CONSOLE.append(done.stdout + done.stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def run_json(root, job, *params):
    done = mlops(root, "run", job, "--local", "--json", *[f"--param={p}" for p in (*RANGE, *params)])
    return json.loads(done.stdout)


@pytest.fixture(scope="module", autouse=True)
def services(tmp_path_factory):
    """A real Azurite and an ingestion capture, and the secrets pointing at them, for every command here."""
    azurite = Azurite(tmp_path_factory.mktemp("azurite")).start()
    capture = IngestionCapture()
    SECRET_ENV.update({"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
                       "APPLICATIONINSIGHTS_CONNECTION_STRING": capture.connection_string,
                       "DATABRICKS_TOKEN": DATABRICKS_TOKEN})
    yield azurite, capture
    SECRET_ENV.clear()
    capture.stop()
    azurite.stop()


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


# Loads a registered model's pickle in a process where this project's packages cannot be imported, as where
# only the model's logged requirements (scikit-learn, cloudpickle) are installed, and predicts its input example.
LOAD_WITHOUT_WHEELS = """
import importlib.abc, json, sys
class NoProjectPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("taxi_fares", "taxi_fares_mlops", "orchestrator"):
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, NoProjectPackages())
import cloudpickle, pandas as pd
folder = sys.argv[1]
model = cloudpickle.load(open(folder + "/model.pkl", "rb"))
example = pd.DataFrame(**json.load(open(folder + "/input_example.json")))
print(json.dumps({"class": type(model[-1]).__name__, "predictions": model.predict(example).tolist()}))
"""


def test_the_registered_model_loads_and_predicts_without_the_projects_wheels(root, client, trained):
    import cloudpickle
    import mlflow
    import pandas as pd

    # The version's logged model, by its artifact location: no global MLflow state (tracking URI) is touched.
    logged = client.get_logged_model(client.get_model_version("taxi_fares", "1").source.rsplit("/", 1)[-1])
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                      dst_path=str(root / "download")))
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_WHEELS, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    example = json.loads((folder / "input_example.json").read_text())
    with open(folder / "model.pkl", "rb") as f:
        here = cloudpickle.load(f)  # here, with the wheels: the same predictions
    assert loaded["class"] == "BinnedHistGradientBoostingRegressor"
    assert loaded["predictions"] == here.predict(pd.DataFrame(**example)).tolist()


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


def test_a_job_on_a_shared_spark_attaches_to_it_and_scores_the_same(
        spark, root, scored, capfd, monkeypatch, tmp_path):
    """As `mlops demo` runs its jobs (an all-purpose cluster): the job's notebook gets a session on the Spark it is
    handed (this test's) and starts none; same model, same predictions. A registry URI in the caller's environment
    (MLflow's set_registry_uri leaves one behind) does not send the job to another store's models."""
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    before = table(spark, root, "predictions").select("trip_id", "prediction").collect()
    params = {"start_date": START, "end_date": END, "mlflow_experiment": "e2e", "execute_feature_engineering": "false"}
    capfd.readouterr()
    result = runner.run_local("batch_scoring", params, str(root), cluster.sharing_environment(spark))
    console = capfd.readouterr().err
    assert result.status == "SUCCESS", result.error
    assert "job batch_scoring started" in console and "starting local Spark" not in console
    predictions = table(spark, root, "predictions")
    assert [r[0] for r in predictions.select("mlflow_run_id").distinct().collect()] == [result.summary["mlflow_run_id"]]
    assertDataFrameEqual(predictions.select("trip_id", "prediction"), before)


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
    before = sorted(p.name for p in Path(root).iterdir())
    done = mlops(root, "run", "training", "--local", "--param", "execute_training=ture", "--param",
                 "end_date=2015-01-01", check=False)
    assert done.returncode == 2
    assert "execute_training: 'ture' is not 'true' or 'false'" in done.stderr
    assert "end_date: 2015-01-01 must be after start_date 2016-01-01" in done.stderr
    assert "running job" not in done.stderr and sorted(p.name for p in Path(root).iterdir()) == before
    unknown = mlops(root, "run", "training", "--local", "--param", "colour=red", check=False)
    assert unknown.returncode == 2 and "unknown parameter(s) colour" in unknown.stderr


def test_no_secret_in_anything_the_product_wrote(spark, root, client, scored, services):
    """Console, every file under the lakehouse (logs, telemetry traces, MLflow store and artifacts, Delta files),
    the tables' text columns, MLflow params and tags, Blob names, metadata, manifests and parts, and the telemetry
    envelopes (but their iKey, the ingestion address) hold none of the secrets the commands ran with."""
    import io

    import pyarrow.parquet as pq
    from azure.storage.blob import BlobServiceClient

    azurite, capture = services
    secrets = {"storage account key": ACCOUNT_KEY, "instrumentation key": INSTRUMENTATION_KEY,
               "Databricks token": DATABRICKS_TOKEN}
    found = []

    def check(where, text):
        found.extend(f"{name} in {where}" for name, value in secrets.items() if value in text)

    for i, text in enumerate(CONSOLE):
        check(f"console of command {i}", text)
    files = [p for p in Path(root).rglob("*") if p.is_file() and "envs" not in p.relative_to(root).parts]
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        check(str(path), path.read_bytes().decode("latin-1"))
    for folder in Path(root, "tables").iterdir():
        df = spark.read.format("delta").load(str(folder))
        texts = [F.col(f.name) for f in df.schema.fields if f.dataType.simpleString() == "string"]
        for name, value in secrets.items():
            holds = [F.coalesce(c.contains(value), F.lit(False)) for c in texts]
            if holds and df.filter(functools.reduce(operator.or_, holds)).count():
                found.append(f"{name} in table {folder.name}")
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            check(f"MLflow run {run.info.run_id}", json.dumps([run.data.params, run.data.tags]))
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        "taxi-fares-predictions")
    blobs = list(container.list_blobs(include=["metadata"]))
    assert any(b.name.endswith("manifest.json") for b in blobs)
    for blob in blobs:
        data = container.download_blob(blob.name).readall()
        check(f"blob {blob.name}", f"{blob.name} {blob.metadata} " + data.decode("latin-1"))
        if blob.name.endswith(".parquet"):
            check(f"blob {blob.name} (decoded)", pq.read_table(io.BytesIO(data)).to_pandas().to_json())
    assert capture.envelopes
    check("telemetry envelopes", json.dumps([{k: v for k, v in e.items() if k != "iKey"} for e in capture.envelopes]))
    assert found == []
