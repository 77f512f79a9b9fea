"""Provenance and lineage on real components (local Spark with Delta, a sqlite MLflow store): a training run and
the versions it registers record the code and each Delta table read with its version; `mlops lineage` prints
them and refuses a version that does not exist; retraining on the recorded versions, after the tables changed,
gives the recorded metrics to 1e-9."""
import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from orchestrator.paths import REPO_ROOT
from taxi_fares_mlops import provenance
from taxi_fares_mlops.config import TargetPolicy
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, RAW_TRIPS, Lakehouse

pytestmark = pytest.mark.slow  # trains models

JOB_START, JOB_END = "2016-01-04", "2016-01-18"  # the range of the training_config fixture (tests/conftest.py)
MODEL = "taxi_fares"
MODELS = (MODEL, f"{MODEL}_outliers", f"{MODEL}_drift")
READ_BY_TRAINING = (RAW_TRIPS, PICKUP_FEATURES, DROPOFF_FEATURES)
JOB_ID, JOB_RUN_ID = "4242", "77"
FIRST_TRAINING: dict = {}  # what the module's one training saw: the repository's heads, the tables' versions


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One lakehouse and MLflow store for the module: the tests read what the first training made."""
    return tmp_path_factory.mktemp("lineage")


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _job_run_of(lakehouse) -> dict:
    """What a Databricks job run passes: its ids and the target's policy (a run with a job id must carry one)."""
    policy = TargetPolicy(target="local", require_approval=False, allow_force_promote=True,
                          min_model_validation="dry_run", lakehouse_root=lakehouse.root, mlflow_registry_uri="",
                          table_schema="", model_name=MODEL, secret_scope="taxi-fares")
    return {"databricks_job_id": JOB_ID, "databricks_run_id": JOB_RUN_ID, "target_policy": policy.to_json()}


@pytest.fixture
def trained(spark, lakehouse, mlflow_store, training_config):
    """Version 1 of the model and its companions, trained by the first test that asks, in a 'job run'; returns
    (the run, the heads of the repository before and after, the tables' versions when it trained)."""
    client = MlflowClient()
    if not client.search_model_versions(f"name = '{MODEL}'"):
        from taxi_fares.synthetic import generate_trips

        lakehouse.write(generate_trips(spark, 20_000, JOB_START, JOB_END, seed=5), RAW_TRIPS)
        before = _head()
        summary = run_job(training_config(execute_promotion=False, **_job_run_of(lakehouse)), spark)
        FIRST_TRAINING.update(heads={before, _head()},
                              versions={table: lakehouse.version(spark, table) for table in READ_BY_TRAINING})
        assert summary["stages"]["training"]["table_versions"] == FIRST_TRAINING["versions"]
    run = client.get_run(client.get_model_version(MODEL, "1").run_id)
    return run, FIRST_TRAINING["heads"], FIRST_TRAINING["versions"]


def test_the_run_and_its_versions_record_the_code_and_each_table_read(trained):
    run, heads, versions = trained
    tags = run.data.tags
    assert tags[provenance.GIT_COMMIT] in heads
    assert tags[provenance.GIT_DIRTY] in ("true", "false")
    assert tags[provenance.CODE_SOURCE] == f"working tree {REPO_ROOT}"
    for name in provenance.DISTRIBUTIONS:  # the tests run from the sources: no wheel, no SHA256SUMS
        assert tags[provenance.wheel_sha256_tag(name)] == provenance.EDITABLE
        assert tags[provenance.wheel_version_tag(name)] == (REPO_ROOT / "VERSION").read_text().strip()
    assert (tags[provenance.JOB_ID], tags[provenance.RUN_ID]) == (JOB_ID, JOB_RUN_ID)
    assert tags[provenance.TABLES] == ",".join(f"{t}={versions[t]}" for t in READ_BY_TRAINING)

    inputs = [i for i in run.inputs.dataset_inputs
              if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "training"]
    recorded = {}
    for dataset_input in inputs:
        input_tags = {t.key: t.value for t in dataset_input.tags}
        table = input_tags[provenance.INPUT_TABLE]
        recorded[table] = int(input_tags[provenance.INPUT_VERSION])
        assert dataset_input.dataset.source_type == "delta_table"
        assert dataset_input.dataset.name == f"{table}@v{recorded[table]}"
    assert recorded == versions

    ours = provenance.of(tags)
    assert len(ours) == 10
    for name in MODELS:  # the fare model and both companions carry what their run recorded
        assert provenance.of(MlflowClient().get_model_version(name, "1").tags) == ours


def test_lineage_prints_what_made_the_version(trained, lakehouse, mlops):
    run, _, versions = trained
    tags = run.data.tags
    code, out, err = mlops("lineage", "--model", MODEL, "--version", "1")
    assert (code, err) == (0, "")
    assert f"model {MODEL} version 1\n" in out
    assert f"MLflow run     {run.info.run_id} (experiment {run.info.experiment_id}, FINISHED)" in out
    assert f"Databricks     job {JOB_ID}, run {JOB_RUN_ID}" in out
    assert f"git commit     {tags[provenance.GIT_COMMIT]} (dirty: {tags[provenance.GIT_DIRTY]})" in out
    for name in provenance.DISTRIBUTIONS:
        assert f"wheel          {name} {tags[provenance.wheel_version_tag(name)]}, sha256 {provenance.EDITABLE}" in out
    for table in READ_BY_TRAINING:
        assert f"{table.ljust(len(DROPOFF_FEATURES))}  version {versions[table]}  {lakehouse.location(table)}" in out
    assert f"--param table_versions={tags[provenance.TABLES]}" in out
    for name, value in run.data.metrics.items():
        assert f"  {name}" in out and f"  {value!r}" in out
    assert mlops("lineage", "--local", "--model", MODEL, "--version", "1")[1] == out


def test_lineage_refuses_a_version_that_does_not_exist(trained, mlops):
    code, out, err = mlops("lineage", "--model", MODEL, "--version", "99")
    assert (code, out) == (2, "")
    assert err == f"mlops lineage: model '{MODEL}' has no version 99\n"
    code, _, err = mlops("lineage", "--model", "no_such_model", "--version", "1")
    assert code == 2 and "model 'no_such_model' has no version 1" in err
    code, _, err = mlops("lineage", "--version", "1")
    assert code == 2 and "--model is required with the local registry" in err


def test_retraining_on_the_recorded_versions_gives_the_recorded_metrics(spark, trained, lakehouse, training_config):
    """The tables change after training (more trips of the range appended, their features merged): trained on
    the latest tables a model would see other rows; retrained on the recorded versions it sees the same rows and
    makes the same metrics."""
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.datasets import labelled_set

    run, _, versions = trained
    recorded = run.data.tags[provenance.TABLES]
    offset = lakehouse.read(spark, RAW_TRIPS).agg(F.max("trip_id")).first()[0] + 1
    more = generate_trips(spark, 6_000, JOB_START, JOB_END, seed=11).withColumn("trip_id", F.col("trip_id") + offset)
    lakehouse.write(more, RAW_TRIPS, mode="append")
    run_job(training_config(execute_training=False, execute_promotion=False), spark)  # feature engineering only
    assert all(lakehouse.version(spark, table) > versions[table] for table in READ_BY_TRAINING)
    config = training_config(execute_feature_engineering=False, execute_promotion=False, table_versions=recorded)
    latest_rows = labelled_set(spark, lakehouse, config).count()
    recorded_rows = labelled_set(spark, lakehouse.as_of(versions), config).count()
    assert latest_rows > recorded_rows == run.data.metrics["train_rows"] + run.data.metrics["holdout_rows"]

    again = run_job(config, spark)
    retrained = MlflowClient().get_run(again["mlflow_run_id"])
    assert sorted(retrained.data.metrics) == sorted(run.data.metrics)
    for name, value in run.data.metrics.items():
        assert retrained.data.metrics[name] == pytest.approx(value, rel=0, abs=1e-9), name
    assert retrained.data.params["table_versions"] == recorded
    assert retrained.data.tags[provenance.TABLES] == recorded
    assert mlflow.active_run() is None


def test_a_recorded_version_that_is_gone_is_named(spark, trained, training_config):
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(execute_feature_engineering=False, execute_promotion=False,
                                table_versions="raw_trips=999"), spark)
    assert "could not read version 999 of table 'raw_trips'" in str(excinfo.value)
    assert "DELTA_VERSION_NOT_FOUND" in str(excinfo.value)


def test_recording_a_table_input_reads_no_data(spark, mlflow_store, tmp_path):
    """MLflow's dataset tracking of a table read at a version: its digest is the query plan's hash and no profile
    is computed, so logging it starts no Spark job (MLflow's own SparkDataset counts every row)."""
    from taxi_fares_mlops.tracking import table_dataset

    lakehouse = Lakehouse(str(tmp_path / "own-lakehouse"))  # not the module's: its tables stay as trained on
    lakehouse.write(spark.range(50_000).withColumn("fare", F.lit(1.0)), RAW_TRIPS)
    view = lakehouse.as_of({})
    dataset = table_dataset(view, view.read(spark, RAW_TRIPS), RAW_TRIPS, view.read_versions[RAW_TRIPS])
    context = spark.sparkContext
    context.setJobGroup("provenance-inputs", "logging a dataset input")
    try:
        with mlflow.start_run():
            mlflow.log_input(dataset, context="training")
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    assert list(context.statusTracker().getJobIdsForGroup("provenance-inputs")) == []


def test_lineage_on_a_target_reads_the_targets_registry(workspace, mlops, tmp_path, empty_mlflow_db, monkeypatch):
    """`--target`: the target's model name and registry (a sqlite store standing in for Unity Catalog), the
    workspace (the emulator) for the run; a version missing there is exit 2, a workspace that cannot answer for
    the run exit 3."""
    import re
    import shutil

    registry = tmp_path / "registry.db"
    shutil.copyfile(empty_mlflow_db, registry)
    uri = f"sqlite:///{registry}"
    targets = workspace.targets_file.read_text()
    staging = re.search(r"\n  staging:\n(?:    .*\n|      .*\n|\s*\n)*", targets).group(0)
    targets = targets.replace(staging, re.sub(r"    mlflow_registry_uri: \S+", f"    mlflow_registry_uri: {uri}",
                                              staging))
    workspace.targets_file.write_text(targets)
    model = "staging.taxi_fares.taxi_fares"

    code, out, err = mlops("lineage", "--target", "staging", "--version", "1")
    assert (code, out, err) == (2, "", f"mlops lineage: model '{model}' has no version 1\n")

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(model)
    client.create_model_version(model, source="dbfs:/nowhere", run_id="0123456789abcdef")
    code, out, err = mlops("lineage", "--target", "staging", "--version", "1")
    assert (code, out) == (3, ""), err
    assert err.startswith(f"mlops lineage: reading model '{model}' version 1 from databricks failed: ")


def _deploy(spark, lakehouse, task: str, **changes) -> dict:
    """One task of the deployment job, in-process, for version 1 (what the job's notebook task runs)."""
    from taxi_fares_mlops.config import DEPLOYMENT_PARAMETERS, DeploymentConfig

    values = {p.name: p.default for p in DEPLOYMENT_PARAMETERS}
    values.update(model_name=MODEL, model_version="1", deployment_task=task, lakehouse_root=lakehouse.root,
                  mlflow_experiment="tests", require_approval="true", model_validation="enabled")
    values.update(changes)
    return run_job(DeploymentConfig.from_mapping(values), spark)


def test_the_deployment_job_judges_holds_and_promotes_the_version_it_was_started_for(
        spark, trained, lakehouse, mlops):
    """The deployment job's three steps for version 1, each a run of its own as each task is: validation judges it
    on its own training holdout (the recorded table versions, whatever the tables hold now: the same rmse as its
    training run); approval holds it until `mlops approve` tags it approval=approved, and promotion refuses it until
    then; approved, promotion reuses the validation's scores and makes it champion. A version that failed validation
    (enabled) is kept out by the promotion step, which reads the failure recorded on the version."""
    from delta.tables import DeltaTable

    from taxi_fares_mlops.errors import StageError

    run, _, versions = trained
    client = MlflowClient()
    if lakehouse.version(spark, RAW_TRIPS) == versions[RAW_TRIPS]:  # the tables change after training
        DeltaTable.forPath(spark, lakehouse.location(RAW_TRIPS)).delete("trip_id % 7 = 0")
    # a version that fails validation under model_validation=enabled: the promotion step, a run of its own, reads
    # the failure the validation step recorded on the version and keeps it out
    failing = _deploy(spark, lakehouse, "validation", max_rmse="0.001")["stages"]["validation"]
    assert (failing["validation_status"], failing["failed"]) == ("FAILED", "max_rmse")
    blocked = _deploy(spark, lakehouse, "promotion", require_approval="false")["stages"]["promotion"]
    assert blocked["decision"] == "blocked_by_validation"
    assert "champion" not in client.get_registered_model(MODEL).aliases

    validated = _deploy(spark, lakehouse, "validation")
    checks = validated["stages"]["validation"]
    assert list(validated["stages"]) == ["validation"]
    assert (checks["challenger_version"], checks["champion_version"], checks["validation_status"]) == ("1", None,
                                                                                                       "PASSED")
    assert checks["challenger_rmse"] == pytest.approx(run.data.metrics["rmse"], rel=0, abs=1e-9)
    tags = client.get_model_version(MODEL, "1").tags
    assert (tags["validation.status"], tags["validation.champion_version"]) == ("PASSED", "")

    with pytest.raises(StageError) as held:
        _deploy(spark, lakehouse, "approval")
    assert (f"model '{MODEL}' version 1 waits for approval (tag approval=approved): approve it with `mlops approve "
            f"--model {MODEL} --version 1`") in str(held.value)
    assert "no online comparison recorded yet" in str(held.value)
    tags = client.get_model_version(MODEL, "1").tags
    assert (tags["approval.status"], tags["approval.judged_against"]) == ("PENDING", "none")
    # what the monitoring of online traffic records on a version served in shadow; `mlops approve` shows it
    from taxi_fares_mlops.online_traffic import comparison_tags

    compared = [{"variant": "shadow", "model_version": "1", "trips": 50, "trips_with_fare": 40, "rmse": 2.5,
                 "mae": 1.9, "mean_prediction": 14.2, "compared_at": "2016-02-02T10:00:00"}]
    for key, value in comparison_tags(compared, None)["1"].items():
        client.set_model_version_tag(MODEL, "1", key, value)
    with pytest.raises(StageError, match="version 1 is not approved"):  # the promotion step alone: refused
        _deploy(spark, lakehouse, "promotion")
    assert "champion" not in client.get_registered_model(MODEL).aliases

    code, out, err = mlops("approve", "--model", MODEL, "--version", "1")
    assert code == 0, err
    assert ("online (shadow, compared 2016-02-02T10:00:00): rmse 2.5000 on 40 trips with a fare of 50 scored"
            in err), err
    tags = client.get_model_version(MODEL, "1").tags
    assert (tags["approval"], tags["approval.status"]) == ("approved", "APPROVED")
    assert "champion" not in client.get_registered_model(MODEL).aliases  # the deployment's promotion decides
    assert _deploy(spark, lakehouse, "approval")["stages"]["approval"]["approval"] == "approved"
    promoted = _deploy(spark, lakehouse, "promotion")["stages"]["promotion"]
    assert promoted["decision"] == "first_champion"
    assert promoted["challenger_rmse"] == round(checks["challenger_rmse"], 4)
    assert str(client.get_registered_model(MODEL).aliases["champion"]) == "1"
    assert mlflow.active_run() is None
