"""The catalogue of bad inputs (docs/failure-behaviour.md, "Bad inputs"): each case is refused with the exact
message checked, and nothing is written (no table, no lakehouse folder, no request, no registered version).

Cases run the way a user meets them: job parameters, the CLI and the targets file through ``mlops`` in-process;
raw data, registry state, storage and services through ``run_job`` on the shared Spark session and a real sqlite
MLflow store (or a real server that refuses). ``_case_names`` lists them for the page's table.
"""
import contextlib
import errno
import os
import sqlite3
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from orchestrator.paths import REPO_ROOT
from taxi_fares_mlops.errors import StageError, TrackingError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import (DROPOFF_FEATURES, PICKUP_FEATURES, PREDICTIONS, QUARANTINED_TRIPS, RAW_TRIPS,
                                      Lakehouse)

GOOD = ("2016-01-05 08:00", "2016-01-05 08:20", 2.5, 14.5, 10001, 10002)


# --- job parameters: `mlops run <job> --local --param ...` refuses before building or starting anything ----------

PARAMETERS = [
    ("training", ["max_iter=ten"],
     "mlops run: training: invalid job parameters:\n  - max_iter: 'ten' is not a whole number"),
    ("training", ["learning_rate=1.5"], "learning_rate: 1.5 is outside (0.0, 1.0]"),
    ("training", ["max_leaf_nodes=1"], "max_leaf_nodes: 1 is below the minimum 2"),
    ("training", ["start_date=2016-02-30"], "start_date: '2016-02-30' is not a date (expected YYYY-MM-DD)"),
    ("training", ["start_date=2016-03-01", "end_date=2016-02-01"],
     "end_date: 2016-02-01 must be after start_date 2016-03-01"),
    ("training", ["execute_training=yes"], "execute_training: 'yes' is not 'true' or 'false'"),
    ("batch_scoring", ["model_alias=production"], "model_alias: 'production' is not one of champion, challenger"),
    ("monitoring", ["psi_threshold=-1"], "psi_threshold: -1.0 is outside (0.0, inf]"),
    ("training", ["max_iters=5"], "mlops run: unknown parameter(s) max_iters; this job takes: "),
    ("training", ["max_iter"], "mlops run: --param 'max_iter' is not of the form name=value"),
]


@pytest.mark.parametrize("job, params, message", PARAMETERS, ids=[f"{p[0]}:{p[1][0]}" for p in PARAMETERS])
def test_job_parameters(lakehouse, mlops, job, params, message):
    argv = ["run", job, "--local"]
    for param in params:
        argv += ["--param", param]
    code, _, err = mlops(*argv)
    assert code == 2
    assert message in err
    assert not Path(lakehouse.root).exists()


# --- the CLI: usage errors from argparse (exit 2) -------------------------------------------------------------

CLI = [
    (["run", "scoring", "--local"], "argument job: invalid choice: 'scoring' (choose from 'training', "
                                    "'batch_scoring', 'monitoring', 'scoring_stream', 'deployment')"),
    (["run", "training", "--local", "--target", "dev"], "argument --target: not allowed with argument --local"),
    (["run", "training"], "one of the arguments --local --target is required"),
    (["data", "generate", "--rows", "0"], "argument --rows: '0' must be at least 1"),
    (["serving", "package", "--local", "--alias", "champion", "--version", "2"],
     "argument --version: not allowed with argument --alias"),
]


@pytest.mark.parametrize("argv, message", CLI, ids=[" ".join(a[0][:3]) for a in CLI])
def test_cli_usage(lakehouse, capsys, argv, message):
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
    assert not Path(lakehouse.root).exists()


# --- the targets file: `mlops deploy --target T --dry-run` refuses before any request -----------------------------

TARGETS = [
    ("    host: https://adb-1000000000000002.2.azuredatabricks.net\n",
     "    host: https://adb-1000000000000002.2.azuredatabricks.net\n    hots: x\n",
     "target 'staging': unknown key 'hots'"),
    ("defaults:\n", "profiles: {}\ndefaults:\n", "unknown key 'profiles' (keys: defaults, targets)"),
    ("https://adb-1000000000000002.2.azuredatabricks.net", "adb-1000000000000002.2.azuredatabricks.net",
     "target 'staging': host 'adb-1000000000000002.2.azuredatabricks.net' is not a workspace URL (https://<instance>)"),
    ("wheel_base_path: /Volumes/staging/taxi_fares/wheels", "wheel_base_path: /tmp/wheels",
     "target 'staging': wheel_base_path '/tmp/wheels' is not /Volumes/<catalog>/<schema>/<volume>/... or dbfs:/..."),
    ("lakehouse_root: /Volumes/staging/taxi_fares/lakehouse", "lakehouse_root: /Volumes/staging",
     "target 'staging': lakehouse_root '/Volumes/staging' is not /Volumes/<catalog>/<schema>/<volume>/..., dbfs:/... "
     "or abfss://<container>@<account>/..."),
    ("workspace_root: /Workspace/Shared/taxi_fares/staging", "workspace_root: Shared/taxi_fares",
     "target 'staging': workspace_root 'Shared/taxi_fares' is not /Workspace/..."),
    ("  staging:\n", "  staging:\n   - oops\n", "is not valid YAML"),
    # who may run what: a workspace target names its run-as principal, its operators and its deploying principal
    ("    run_as_service_principal: a2000000-0000-4000-8000-000000000001\n", "",
     "target 'staging': run_as_service_principal missing (expected the application id of the service principal the "
     "target's jobs run as)"),
    ("    operators_group: taxi-fares-operators-staging\n", "",
     "target 'staging': operators_group missing (expected the workspace group whose members may run the jobs "
     "(CAN_MANAGE_RUN))"),
    ("    deployer_service_principal: a2000000-0000-4000-8000-0000000000d1\n", "",
     "target 'staging': deployer_service_principal missing (expected the application id of the service principal "
     "that deploys and owns the jobs (IS_OWNER))"),
    ("run_as_service_principal: a2000000-0000-4000-8000-000000000001", "run_as_service_principal: taxi-fares-runner",
     "target 'staging': run_as_service_principal 'taxi-fares-runner' is not an application id "
     "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
]


@pytest.mark.parametrize("old, new, message", TARGETS, ids=["unknown-key", "unknown-top-key", "host-shape",
                                                            "wheel-path", "lakehouse-path", "workspace-path", "yaml",
                                                            "no-run-as", "no-operators", "no-deployer",
                                                            "run-as-shape"])
def test_targets_file(workspace, mlops, tmp_path, monkeypatch, old, new, message):
    text = (REPO_ROOT / "job_templates/targets.yml").read_text()
    assert old in text
    (tmp_path / "targets.yml").write_text(text.replace(old, new, 1))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    code, out, err = mlops("deploy", "--target", "staging", "--dry-run")
    assert code == 2
    assert f"mlops deploy: targets file {tmp_path / 'targets.yml'}" in err and message in err
    assert out == "" and workspace.requests == []


def test_targets_unknown_target(workspace, mlops):
    code, out, err = mlops("deploy", "--target", "qa", "--dry-run")
    assert code == 2
    assert err.splitlines()[-1] == "mlops deploy: unknown target 'qa' (targets: local, dev, staging, prod)"
    assert out == "" and workspace.requests == []


def test_targets_missing_host(workspace, mlops, tmp_path, monkeypatch):
    text = (REPO_ROOT / "job_templates/targets.yml").read_text()
    old = "    host: https://adb-1000000000000002.2.azuredatabricks.net\n"
    assert old in text
    (tmp_path / "targets.yml").write_text(text.replace(old, ""))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    monkeypatch.delenv("DATABRICKS_HOST")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 2
    assert err.splitlines()[-1] == ("mlops deploy: target 'staging' has no host (set it in targets.yml or "
                                    "DATABRICKS_HOST)")
    assert workspace.requests == []


# --- raw data: the feature-engineering stage (validation_mode=fail) refuses; no feature or quarantine table --------

def _raw(make_trips, bad=None, change=None):
    rows = [GOOD, ("2016-01-06 09:00", "2016-01-06 09:12", 1.2, 9.0, 10003, 10001)] + ([bad] if bad else [])
    df = make_trips(rows)
    return change(df) if change else df


RAW = [
    ("missing-column", None, lambda df: df.drop("fare_amount"),
     "raw trips failed validation (1 problem(s)): column 'fare_amount': is missing"),
    ("reserved-extra-column", None, lambda df: df.withColumn("violations", F.lit("none")),
     "raw trips failed validation (1 problem(s)): column 'violations': is reserved (the product adds it to "
     "quarantined rows): rename it in the raw data"),
    ("wrong-type", None, lambda df: df.withColumn("trip_distance", F.col("trip_distance").cast("string")),
     "raw trips failed validation (1 problem(s)): column 'trip_distance': has type string, expected double"),
    ("null-key", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, None, 10002), None,
     "column 'pickup_zip': 1 row(s) where the pickup zip is missing"),
    ("negative-fare", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, -8.0, 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is negative"),
    ("absurd-fare", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 80000.0, 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is above 10,000"),
    ("fare-a-cent-above-the-bound", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 10000.01, 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is above 10,000"),
    ("negative-distance", ("2016-01-07 10:00", "2016-01-07 10:10", -1.0, 8.0, 10001, 10002), None,
     "column 'trip_distance': 1 row(s) where the trip distance is negative"),
    ("absurd-distance", ("2016-01-07 10:00", "2016-01-07 10:10", 5000.0, 8.0, 10001, 10002), None,
     "column 'trip_distance': 1 row(s) where the trip distance is above 1,000 miles"),
    ("pickup-after-dropoff", ("2016-01-07 10:00", "2016-01-07 09:50", 1.0, 8.0, 10001, 10002), None,
     "column 'tpep_dropoff_datetime': 1 row(s) where the dropoff is before the pickup"),
    ("trip-over-a-day", ("2016-01-07 10:00", "2016-01-09 10:00", 1.0, 8.0, 10001, 10002), None,
     "column 'tpep_dropoff_datetime': 1 row(s) where the trip is longer than 24 hours"),
    ("trip-a-day-and-a-second", ("2016-01-07 10:00:00", "2016-01-08 10:00:01", 1.0, 8.0, 10001, 10002), None,
     "column 'tpep_dropoff_datetime': 1 row(s) where the trip is longer than 24 hours"),
    # a trip without a pickup time belongs to no range: every run reads it (and quarantine keeps it)
    ("null-pickup", (None, "2016-01-07 10:10", 1.0, 8.0, 10001, 10002), None,
     "column 'tpep_pickup_datetime': 1 row(s) where the pickup time is missing"),
    ("null-pickup-and-dropoff", (None, None, 1.0, 8.0, 10001, 10002), None,
     "raw trips failed validation (2 problem(s)): column 'tpep_pickup_datetime': 1 row(s) where the pickup time is "
     "missing; column 'tpep_dropoff_datetime': 1 row(s) where the dropoff time is missing"),
    ("null-dropoff", ("2016-01-07 10:00", None, 1.0, 8.0, 10001, 10002), None,
     "column 'tpep_dropoff_datetime': 1 row(s) where the dropoff time is missing"),
    ("null-dropoff-zip", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, 10001, None), None,
     "column 'dropoff_zip': 1 row(s) where the dropoff zip is missing"),
    ("null-both-zips", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, None, None), None,
     "raw trips failed validation (2 problem(s)): column 'pickup_zip': 1 row(s) where the pickup zip is missing; "
     "column 'dropoff_zip': 1 row(s) where the dropoff zip is missing"),
    ("nan-distance", ("2016-01-07 10:00", "2016-01-07 10:10", float("nan"), 8.0, 10001, 10002), None,
     "column 'trip_distance': 1 row(s) where the trip distance is not a number"),
    ("nan-fare", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, float("nan"), 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is not a number"),
    ("nan-distance-and-fare", ("2016-01-07 10:00", "2016-01-07 10:10", float("nan"), float("nan"), 10001, 10002),
     None, "raw trips failed validation (2 problem(s)): column 'trip_distance': 1 row(s) where the trip distance is "
           "not a number; column 'fare_amount': 1 row(s) where the fare is not a number"),
    ("infinite-distance", ("2016-01-07 10:00", "2016-01-07 10:10", float("inf"), 8.0, 10001, 10002), None,
     "column 'trip_distance': 1 row(s) where the trip distance is above 1,000 miles"),
    ("minus-infinite-distance", ("2016-01-07 10:00", "2016-01-07 10:10", float("-inf"), 8.0, 10001, 10002), None,
     "column 'trip_distance': 1 row(s) where the trip distance is negative"),
    ("infinite-fare", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, float("inf"), 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is above 10,000"),
    ("minus-infinite-fare", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, float("-inf"), 10001, 10002), None,
     "column 'fare_amount': 1 row(s) where the fare is negative"),
    ("zip-zero", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, 0, 10002), None,
     "column 'pickup_zip': 1 row(s) where the pickup zip is outside 1 to 99,999"),
    ("zip-negative", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, 10001, -10002), None,
     "column 'dropoff_zip': 1 row(s) where the dropoff zip is outside 1 to 99,999"),
    ("zip-six-digits", ("2016-01-07 10:00", "2016-01-07 10:10", 1.0, 8.0, 10001, 100002), None,
     "column 'dropoff_zip': 1 row(s) where the dropoff zip is outside 1 to 99,999"),
    ("two-rules-in-one-row", ("2016-01-07 10:00", "2016-01-07 09:50", -1.0, 8.0, 10001, 10002), None,
     "raw trips failed validation (2 problem(s)): column 'trip_distance': 1 row(s) where the trip distance is "
     "negative; column 'tpep_dropoff_datetime': 1 row(s) where the dropoff is before the pickup"),
    ("wrong-type-time", None, lambda df: df.withColumn("tpep_pickup_datetime", F.col("tpep_pickup_datetime")
                                                       .cast("string")),
     "raw trips failed validation (1 problem(s)): column 'tpep_pickup_datetime': has type string, expected "
     "timestamp"),
    ("wrong-type-date", None, lambda df: df.withColumn("tpep_dropoff_datetime", F.to_date("tpep_dropoff_datetime")),
     "raw trips failed validation (1 problem(s)): column 'tpep_dropoff_datetime': has type date, expected "
     "timestamp"),
    ("wrong-type-zip", None, lambda df: df.withColumn("pickup_zip", F.col("pickup_zip").cast("long")),
     "raw trips failed validation (1 problem(s)): column 'pickup_zip': has type bigint, expected int"),
    ("wrong-type-fare", None, lambda df: df.withColumn("fare_amount", F.col("fare_amount").cast("decimal(10,2)")),
     "raw trips failed validation (1 problem(s)): column 'fare_amount': has type decimal(10,2), expected double"),
    ("missing-two-columns", None, lambda df: df.drop("pickup_zip", "dropoff_zip"),
     "raw trips failed validation (2 problem(s)): column 'pickup_zip': is missing; column 'dropoff_zip': is missing"),
]


@pytest.mark.parametrize("bad, change, message", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_raw_data(spark, lakehouse, mlflow_store, make_trips, training_config, bad, change, message):
    lakehouse.write(_raw(make_trips, bad, change), RAW_TRIPS)
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(execute_training=False, execute_promotion=False, validation_mode="fail"), spark)
    assert str(excinfo.value) == "stage 'feature_engineering' failed: DataError: table 'raw_trips': " + (
        message if message.startswith("raw trips") else f"raw trips failed validation (1 problem(s)): {message}")
    _nothing_written(spark, lakehouse)


def test_raw_data_outside_the_range_is_an_empty_range(spark, lakehouse, mlflow_store, make_trips, training_config):
    # timestamps of another year: the job's range (2016-01-04..2016-01-18) holds none of them
    lakehouse.write(make_trips([("2015-01-05 08:00", "2015-01-05 08:20", 2.5, 14.5, 10001, 10002)]), RAW_TRIPS)
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(execute_training=False, execute_promotion=False), spark)
    assert str(excinfo.value) == ("stage 'feature_engineering' failed: DataError: table 'raw_trips' has no trips for "
                                  "2016-01-04..2016-01-18: load that range first, or choose a range it holds")
    _nothing_written(spark, lakehouse)


def _nothing_written(spark, lakehouse):
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES, QUARANTINED_TRIPS, PREDICTIONS):
        assert not lakehouse.exists(spark, table), table


# --- registry state: batch scoring refuses before reading a row --------------------------------------------------

def _register_foreign_model(name="taxi_fares"):
    """A real scikit-learn model registered under the fare model's name, taking other inputs."""
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    from taxi_fares_mlops.tracking import log_model, setup_experiment

    import mlflow
    setup_experiment("foreign")
    example = pd.DataFrame({"passenger_count": [1.0, 2.0, 3.0], "tip_amount": [0.0, 1.0, 2.5]})
    with mlflow.start_run():
        return log_model(LinearRegression().fit(example, [5.0, 7.0, 9.0]), example, name)


def _score_refused(spark, lakehouse, scoring_config, message, kind="RegistryError", **params):
    lakehouse.write(_raw_good(spark), RAW_TRIPS)
    with pytest.raises(StageError) as excinfo:
        run_job(scoring_config(execute_feature_engineering=False, **params), spark)
    assert str(excinfo.value) == f"stage 'batch_scoring' failed: {kind}: {message}"
    assert not lakehouse.exists(spark, PREDICTIONS)


def _raw_good(spark):
    from taxi_fares.synthetic import generate_trips
    return generate_trips(spark, 500, "2016-01-04", "2016-01-18", seed=3)


def test_registry_missing_alias(spark, lakehouse, mlflow_store, scoring_config):
    _score_refused(spark, lakehouse, scoring_config, "model 'taxi_fares' has no alias 'challenger'",
                   model_alias="challenger")


def test_registry_deleted_version(spark, lakehouse, mlflow_store, scoring_config):
    version = _register_foreign_model()
    MlflowClient().delete_model_version("taxi_fares", version)
    _score_refused(spark, lakehouse, scoring_config, f"model 'taxi_fares' has no version {version}",
                   model_version=version)


def test_registry_model_with_another_signature(spark, lakehouse, mlflow_store, scoring_config):
    version = _register_foreign_model()
    MlflowClient().set_registered_model_alias("taxi_fares", "champion", version)
    _score_refused(spark, lakehouse, scoring_config,
                   f"model 'taxi_fares' version {version} does not take the fare features (missing "
                   "['count_trips_window_1h_pickup_zip', 'count_trips_window_30m_dropoff_zip', 'dropoff_is_weekend', "
                   "'dropoff_zip', 'mean_fare_window_1h_pickup_zip', 'pickup_hour', 'pickup_weekday', 'pickup_zip', "
                   "'trip_distance'], unknown ['passenger_count', 'tip_amount']): score with a version trained by this "
                   "package's training job")


# --- storage: a missing table, a corrupt Delta log, a read-only lakehouse, a full disk -----------------------------

def _feature_engineering(spark, training_config, **params):
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(execute_training=False, execute_promotion=False, **params), spark)
    return str(excinfo.value)


def test_storage_missing_table(spark, lakehouse, mlflow_store, training_config):
    message = _feature_engineering(spark, training_config)
    assert message == (f"stage 'feature_engineering' failed: MissingTableError: table 'raw_trips' does not exist at "
                       f"{lakehouse.root}/tables/raw_trips")
    _nothing_written(spark, lakehouse)


def test_storage_corrupt_delta_log_entry(spark, lakehouse, mlflow_store, training_config):
    lakehouse.write(_raw_good(spark), RAW_TRIPS)
    log = Path(lakehouse.root) / "tables/raw_trips/_delta_log/00000000000000000000.json"
    log.write_text('{"commitInfo": {"timest')  # a commit cut short
    message = _feature_engineering(spark, training_config)
    assert message == ("stage 'feature_engineering' failed: SparkException: [FAILED_READ_FILE.NO_HINT] Encountered "
                       f"error while reading file file://{lakehouse.root}/tables/raw_trips/_delta_log/"
                       "00000000000000000000.json.")
    _nothing_written(spark, lakehouse)


def _can_mount() -> bool:
    """Whether this machine lets the tests mount (root with the capability; CI's machines and this one do)."""
    probe = Path(tempfile.mkdtemp(prefix="mount-probe-"))
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                          capture_output=True).returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


# A read-only folder and a full disk are made for real where the machine allows mounting (no chmod stops root);
# elsewhere the same operating-system error is raised at the lakehouse's write boundary.
CAN_MOUNT = _can_mount()


@contextmanager
def _mounted(source, options):
    """``source`` mounted over itself with ``options``."""
    subprocess.run(["mount", "--bind", str(source), str(source)], check=True)
    try:
        subprocess.run(["mount", "-o", f"remount,bind,{options}", str(source)], check=True)
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(source)], check=True)


@contextmanager
def _write_fails(monkeypatch, code):
    def save(self, spark, writer, table):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Lakehouse, "_save", save)
    yield


def test_storage_read_only_lakehouse(spark, lakehouse, mlflow_store, training_config, monkeypatch):
    lakehouse.write(_raw_good(spark), RAW_TRIPS)
    table = f"{lakehouse.root}/tables/pickup_features"
    with _mounted(lakehouse.root, "ro") if CAN_MOUNT else _write_fails(monkeypatch, errno.EROFS):
        message = _feature_engineering(spark, training_config)
    cause = (f"[DELTA_CANNOT_CREATE_LOG_PATH] Cannot create file:{table}/_delta_log" if CAN_MOUNT
             else "[Errno 30] Read-only file system")
    assert message == (f"stage 'feature_engineering' failed: StorageError: could not write table 'pickup_features' at "
                       f"{table}: {cause}")
    _nothing_written(spark, lakehouse)


def test_storage_disk_full(spark, lakehouse, mlflow_store, training_config, tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    if CAN_MOUNT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        full = Lakehouse(str(small / "lakehouse"))
        full.write(_raw_good(spark), RAW_TRIPS)
        if CAN_MOUNT:
            with open(small / "filler", "wb") as out:  # fill what is left
                try:
                    while True:
                        out.write(b"\0" * 65536)
                except OSError:
                    pass
        table = f"{full.root}/tables/pickup_features"
        with contextlib.nullcontext() if CAN_MOUNT else _write_fails(monkeypatch, errno.ENOSPC):
            message = _feature_engineering(spark, training_config, lakehouse_root=full.root)
        cause = (f"[TASK_WRITE_FAILED] Task failed while writing rows to file:{table}. (No space left on device)"
                 if CAN_MOUNT else "[Errno 28] No space left on device")
        assert message == (f"stage 'feature_engineering' failed: StorageError: could not write table 'pickup_features' "
                           f"at {table}: {cause}")
        _nothing_written(spark, full)
    finally:
        if CAN_MOUNT:
            subprocess.run(["umount", "--lazy", str(small)], check=True)  # Spark may still hold a file open there


# --- services: the MLflow store unreachable or locked, Blob storage down, the workspace failing -------------------

def test_mlflow_store_unreachable(spark, lakehouse, training_config, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    lakehouse.write(_raw_good(spark), RAW_TRIPS)
    with pytest.raises(TrackingError) as excinfo:
        run_job(training_config(execute_training=False, execute_promotion=False), spark)
    assert str(excinfo.value) == "MLflow tracking store http://127.0.0.1:9 is unreachable (Connection refused)"
    _nothing_written(spark, lakehouse)


@pytest.mark.slow  # MLflow waits out its 20 s busy timeout
def test_mlflow_store_locked(spark, lakehouse, mlflow_store, training_config):
    lakehouse.write(_raw_good(spark), RAW_TRIPS)
    MlflowClient().search_experiments()  # the store's tables exist
    holder = sqlite3.connect(mlflow_store[len("sqlite:///"):], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TrackingError) as excinfo:
            run_job(training_config(execute_training=False, execute_promotion=False), spark)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(excinfo.value) == (f"MLflow tracking store {mlflow_store} is locked by another process (database is "
                                  "locked): retry when it ends")
    _nothing_written(spark, lakehouse)


def test_blob_storage_down(spark, lakehouse, mlflow_store, scoring_config, monkeypatch):
    from taxi_fares_mlops import blob
    monkeypatch.setitem(blob.CLIENT_OPTIONS, "retry_total", 0)  # refused at once rather than after ~15 s of retries
    version = _register_fare_shaped_model()
    MlflowClient().set_registered_model_alias("taxi_fares", "champion", version)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0LWtleS1ub3QtdG8tbGVhaw==;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"))
    _score_refused(spark, lakehouse, scoring_config, (
        "could not create or open account 'devstoreaccount1', container 'taxi-fares-predictions': ServiceRequestError: "
        "HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection "
        "refused"), kind="StorageError")


def test_scoring_a_range_without_trips(spark, lakehouse, mlflow_store, scoring_config):
    # quarantine mode (the default) spares scoring the counting pass; a probe for one trip of the range refuses
    MlflowClient().set_registered_model_alias("taxi_fares", "champion", _register_fare_shaped_model())
    _score_refused(spark, lakehouse, scoring_config, (
        "table 'raw_trips' has no trips for 2016-02-01..2016-02-08: load that range first, or choose a range it "
        "holds"), kind="DataError", start_date="2016-02-01", end_date="2016-02-08")


def _register_fare_shaped_model():
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    import mlflow
    from taxi_fares.features import MODEL_FEATURES
    from taxi_fares_mlops.tracking import log_model, setup_experiment

    setup_experiment("fare-shaped")
    example = pd.DataFrame({c: [1.0, 2.0] for c in MODEL_FEATURES})
    with mlflow.start_run():
        return log_model(DummyRegressor().fit(example, [10.0, 12.0]), example, "taxi_fares")


def test_workspace_5xx(workspace, mlops):
    workspace.fail("GET", "/api/2.2/jobs/list", 500, times=10, message="Internal error, try later")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 3
    assert err.splitlines()[-1] == (f"mlops deploy: create or reset job taxi_fares_training failed at {workspace.url}: "
                                    "Internal error, try later")
    # deploy is idempotent: once the workspace answers again, a rerun completes it
    workspace.faults.clear()
    assert mlops("deploy", "--target", "staging")[0] == 0
    from orchestrator.templates import JOBS

    assert len(workspace.jobs) == len(JOBS)


# --- the failure page's catalogue names exactly these cases -------------------------------------------------------

def _case_names():
    """Every case of this module as pytest names it (``test_x`` or ``test_x[id]``), from the functions' marks."""
    names = []
    for name, function in sorted(globals().items()):
        if not name.startswith("test_") or name == "test_the_failure_catalogue_names_every_case":
            continue
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            names.append(name)
        for mark in marks:
            names += [f"{name}[{case_id}]" for case_id in mark.kwargs["ids"]]
    return names


def test_the_failure_catalogue_names_every_case():
    page = (REPO_ROOT / "docs" / "failure-behaviour.md").read_text()
    section = page[page.index("### Bad inputs ("):]
    later = [section.find(h, 1) for h in ("\n# ", "\n## ", "\n### ")]  # the next heading, if any, ends it
    section = section[:min([i for i in later if i > 0], default=len(section))]
    count = int(section[len("### Bad inputs ("):section.index(")")])
    rows = [line for line in section.splitlines() if line.startswith("| ") and line.endswith("` |")]
    listed = [row.rsplit("| `", 1)[1][:-len("` |")] for row in rows]
    cases = _case_names()
    assert len(cases) >= 40
    assert sorted(listed) == sorted(cases)
    assert count == len(cases)
