"""The incremental scoring job's config: no date range, a trigger mode, and the target whose policy the run carries
(what its checkpoint is claimed for)."""
import pytest

from orchestrator.templates import target_policy, target_variables
from taxi_fares_mlops.config import ScoringStreamConfig
from taxi_fares_mlops.errors import ConfigError


def values(**changes):
    return {**ScoringStreamConfig.defaults(), **changes}


def test_the_job_has_no_range_and_runs_available_now_by_default():
    config = ScoringStreamConfig.from_mapping(values())
    names = {p.name for p in ScoringStreamConfig.parameters()}
    assert not names & {"start_date", "end_date"}
    assert (config.start_date, config.end_date, config.trigger_mode) == (None, None, "available_now")
    # its micro-batches' feature windows recomputed, a week late at most
    assert (config.execute_feature_engineering, config.feature_watermark_hours) == (True, 168)
    assert config.run_range == "incremental (available_now)" and config.target == "local"


def test_the_target_is_the_policys_the_run_carries():
    policy = target_policy("staging", target_variables("staging")).to_json()
    config = ScoringStreamConfig.from_mapping(values(
        target_policy=policy, lakehouse_root="/Volumes/staging/taxi_fares/lakehouse", table_schema="staging.taxi_fares",
        model_name="staging.taxi_fares.taxi_fares", mlflow_registry_uri="databricks-uc"))
    assert config.target == "staging"


def test_a_bad_trigger_mode_or_interval_is_refused_with_every_problem():
    with pytest.raises(ConfigError) as excinfo:
        ScoringStreamConfig.from_mapping(values(trigger_mode="sometimes", processing_interval_seconds="0"))
    assert "trigger_mode: 'sometimes' is not one of available_now, continuous" in str(excinfo.value)
    assert "processing_interval_seconds: 0 is below the minimum 1" in str(excinfo.value)
    with pytest.raises(ConfigError, match="feature_watermark_hours: 20000000 is above the maximum 87,600"):
        ScoringStreamConfig.from_mapping(values(feature_watermark_hours="20000000"))
