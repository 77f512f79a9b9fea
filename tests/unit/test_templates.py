"""Job templates: every template renders for every target with no placeholder left, points at a notebook that
exists, round-trips through JobSettings, and agrees with the notebook's widgets and the typed config."""
import json
import os
import re
from pathlib import Path

import pytest

from orchestrator.local import notebook as nb
from orchestrator.paths import REPO_ROOT, TEMPLATES_DIR
from orchestrator.templates import (JOBS, TemplateError, load_targets, load_template, placeholders, read_job, render,
                                    render_job, target_variables, validate, validate_access_control_list)
from taxi_fares_mlops.config import CONFIGS, DEPLOY_PARAMETERS, TargetPolicy

TARGETS = sorted(load_targets())
# Parameters a job's config reads that are neither job parameters nor deploy-time ones: fixed per task, as base
# parameters (the deployment job's three tasks run one notebook, each its own step).
TASK_PARAMETERS = {"deployment": ("deployment_task",)}
# Parameters a job's config reads that its job does not define: the widgets keep their declared defaults, and the
# Jobs API refuses a run naming a parameter the job does not define, so no run of the job sets them. The training
# job leaves validation and promotion to the deployment job (they stay callable in-process).
NOT_JOB_PARAMETERS = {"training": ("execute_promotion", "promotion_margin", "force_promote", "require_approval",
                                   "model_validation", "max_rmse", "min_r2", "regression_margin")}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_template_renders_fully_and_round_trips(job, target):
    rendered = read_job(job, target_variables(target, version="9.9.9", lakehouse="/tmp/lakehouse"))
    settings = rendered.settings
    text = json.dumps(settings)
    assert "${" not in text and "{repo}" not in text and "{lakehouse}" not in text
    assert validate(settings).as_dict() == settings
    assert settings["max_concurrent_runs"] == 1
    assert settings["queue"] == {"enabled": True}
    # a scheduled job starts paused; the deployment job has a model trigger instead (workspace targets on UC)
    assert settings["schedule"]["pause_status"] == "PAUSED" if "schedule" in settings else "trigger" in settings or (
        job == "deployment" and target_variables(target)["mlflow_registry_uri"] != "databricks-uc")
    assert settings["timeout_seconds"] > 0
    # The wheels and the policy are fixed at deploy time: base parameters of every notebook task, never job
    # parameters (those override same-named task parameters, and a run may set them).
    assert not set(rendered.parameters) & set(DEPLOY_PARAMETERS)
    for task in rendered.tasks:
        if task.notebook_path:
            assert list(task.base_parameters)[:len(DEPLOY_PARAMETERS)] == list(DEPLOY_PARAMETERS)
            assert set(task.base_parameters) - set(DEPLOY_PARAMETERS) <= set(TASK_PARAMETERS.get(job, ()))
            assert task.base_parameters["wheel_version"] == "9.9.9"
    policy = TargetPolicy.from_json(rendered.policy)
    assert (policy.target, policy.wheel_version) == (target, "9.9.9")
    [path] = set(rendered.notebook_paths)
    workspace_root = target_variables(target)["workspace_root"]
    relative = path[len(workspace_root):].lstrip("/")
    assert (REPO_ROOT / f"{relative}.py").exists(), f"{path} has no notebook in the repository"


def test_schedules_are_weekly_for_training_and_daily_for_scoring():
    assert load_template("training")["schedule"]["quartz_cron_expression"].endswith("? * SUN")
    assert load_template("batch_scoring")["schedule"]["quartz_cron_expression"] == "0 0 5 * * ?"


def test_missing_and_unknown_variables_fail_loudly():
    with pytest.raises(TemplateError) as excinfo:
        render({"a": "${workspace_root}/x", "b": "${new_cluster}"}, {"workspace_root": "/w", "colour": "red"})
    assert "unknown variable 'colour'" in str(excinfo.value)
    assert "missing variable 'new_cluster'" in str(excinfo.value)


def test_whole_string_placeholders_keep_their_type():
    rendered = render({"emails": "${notification_emails}", "path": "${workspace_root}/nb"},
                      {"notification_emails": ["a@example.com"], "workspace_root": "/w"})
    assert rendered == {"emails": ["a@example.com"], "path": "/w/nb"}
    with pytest.raises(TemplateError, match="used inside a string"):
        render({"x": "cluster ${new_cluster}"}, {"new_cluster": {"num_workers": 1}})


def test_a_key_the_sdk_does_not_know_is_caught():
    settings = render_job("training", target_variables("dev"))
    settings["tasks"][0]["notebok_task"] = settings["tasks"][0].pop("notebook_task")
    with pytest.raises(TemplateError, match="notebok_task"):
        validate(settings)


def test_unknown_target_is_named():
    with pytest.raises(TemplateError, match="unknown target 'qa'"):
        target_variables("qa")


def _template_parameters(job):
    return {p["name"]: p["default"] for p in load_template(job)["parameters"]}


def _notebook(job):
    [path] = {t["notebook_task"]["notebook_path"].replace("${workspace_root}/", "")
              for t in load_template(job)["tasks"] if "notebook_task" in t}
    return nb.load(REPO_ROOT / f"{path}.py")


class RecordingWidgets:
    """What ``declare_widgets`` asks of ``dbutils.widgets``: name -> (kind, default, choices, label)."""

    def __init__(self):
        self.declared = {}

    def text(self, name, default, label):
        self.declared[name] = ("text", default, None, label)

    def dropdown(self, name, default, choices, label):
        self.declared[name] = ("dropdown", default, choices, label)


def _widgets(job):
    """name -> default of the widgets a notebook declares: the two wheel widgets in its source, then the job's
    own, declared by its config."""
    source = "\n".join(c.source for c in _notebook(job) if c.magic is None)
    declared = dict(re.findall(r'dbutils\.widgets\.(?:text|dropdown)\("([^"]+)", "([^"]*)"', source))
    assert set(declared) == set(DEPLOY_PARAMETERS), "a notebook declares only the deploy-time widgets itself"
    assert f"{CONFIGS[job].__name__}.declare_widgets(dbutils)" in source
    recording = type("dbutils", (), {"widgets": RecordingWidgets()})()
    CONFIGS[job].declare_widgets(recording)
    return {**declared, **{name: spec[1] for name, spec in recording.widgets.declared.items()}}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_declared_widgets_are_labelled_and_fixed_choices_are_dropdowns(job):
    recording = type("dbutils", (), {"widgets": RecordingWidgets()})()
    CONFIGS[job].declare_widgets(recording)
    for name, (kind, default, choices, label) in recording.widgets.declared.items():
        assert label and label != name, name
        if kind == "dropdown":
            assert default in choices, name
    if job != "deployment":  # a deployment judges a version on its training run's range and validation mode
        choices = ["fail", "quarantine"]
        assert recording.widgets.declared["validation_mode"][:3] == ("dropdown", "quarantine", choices)
        if job != "scoring_stream":  # the incremental job has no range: each run takes what arrived since the last
            assert recording.widgets.declared["start_date"][0] == "text"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_notebook_header_lists_exactly_the_jobs_parameters(job):
    header = _notebook(job)[0].source
    table = "\n".join(line.split(" | ")[0] for line in header.splitlines() if line.lstrip("# MAGIC").startswith("|"))
    listed = set(re.findall(r"`([a-z0-9_]+)`", table))
    assert listed == set(DEPLOY_PARAMETERS) | {p.name for p in CONFIGS[job].parameters()} - set(
        NOT_JOB_PARAMETERS.get(job, ()))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_template_parameters_notebook_widgets_and_config_agree(job):
    template_params = _template_parameters(job)
    widgets = _widgets(job)
    config_params = {p.name: p.default for p in CONFIGS[job].parameters()}
    not_job = set(TASK_PARAMETERS.get(job, ())) | set(NOT_JOB_PARAMETERS.get(job, ()))
    assert set(template_params) | not_job == set(config_params)
    assert not set(template_params) & set(NOT_JOB_PARAMETERS.get(job, ()))
    assert [w for w in widgets if w not in not_job] == list(DEPLOY_PARAMETERS) + list(template_params)
    for name, default in template_params.items():
        if not placeholders(default) and not default.startswith("{{"):  # {{job.id}}: filled in by Databricks
            assert widgets[name] == default == config_params[name], name


def test_templates_folder_holds_only_known_files():
    assert sorted(p.name for p in TEMPLATES_DIR.glob("*.json")) == sorted(JOBS.values())


def test_a_serverless_target_declares_the_wheels_as_environment_dependencies():
    variables = target_variables("staging", version="9.9.9")
    settings = render_job("training", variables, {"name": "staging", "compute": "serverless"})
    validate(settings)
    assert "job_clusters" not in settings
    assert [(t["task_key"], t.get("environment_key"), t.get("job_cluster_key")) for t in settings["tasks"]] == [
        ("train", "taxi_fares", None)]
    assert settings["environments"] == [{"environment_key": "taxi_fares", "spec": {
        "environment_version": "4", "dependencies": [
            "/Volumes/staging/taxi_fares/wheels/9.9.9/taxi_fares-9.9.9-py3-none-any.whl",
            "/Volumes/staging/taxi_fares/wheels/9.9.9/taxi_fares_mlops-9.9.9-py3-none-any.whl"]}}]


def test_compute_choices_are_checked():
    variables = target_variables("dev")
    on_cluster = render_job("training", variables, {"name": "dev", "existing_cluster_id": "0101-x"})
    assert on_cluster["tasks"][0]["existing_cluster_id"] == "0101-x" and "job_clusters" not in on_cluster
    with pytest.raises(TemplateError, match="compute 'gpu' is not one of job_cluster, existing_cluster, serverless"):
        render_job("training", variables, {"name": "dev", "compute": "gpu"})
    with pytest.raises(TemplateError, match="compute existing_cluster needs existing_cluster_id"):
        render_job("training", variables, {"name": "dev", "compute": "existing_cluster"})


def test_prod_policy_sets_the_gates_defaults_and_refuses_loosening():
    rendered = read_job("deployment", target_variables("prod"))
    assert (rendered.parameters["require_approval"], rendered.parameters["model_validation"]) == ("true", "enabled")
    policy = TargetPolicy.from_json(rendered.policy)
    gates = (policy.require_approval, policy.allow_force_promote, policy.min_model_validation)
    assert gates == (True, False, "enabled")
    assert policy.lakehouse_root == "/Volumes/prod/taxi_fares/lakehouse"
    assert policy.mlflow_registry_uri == "databricks-uc"
    pinned = (policy.table_schema, policy.model_name, policy.secret_scope)
    assert pinned == ("prod.taxi_fares", "prod.taxi_fares.taxi_fares", "taxi-fares")
    bounds = (policy.min_r2_at_least, policy.regression_margin_at_most, policy.holdout_fraction_at_least)
    assert bounds == (0.0, 0.05, 0.1)


@pytest.mark.parametrize("old, new, message", [
    ("      min_model_validation: enabled\n", "", "target 'prod': policy: min_model_validation must be a str"),
    ("      allow_force_promote: false\n      min_model_validation: enabled",
     "      allow_force_promote: false\n      min_model_validation: strict",
     "min_model_validation 'strict' is not one of disabled, dry_run, enabled"),
    ("      require_approval: true\n", "      require_approval: yes please\n",
     "target 'prod': policy: require_approval must be a bool"),
    ("      regression_margin_at_most: 0.05\n      holdout_fraction_at_least: 0.1\n    new_cluster",
     "      regression_margin_at_most: lots\n      holdout_fraction_at_least: 0.1\n    new_cluster",
     "target 'prod': policy: regression_margin_at_most must be a number"),
    # a policy under defaults would be inherited by a target copied from another without its own
    ("defaults:\n", "defaults:\n  policy:\n    require_approval: false\n    allow_force_promote: true\n"
     "    min_model_validation: disabled\n", "defaults: policy belongs to each target, never to the defaults"),
])
def test_a_target_policy_that_is_incomplete_or_malformed_is_refused(tmp_path, monkeypatch, old, new, message):
    text = (TEMPLATES_DIR / "targets.yml").read_text()
    assert old in text
    (tmp_path / "targets.yml").write_text(text.replace(old, new))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    with pytest.raises(TemplateError, match=re.escape(message)):
        load_targets()


# --- who may run what: run_as and the access list, per target (issue 34, item 3) ---------------------------------

WORKSPACE_TARGETS = [t for t in TARGETS if t != "local"]
# the Databricks CLI's published bundle schema: as given, as the tests keep it, or beside the clone (shared/schemas)
BUNDLE_SCHEMA = next((p for p in (Path(os.environ.get("DATABRICKS_BUNDLE_SCHEMA") or "/nonexistent"),
                                  REPO_ROOT / "tests" / "schemas" / "databricks-bundle.schema.json",
                                  REPO_ROOT.parent / "shared" / "schemas" / "databricks-bundle.schema.json")
                      if p.exists()), Path("databricks-bundle.schema.json"))


@pytest.mark.parametrize("target", WORKSPACE_TARGETS)
@pytest.mark.parametrize("job", sorted(JOBS))
def test_each_workspace_target_runs_as_its_service_principal_and_operators_may_only_run(job, target):
    values = load_targets()[target]
    rendered = read_job(job, target_variables(target, version="9.9.9"))
    assert rendered.settings["run_as"] == {"service_principal_name": values["run_as_service_principal"]}
    assert list(rendered.access_control_list) == [
        {"group_name": values["operators_group"], "permission_level": "CAN_MANAGE_RUN"},
        {"service_principal_name": values["deployer_service_principal"], "permission_level": "IS_OWNER"}]
    # the access list is a jobs/create field, not a setting: JobSettings (and jobs/reset) never carry it
    assert "access_control_list" not in rendered.settings
    assert "access_control_list" not in render_job(job, target_variables(target))


def test_the_local_target_may_leave_the_principals_out():
    rendered = read_job("training", target_variables("local", lakehouse="/tmp/lakehouse"))
    assert "run_as" not in rendered.settings and rendered.access_control_list == ()


def _bundle_validator():
    """The Databricks CLI's bundle schema, its resources.Job definition (Go's \\p{L}/\\p{N} made Python's)."""
    if not BUNDLE_SCHEMA.exists():
        pytest.skip(f"no bundle schema at {BUNDLE_SCHEMA} (set DATABRICKS_BUNDLE_SCHEMA)")
    import jsonschema

    text = BUNDLE_SCHEMA.read_text().replace("\\\\p{L}", "A-Za-z").replace("\\\\p{N}", "0-9")
    schema = json.loads(text)
    job = {"$ref": "#/$defs/github.com/databricks/cli/bundle/config/resources.Job"}
    return jsonschema.Draft202012Validator({**job, "$defs": schema["$defs"]})


def _as_bundle_job(rendered):
    """A rendered job as a bundle's ``resources.jobs`` entry: its settings, the access list as ``permissions``."""
    permissions = [{("level" if k == "permission_level" else k): v for k, v in entry.items()}
                   for entry in rendered.access_control_list]
    return {**rendered.settings, **({"permissions": permissions} if permissions else {})}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("job", sorted(JOBS))
def test_rendered_jobs_are_valid_databricks_bundle_jobs(job, target):
    validator = _bundle_validator()
    resource = _as_bundle_job(read_job(job, target_variables(target, version="9.9.9", lakehouse="/tmp/lakehouse")))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resource)]
    assert errors == []


def test_the_bundle_schema_refuses_what_the_workspace_refuses():
    """The schema check above is not vacuous: an unknown level, a run_as key that does not exist are caught."""
    validator = _bundle_validator()
    resource = _as_bundle_job(read_job("training", target_variables("staging")))
    resource["permissions"][0]["level"] = "CAN_RUN"
    assert not validator.is_valid(resource)
    resource = _as_bundle_job(read_job("training", target_variables("staging")))
    resource["run_as"] = {"service_principal": "a2000000-0000-4000-8000-000000000001"}
    assert not validator.is_valid(resource)


@pytest.mark.parametrize("entries, message", [
    ([{"group_name": "ops", "permission_level": "CAN_RUN"}],
     "access_control_list[0]: permission_level 'CAN_RUN' is not one of"),
    ([{"group_name": "ops", "user_name": "a@example.com", "permission_level": "CAN_VIEW"}],
     "access_control_list[0]: exactly one of user_name, group_name, service_principal_name expected, found "
     "user_name, group_name"),
    ([{"permission_level": "CAN_VIEW"}], "exactly one of user_name, group_name, service_principal_name expected, "
                                         "found none"),
    ([{"group_name": "ops", "permission_level": "IS_OWNER"}], "a group cannot own a job"),
    ([{"user_name": "a@example.com", "permission_level": "IS_OWNER"},
      {"service_principal_name": "a2000000-0000-4000-8000-0000000000d1", "permission_level": "IS_OWNER"}],
     "names more than one IS_OWNER"),
    ([{"group_name": "ops", "permission_level": "CAN_VIEW", "colour": "red"}],
     "does not round-trip through JobAccessControlRequest: 'colour' was dropped"),
])
def test_an_access_list_the_jobs_api_would_refuse_is_caught_when_rendering(entries, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        validate_access_control_list("training", tuple(entries))


@pytest.mark.parametrize("old, new, message", [
    ("defaults:\n", "defaults:\n  operators_group: everyone\n",
     "defaults: operators_group belongs to each target, never to the defaults (state it per target)"),
    ("    run_as_service_principal: a3000000-0000-4000-8000-000000000001\n",
     "    run_as_service_principal: taxi-fares-prod-runner\n",
     "target 'prod': run_as_service_principal 'taxi-fares-prod-runner' is not an application id "
     "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
    ("    operators_group: taxi-fares-operators-prod\n", "    operators_group: ''\n",
     "target 'prod': operators_group '' is not a group name"),
    ("    deployer_service_principal: a3000000-0000-4000-8000-0000000000d1\n", "",
     "target 'prod': deployer_service_principal missing (expected the application id of the service principal "
     "that deploys and owns the jobs (IS_OWNER))"),
])
def test_a_workspace_target_without_well_formed_principals_is_refused(tmp_path, monkeypatch, old, new, message):
    text = (TEMPLATES_DIR / "targets.yml").read_text()
    assert old in text
    (tmp_path / "targets.yml").write_text(text.replace(old, new, 1))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    with pytest.raises(TemplateError, match=re.escape(message)):
        load_targets()


def test_the_deployment_job_runs_on_each_new_version_of_a_unity_catalog_model_in_three_steps():
    """trigger.model MODEL_VERSION_READY on the target's UC model, timers at the API's least (60 s), round-tripped by
    the SDK's ModelTriggerConfiguration; validation -> approval -> promotion, each step its task's; the approval
    task's name is the tag key `mlops approve` sets. The workspace registry has no model trigger: none rendered."""
    from taxi_fares_mlops.tracking import APPROVAL_TASK, APPROVED_VALUE

    staging = read_job("deployment", target_variables("staging", version="9.9.9"))
    assert staging.settings["trigger"] == {"pause_status": "UNPAUSED", "model": {
        "condition": "MODEL_VERSION_READY", "securable_name": "staging.taxi_fares.taxi_fares",
        "min_time_between_triggers_seconds": 60, "wait_after_last_change_seconds": 60}}
    assert validate(staging.settings).trigger.model.condition.value == "MODEL_VERSION_READY"
    assert (staging.parameters["model_name"], staging.parameters["model_version"]) == (
        "staging.taxi_fares.taxi_fares", "")
    steps = [(t.key, t.depends_on, t.base_parameters["deployment_task"]) for t in staging.tasks]
    assert steps == [("validation", (), "validation"), ("approval", (("validation", None),), "approval"),
                     ("promotion", (("approval", None),), "promotion")]
    assert (APPROVAL_TASK, APPROVED_VALUE) == ("approval", "approved")
    assert {"schedule", "trigger"} & set(read_job("training", target_variables("staging")).settings) == {"schedule"}
    for target in ("dev", "local"):  # the workspace registry: `mlops run deployment`, or the local runner
        assert "trigger" not in read_job("deployment", target_variables(target, lakehouse="/tmp/l")).settings
