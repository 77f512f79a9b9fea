"""Stages that cannot run fail with a message naming the stage and what is missing, leave their MLflow run
FAILED, and leave the tables as they were."""
import pytest
from mlflow.tracking import MlflowClient
from pyspark.testing import assertDataFrameEqual

from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import PICKUP_FEATURES, PREDICTIONS


def _last_run(experiment="tests"):
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


def test_scoring_with_a_missing_alias_fails_cleanly(spark, trips_lakehouse, mlflow_store, scoring_config):
    lakehouse = trips_lakehouse
    marker = spark.createDataFrame([(1,)], "sentinel int")
    lakehouse.write(marker, PREDICTIONS)
    with pytest.raises(StageError) as excinfo:
        run_job(scoring_config(model_alias="challenger"), spark)
    assert excinfo.value.stage == "batch_scoring"
    assert ("stage 'batch_scoring' failed: RegistryError: model 'taxi_fares' has no alias 'challenger'"
            in str(excinfo.value))
    run = _last_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["stage.batch_scoring"] == "FAILED"
    assert run.data.tags["stage.feature_engineering"] == "SUCCESS"
    assertDataFrameEqual(lakehouse.read(spark, PREDICTIONS), marker)


def test_training_without_feature_tables_says_which_stage_to_turn_on(
        spark, trips_lakehouse, mlflow_store, training_config):
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(execute_feature_engineering=False), spark)
    assert "stage 'training' failed: DataError: feature table 'pickup_features' does not exist" in str(excinfo.value)
    assert "execute_feature_engineering=true" in str(excinfo.value)
    assert _last_run().info.status == "FAILED"
    assert not trips_lakehouse.exists(spark, PICKUP_FEATURES)


def test_training_a_range_the_feature_tables_lack_says_which_stage_to_turn_on(
        spark, trips_lakehouse, mlflow_store, training_config):
    run_job(training_config(end_date="2016-01-08", execute_training=False, execute_promotion=False), spark)
    with pytest.raises(StageError) as excinfo:
        run_job(training_config(start_date="2016-01-11", execute_feature_engineering=False), spark)
    assert str(excinfo.value) == (
        "stage 'training' failed: DataError: feature table 'pickup_features' has no rows for 2016-01-11..2016-01-18: "
        "run the job with execute_feature_engineering=true for that range")


def test_promotion_without_a_challenger_says_which_stage_to_turn_on(
        spark, trips_lakehouse, mlflow_store, training_config):
    # validation, which runs with promotion, is the first stage to need the challenger
    expected = "stage 'validation' failed: RegistryError: .*no 'challenger' version.*execute_training=true"
    with pytest.raises(StageError, match=expected):
        run_job(training_config(execute_training=False), spark)
    run = _last_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["stage.training"] == "SKIPPED"


def test_feature_engineering_twice_changes_nothing(spark, trips_lakehouse, mlflow_store, training_config):
    config = training_config(execute_training=False, execute_promotion=False)
    first = run_job(config, spark)
    pickup_before = trips_lakehouse.read(spark, PICKUP_FEATURES).collect()
    second = run_job(config, spark)
    assert first["stages"]["feature_engineering"]["pickup_features"]["inserted"] > 0
    assert second["stages"]["feature_engineering"]["pickup_features"] == {"inserted": 0, "updated": 0}
    assertDataFrameEqual(trips_lakehouse.read(spark, PICKUP_FEATURES), pickup_before)
