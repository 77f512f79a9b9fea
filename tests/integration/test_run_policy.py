"""Code is fixed at deploy time and gates are target policy (issue 34, items 1 and 2), against the workspace
emulator: a run or repair that names a wheel parameter, loosens a gate or leaves the target's lakehouse or registry
is refused with exit 2 before any request reaches the workspace; the wheels and the policy reach the notebook as
task base parameters, which the Jobs API does not let a run change."""
import json

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError

from fakes.databricks_workspace import TEST_TOKEN as TOKEN
from orchestrator.paths import REPO_ROOT, project_version
from orchestrator.templates import read_job, target_variables
from taxi_fares_mlops.config import DEPLOY_PARAMETERS, TargetPolicy

VERSION = project_version()


def deployed(workspace, mlops):
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    jobs = {s["name"]: job_id for job_id, s in workspace.jobs.items()}
    workspace.requests.clear()
    return jobs


def strict_staging(workspace, tmp_path, monkeypatch):
    """staging with prod's gates: approval required, validation enabled, no force promotion."""
    targets = getattr(workspace, "targets_file", REPO_ROOT / "job_templates/targets.yml").read_text()
    old = ("    policy:\n      require_approval: false\n      allow_force_promote: false\n"
           "      min_model_validation: dry_run\n")
    assert targets.count(old) == 1
    (tmp_path / "targets.yml").write_text(targets.replace(old, old.replace("require_approval: false",
                                                                           "require_approval: true")
                                                          .replace("dry_run", "enabled")))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))


def test_the_wheels_and_the_policy_are_base_parameters_a_run_cannot_change(workspace, mlops):
    jobs = deployed(workspace, mlops)
    expected = read_job("training", target_variables("staging"))
    settings = workspace.jobs[jobs["taxi_fares_training"]]
    assert not {p["name"] for p in settings["parameters"]} & set(DEPLOY_PARAMETERS)
    base = settings["tasks"][0]["notebook_task"]["base_parameters"]
    assert base == {"wheel_base_path": "/Volumes/staging/taxi_fares/wheels", "wheel_version": VERSION,
                    "target_policy": expected.policy}
    policy = TargetPolicy.from_json(base["target_policy"])
    assert (policy.target, policy.allow_force_promote, policy.lakehouse_root) == (
        "staging", False, "/Volumes/staging/taxi_fares/lakehouse")
    # The Jobs API itself refuses a run naming a parameter the job does not define: a client other than mlops
    # cannot override the base parameters either.
    w = WorkspaceClient(host=workspace.url, token=TOKEN)
    for name in DEPLOY_PARAMETERS:
        with pytest.raises(DatabricksError, match=f"Job parameters {name} are not defined"):
            w.jobs.run_now(job_id=jobs["taxi_fares_training"], job_parameters={name: "x"})
    assert workspace.runs == {}


@pytest.mark.parametrize("param", ["wheel_version=6.6.6", "wheel_base_path=/Volumes/evil/x/wheels",
                                   "target_policy={}"])
def test_a_run_naming_a_deploy_time_parameter_is_refused_before_any_request(workspace, mlops, param):
    deployed(workspace, mlops)
    code, _, err = mlops("run", "training", "--target", "staging", "--param", param)
    name = param.split("=")[0]
    assert code == 2
    assert f"unknown parameter(s) {name} ({name} fixed at deploy time: deploy another version or target instead)" \
        in err
    assert workspace.requests == []


def test_force_promote_on_prod_is_refused_naming_the_policy_before_any_request(workspace, mlops):
    code, _, err = mlops("run", "deployment", "--target", "prod", "--param", "force_promote=true")
    assert code == 2
    assert ("force_promote: refused: target 'prod''s policy does not allow force promotion "
            "(allow_force_promote: false); promote with `mlops approve` instead") in err
    assert workspace.requests == []


@pytest.mark.parametrize("param, message", [
    ("require_approval=false", "require_approval: false loosens target 'staging''s policy (require_approval: true)"),
    ("model_validation=dry_run", "model_validation: 'dry_run' is below target 'staging''s least mode 'enabled'"),
    ("force_promote=true", "force_promote: refused: target 'staging''s policy does not allow force promotion"),
    ("lakehouse_root=/Volumes/prod/taxi_fares/lakehouse",
     "lakehouse_root: '/Volumes/prod/taxi_fares/lakehouse' is not under target 'staging''s lakehouse"),
    ("mlflow_registry_uri=databricks", "mlflow_registry_uri: 'databricks' is not target 'staging''s registry"),
    ("secret_scope=../other", "secret_scope: '../other' is not a secret scope name"),
])
def test_run_and_repair_that_loosen_a_gate_or_leave_the_target_are_refused_before_any_request(
        workspace, mlops, tmp_path, monkeypatch, param, message):
    strict_staging(workspace, tmp_path, monkeypatch)
    deployed(workspace, mlops)
    code, _, err = mlops("run", "deployment", "--target", "staging", "--param", param)  # the gates' job
    assert code == 2 and message in err, err
    code, _, err = mlops("repair", "12345", "--target", "staging", "--param", param)
    assert code == 2 and message in err, err
    assert workspace.requests == []
    # tightening is allowed: the strict defaults run
    code, _, err = mlops("run", "deployment", "--target", "staging", "--param", "require_approval=true")
    assert code == 0, err
    assert [r.json()["job_parameters"] for r in workspace.calls("POST", "/api/2.2/jobs/run-now")] == [
        {"require_approval": "true"}]


def test_repair_checks_the_parameters_against_the_runs_own_job_before_repairing(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    assert mlops("run", "batch_scoring", "--target", "staging")[0] == 1
    run_id = next(iter(workspace.runs))
    # holdout_fraction is a training parameter (it passes the check before any request), not the scoring job's
    code, _, err = mlops("repair", str(run_id), "--target", "staging", "--param", "holdout_fraction=0.3")
    assert code == 2 and "unknown parameter(s) holdout_fraction" in err
    code, _, err = mlops("repair", str(run_id), "--target", "staging", "--param", "wheel_version=6.6.6")
    assert code == 2 and "wheel_version fixed at deploy time" in err
    assert workspace.calls("POST", "/api/2.2/jobs/runs/repair") == []


def test_a_local_run_naming_a_wheel_parameter_or_leaving_the_local_lakehouse_is_refused(mlops, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    code, _, err = mlops("run", "training", "--local", "--param", "wheel_version=6.6.6")
    assert code == 2 and "unknown parameter(s) wheel_version (wheel_version fixed at deploy time" in err
    code, _, err = mlops("run", "training", "--local", "--param", f"lakehouse_root={tmp_path / 'other'}")
    assert code == 2 and f"is not under target 'local''s lakehouse '{tmp_path / 'home'}'" in err
    assert not (tmp_path / "home" / "wheels").exists(), "refused before the wheels were staged"


def test_the_local_runner_passes_the_wheels_and_policy_as_the_deployer_does():
    local = read_job("training", target_variables("local", lakehouse="/tmp/lh"))
    staging = read_job("training", target_variables("staging"))
    [local_task], [staging_task] = local.tasks, staging.tasks
    assert list(local_task.base_parameters) == list(staging_task.base_parameters) == list(DEPLOY_PARAMETERS)
    assert json.loads(local.policy)["lakehouse_root"] == "/tmp/lh"
    assert local.parameters.keys() == staging.parameters.keys()
