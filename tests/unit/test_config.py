"""Job configs: every malformed parameter gets a specific message, all problems are reported together."""
import datetime as dt

import pytest

from taxi_fares_mlops.config import (SCORING_PARAMETERS, TARGET_POLICY, TRAINING_PARAMETERS, ScoringConfig,
                                     TargetPolicy, TrainingConfig)
from taxi_fares_mlops.errors import ConfigError

TRAINING_DEFAULTS = {p.name: p.default for p in TRAINING_PARAMETERS}
SCORING_DEFAULTS = {p.name: p.default for p in SCORING_PARAMETERS}


def training(**changes):
    return {**TRAINING_DEFAULTS, **changes}


def scoring(**changes):
    return {**SCORING_DEFAULTS, **changes}


def test_defaults_build_typed_configs():
    config = TrainingConfig.from_mapping(TRAINING_DEFAULTS)
    assert config.start_date == dt.date(2016, 1, 1)
    assert config.execute_training is True and config.force_promote is False
    assert config.model_params.max_iter == 200 and config.model_params.learning_rate == 0.1
    assert config.stage_enabled("feature_engineering")
    scoring_config = ScoringConfig.from_mapping(scoring(model_version="3", execute_feature_engineering="false"))
    assert scoring_config.model_version == 3 and scoring_config.model_reference == "version 3"
    assert not scoring_config.stage_enabled("feature_engineering")


def test_configs_are_frozen():
    config = TrainingConfig.from_mapping(TRAINING_DEFAULTS)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_training_rows = 5


def test_params_round_trip_as_given():
    given = training(learning_rate="0.05", max_iter="17", force_promote="true", start_date="2016-01-04")
    assert TrainingConfig.from_mapping(given).as_params() == given


@pytest.mark.parametrize("config_class, values, expected", [
    (TrainingConfig, training(start_date="2016-02-30"), "start_date: '2016-02-30' is not a date (expected YYYY-MM-DD)"),
    (TrainingConfig, training(end_date="01/03/2016"), "end_date: '01/03/2016' is not a date (expected YYYY-MM-DD)"),
    (TrainingConfig, training(start_date="2016-03-01", end_date="2016-01-01"),
     "end_date: 2016-01-01 must be after start_date 2016-03-01"),
    (TrainingConfig, training(end_date="2016-01-01"), "end_date: 2016-01-01 must be after start_date 2016-01-01"),
    (TrainingConfig, training(execute_training="ture"), "execute_training: 'ture' is not 'true' or 'false'"),
    (TrainingConfig, training(execute_promotion="yes"), "execute_promotion: 'yes' is not 'true' or 'false'"),
    (TrainingConfig, training(table_schema="main"),
     "table_schema: 'main' is not <catalog>.<schema> (two names of letters, digits and underscores)"),
    (TrainingConfig, training(table_schema="main.taxi fares"),
     "table_schema: 'main.taxi fares' is not <catalog>.<schema> (two names of letters, digits and underscores)"),
    (TrainingConfig, training(force_promote="1"), "force_promote: '1' is not 'true' or 'false'"),
    (TrainingConfig, training(learning_rate="-0.1"), "learning_rate: -0.1 is outside (0.0, 1.0]"),
    (TrainingConfig, training(learning_rate="fast"), "learning_rate: 'fast' is not a number"),
    (TrainingConfig, training(max_iter="-5"), "max_iter: -5 is below the minimum 1"),
    (TrainingConfig, training(max_iter="2.5"), "max_iter: '2.5' is not a whole number"),
    (TrainingConfig, training(max_leaf_nodes="1"), "max_leaf_nodes: 1 is below the minimum 2"),
    (TrainingConfig, training(l2_regularization="-1"), "l2_regularization: -1.0 is outside [0.0, inf]"),
    (TrainingConfig, training(holdout_fraction="1"), "holdout_fraction: 1.0 is outside (0.0, 1.0)"),
    (TrainingConfig, training(max_training_rows="0"), "max_training_rows: 0 is below the minimum 1"),
    (TrainingConfig, training(promotion_margin="nan"), "promotion_margin: nan is outside [0.0, 1.0)"),
    (TrainingConfig, training(validation_mode="ignore"), "validation_mode: 'ignore' is not one of fail, quarantine"),
    (TrainingConfig, training(model_name="  "), "model_name: must not be empty"),
    (ScoringConfig, scoring(model_alias="production"), "model_alias: 'production' is not one of champion, challenger"),
    (ScoringConfig, scoring(model_version="0"), "model_version: 0 is below the minimum 1"),
    (ScoringConfig, scoring(model_version="v3"), "model_version: 'v3' is not a whole number"),
    (ScoringConfig, scoring(execute_batch_scoring="True!"), "execute_batch_scoring: 'True!' is not 'true' or 'false'"),
])
def test_each_malformed_parameter_has_a_specific_message(config_class, values, expected):
    with pytest.raises(ConfigError) as excinfo:
        config_class.from_mapping(values)
    assert excinfo.value.problems == [expected]


def test_missing_parameters_are_named():
    values = dict(SCORING_DEFAULTS)
    del values["model_alias"], values["start_date"]
    with pytest.raises(ConfigError) as excinfo:
        ScoringConfig.from_mapping(values)
    assert excinfo.value.problems == ["start_date: missing", "model_alias: missing"]


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as excinfo:
        TrainingConfig.from_mapping(training(start_date="2016-13-01", execute_training="ture", max_iter="-1",
                                             learning_rate="2"))
    message = str(excinfo.value)
    assert len(excinfo.value.problems) == 4
    for name in ("start_date", "execute_training", "max_iter", "learning_rate"):
        assert f"  - {name}: " in message


class FakeWidgets:
    """Databricks' widgets.get raises for an undeclared widget; this mimics only that contract."""

    def __init__(self, values):
        self.values = values

    def get(self, name):
        if name not in self.values:
            raise ValueError(f"InputWidgetNotDefined: {name}")
        return self.values[name]


class FakeDbutils:
    def __init__(self, values):
        self.widgets = FakeWidgets(values)


def test_from_widgets_reads_every_widget_once():
    config = ScoringConfig.from_widgets(FakeDbutils(scoring(start_date="2016-01-02")))
    assert config.start_date == dt.date(2016, 1, 2)
    with pytest.raises(ConfigError, match="model_version: missing"):
        ScoringConfig.from_widgets(FakeDbutils({k: v for k, v in SCORING_DEFAULTS.items() if k != "model_version"}))


def test_each_parameters_default_is_written_once_in_its_declaration():
    """The config dataclasses carry no defaults of their own: a default lives in its Parameter (the widgets and
    from_mapping read it there), so the two can never disagree."""
    import dataclasses

    from taxi_fares.model import ModelParams
    from taxi_fares_mlops.config import CONFIGS, HYPERPARAMETERS

    for job, config_class in CONFIGS.items():
        with_defaults = [f.name for f in dataclasses.fields(config_class) if f.init and (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
        assert with_defaults == [], f"{job}: {with_defaults}"
        assert config_class.from_mapping(config_class.defaults()).job == job
    model_defaults = ModelParams()
    assert {p.name: p.default for p in HYPERPARAMETERS} == {
        f.name: str(getattr(model_defaults, f.name)) for f in dataclasses.fields(ModelParams)}


# --- the target's policy: a run may tighten the gates, never loosen them, and stays in the target ---------------

PROD = TargetPolicy(target="prod", require_approval=True, allow_force_promote=False, min_model_validation="enabled",
                    lakehouse_root="/Volumes/prod/taxi_fares/lakehouse", mlflow_registry_uri="databricks-uc",
                    table_schema="prod.taxi_fares", model_name="prod.taxi_fares.taxi_fares", secret_scope="taxi-fares",
                    wheel_base_path="/Volumes/prod/taxi_fares/wheels", wheel_version="1.2.3",
                    min_r2_at_least=0.0, regression_margin_at_most=0.05, holdout_fraction_at_least=0.1)
PROD_RUN = dict(require_approval="true", model_validation="enabled", mlflow_registry_uri="databricks-uc",
                lakehouse_root="/Volumes/prod/taxi_fares/lakehouse", table_schema="prod.taxi_fares",
                model_name="prod.taxi_fares.taxi_fares", secret_scope="taxi-fares")


def under_prod(**changes):
    return {**training(**PROD_RUN), **changes, TARGET_POLICY: PROD.to_json()}


def test_a_run_within_the_policy_builds_and_may_tighten_it():
    assert TrainingConfig.from_mapping(under_prod()).require_approval is True
    tighter = TargetPolicy(**{**PROD.__dict__, "require_approval": False, "min_model_validation": "disabled"})
    config = TrainingConfig.from_mapping({**under_prod(require_approval="true", model_validation="enabled"),
                                          TARGET_POLICY: tighter.to_json()})
    assert (config.require_approval, config.model_validation) == (True, "enabled")
    assert TrainingConfig.from_mapping(under_prod(lakehouse_root="/Volumes/prod/taxi_fares/lakehouse/replay"))


@pytest.mark.parametrize("changes, expected", [
    ({"force_promote": "true"}, "force_promote: refused: target 'prod''s policy does not allow force promotion "
                                "(allow_force_promote: false); promote with `mlops approve` instead"),
    ({"require_approval": "false"}, "require_approval: false loosens target 'prod''s policy (require_approval: "
                                    "true): a run may tighten a gate, never loosen it; drop the parameter"),
    ({"model_validation": "dry_run"}, "model_validation: 'dry_run' is below target 'prod''s least mode 'enabled' "
                                      "(disabled < dry_run < enabled); use enabled"),
    ({"lakehouse_root": "/Volumes/dev/taxi_fares/lakehouse"},
     "lakehouse_root: '/Volumes/dev/taxi_fares/lakehouse' is not under target 'prod''s lakehouse "
     "'/Volumes/prod/taxi_fares/lakehouse'; give a folder under it or drop the parameter"),
    ({"lakehouse_root": "/Volumes/prod/taxi_fares/lakehouse-other"}, "is not under target 'prod''s lakehouse"),
    ({"lakehouse_root": "/Volumes/prod/taxi_fares/lakehouse/../../dev"},
     "lakehouse_root: '/Volumes/prod/taxi_fares/lakehouse/../../dev' is not a lakehouse path"),
    ({"mlflow_registry_uri": ""}, "mlflow_registry_uri: '' is not target 'prod''s registry 'databricks-uc'"),
    ({"secret_scope": "taxi fares; rm"}, "secret_scope: 'taxi fares; rm' is not a secret scope name"),
    ({"table_schema": "other.schema"}, "table_schema: 'other.schema' is not target 'prod''s 'prod.taxi_fares'; drop "
                                       "the parameter"),
    ({"model_name": "prod.taxi_fares.other"}, "model_name: 'prod.taxi_fares.other' is not target 'prod''s"),
    ({"secret_scope": "someone-elses"}, "secret_scope: 'someone-elses' is not target 'prod''s 'taxi-fares'"),
    ({"min_r2": "-1000"}, "min_r2: -1000.0 loosens target 'prod''s validation (min_r2 at least 0.0)"),
    ({"regression_margin": "1e9"}, "regression_margin: 1000000000.0 loosens target 'prod''s validation "
                                   "(regression_margin at most 0.05)"),
    ({"holdout_fraction": "0.001"}, "holdout_fraction: 0.001 loosens target 'prod''s validation"),
])
def test_a_run_that_loosens_the_policy_or_leaves_the_target_is_refused(changes, expected):
    with pytest.raises(ConfigError) as excinfo:
        TrainingConfig.from_mapping(under_prod(**changes))
    assert expected in str(excinfo.value)


def test_a_job_run_without_its_policy_is_refused():
    """A job run (Databricks passes its job id) that carries no policy is not the job as deployed: no gate could
    be checked, so nothing runs. A notebook run outside a job (the notebook tests) has neither."""
    with pytest.raises(ConfigError, match="target_policy: missing: this job run carries no target policy"):
        TrainingConfig.from_mapping({**training(databricks_job_id="123"), TARGET_POLICY: ""})
    assert TrainingConfig.from_mapping({**training(), TARGET_POLICY: ""})


def test_a_malformed_policy_fails_closed():
    with pytest.raises(ConfigError, match="target_policy: is not a target policy"):
        TrainingConfig.from_mapping({**under_prod(), TARGET_POLICY: '{"target": "prod"}'})
    with pytest.raises(ConfigError, match="target_policy: is not a target policy"):
        TrainingConfig.from_mapping({**under_prod(), TARGET_POLICY: "{not json"})


def test_the_policy_binds_every_job_to_its_target():
    with pytest.raises(ConfigError, match="lakehouse_root: '/tmp/elsewhere' is not under target 'prod''s"):
        ScoringConfig.from_mapping({**scoring(mlflow_registry_uri="databricks-uc", lakehouse_root="/tmp/elsewhere"),
                                    TARGET_POLICY: PROD.to_json()})
