"""The workspace emulator's own rules: each is shown refusing what a workspace refuses and accepting what it takes.

Bad requests go over raw HTTP (the SDK would not send most of them); good ones go through databricks-sdk, so
the emulator is also shown to speak the SDK's dialect. A rule that stopped refusing would make the deploy
tests prove nothing about a real workspace.
"""
import base64
import json

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound, ResourceAlreadyExists, ResourceConflict, ResourceDoesNotExist
from databricks.sdk.service.jobs import JobSettings
from databricks.sdk.service.workspace import ImportFormat, Language, ObjectType

from fakes.databricks_workspace import WorkspaceEmulator, canonical_source
from orchestrator.deploy.artifacts import import_notebook
from orchestrator.templates import render_job, target_variables

TOKEN = "dapi-emulator-test-token"
VOLUME = "/Volumes/main/taxi_fares/wheels"


@pytest.fixture
def emu():
    emulator = WorkspaceEmulator(TOKEN, volumes=(VOLUME,)).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def w(emu, monkeypatch):
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_ID",
                 "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "DATABRICKS_AUTH_TYPE", "DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return WorkspaceClient(host=emu.url, token=TOKEN)


def call(emu, method, path, body=None, query=None, token=TOKEN, data=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(method, emu.url + path, json=body, params=query, headers=headers, data=data,
                                timeout=10)
    return response.status_code, (response.json() if response.content and "json" in
                                  response.headers.get("Content-Type", "") else response.content)


def refused(result, status, code, *words):
    got_status, payload = result
    assert (got_status, payload["error_code"]) == (status, code), payload
    for word in words:
        assert word in payload["message"], payload["message"]


def job_settings(**changes) -> dict:
    settings = {"name": "job", "max_concurrent_runs": 1, "queue": {"enabled": True},
                "parameters": [{"name": "day", "default": "2016-01-01"}],
                "tasks": [{"task_key": "main", "existing_cluster_id": "0101-x",
                           "notebook_task": {"notebook_path": "/Shared/nb", "source": "WORKSPACE"}}]}
    settings.update(changes)
    return settings


def create_job(emu, **changes) -> int:
    status, payload = call(emu, "POST", "/api/2.2/jobs/create", job_settings(**changes))
    assert status == 200, payload
    return payload["job_id"]


# --- authentication and endpoints ---------------------------------------------------------------------------

def test_no_token_gets_401_and_a_wrong_or_expired_token_gets_403_invalid_access_token(emu, w):
    refused(call(emu, "GET", "/api/2.2/jobs/list", token=None), 401, "UNAUTHENTICATED")
    refused(call(emu, "GET", "/api/2.2/jobs/list", token="dapi-wrong"), 403, "PERMISSION_DENIED",
            "Invalid access token.")
    assert list(w.jobs.list()) == []


def test_a_path_that_is_not_an_api_answers_endpoint_not_found(emu, w):
    refused(call(emu, "POST", "/api/2.0/jobs/create-ish", {}), 404, "ENDPOINT_NOT_FOUND", "/api/2.0/jobs/create-ish")
    refused(call(emu, "GET", "/api/2.2/jobs/create"), 404, "ENDPOINT_NOT_FOUND")  # create is POST only
    with pytest.raises(NotFound) as excinfo:
        w.api_client.do("GET", "/api/2.0/no/such/thing")
    assert excinfo.value.error_code == "ENDPOINT_NOT_FOUND"
    assert not isinstance(excinfo.value, ResourceDoesNotExist)


# --- request bodies decoded with the SDK's signatures and dataclasses --------------------------------------

@pytest.mark.parametrize("bad, status, code, field", [
    ({"nmae": "job"}, 400, "MALFORMED_REQUEST", "nmae"),
    ({"tasks": [{"task_key": "main", "notebook_tsk": {}}]}, 400, "MALFORMED_REQUEST", "tasks[0].notebook_tsk"),
    ({"max_concurrent_runs": "1"}, 400, "MALFORMED_REQUEST", "max_concurrent_runs"),
    ({"parameters": {"day": "x"}}, 400, "MALFORMED_REQUEST", "parameters"),
    ({"schedule": {"quartz_cron_expression": "0 0 3 ? * SUN", "timezone_id": "UTC", "pause_status": "STOPPED"}},
     400, "INVALID_PARAMETER_VALUE", "schedule.pause_status"),
    ({"schedule": {"quartz_cron_expression": "0 0 3 ? * SUN"}}, 400, "INVALID_PARAMETER_VALUE",
     "schedule.timezone_id"),
    ({"parameters": [{"name": "day"}]}, 400, "INVALID_PARAMETER_VALUE", "parameters[0].default"),
])
def test_job_bodies_with_unknown_fields_wrong_types_bad_enums_or_missing_fields_are_refused(
        emu, bad, status, code, field):
    refused(call(emu, "POST", "/api/2.2/jobs/create", job_settings(**bad)), status, code, field)
    assert emu.jobs == {}


def test_the_rendered_job_templates_are_accepted_as_they_are(emu, w):
    variables = target_variables("staging")
    for job in ("training", "batch_scoring", "deployment"):  # the deployment job with its model trigger
        settings = render_job(job, variables)
        job_id = w.jobs.create(**{k: getattr(JobSettings.from_dict(settings), k) for k in settings}).job_id
        assert emu.jobs[job_id] == settings


def test_a_task_must_name_a_defined_job_cluster(emu):
    bad = job_settings(tasks=[{"task_key": "main", "job_cluster_key": "missing",
                               "notebook_task": {"notebook_path": "/Shared/nb"}}])
    refused(call(emu, "POST", "/api/2.2/jobs/create", bad), 400, "INVALID_PARAMETER_VALUE", "missing")


# --- job permissions and run_as ----------------------------------------------------------------------------

SP = "a2000000-0000-4000-8000-0000000000d1"
OPERATORS = {"group_name": "operators", "permission_level": "CAN_MANAGE_RUN"}


@pytest.mark.parametrize("bad, code, words", [
    ({"access_control_list": [{"group_name": "operators", "permission_level": "CAN_RUN"}]},
     "INVALID_PARAMETER_VALUE", ("'CAN_RUN'", "access_control_list[0].permission_level", "CAN_MANAGE_RUN")),
    ({"access_control_list": [{"group_name": "operators", "user_name": "a@example.com",
                               "permission_level": "CAN_VIEW"}]},
     "INVALID_PARAMETER_VALUE", ("access_control_list[0]: exactly one of", "got user_name, group_name")),
    ({"access_control_list": [{"permission_level": "CAN_VIEW"}]},
     "INVALID_PARAMETER_VALUE", ("access_control_list[0]: exactly one of", "got none")),
    ({"access_control_list": [{"group_name": "operators"}]},
     "INVALID_PARAMETER_VALUE", ("access_control_list[0]: permission_level is required",)),
    ({"access_control_list": [{"group_name": "operators", "permission_level": "IS_OWNER"}]},
     "INVALID_PARAMETER_VALUE", ("a group cannot own a job",)),
    ({"access_control_list": [{"service_principal_name": SP, "permission_level": "IS_OWNER"},
                              {"user_name": "a@example.com", "permission_level": "IS_OWNER"}]},
     "INVALID_PARAMETER_VALUE", ("exactly one owner",)),
    ({"run_as": {}}, "INVALID_PARAMETER_VALUE", ("run_as: exactly one of", "got none")),
    ({"run_as": {"service_principal_name": SP, "user_name": "a@example.com"}},
     "INVALID_PARAMETER_VALUE", ("run_as: exactly one of", "got user_name, service_principal_name")),
    ({"run_as": {"service_principal": SP}}, "MALFORMED_REQUEST", ("run_as.service_principal",)),
], ids=["unknown-level", "two-principals", "no-principal", "no-level", "group-owner", "two-owners", "run-as-nobody",
        "run-as-two", "run-as-unknown-key"])
def test_access_lists_and_run_as_the_workspace_refuses_are_refused(emu, bad, code, words):
    refused(call(emu, "POST", "/api/2.2/jobs/create", job_settings(**bad)), 400, code, *words)
    assert emu.jobs == {} and emu.permissions == {}


def test_the_permissions_api_replaces_a_jobs_grants_and_jobs_reset_takes_none(emu, w):
    from databricks.sdk.service.jobs import JobAccessControlRequest

    owned_by_caller = create_job(emu)
    assert emu.permissions[owned_by_caller] == [{"user_name": emu.identity["userName"], "permission_level": "IS_OWNER"}]
    job_id = create_job(emu, access_control_list=[OPERATORS], run_as={"service_principal_name": SP})
    assert emu.permissions[job_id] == [{"user_name": emu.identity["userName"], "permission_level": "IS_OWNER"},
                                       OPERATORS]
    grants = [OPERATORS, {"service_principal_name": SP, "permission_level": "IS_OWNER"}]
    answer = w.jobs.set_permissions(str(job_id),
                                    access_control_list=[JobAccessControlRequest.from_dict(g) for g in grants])
    assert emu.permissions[job_id] == grants  # replaced whole: the caller no longer owns it
    assert [(a.group_name or a.service_principal_name, a.all_permissions[0].permission_level.value,
             a.all_permissions[0].inherited) for a in answer.access_control_list] == [
        ("operators", "CAN_MANAGE_RUN", False), (SP, "IS_OWNER", False), ("admins", "CAN_MANAGE", True)]
    assert w.jobs.get_permissions(str(job_id)).as_dict() == answer.as_dict()
    # without an owner entry the owner stays; a bad level or a group owner changes nothing
    assert call(emu, "PUT", f"/api/2.0/permissions/jobs/{job_id}", {"access_control_list": []})[0] == 200
    assert emu.permissions[job_id] == grants[1:]
    refused(call(emu, "PUT", f"/api/2.0/permissions/jobs/{job_id}", {"access_control_list": [
        {"group_name": "operators", "permission_level": "CAN_EXECUTE"}]}), 400, "INVALID_PARAMETER_VALUE",
        "CAN_EXECUTE")
    refused(call(emu, "PUT", f"/api/2.0/permissions/jobs/{job_id}", {"access_control_list": [
        {"group_name": "operators", "permission_level": "IS_OWNER"}]}), 400, "INVALID_PARAMETER_VALUE",
        "a group cannot own a job")
    assert emu.permissions[job_id] == grants[1:]
    refused(call(emu, "PUT", "/api/2.0/permissions/jobs/424242", {"access_control_list": []}), 404,
            "RESOURCE_DOES_NOT_EXIST", "424242")
    refused(call(emu, "POST", "/api/2.2/jobs/reset", {"job_id": job_id, "new_settings": job_settings(
        access_control_list=[OPERATORS])}), 400, "MALFORMED_REQUEST", "new_settings.access_control_list")


# --- one namespace of workspace objects --------------------------------------------------------------------

def test_workspace_prefix_names_the_same_object_and_a_path_holds_one_object(emu, w):
    w.workspace.mkdirs("/Workspace/Shared/taxi_fares/staging")
    assert w.workspace.get_status("/Shared/taxi_fares/staging").object_type == ObjectType.DIRECTORY
    refused(call(emu, "POST", "/api/2.0/mlflow/experiments/create", {"name": "/Shared/taxi_fares/staging"}),
            400, "RESOURCE_ALREADY_EXISTS", "found 'DIRECTORY'")
    experiment_id = w.experiments.create_experiment("/Shared/taxi_fares/experiment").experiment_id
    status = call(emu, "GET", "/api/2.0/workspace/get-status",
                  query={"path": "/Workspace/Shared/taxi_fares/experiment"})
    assert status[1]["object_type"] == "MLFLOW_EXPERIMENT"
    refused(call(emu, "POST", "/api/2.0/workspace/mkdirs", {"path": "/Shared/taxi_fares/experiment/sub"}),
            400, "RESOURCE_ALREADY_EXISTS", "MLFLOW_EXPERIMENT")
    refused(call(emu, "POST", "/api/2.0/workspace/import", {
        "path": "/Shared/taxi_fares/experiment/nb", "format": "SOURCE", "language": "PYTHON", "content": ""}),
        400, "RESOURCE_ALREADY_EXISTS", "not a directory")
    refused(call(emu, "POST", "/api/2.0/mlflow/experiments/create", {"name": "/Shared/nowhere/experiment"}),
            404, "RESOURCE_DOES_NOT_EXIST", "/Shared/nowhere")
    assert emu.experiments[experiment_id].name == "/Shared/taxi_fares/experiment"


def test_import_checks_format_language_overwrite_and_parent(emu, w):
    content = base64.b64encode(b"# Databricks notebook source\nprint(1)\n").decode()
    body = {"path": "/Shared/nb", "format": "SOURCE", "language": "PYTHON", "content": content}
    refused(call(emu, "POST", "/api/2.0/workspace/import", {**body, "format": "PDF"}),
            400, "INVALID_PARAMETER_VALUE", "format")
    refused(call(emu, "POST", "/api/2.0/workspace/import", {**body, "language": None}),
            400, "INVALID_PARAMETER_VALUE", "language")
    refused(call(emu, "POST", "/api/2.0/workspace/import", {**body, "overwrite": "yes"}),
            400, "MALFORMED_REQUEST", "overwrite")
    refused(call(emu, "POST", "/api/2.0/workspace/import", {**body, "path": "/Shared/missing/nb"}),
            404, "RESOURCE_DOES_NOT_EXIST", "/Shared/missing")
    w.workspace.import_("/Shared/nb", content=content, format=ImportFormat.SOURCE, language=Language.PYTHON)
    with pytest.raises(ResourceAlreadyExists):
        w.workspace.import_("/Shared/nb", content=content, format=ImportFormat.SOURCE, language=Language.PYTHON)
    w.workspace.import_("/Workspace/Shared/nb", content=content, format=ImportFormat.SOURCE,
                        language=Language.PYTHON, overwrite=True)
    assert emu.notebook("/Shared/nb") == b"# Databricks notebook source\nprint(1)\n"


def test_export_returns_the_canonical_source_form_and_refuses_what_does_not_exist(emu, w):
    sloppy = "# Databricks notebook source\r\n\r\nx = 1   \r\n# COMMAND ----------\r\ny = 2\r\n\r\n\r\n"
    w.workspace.import_("/Shared/nb", content=base64.b64encode(sloppy.encode()).decode(),
                        format=ImportFormat.SOURCE, language=Language.PYTHON)
    exported = base64.b64decode(w.workspace.export("/Shared/nb").content).decode()
    assert exported == "# Databricks notebook source\nx = 1\n\n# COMMAND ----------\n\ny = 2\n"
    assert canonical_source(exported) == exported
    with pytest.raises(ResourceDoesNotExist):
        w.workspace.export("/Shared/other")
    refused(call(emu, "GET", "/api/2.0/workspace/export", query={"path": "/Shared", "format": "SOURCE"}),
            400, "INVALID_PARAMETER_VALUE", "directory")


def test_the_tools_notebook_comparison_matches_the_canonical_form(emu, w, tmp_path):
    source = tmp_path / "nb.py"
    source.write_text("# Databricks notebook source\n\n\nx = 1\n# COMMAND ----------\ny = 2")
    assert import_notebook(w, source, "/Shared/nb") is True
    assert base64.b64decode(w.workspace.export("/Shared/nb").content).decode() != source.read_text()
    assert import_notebook(w, source, "/Shared/nb") is False
    source.write_text("# Databricks notebook source\nx = 1\n# COMMAND ----------\ny = 3")
    assert import_notebook(w, source, "/Shared/nb") is True


# --- Jobs 2.2 -------------------------------------------------------------------------------------------------

def test_jobs_list_pages_within_its_bounds_and_filters_by_name(emu, w):
    for i in range(30):
        create_job(emu, name=f"Job-{i:02d}")
    refused(call(emu, "GET", "/api/2.2/jobs/list", query={"limit": 101}), 400, "INVALID_PARAMETER_VALUE", "100")
    status, first = call(emu, "GET", "/api/2.2/jobs/list", query={"limit": 10})
    assert len(first["jobs"]) == 10 and first["has_more"] and first["next_page_token"]
    status, second = call(emu, "GET", "/api/2.2/jobs/list", query={"limit": 10, "page_token": first["next_page_token"]})
    assert [j["settings"]["name"] for j in second["jobs"]] == [f"Job-{i:02d}" for i in range(10, 20)]
    assert len(list(w.jobs.list(limit=7))) == 30
    assert [j.settings.name for j in w.jobs.list(name="job-07")] == ["Job-07"]


def test_runs_list_limit_must_be_at_most_25(emu, w):
    job_id = create_job(emu, max_concurrent_runs=100)
    for _ in range(30):
        w.jobs.run_now(job_id)
    refused(call(emu, "GET", "/api/2.2/jobs/runs/list", query={"job_id": job_id, "limit": 26}),
            400, "INVALID_PARAMETER_VALUE", "25")
    status, page = call(emu, "GET", "/api/2.2/jobs/runs/list", query={"job_id": job_id, "limit": 25})
    assert len(page["runs"]) == 25 and page["has_more"]
    assert len(list(w.jobs.list_runs(job_id=job_id, limit=25))) == 30


def test_reset_replaces_and_update_merges_by_key_and_removes_fields(emu, w):
    schedule = {"quartz_cron_expression": "0 0 3 ? * SUN", "timezone_id": "UTC", "pause_status": "PAUSED"}
    job_id = create_job(emu, schedule=schedule, tags={"team": "ml"})
    replaced = job_settings(name="renamed")
    assert call(emu, "POST", "/api/2.2/jobs/reset", {"job_id": job_id, "new_settings": replaced})[0] == 200
    assert emu.jobs[job_id] == replaced  # schedule and tags are gone
    second_task = {"task_key": "second", "existing_cluster_id": "0101-x",
                   "notebook_task": {"notebook_path": "/Shared/nb2"}}
    assert call(emu, "POST", "/api/2.2/jobs/update", {"job_id": job_id, "new_settings": {
        "tasks": [second_task], "schedule": schedule}})[0] == 200
    assert [t["task_key"] for t in emu.jobs[job_id]["tasks"]] == ["main", "second"]
    assert call(emu, "POST", "/api/2.2/jobs/update", {"job_id": job_id,
                                                      "fields_to_remove": ["schedule", "tasks/second"]})[0] == 200
    assert "schedule" not in emu.jobs[job_id] and len(emu.jobs[job_id]["tasks"]) == 1
    refused(call(emu, "POST", "/api/2.2/jobs/update", {"job_id": job_id, "new_settings": {"shedule": schedule}}),
            400, "MALFORMED_REQUEST", "shedule")
    refused(call(emu, "POST", "/api/2.2/jobs/reset", {"job_id": job_id}), 400, "INVALID_PARAMETER_VALUE",
            "new_settings")


def test_run_now_refuses_undefined_job_parameters(emu, w):
    job_id = create_job(emu)
    refused(call(emu, "POST", "/api/2.2/jobs/run-now", {"job_id": job_id, "job_parameters": {"colour": "red"}}),
            400, "INVALID_PARAMETER_VALUE", "colour")
    run_id = w.jobs.run_now(job_id, job_parameters={"day": "2016-02-01"}).response.run_id
    assert emu.runs[run_id].parameters == {"day": "2016-02-01"}


def test_run_now_with_the_same_idempotency_token_returns_the_first_run(emu, w):
    job_id = create_job(emu)
    emu.jobs[job_id]["max_concurrent_runs"] = 5
    first = w.jobs.run_now(job_id, idempotency_token="t-1").response.run_id
    assert w.jobs.run_now(job_id, idempotency_token="t-1").response.run_id == first
    assert w.jobs.run_now(job_id, idempotency_token="t-2").response.run_id != first
    assert len(emu.runs) == 2
    refused(call(emu, "POST", "/api/2.2/jobs/run-now", {"job_id": job_id, "idempotency_token": "x" * 65}),
            400, "INVALID_PARAMETER_VALUE", "64")


def test_a_request_applied_and_then_unanswered_is_sent_again_by_the_sdk(emu, w):
    emu.drop_after_apply("POST", "/api/2.2/jobs/create")
    w.jobs.create(**{k: v for k, v in JobSettings.from_dict(job_settings()).__dict__.items()
                     if k in ("name", "tasks", "parameters")})
    assert len(emu.calls("POST", "/api/2.2/jobs/create")) == 2 and len(emu.jobs) == 2  # no token: two jobs


def states(w, run_id, n):
    return [w.jobs.get_run(run_id).status.state.value for _ in range(n)]


def test_runs_go_through_their_life_cycle_and_queue_behind_max_concurrent_runs(emu, w):
    job_id = create_job(emu, tasks=[{"task_key": "train", "existing_cluster_id": "0101-x",
                                     "notebook_task": {"notebook_path": "/Shared/nb"}}])
    first = w.jobs.run_now(job_id).response.run_id
    second = w.jobs.run_now(job_id).response.run_id
    assert states(w, second, 2) == ["QUEUED", "QUEUED"]
    assert states(w, first, 3) == ["PENDING", "RUNNING", "TERMINATED"]
    assert states(w, second, 3) == ["PENDING", "RUNNING", "TERMINATED"]
    assert [t.task_key for t in w.jobs.get_run(first).tasks] == ["train"]


def test_without_a_queue_a_run_over_the_limit_is_skipped(emu, w):
    job_id = create_job(emu, queue={"enabled": False})
    w.jobs.run_now(job_id)
    skipped = w.jobs.run_now(job_id).response.run_id
    run = w.jobs.get_run(skipped)
    assert (run.state.life_cycle_state.value, run.state.result_state.value) == (
        "SKIPPED", "MAXIMUM_CONCURRENT_RUNS_REACHED")
    assert (run.status.state.value, run.status.termination_details.code.value) == (
        "TERMINATED", "MAX_CONCURRENT_RUNS_EXCEEDED")
    assert run.status.termination_details.message == ("Skipping this run because the limit of 1 maximum concurrent "
                                                      "runs has been reached.")


@pytest.mark.parametrize("result, code, kind", [
    ("SUCCESS", "SUCCESS", "SUCCESS"), ("FAILED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
    ("SUCCESS_WITH_FAILURES", "SUCCESS_WITH_FAILURES", "SUCCESS"), ("TIMEDOUT", "CANCELED", "CLIENT_ERROR"),
    ("CANCELED", "USER_CANCELED", "SUCCESS")])
def test_a_run_ends_with_the_result_state_and_termination_code_the_jobs_api_gives(emu, w, result, code, kind):
    emu.next_run_script = [f"TERMINATED:{result}"]
    run = w.jobs.get_run(w.jobs.run_now(create_job(emu)).response.run_id)
    assert (run.state.life_cycle_state.value, run.state.result_state.value) == ("TERMINATED", result)
    details = run.status.termination_details
    assert (run.status.state.value, details.code.value, details.type.value) == ("TERMINATED", code, kind)


def test_a_script_must_end_a_run_as_the_jobs_api_can(emu):
    with pytest.raises(ValueError, match="'TERMINATED:PARTLY' is not a run state the Jobs API has"):
        emu.next_run_script = ["TERMINATED:PARTLY"]


def test_a_repaired_run_can_read_as_before_its_repair_for_a_while(emu, w):
    emu.next_run_script = ["TERMINATED:FAILED"]
    run_id = w.jobs.run_now(create_job(emu)).response.run_id
    emu.next_run_script, emu.stale_reads_after_repair = ["RUNNING", "TERMINATED:SUCCESS"], 2
    repair_id = w.jobs.repair_run(run_id, rerun_all_failed_tasks=True).response.repair_id
    for _ in range(2):  # as before the repair, history and all
        run = w.jobs.get_run(run_id, include_history=True)
        assert run.state.result_state.value == "FAILED" and [h.id for h in run.repair_history] == [run_id]
    run = w.jobs.get_run(run_id, include_history=True)
    assert run.state.life_cycle_state.value == "RUNNING"
    assert [(h.id, h.state.life_cycle_state.value) for h in run.repair_history] == [
        (run_id, "TERMINATED"), (repair_id, "RUNNING")]
    assert run.repair_history[0].state.result_state.value == "FAILED"
    assert w.jobs.get_run(run_id).state.result_state.value == "SUCCESS"


def test_a_host_that_is_not_a_workspace_answers_an_html_404_the_sdk_reads_as_not_found(emu, w):
    emu.not_databricks = True
    status, body = call(emu, "GET", "/api/2.2/jobs/list")
    assert status == 404 and body.startswith(b"<html>") and b"<title>404 Not Found</title>" in body
    with pytest.raises(NotFound) as excinfo:
        list(w.jobs.list())
    assert (excinfo.value.error_code, str(excinfo.value)) == ("NOT_FOUND", "404 Not Found")


def test_internal_error_ends_a_run(emu, w):
    emu.next_run_script = ["PENDING", "INTERNAL_ERROR"]
    run_id = w.jobs.run_now(create_job(emu)).response.run_id
    states(w, run_id, 2)
    run = w.jobs.get_run(run_id)
    assert (run.state.life_cycle_state.value, run.status.termination_details.code.value) == (
        "INTERNAL_ERROR", "INTERNAL_ERROR")


def test_repair_needs_a_finished_failed_run_and_the_latest_repair_id(emu, w):
    emu.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    run_id = w.jobs.run_now(create_job(emu)).response.run_id
    refused(call(emu, "POST", "/api/2.2/jobs/runs/repair", {"run_id": run_id, "rerun_all_failed_tasks": True}),
            400, "INVALID_STATE", "RUNNING")
    states(w, run_id, 2)
    first = w.jobs.repair_run(run_id, rerun_all_failed_tasks=True).response.repair_id
    emu.finish_active_runs("FAILED")
    refused(call(emu, "POST", "/api/2.2/jobs/runs/repair", {"run_id": run_id, "rerun_all_failed_tasks": True}),
            400, "INVALID_PARAMETER_VALUE", "latest_repair_id")
    w.jobs.repair_run(run_id, rerun_all_failed_tasks=True, latest_repair_id=first)
    emu.finish_active_runs("SUCCESS")
    history = w.jobs.get_run(run_id, include_history=True).repair_history
    assert [h.type.value for h in history] == ["ORIGINAL", "REPAIR", "REPAIR"]
    refused(call(emu, "POST", "/api/2.2/jobs/runs/repair", {
        "run_id": run_id, "rerun_all_failed_tasks": True, "latest_repair_id": history[-1].id}),
        400, "INVALID_PARAMETER_VALUE", "no tasks to repair")


def test_get_output_refuses_a_multi_task_parent_run(emu, w):
    job_id = create_job(emu, tasks=[
        {"task_key": key, "existing_cluster_id": "0101-x", "notebook_task": {"notebook_path": "/Shared/nb"}}
        for key in ("a", "b")])
    run_id = w.jobs.run_now(job_id).response.run_id
    refused(call(emu, "GET", "/api/2.2/jobs/runs/get-output", query={"run_id": run_id}),
            400, "INVALID_PARAMETER_VALUE", "multiple tasks")
    emu.finish_active_runs()
    task_run = w.jobs.get_run(run_id).tasks[0].run_id
    assert json.loads(w.jobs.get_run_output(task_run).notebook_output.result) == {"status": "SUCCESS"}


# --- DBFS and the Files API --------------------------------------------------------------------------------

def test_dbfs_limits_overwrite_and_no_volumes(emu, w):
    big = base64.b64encode(b"x" * ((1 << 20) + 1)).decode()
    handle = call(emu, "POST", "/api/2.0/dbfs/create", {"path": "/FileStore/a.whl"})[1]["handle"]
    refused(call(emu, "POST", "/api/2.0/dbfs/add-block", {"handle": handle, "data": big}),
            400, "MAX_BLOCK_SIZE_EXCEEDED")
    import io

    w.dbfs.upload("/FileStore/b.bin", io.BytesIO(b"y" * (3 << 20)), overwrite=True)
    assert emu.dbfs["/FileStore/b.bin"] == b"y" * (3 << 20)
    refused(call(emu, "GET", "/api/2.0/dbfs/read", query={"path": "/FileStore/b.bin", "length": (1 << 20) + 1}),
            400, "MAX_READ_SIZE_EXCEEDED")
    assert base64.b64decode(w.dbfs.read("/FileStore/b.bin", length=1 << 20).data) == b"y" * (1 << 20)
    refused(call(emu, "POST", "/api/2.0/dbfs/create", {"path": "/FileStore/b.bin"}),
            400, "RESOURCE_ALREADY_EXISTS")
    refused(call(emu, "POST", "/api/2.0/dbfs/put", {"path": VOLUME + "/a.whl", "contents": ""}),
            400, "INVALID_PARAMETER_VALUE", "Files API")


def test_files_api_only_under_existing_volumes_with_overwrite_semantics(emu, w):
    import io

    refused(call(emu, "PUT", "/api/2.0/fs/files/FileStore/a.whl", data=b"x"), 400, "INVALID_PARAMETER_VALUE",
            "/Volumes")
    refused(call(emu, "PUT", "/api/2.0/fs/files/Volumes/main/taxi_fares/nope/a.whl", data=b"x"), 404, "NOT_FOUND")
    w.files.upload(VOLUME + "/a.whl", io.BytesIO(b"one"))
    with pytest.raises(ResourceConflict) as excinfo:
        w.files.upload(VOLUME + "/a.whl", io.BytesIO(b"two"), overwrite=False)
    assert "already exists" in str(excinfo.value)
    w.files.upload(VOLUME + "/a.whl", io.BytesIO(b"two"), overwrite=True)
    assert w.files.download(VOLUME + "/a.whl").contents.read() == b"two"
    with pytest.raises(NotFound):
        w.files.download(VOLUME + "/missing.whl").contents.read()


# --- MLflow experiments ------------------------------------------------------------------------------------

def test_experiments_have_a_lifecycle_stage_and_names_are_unique(emu, w):
    experiment_id = w.experiments.create_experiment("/Shared/exp").experiment_id
    with pytest.raises(ResourceAlreadyExists):
        w.experiments.create_experiment("/Workspace/Shared/exp")
    w.experiments.delete_experiment(experiment_id)
    assert w.experiments.get_by_name("/Shared/exp").experiment.lifecycle_stage == "deleted"
    with pytest.raises(ResourceAlreadyExists):
        w.experiments.create_experiment("/Shared/exp")
    w.experiments.restore_experiment(experiment_id)
    assert w.experiments.get_experiment(experiment_id).experiment.lifecycle_stage == "active"
    with pytest.raises(ResourceDoesNotExist):
        w.experiments.get_by_name("/Shared/other")


def test_a_run_job_task_must_start_an_existing_job(emu):
    runs_job = {"task_key": "start", "run_job_task": {"job_id": 424242}}
    refused(call(emu, "POST", "/api/2.2/jobs/create", job_settings(tasks=[runs_job])), 400,
            "INVALID_PARAMETER_VALUE", "Task start runs job 424242, which does not exist")
    status, created = call(emu, "POST", "/api/2.2/jobs/create", job_settings())
    assert status == 200
    status, _ = call(emu, "POST", "/api/2.2/jobs/create",
                     job_settings(name="starter", tasks=[{"task_key": "start",
                                                          "run_job_task": {"job_id": created["job_id"]}}]))
    assert status == 200


MODEL_TRIGGER = {"condition": "MODEL_VERSION_READY", "securable_name": "staging.taxi_fares.taxi_fares",
                 "min_time_between_triggers_seconds": 60, "wait_after_last_change_seconds": 60}


@pytest.mark.parametrize("model, other, words", [
    ({"condition": "MODEL_VERSION_UPDATED"}, {}, ("'trigger.model.condition'", "MODEL_VERSION_READY")),
    ({"condition": None}, {}, ("trigger.model.condition",)),
    ({"aliases": ["champion"]}, {}, ("trigger.model.aliases: only with condition MODEL_ALIAS_SET",)),
    ({"condition": "MODEL_ALIAS_SET"}, {}, ("trigger.model.aliases: condition MODEL_ALIAS_SET needs",)),
    ({"condition": "MODEL_ALIAS_SET", "aliases": [f"a{i}" for i in range(11)]}, {},
     ("trigger.model.aliases: at most 10 aliases (got 11)",)),
    ({"min_time_between_triggers_seconds": 59}, {}, ("trigger.model.min_time_between_triggers_seconds: must be at "
                                                     "least 60 (got 59)",)),
    ({"wait_after_last_change_seconds": 30}, {}, ("trigger.model.wait_after_last_change_seconds",)),
    ({"securable_name": "taxi_fares"}, {}, ("trigger.model.securable_name: 'taxi_fares' is not a Unity Catalog",)),
    ({"securable_name": "a.b.c.d"}, {}, ("trigger.model.securable_name",)),
    ({}, {"periodic": {"interval": 1, "unit": "HOURS"}}, ("trigger: at most one of", "periodic, model")),
    ({}, {"table_update": {"table_names": ["main.s.t"]}}, ("trigger: at most one of", "table_update, model")),
    ({}, {"schedule": {"quartz_cron_expression": "0 0 3 ? * SUN", "timezone_id": "UTC"}},
     ("schedule: a job has one of schedule, trigger and continuous",)),
])
def test_malformed_model_triggers_are_refused_naming_the_field(emu, model, other, words):
    other = dict(other)
    beside = {k: other.pop(k) for k in ("schedule",) if k in other}
    trigger = {"model": {k: v for k, v in {**MODEL_TRIGGER, **model}.items() if v is not None}, **other}
    refused(call(emu, "POST", "/api/2.2/jobs/create", job_settings(trigger=trigger, **beside)), 400,
            "INVALID_PARAMETER_VALUE", *words)
    assert emu.jobs == {}


def test_model_triggers_the_api_takes_are_accepted_on_create_and_reset(emu, w):
    """The deployment job's trigger, an alias trigger with ten aliases and a schema-level one; a reset that breaks
    the trigger is refused and leaves the job as it was."""
    status, created = call(emu, "POST", "/api/2.2/jobs/create", job_settings(trigger={"model": MODEL_TRIGGER}))
    assert status == 200
    aliases = {"condition": "MODEL_ALIAS_SET", "aliases": [f"a{i}" for i in range(10)], "securable_name": "main.s"}
    assert call(emu, "POST", "/api/2.2/jobs/reset", {"job_id": created["job_id"], "new_settings": job_settings(
        trigger={"pause_status": "PAUSED", "model": aliases})})[0] == 200
    refused(call(emu, "POST", "/api/2.2/jobs/reset", {"job_id": created["job_id"], "new_settings": job_settings(
        trigger={"model": {**MODEL_TRIGGER, "min_time_between_triggers_seconds": 1}})}), 400,
        "INVALID_PARAMETER_VALUE", "trigger.model.min_time_between_triggers_seconds")
    assert emu.jobs[created["job_id"]]["trigger"]["model"] == aliases
    assert w.jobs.get(created["job_id"]).settings.trigger.model.aliases == aliases["aliases"]
