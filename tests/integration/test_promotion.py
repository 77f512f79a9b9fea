"""The promotion gate on a real sqlite registry: a worse challenger stays challenger, a better one becomes
champion, force_promote overrides and is recorded, and the decision rule honours the margin."""
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.stages.promotion import FIRST, FORCED, KEPT, PROMOTED, decide


@pytest.mark.parametrize("challenger, champion, margin, force, expected", [
    (5.0, None, 0.0, False, FIRST),
    (4.0, 5.0, 0.0, False, PROMOTED),
    (5.0, 5.0, 0.0, False, PROMOTED),      # equal is not worse when no margin is asked
    (4.9, 5.0, 0.05, False, KEPT),         # 2% better, 5% asked
    (4.7, 5.0, 0.05, False, PROMOTED),
    (9.0, 5.0, 0.0, True, FORCED),
])
def test_decision_rule(challenger, champion, margin, force, expected):
    assert decide(challenger, champion, margin, force) == expected


def _aliases(name="taxi_fares"):
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(name).aliases.items()}


def _companions_follow():
    """The outlier and drift models trained with each fare model carry the same aliases (one version of each is
    registered per training, so their version numbers coincide with the fare model's)."""
    assert _aliases("taxi_fares_outliers") == _aliases("taxi_fares_drift") == _aliases()


def _run(summary):
    return MlflowClient().get_run(summary["mlflow_run_id"])


@pytest.mark.slow
def test_worse_challenger_stays_and_better_one_is_promoted(spark, trips_lakehouse, mlflow_store, training_config):
    first = run_job(training_config(max_iter=5, learning_rate=0.05), spark)
    assert first["stages"]["promotion"]["decision"] == FIRST
    assert _aliases() == {"champion": "1", "challenger": "1"}
    _companions_follow()

    worse = run_job(training_config(max_iter=1, learning_rate=0.01, execute_feature_engineering=False), spark)
    assert worse["stages"]["feature_engineering"] == {"status": "SKIPPED"}
    promotion = worse["stages"]["promotion"]
    assert promotion["decision"] == KEPT
    assert promotion["challenger_rmse"] > promotion["champion_rmse"]
    assert _aliases() == {"champion": "1", "challenger": "2"}
    _companions_follow()
    run = _run(worse)
    assert run.data.tags["promotion.decision"] == KEPT
    assert run.data.metrics["promotion.challenger_rmse"] > run.data.metrics["promotion.champion_rmse"]

    better = run_job(training_config(max_iter=80, execute_feature_engineering=False), spark)
    assert better["stages"]["promotion"]["decision"] == PROMOTED
    assert better["stages"]["promotion"]["challenger_rmse"] < better["stages"]["promotion"]["champion_rmse"]
    assert _aliases() == {"champion": "3", "challenger": "3"}
    _companions_follow()

    forced = run_job(training_config(max_iter=1, learning_rate=0.01, force_promote=True,
                                     execute_feature_engineering=False), spark)
    assert forced["stages"]["promotion"]["decision"] == FORCED
    assert _aliases() == {"champion": "4", "challenger": "4"}
    _companions_follow()
    forced_run = _run(forced)
    assert forced_run.data.params["force_promote"] == "true"
    assert forced_run.data.tags["promotion.force_promote"] == "true"
    assert {r.info.status for r in map(_run, (first, worse, better, forced))} == {"FINISHED"}
    assert mlflow.active_run() is None
