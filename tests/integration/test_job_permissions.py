"""Who may run what (issue 34, item 3): every deployed job runs as the target's service principal, its operators
group may run it and only the deploying principal owns it. ``jobs/create`` carries the access list; a redeploy
resets the settings (``jobs/reset`` takes no access list) and then replaces the job's grants through the
Permissions API, so a grant made by hand since does not survive. Against the strict emulator over HTTP."""
import json

from databricks.sdk import WorkspaceClient

from fakes.databricks_workspace import TEST_TOKEN as TOKEN
from orchestrator.templates import JOBS, load_targets

STAGING = load_targets()["staging"]
RUN_AS = {"service_principal_name": STAGING["run_as_service_principal"]}
GRANTS = [{"group_name": STAGING["operators_group"], "permission_level": "CAN_MANAGE_RUN"},
          {"service_principal_name": STAGING["deployer_service_principal"], "permission_level": "IS_OWNER"}]


def deployed(workspace, mlops):
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    return err


def test_a_first_deploy_creates_jobs_that_run_as_the_target_principal_with_its_grants(workspace, mlops):
    err = deployed(workspace, mlops)
    created = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/create")]
    assert len(created) == len(JOBS)
    for body in created:
        assert body["run_as"] == RUN_AS and body["access_control_list"] == GRANTS
    for job_id, settings in workspace.jobs.items():
        assert settings["run_as"] == RUN_AS
        # the deploying principal owns the job (the caller does not stay owner beside it); operators may run it
        assert workspace.permissions[job_id] == GRANTS
        assert (f"job {settings['name']}: runs as service principal {RUN_AS['service_principal_name']}; group "
                f"{STAGING['operators_group']} CAN_MANAGE_RUN, service principal "
                f"{STAGING['deployer_service_principal']} IS_OWNER") in err
    # as the workspace reports them: the two direct grants, and the admins' inherited CAN_MANAGE
    w = WorkspaceClient(host=workspace.url, token=TOKEN)
    acl = w.jobs.get_permissions(str(next(iter(workspace.jobs)))).access_control_list
    assert [(a.group_name or a.service_principal_name, [p.permission_level.value for p in a.all_permissions])
            for a in acl] == [(STAGING["operators_group"], ["CAN_MANAGE_RUN"]),
                              (STAGING["deployer_service_principal"], ["IS_OWNER"]), ("admins", ["CAN_MANAGE"])]


def test_the_dry_run_shows_the_grants_and_the_run_as_principal(workspace, mlops):
    code, out, _ = mlops("deploy", "--target", "staging", "--dry-run")
    assert code == 0 and workspace.requests == []
    plan = json.loads(out)
    assert set(plan["permissions"]) == set(plan["jobs"])
    assert all(grants == GRANTS for grants in plan["permissions"].values())
    assert all(settings["run_as"] == RUN_AS for settings in plan["jobs"].values())


def test_a_redeploy_puts_the_grants_back_and_drops_a_grant_made_by_hand(workspace, mlops):
    deployed(workspace, mlops)
    training = next(i for i, s in workspace.jobs.items() if s["name"] == "taxi_fares_training")
    # someone gave themselves CAN_MANAGE in the UI, and the operators' grant was removed
    by_hand = {"user_name": "someone@example.com", "permission_level": "CAN_MANAGE"}
    workspace.permissions[training] = [GRANTS[1], by_hand]
    workspace.requests.clear()
    deployed(workspace, mlops)
    resets = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/reset")]
    assert len(resets) == len(JOBS) and all("access_control_list" not in r["new_settings"] for r in resets)
    assert all(r["new_settings"]["run_as"] == RUN_AS for r in resets)
    puts = workspace.calls("PUT", "/api/2.0/permissions/jobs/")
    assert sorted(int(r.path.rsplit("/", 1)[1]) for r in puts) == sorted(workspace.jobs)
    assert all(r.json() == {"access_control_list": GRANTS} for r in puts)
    assert workspace.permissions[training] == GRANTS


def test_a_deploying_principal_that_is_not_an_application_id_is_refused_before_any_request(
        workspace, mlops, tmp_path, monkeypatch):
    """A group name given as the deploying principal: sent, it would make a group the owner, which the workspace
    refuses (as the emulator does, shown over raw HTTP in test_workspace_emulator.py); it is refused here first."""
    targets = workspace.targets_file.read_text().replace(
        f"deployer_service_principal: {STAGING['deployer_service_principal']}",
        "deployer_service_principal: taxi-fares-deployers")
    (tmp_path / "targets.yml").write_text(targets)
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 2 and workspace.requests == []
    assert ("target 'staging': deployer_service_principal 'taxi-fares-deployers' is not an application id "
            "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)") in err
