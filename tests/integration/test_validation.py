"""Validation before promotion: a deliberately weak challenger fails it; under model_validation=enabled the
champion stays even when promotion is forced, under dry_run the failure is recorded and promotion goes on."""
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from taxi_fares_mlops.errors import ConfigError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import MODEL_VALIDATIONS

WEAK = {"max_iter": "1", "learning_rate": "0.01", "execute_feature_engineering": "false", "force_promote": "true",
        "min_r2": "0.5"}


def test_a_weak_challenger_is_blocked_when_enabled_and_let_through_in_dry_run(
        spark, trips_lakehouse, mlflow_store, training_config):
    first = run_job(training_config(min_r2="0.5"), spark)
    assert first["stages"]["validation"]["validation_status"] == "PASSED"
    assert first["stages"]["promotion"]["decision"] == "first_champion"
    champion = first["stages"]["promotion"]["champion_version"]

    blocked = run_job(training_config(model_validation="enabled", **WEAK), spark)
    checks = blocked["stages"]["validation"]
    assert checks["validation_status"] == "FAILED"
    assert "no_regression" in checks["failed"].split(",") and "min_r2" in checks["failed"].split(",")
    assert blocked["stages"]["promotion"]["decision"] == "blocked_by_validation"
    assert blocked["model"]["aliases"]["champion"] == champion
    run = MlflowClient().get_run(blocked["mlflow_run_id"]).data
    assert run.tags["validation.status"] == "FAILED" and run.tags["promotion.decision"] == "blocked_by_validation"
    # promotion reused the validation's scores instead of scoring the holdout again
    assert blocked["stages"]["promotion"]["challenger_rmse"] == round(checks["challenger_rmse"], 4)

    let_through = run_job(training_config(model_validation="dry_run", **WEAK), spark)
    assert let_through["stages"]["validation"]["validation_status"] == "FAILED"
    assert let_through["stages"]["promotion"]["decision"] == "forced"
    assert let_through["model"]["aliases"]["champion"] == let_through["stages"]["training"]["model_version"]

    rows = trips_lakehouse.read(spark, MODEL_VALIDATIONS)
    by_run = {r["mlflow_run_id"]: r["n"] for r in rows.groupBy("mlflow_run_id").agg(F.count("*").alias("n")).collect()}
    assert set(by_run) == {first["mlflow_run_id"], blocked["mlflow_run_id"], let_through["mlflow_run_id"]}
    failed = rows.filter((F.col("mlflow_run_id") == blocked["mlflow_run_id"]) & ~F.col("passed"))
    assert {r["check"] for r in failed.collect()} >= {"min_r2", "no_regression"}
    blocked_rows = rows.filter(F.col("mlflow_run_id") == blocked["mlflow_run_id"])
    assert blocked_rows.filter(F.col("check") == "no_slice_regression").count() == 5
    assert rows.filter((F.col("check") == "same_signature") & ~F.col("passed")).count() == 0


def test_validation_parameters_are_checked(training_config):
    import pytest

    with pytest.raises(ConfigError) as excinfo:
        training_config(model_validation="strict", max_rmse="-1", regression_margin="x")
    message = str(excinfo.value)
    assert "model_validation: 'strict' is not one of disabled, dry_run, enabled" in message
    assert "max_rmse: -1.0 is outside (0.0, inf]" in message
    assert "regression_margin: 'x' is not a number" in message


def test_require_approval_holds_a_winner_until_mlops_approve(
        spark, trips_lakehouse, mlflow_store, training_config, monkeypatch, capsys):
    from orchestrator.cli import main

    first = run_job(training_config(), spark)
    champion = first["stages"]["promotion"]["champion_version"]
    held = run_job(training_config(require_approval="true", max_iter="150", execute_feature_engineering="false"),
                   spark)
    version = held["stages"]["training"]["model_version"]
    assert held["stages"]["promotion"]["decision"] == "awaiting_approval"
    assert held["model"]["aliases"]["champion"] == champion
    client = MlflowClient()
    assert client.get_model_version("taxi_fares", version).tags["approval.status"] == "PENDING"

    monkeypatch.setenv("MLOPS_APPROVER", "ops.person@example.com")
    assert main(["approve", "--model", "taxi_fares", "--version", version]) == 0
    tags = client.get_model_version("taxi_fares", version).tags
    assert (tags["approval.status"], tags["approval.by"], tags["approval.decision"]) == (
        "APPROVED", "ops.person@example.com", "promoted")
    assert tags["approval.at"].startswith("20")
    assert str(client.get_registered_model("taxi_fares").aliases["champion"]) == str(version)
    detector = held["stages"]["training"]["outlier_model_version"]
    assert str(client.get_registered_model("taxi_fares_outliers").aliases["champion"]) == str(detector)

    capsys.readouterr()
    assert main(["approve", "--model", "taxi_fares", "--version", version]) == 2
    assert (f"model 'taxi_fares' version {version} is not waiting for approval (approval.status: APPROVED)"
            in capsys.readouterr().err)
