"""Nothing destroyed that the tool did not create (issue 34, item 6): the deployer tags its jobs with the project
and the target and resets or deletes only jobs so tagged; a released version's wheels are never overwritten with
other bytes, and a redeploy checks each uploaded wheel against SHA256SUMS and repairs one that differs."""
import shutil

from orchestrator import build
from orchestrator.paths import DIST_DIR, project_version
from orchestrator.templates import JOBS

VERSION = project_version()
WHEELS = f"/Volumes/staging/taxi_fares/wheels/{VERSION}"
FOREIGN = {"name": "taxi_fares_training", "tags": {"owner": "another-team"}, "max_concurrent_runs": 1}


def test_deployed_jobs_carry_the_project_and_the_target(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert len(workspace.jobs) == len(JOBS)
    for settings in workspace.jobs.values():
        assert settings["tags"]["project"] == "taxi_fares" and settings["tags"]["target"] == "staging"


def test_a_same_named_job_the_tool_did_not_deploy_is_left_alone(workspace, mlops):
    workspace.jobs[9001] = dict(FOREIGN)
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert workspace.jobs[9001] == FOREIGN
    assert ("job taxi_fares_training: left 9001 alone (not tagged project=taxi_fares, target=staging: this tool "
            "did not deploy it)") in err
    ours = [i for i, s in workspace.jobs.items() if s["name"] == "taxi_fares_training" and i != 9001]
    assert len(ours) == 1
    workspace.requests.clear()
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert [r.json()["job_id"] for r in workspace.calls("POST", "/api/2.2/jobs/reset")
            if r.json()["new_settings"]["name"] == "taxi_fares_training"] == ours
    assert workspace.calls("POST", "/api/2.2/jobs/delete") == [] and workspace.jobs[9001] == FOREIGN
    # run finds the tool's job, not "2 jobs are named"
    code, _, err = mlops("run", "training", "--target", "staging")
    assert code == 0, err
    assert [r.json()["job_id"] for r in workspace.calls("POST", "/api/2.2/jobs/run-now")] == ours


def test_a_job_of_another_target_in_the_same_workspace_is_left_alone(workspace, mlops):
    workspace.jobs[9002] = {**FOREIGN, "tags": {"project": "taxi_fares", "target": "dev"}}
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert workspace.jobs[9002]["tags"]["target"] == "dev" and len(workspace.jobs) == len(JOBS) + 1


def test_a_job_someone_else_tagged_as_the_projects_is_neither_reset_nor_deleted(workspace, mlops):
    """Tags are no proof: anyone who may create jobs may write them. A tagged job created by another identity than
    the one deploying (a forged one, or one left by a former deployer) is reported and left alone."""
    forged = {**FOREIGN, "tags": {"project": "taxi_fares", "target": "staging"}}
    workspace.jobs[9003] = dict(forged)
    workspace.creators[9003] = "mallory@example.com"
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert workspace.jobs[9003] == forged
    assert ("job taxi_fares_training: left 9003 alone (tagged project=taxi_fares, target=staging, but created by "
            "mallory@example.com, not by operator@example.com, who deploys: this tool did not create it)") in err
    ours = [i for i, s in workspace.jobs.items() if s["name"] == "taxi_fares_training" and i != 9003]
    assert len(ours) == 1 and workspace.creators[ours[0]] == "operator@example.com"
    workspace.requests.clear()
    assert mlops("deploy", "--target", "staging")[0] == 0
    assert workspace.calls("POST", "/api/2.2/jobs/delete") == [] and workspace.jobs[9003] == forged
    assert [r.json()["job_id"] for r in workspace.calls("POST", "/api/2.2/jobs/reset")
            if r.json()["new_settings"]["name"] == "taxi_fares_training"] == ours


def test_creators_compare_without_case_and_a_job_without_one_is_nobodys(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    ours = [i for i, s in workspace.jobs.items() if s["name"] == "taxi_fares_training"]
    workspace.creators[ours[0]] = "Operator@Example.com"  # as another API spelled the same account
    orphan = {**FOREIGN, "tags": {"project": "taxi_fares", "target": "staging"}}
    workspace.jobs[9004] = dict(orphan)  # tagged, its creator's account deleted: no creator_user_name
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert [r.json()["job_id"] for r in workspace.calls("POST", "/api/2.2/jobs/reset")
            if r.json()["new_settings"]["name"] == "taxi_fares_training"] == ours
    assert workspace.jobs[9004] == orphan and "left 9004 alone" in err and "created by a deleted user" in err


def test_a_released_version_is_never_overwritten_with_other_wheels(workspace, mlops, tmp_path):
    assert mlops("deploy", "--target", "staging")[0] == 0
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in build.wheel_names(VERSION):
        shutil.copy(DIST_DIR / name, dist / name)
    with (dist / build.wheel_names(VERSION)[0]).open("ab") as wheel:
        wheel.write(b"other bytes")
    released = dict(workspace.files)
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging", "--dist", str(dist), "--no-build")
    assert code == 2
    assert err.splitlines()[-1] == (
        f"mlops deploy: version {VERSION} is already released at {WHEELS} with other wheels (its SHA256SUMS "
        f"differs from the one built here): a released version is never overwritten; change VERSION")
    assert workspace.uploads() == [] and workspace.files == released


def test_a_redeploy_repairs_an_uploaded_wheel_that_differs_from_sha256sums(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    wheel = build.wheel_names(VERSION)[1]
    workspace.files[f"{WHEELS}/{wheel}"] = b"truncated"
    workspace.requests.clear()
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    assert f"wheel {WHEELS}/{wheel} differs from SHA256SUMS (sha256 " in err and "repairing it" in err
    assert [r.path for r in workspace.uploads()] == [f"/api/2.0/fs/files{WHEELS}/{wheel}"]
    assert workspace.files[f"{WHEELS}/{wheel}"] == (DIST_DIR / wheel).read_bytes()
