"""mlops deploy / run / runs / repair / schedule against a real local HTTP server playing the workspace.

The tests assert on the exact requests the tool sends (paths and bodies), not only on exit codes.
"""
import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from databricks.sdk.service.jobs import JobSettings

from fakes.databricks_workspace import TEST_TOKEN as TOKEN
from orchestrator import build
from orchestrator.cli import main
from orchestrator.paths import DIST_DIR, REPO_ROOT, project_version
from orchestrator.templates import JOBS, load_template

VERSION = project_version()
ROOT = "/Workspace/Shared/taxi_fares/staging"
# every job the templates define, by name: what deploy creates
JOB_NAMES = sorted(load_template(job)["name"] for job in JOBS)
# every notebook deploy imports: the jobs' and the notebook tests'
NOTEBOOKS = [f"{ROOT}/orchestrator/notebooks/{name}" for name in ("batch_score", "deploy", "monitor", "scoring_stream",
                                                                  "train")] + [
    f"{ROOT}/tests/notebooks/{name}" for name in ("test_batch_score", "test_monitor", "test_train")]
WHEELS = f"/Volumes/staging/taxi_fares/wheels/{VERSION}"


def dry_run_plan(mlops):
    code, out, _ = mlops("deploy", "--target", "staging", "--dry-run")
    assert code == 0
    return json.loads(out)


def test_dry_run_calls_nothing_and_round_trips_through_jobsettings(workspace, mlops):
    code, out, _ = mlops("deploy", "--target", "staging", "--dry-run")
    assert code == 0
    plan = json.loads(out)
    assert workspace.requests == []
    assert sorted(plan["jobs"]) == JOB_NAMES
    for settings in plan["jobs"].values():
        assert JobSettings.from_dict(settings).as_dict() == settings
    assert [u["destination"] for u in plan["uploads"]][:2] == [
        f"{WHEELS}/taxi_fares-{VERSION}-py3-none-any.whl", f"{WHEELS}/taxi_fares_mlops-{VERSION}-py3-none-any.whl"]


def test_first_deploy_uploads_imports_creates(workspace, mlops):
    plan = dry_run_plan(mlops)
    expected_jobs = plan["jobs"]
    code, out, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    puts = [r.path for r in workspace.calls("PUT", "/api/2.0/fs/files/")]
    assert puts == [f"/api/2.0/fs/files{WHEELS}/taxi_fares-{VERSION}-py3-none-any.whl",
                    f"/api/2.0/fs/files{WHEELS}/taxi_fares_mlops-{VERSION}-py3-none-any.whl",
                    f"/api/2.0/fs/files{WHEELS}/SHA256SUMS"]
    wheel = DIST_DIR / f"taxi_fares-{VERSION}-py3-none-any.whl"
    assert workspace.files[f"{WHEELS}/{wheel.name}"] == wheel.read_bytes()
    assert workspace.files[f"{WHEELS}/SHA256SUMS"].decode().split()[0] == build.sha256(wheel)

    imports = [r.json() for r in workspace.calls("POST", "/api/2.0/workspace/import")]
    assert sorted(i["path"] for i in imports) == NOTEBOOKS
    for body in imports:
        assert (body["format"], body["language"], body["overwrite"]) == ("SOURCE", "PYTHON", True)
    train = next(i for i in imports if i["path"].endswith("/train"))
    assert base64.b64decode(train["content"]) == (REPO_ROOT / "orchestrator/notebooks/train.py").read_bytes()

    assert [r.json() for r in workspace.calls("POST", "/api/2.0/mlflow/experiments/create")] == [
        {"name": "/Shared/taxi_fares/experiments/staging"}]
    created = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/create")]
    training_id = next(i for i, s in workspace.jobs.items() if s["name"] == "taxi_fares_training")
    for task in expected_jobs["taxi_fares_monitoring"]["tasks"]:  # the plan cannot know the id yet
        if "run_job_task" in task:
            assert task["run_job_task"]["job_id"] == 0
            task["run_job_task"]["job_id"] = training_id
    # the create request is the job's settings and its access list (the one create field that is not a setting)
    assert {c["name"]: c.pop("access_control_list") for c in created} == plan["permissions"]
    assert {c["name"]: c for c in created} == expected_jobs
    for job_id, settings in workspace.jobs.items():
        assert f"job {settings['name']}: created {job_id}  {workspace.url}/jobs/{job_id}" in err


def test_redeploy_of_the_same_version_uploads_nothing_and_keeps_one_job_per_name(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    jobs_before = dict(workspace.jobs)
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0
    assert workspace.uploads() == []
    assert "wheels " + VERSION + ": unchanged, nothing uploaded" in err
    assert f"notebooks: 0 imported, {len(NOTEBOOKS)} unchanged" in err
    assert workspace.calls("POST", "/api/2.2/jobs/create") == []
    resets = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/reset")]
    assert sorted(r["job_id"] for r in resets) == sorted(jobs_before)
    assert workspace.jobs == jobs_before
    assert sorted(s["name"] for s in workspace.jobs.values()) == JOB_NAMES


def test_version_bump_uploads_to_a_new_folder_and_resets_the_jobs(workspace, mlops, tmp_path):
    assert mlops("deploy", "--target", "staging")[0] == 0
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in build.wheel_names("9.9.9"):
        shutil.copy(DIST_DIR / name.replace("9.9.9", VERSION), dist / name)
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging", "--version", "9.9.9", "--dist", str(dist))
    assert code == 0, err
    puts = [r.path for r in workspace.calls("PUT", "/api/2.0/fs/files/")]
    assert puts == [f"/api/2.0/fs/files/Volumes/staging/taxi_fares/wheels/9.9.9/{n}"
                    for n in (*build.wheel_names("9.9.9"), "SHA256SUMS")]
    assert workspace.calls("POST", "/api/2.0/workspace/import") == []
    for reset in workspace.calls("POST", "/api/2.2/jobs/reset"):
        task = reset.json()["new_settings"]["tasks"][0]  # the wheels are the notebook task's base parameters
        assert task["notebook_task"]["base_parameters"]["wheel_version"] == "9.9.9"


def test_a_version_without_wheels_is_refused(workspace, mlops, tmp_path):
    code, _, err = mlops("deploy", "--target", "staging", "--version", "7.0.0", "--dist", str(tmp_path))
    assert code == 2
    assert "lacks taxi_fares-7.0.0-py3-none-any.whl" in err
    assert workspace.requests == []


def test_legacy_dbfs_wheels(workspace, mlops, tmp_path, monkeypatch):
    targets = workspace.targets_file.read_text().replace(
        "/Volumes/staging/taxi_fares/wheels", "dbfs:/FileStore/taxi_fares/wheels")
    (tmp_path / "targets.yml").write_text(targets)
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    assert mlops("deploy", "--target", "staging")[0] == 0
    closed = [r.json()["handle"] for r in workspace.calls("POST", "/api/2.0/dbfs/close")]
    assert len(closed) == 3
    assert f"/FileStore/taxi_fares/wheels/{VERSION}/SHA256SUMS" in workspace.dbfs
    workspace.requests.clear()
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert workspace.uploads() == []


def deployed(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    return {s["name"]: job_id for job_id, s in workspace.jobs.items()}


def test_a_run_that_succeeds_passes_parameters_and_prints_the_summary(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.next_run_output = json.dumps({"job": "training", "status": "SUCCESS", "mlflow_run_id": "abc"})
    code, out, err = mlops("run", "training", "--target", "staging", "--param", "max_iter=5",
                           "--param", "execute_feature_engineering=false")
    assert code == 0, err
    run_now = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/run-now")]
    assert len(run_now) == 1 and run_now[0].pop("idempotency_token")  # a resent run-now returns this run
    assert run_now == [{"job_id": jobs["taxi_fares_training"],
                        "job_parameters": {"max_iter": "5", "execute_feature_engineering": "false"}}]
    assert "PENDING" in err and "RUNNING" in err and "TERMINATED SUCCESS" in err
    assert f"/jobs/{jobs['taxi_fares_training']}/runs/" in err
    assert '"mlflow_run_id": "abc"' in out


def test_json_output_is_only_the_summary(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_output = json.dumps({"status": "SUCCESS", "rows": 3})
    code, out, _ = mlops("run", "batch_scoring", "--target", "staging", "--json")
    assert code == 0
    assert json.loads(out) == {"status": "SUCCESS", "rows": 3}


def test_a_run_that_fails_exits_non_zero_with_the_message(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["PENDING", "RUNNING", "TERMINATED:FAILED"]
    workspace.next_run_error = ("StageError: stage 'batch_scoring' failed: RegistryError: model 'taxi_fares' has no "
                                "alias 'champion'")
    code, out, err = mlops("run", "batch_scoring", "--target", "staging")
    assert code == 1
    assert "TERMINATED RUN_EXECUTION_ERROR" in err
    assert "stage 'batch_scoring' failed: RegistryError: model 'taxi_fares' has no alias 'champion'" in out + err
    assert "did not succeed" in err


def test_repair_reruns_failed_tasks_with_new_parameters(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    assert mlops("run", "batch_scoring", "--target", "staging")[0] == 1
    run_id = next(iter(workspace.runs))
    workspace.next_run_script = ["RUNNING", "TERMINATED:SUCCESS"]
    workspace.next_run_error = None
    code, _, err = mlops("repair", str(run_id), "--target", "staging", "--param", "model_version=3")
    assert code == 0, err
    assert [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/runs/repair")] == [
        {"run_id": run_id, "rerun_all_failed_tasks": True, "job_parameters": {"model_version": "3"}}]
    assert f"run {run_id} succeeded" in err


def test_runs_lists_recent_runs(workspace, mlops):
    deployed(workspace, mlops)
    mlops("run", "training", "--target", "staging")
    code, out, _ = mlops("runs", "training", "--target", "staging")
    assert code == 0
    run_id = next(iter(workspace.runs))
    assert any(line.split()[:3] == [str(run_id), "TERMINATED", "SUCCESS"] for line in out.splitlines())


def test_schedule_pause_and_unpause(workspace, mlops):
    jobs = deployed(workspace, mlops)
    code, out, _ = mlops("schedule", "training", "--target", "staging", "--unpause")
    assert code == 0 and "schedule UNPAUSED" in out
    update = workspace.calls("POST", "/api/2.2/jobs/update")[0].json()
    assert update["job_id"] == jobs["taxi_fares_training"]
    assert update["new_settings"]["schedule"] == {"quartz_cron_expression": "0 0 3 ? * SUN", "timezone_id": "UTC",
                                                  "pause_status": "UNPAUSED"}
    assert workspace.jobs[jobs["taxi_fares_training"]]["schedule"]["pause_status"] == "UNPAUSED"


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_unavailability_are_retried(workspace, mlops, status):
    workspace.fail("GET", "/api/2.2/jobs/list", status, times=1, retry_after=1)
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    # one refused, then per job one before its create and one after (a create the SDK sent twice left two)
    assert len(workspace.calls("GET", "/api/2.2/jobs/list")) == 1 + 2 * len(JOBS)
    assert len(workspace.jobs) == len(JOBS)


def test_401_names_authentication(workspace, mlops):
    workspace.fail("GET", "/api/2.0/fs/files/", 401, times=5, message="Invalid access token.")
    workspace.fail("POST", "/api/2.0/fs/create-download-url", 401, times=5, message="Invalid access token.")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 3
    assert f"authentication failed at {workspace.url}" in err and "DATABRICKS_TOKEN" in err


def test_403_names_the_permission_and_the_operation(workspace, mlops):
    workspace.fail("POST", "/api/2.2/jobs/create", 403, message="User is not allowed to create jobs")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 3
    assert "permission denied" in err and "create or reset job taxi_fares_training (403)" in err
    assert "User is not allowed to create jobs" in err


def test_unknown_target_and_undeployed_job(workspace, mlops, capsys):
    code, _, err = mlops("deploy", "--target", "qa")
    assert code == 2 and "unknown target 'qa' (targets: local, dev, staging, prod)" in err
    code, _, err = mlops("run", "training", "--target", "staging")
    assert code == 2 and "no job named 'taxi_fares_training'" in err and "deploy it first" in err
    with pytest.raises(SystemExit):
        main(["run", "scoring", "--target", "staging"])
    assert "invalid choice: 'scoring'" in capsys.readouterr().err


def test_unknown_run_parameter_is_refused_before_starting(workspace, mlops):
    deployed(workspace, mlops)
    code, _, err = mlops("run", "training", "--target", "staging", "--param", "colour=red")
    assert code == 2 and "unknown parameter(s) colour" in err
    assert workspace.calls("POST", "/api/2.2/jobs/run-now") == []


def test_the_token_never_appears_in_output_or_request_bodies(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    mlops("run", "training", "--target", "staging")
    workspace.fail("GET", "/api/2.2/jobs/list", 401, times=3)
    mlops("run", "training", "--target", "staging")
    assert all(TOKEN not in text for text in mlops.printed)
    for request in workspace.requests:
        body = request.body if isinstance(request.body, bytes) else json.dumps(request.body or {}).encode()
        assert TOKEN.encode() not in body, request.path
        assert TOKEN not in request.path and TOKEN not in json.dumps(request.query)
    # The token travels only where it belongs: the Authorization header of API calls.
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in workspace.calls(path_prefix="/api/"))


def test_notebook_tests_on_a_target_run_nutter_on_the_deployed_notebooks(mlops):
    import shlex

    code, out, _ = mlops("test-notebooks", "--target", "staging", "--cluster-id", "0101-abc", "--dry-run")
    assert code == 0
    command = shlex.split(out)
    assert command[:4] == ["nutter", "run", f"{ROOT}/tests/notebooks/test_*", "0101-abc"]
    assert {"--recursive", "--junit_report"} <= set(command)
    params = json.loads(command[command.index("--notebook_params") + 1])
    assert params == {
        "orchestrator_path": f"{ROOT}/orchestrator/notebooks",
        "wheel_base_path": "/Volumes/staging/taxi_fares/wheels", "wheel_version": VERSION,
        "lakehouse_root": "/Volumes/staging/taxi_fares/lakehouse/notebook_tests",
        "mlflow_experiment": "/Shared/taxi_fares/experiments/staging_notebook_tests",
        "model_name": "staging.taxi_fares.taxi_fares_notebook_tests",
    }


# --- what a real workspace refuses (each of these failed against the strict emulator before its fix) -------------

def write_targets(tmp_path, monkeypatch, old, new):
    targets = (Path(os.environ["MLOPS_TARGETS_FILE"])).read_text()  # the workspace fixture's: hosts = emulator
    assert old in targets
    (tmp_path / "targets.yml").write_text(targets.replace(old, new))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))


@pytest.mark.parametrize("experiment", ["/Shared/taxi_fares/staging", "/Shared/taxi_fares/staging/mlflow",
                                        "/Workspace/Shared/taxi_fares", "taxi_fares"])
def test_an_experiment_path_overlapping_the_notebook_folder_is_refused_before_any_request(
        workspace, mlops, tmp_path, monkeypatch, experiment):
    write_targets(tmp_path, monkeypatch, "mlflow_experiment: /Shared/taxi_fares/experiments/staging",
                  f"mlflow_experiment: {experiment}")
    code, _, err = mlops("deploy", "--target", "staging", "--dry-run")
    assert code == 2
    assert f"mlflow_experiment '{experiment}'" in err
    assert workspace.requests == []


def test_the_default_experiment_lands_beside_the_notebooks_not_on_them(workspace, mlops):
    deployed(workspace, mlops)
    experiment = workspace.experiment_named("/Shared/taxi_fares/experiments/staging")
    assert experiment is not None and experiment.lifecycle_stage == "active"
    assert workspace.objects["/Shared/taxi_fares/staging"].object_type == "DIRECTORY"


def test_an_unpaused_schedule_survives_redeploys_unless_reset(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.requests.clear()
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert workspace.uploads() == []
    assert mlops("schedule", "training", "--target", "staging", "--unpause")[0] == 0
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert workspace.uploads() == []
    training = jobs["taxi_fares_training"]
    assert workspace.jobs[training]["schedule"]["pause_status"] == "UNPAUSED"
    assert workspace.jobs[jobs["taxi_fares_batch_scoring"]]["schedule"]["pause_status"] == "PAUSED"
    assert "keeping its schedule UNPAUSED" in err
    assert mlops("deploy", "--target", "staging", "--reset-schedule")[0] == 0
    assert workspace.jobs[training]["schedule"]["pause_status"] == "PAUSED"


def test_repairing_the_same_run_twice_sends_the_latest_repair_id(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    assert mlops("run", "batch_scoring", "--target", "staging")[0] == 1
    run_id = next(iter(workspace.runs))
    assert mlops("repair", str(run_id), "--target", "staging")[0] == 1  # the repair fails again
    workspace.next_run_script = ["RUNNING", "TERMINATED:SUCCESS"]
    code, _, err = mlops("repair", str(run_id), "--target", "staging", "--param", "model_version=3")
    assert code == 0, err
    first, second = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/runs/repair")]
    assert "latest_repair_id" not in first
    assert second["latest_repair_id"] == workspace.runs[run_id].repairs[0]


def test_a_running_or_successful_run_is_not_sent_for_repair(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "RUNNING", "RUNNING", "TERMINATED:SUCCESS"]
    code, out, _ = mlops("run", "training", "--target", "staging", "--no-wait")
    run_id = int(out.strip())
    code, _, err = mlops("repair", str(run_id), "--target", "staging")
    assert code == 2 and f"run {run_id} is still" in err and "wait for it to end" in err
    workspace.finish_active_runs("SUCCESS")
    code, _, err = mlops("repair", str(run_id), "--target", "staging")
    assert code == 2 and "no failed tasks to repair" in err
    assert workspace.calls("POST", "/api/2.2/jobs/runs/repair") == []


def test_dbfs_wheels_are_installed_from_the_fuse_path_a_cluster_reads(workspace, mlops, tmp_path, monkeypatch):
    write_targets(tmp_path, monkeypatch, "wheel_base_path: /Volumes/staging/taxi_fares/wheels",
                  "wheel_base_path: dbfs:/FileStore/taxi_fares/wheels")
    jobs = deployed(workspace, mlops)
    assert f"/FileStore/taxi_fares/wheels/{VERSION}/taxi_fares-{VERSION}-py3-none-any.whl" in workspace.dbfs
    for job_id in jobs.values():
        params = workspace.jobs[job_id]["tasks"][0]["notebook_task"]["base_parameters"]
        assert params["wheel_base_path"] == "/dbfs/FileStore/taxi_fares/wheels"
    code, out, _ = mlops("test-notebooks", "--target", "staging", "--cluster-id", "0101-abc", "--dry-run")
    assert '"wheel_base_path": "/dbfs/FileStore/taxi_fares/wheels"' in out


def test_runs_asks_for_no_more_rows_than_it_prints(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.jobs[jobs["taxi_fares_training"]]["max_concurrent_runs"] = 100
    for _ in range(40):
        assert mlops("run", "training", "--target", "staging", "--no-wait")[0] == 0
    workspace.requests.clear()
    code, out, _ = mlops("runs", "training", "--target", "staging", "--limit", "3")
    assert code == 0 and len(out.strip().splitlines()) == 1 + 3
    assert [r.query["limit"] for r in workspace.calls("GET", "/api/2.2/jobs/runs/list")] == ["3"]
    workspace.requests.clear()
    code, out, _ = mlops("runs", "training", "--target", "staging", "--limit", "30")
    assert code == 0 and len(out.strip().splitlines()) == 1 + 30
    assert [r.query.get("page_token") for r in workspace.calls("GET", "/api/2.2/jobs/runs/list")] == [None, "25"]


def test_a_trashed_experiment_is_restored(workspace, mlops):
    deployed(workspace, mlops)
    experiment = workspace.experiment_named("/Shared/taxi_fares/experiments/staging")
    experiment.lifecycle_stage = "deleted"
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert experiment.lifecycle_stage == "active" and "was in the trash, restored" in err
    assert len(workspace.calls("POST", "/api/2.0/mlflow/experiments/create")) == 1


def test_a_wrong_endpoint_is_not_read_as_not_created_yet(workspace, mlops):
    workspace.fail("GET", "/api/2.0/mlflow/experiments/get-by-name", 404, message="No API found",
                   error_code="ENDPOINT_NOT_FOUND")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 3 and "ENDPOINT_NOT_FOUND" in err and "workspace URL" in err
    assert workspace.calls("POST", "/api/2.0/mlflow/experiments/create") == []


def test_a_serverless_target_deploys_jobs_the_workspace_accepts(workspace, mlops, tmp_path, monkeypatch):
    write_targets(tmp_path, monkeypatch, "    table_schema: staging.taxi_fares\n",
                  "    table_schema: staging.taxi_fares\n    compute: serverless\n")
    jobs = deployed(workspace, mlops)
    for job_id in jobs.values():
        settings = workspace.jobs[job_id]
        assert "job_clusters" not in settings
        # notebook tasks run in the environment; condition and run-job tasks run on no compute of the job's
        assert {t.get("environment_key") for t in settings["tasks"] if "notebook_task" in t} == {"taxi_fares"}
        assert not any("environment_key" in t for t in settings["tasks"] if "notebook_task" not in t)
        assert settings["environments"][0]["spec"]["dependencies"] == [
            f"{WHEELS}/taxi_fares-{VERSION}-py3-none-any.whl", f"{WHEELS}/taxi_fares_mlops-{VERSION}-py3-none-any.whl"]


@pytest.mark.parametrize("expected, meaning", [(0, "success"), (1, "job failed"), (2, "usage or configuration"),
                                               (3, "remote service"), (4, "run stopped"), (5, "run skipped")])
def test_each_documented_exit_code(workspace, mlops, expected, meaning):
    from orchestrator.errors import EXIT_CODES

    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5}
    jobs = deployed(workspace, mlops)
    if expected == 4:
        workspace.next_run_script = ["RUNNING", "TERMINATED:TIMEDOUT"]
        code, _, err = mlops("run", "training", "--target", "staging")
    elif expected == 5:  # without a queue, a run over max_concurrent_runs is skipped
        workspace.jobs[jobs["taxi_fares_training"]]["queue"] = {"enabled": False}
        workspace.next_run_script = ["RUNNING"] * 50 + ["TERMINATED:SUCCESS"]
        assert mlops("run", "training", "--target", "staging", "--no-wait")[0] == 0
        code, _, err = mlops("run", "training", "--target", "staging")
    elif expected == 0:
        code, _, err = mlops("run", "training", "--target", "staging")
    elif expected == 1:
        workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
        code, _, err = mlops("run", "training", "--target", "staging")
    elif expected == 2:
        code, _, err = mlops("run", "training", "--target", "staging", "--param", "colour")
        assert "--param 'colour' is not of the form name=value" in err
    else:
        workspace.fail("GET", "/api/2.2/jobs/list", 403, message="not allowed to list jobs")
        code, _, err = mlops("run", "training", "--target", "staging")
        assert "not allowed to list jobs" in err
    assert code == expected, err


def test_the_monitoring_job_starts_the_deployed_training_job(workspace, mlops):
    """Its run_job_task names the training job by the id the deploy just got (the emulator, like the service,
    refuses a task starting a job that does not exist, so the plan's placeholder id 0 would fail here)."""
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    by_name = {s["name"]: (job_id, s) for job_id, s in workspace.jobs.items()}
    training_id = by_name["taxi_fares_training"][0]
    tasks = {t["task_key"]: t for t in by_name["taxi_fares_monitoring"][1]["tasks"]}
    assert tasks["retrain"]["run_job_task"]["job_id"] == training_id
    assert tasks["retrain"]["depends_on"] == [{"task_key": "drifted", "outcome": "true"}]
    assert tasks["drifted"]["condition_task"]["left"] == "{{tasks.monitor.values.retrain}}"
    assert "job_cluster_key" not in tasks["drifted"] and "job_cluster_key" in tasks["monitor"]
