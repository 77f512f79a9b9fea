"""The workspace as it really answers (issue 34, item 9), handled by the tool: a request applied and then left
unanswered is sent again by the SDK, so run-now carries an idempotency token and a create sent twice leaves one
job; a wrong or expired token is a 403 "Invalid access token." named as such; runs end in more ways than SUCCESS
and FAILED, each with its line and exit code; a repaired run that still reads FAILED is watched to its repaired
end; runs/list's short pages are followed; a host that is not a workspace is named as such."""
import pytest

from orchestrator.templates import JOBS, load_template


def deployed(workspace, mlops):
    assert mlops("deploy", "--target", "staging")[0] == 0
    return {s["name"]: job_id for job_id, s in workspace.jobs.items()}


def test_a_run_now_applied_and_then_unanswered_starts_one_run(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.drop_after_apply("POST", "/api/2.2/jobs/run-now")
    code, out, err = mlops("run", "training", "--target", "staging", "--no-wait")
    assert code == 0, err
    sent = [r.json() for r in workspace.calls("POST", "/api/2.2/jobs/run-now")]
    assert len(sent) == 2 and sent[0] == sent[1]  # the SDK sent it again, with the same token
    assert 0 < len(sent[0]["idempotency_token"]) <= 64
    assert [run.job_id for run in workspace.runs.values()] == [jobs["taxi_fares_training"]]
    assert out.strip() == str(next(iter(workspace.runs)))


def test_each_run_gets_its_own_token(workspace, mlops):
    deployed(workspace, mlops)
    workspace.jobs[next(iter(workspace.jobs))]["max_concurrent_runs"] = 5
    for _ in range(2):
        assert mlops("run", "training", "--target", "staging", "--no-wait")[0] == 0
    tokens = [r.json()["idempotency_token"] for r in workspace.calls("POST", "/api/2.2/jobs/run-now")]
    assert len(set(tokens)) == 2 and len(workspace.runs) == 2


def test_a_job_create_applied_and_then_unanswered_leaves_one_job(workspace, mlops):
    workspace.drop_after_apply("POST", "/api/2.2/jobs/create")
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 0, err
    names = sorted(load_template(job)["name"] for job in JOBS)
    assert len(workspace.calls("POST", "/api/2.2/jobs/create")) == len(names) + 1  # one sent twice
    assert sorted(s["name"] for s in workspace.jobs.values()) == names
    assert "deleted duplicate" in err and "(a create sent twice)" in err


def test_a_wrong_or_expired_token_is_named(workspace, mlops, monkeypatch):
    deployed(workspace, mlops)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-expired-0000")
    code, _, err = mlops("runs", "training", "--target", "staging")
    assert code == 3
    assert err.splitlines()[-1] == (
        f"mlops runs: the token was refused at {workspace.url} while trying to find job taxi_fares_training (403 "
        f"Invalid access token: wrong or expired): renew DATABRICKS_TOKEN or check your CLI profile or the service "
        f"principal's credentials")
    assert "dapi-expired" not in err


def test_runs_follows_short_pages_to_the_limit(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.jobs[jobs["taxi_fares_training"]]["max_concurrent_runs"] = 100
    for _ in range(12):
        assert mlops("run", "training", "--target", "staging", "--no-wait")[0] == 0
    workspace.runs_page_cap = 4  # fewer than asked for, with more to come
    code, out, err = mlops("runs", "training", "--target", "staging", "--limit", "10")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + 10
    assert [r.query.get("page_token") for r in workspace.calls("GET", "/api/2.2/jobs/runs/list")] == [None, "4", "8"]


# --- runs end in more ways than SUCCESS and FAILED; each has its line and its exit code -----------------------------

ENDS = {
    "SUCCESS_WITH_FAILURES": (1, "did not succeed: it ended SUCCESS_WITH_FAILURES, its last tasks succeeded but others "
                                 "failed (TERMINATED SUCCESS_WITH_FAILURES: Some tasks failed; the run's leaf tasks "
                                 "succeeded); `mlops repair {run} --target staging` reruns the failed tasks"),
    "TIMEDOUT": (4, "timed out: the workspace stopped it at the job's timeout (TERMINATED CANCELED: Run timed out: it "
                    "exceeded the job's timeout of 14400 seconds); `mlops repair {run} --target staging` reruns the "
                    "tasks that did not finish"),
    "CANCELED": (4, "was canceled before it finished (TERMINATED USER_CANCELED: Run cancelled by "
                    "operator@example.com); `mlops repair {run} --target staging` reruns the tasks that did not "
                    "finish"),
}


@pytest.mark.parametrize("result", ENDS)
def test_each_way_a_run_ends_has_its_line_and_exit_code(workspace, mlops, result):
    deployed(workspace, mlops)
    workspace.next_run_script = ["PENDING", "RUNNING", f"TERMINATED:{result}"]
    code, _, err = mlops("run", "training", "--target", "staging")
    run_id = next(iter(workspace.runs))
    expected_code, line = ENDS[result]
    assert code == expected_code
    assert err.splitlines()[-1] == f"run {run_id} " + line.format(run=run_id)


def a_run_skipped_for_concurrency(workspace, mlops):
    """Two runs of the training job without a queue: the second is skipped while the first runs."""
    jobs = deployed(workspace, mlops)
    workspace.jobs[jobs["taxi_fares_training"]]["queue"] = {"enabled": False}
    workspace.next_run_script = ["RUNNING"] * 50 + ["TERMINATED:SUCCESS"]
    assert mlops("run", "training", "--target", "staging", "--no-wait")[0] == 0
    return mlops("run", "training", "--target", "staging")


def test_a_run_skipped_for_concurrency_says_nothing_ran_and_exits_5(workspace, mlops):
    code, _, err = a_run_skipped_for_concurrency(workspace, mlops)
    skipped = list(workspace.runs)[1]
    assert code == 5
    assert err.splitlines()[-1] == (
        f"run {skipped} was skipped, nothing ran (SKIPPED MAX_CONCURRENT_RUNS_EXCEEDED: Skipping this run because the "
        f"limit of 1 maximum concurrent runs has been reached.); start it again once the job's active run ends "
        f"(`mlops runs training --target staging` lists its runs)")
    assert workspace.calls("GET", "/api/2.2/jobs/runs/get-output") == []  # it ran no task
    code, _, err = mlops("repair", str(skipped), "--target", "staging")
    assert code == 2 and f"run {skipped} was skipped" in err and "nothing to repair" in err
    assert workspace.calls("POST", "/api/2.2/jobs/runs/repair") == []


def test_runs_says_how_each_run_ended(workspace, mlops):
    jobs = deployed(workspace, mlops)
    workspace.jobs[jobs["taxi_fares_training"]]["max_concurrent_runs"] = 10
    for result in ("SUCCESS", "FAILED", *ENDS):
        workspace.next_run_script = [f"TERMINATED:{result}"]
        assert mlops("run", "training", "--target", "staging")[0] == {"SUCCESS": 0, "FAILED": 1}.get(
            result, ENDS.get(result, (None,))[0])
    code, out, err = mlops("runs", "training", "--target", "staging")
    assert code == 0, err
    assert [line.split()[1:3] for line in out.splitlines()[1:]] == [
        ["TERMINATED", "CANCELED"], ["TERMINATED", "TIMEDOUT"], ["TERMINATED", "SUCCESS_WITH_FAILURES"],
        ["TERMINATED", "FAILED"], ["TERMINATED", "SUCCESS"]]


def test_runs_names_a_skipped_run(workspace, mlops):
    a_run_skipped_for_concurrency(workspace, mlops)
    code, out, _ = mlops("runs", "training", "--target", "staging")
    assert code == 0
    assert out.splitlines()[1].split()[1:3] == ["SKIPPED", "SKIPPED"]
    assert out.splitlines()[2].split()[1] == "RUNNING" and len(out.splitlines()[2].split()) == 5  # no result yet


# --- a repaired run may still read FAILED for a moment -------------------------------------------------------------

def test_a_repaired_run_that_still_reads_failed_is_watched_to_its_repaired_end(workspace, mlops):
    deployed(workspace, mlops)
    workspace.next_run_script = ["RUNNING", "TERMINATED:FAILED"]
    assert mlops("run", "batch_scoring", "--target", "staging")[0] == 1
    run_id = next(iter(workspace.runs))
    workspace.next_run_script = ["RUNNING", "TERMINATED:SUCCESS"]
    workspace.next_run_error = None
    workspace.stale_reads_after_repair = 3
    code, _, err = mlops("repair", str(run_id), "--target", "staging")
    assert code == 0, err
    repair_id = workspace.runs[run_id].repairs[0]
    assert (f"run {run_id}: still reads TERMINATED RUN_EXECUTION_ERROR: Task failed from before repair {repair_id}; "
            f"waiting for the workspace to show the repair") in err
    assert err.splitlines()[-1] == f"[mlops] run {run_id} succeeded"
    repaired = workspace.requests.index(workspace.calls("POST", "/api/2.2/jobs/runs/repair")[0])
    watched = [r for r in workspace.requests[repaired:] if r.path == "/api/2.2/jobs/runs/get"]
    assert len(watched) >= 3 + 2 and all(r.query.get("include_history") == "true" for r in watched)


def test_a_repair_the_workspace_never_shows_is_not_reported_as_its_end(workspace, mlops, monkeypatch):
    from orchestrator.deploy import runs

    deployed(workspace, mlops)
    workspace.next_run_script = ["TERMINATED:FAILED"]
    assert mlops("run", "batch_scoring", "--target", "staging")[0] == 1
    run_id = next(iter(workspace.runs))
    workspace.stale_reads_after_repair = 10_000
    monkeypatch.setattr(runs, "STALE_REPAIR_SECONDS", 0.2)
    code, _, err = mlops("repair", str(run_id), "--target", "staging")
    assert code == 3
    assert err.splitlines()[-1].startswith(
        f"mlops repair: run {run_id} still reads TERMINATED RUN_EXECUTION_ERROR: Task failed 0s after repair "
        f"{workspace.runs[run_id].repairs[0]} was accepted: the workspace does not show the repair; look at ")


# --- a host that is not Databricks answers an HTML 404 the SDK reads as NOT_FOUND -----------------------------------

NOT_A_WORKSPACE = {
    "run": (("run", "training", "--target", "staging"), "find job taxi_fares_training"),
    "runs": (("runs", "training", "--target", "staging"), "find job taxi_fares_training"),
    "repair": (("repair", "7", "--target", "staging"), "read run 7"),
    "deploy": (("deploy", "--target", "staging"), "upload the wheels to /Volumes/staging/taxi_fares/wheels/{version}"),
}


@pytest.mark.parametrize("command", NOT_A_WORKSPACE)
def test_a_host_that_is_not_a_workspace_is_named(workspace, mlops, command):
    from orchestrator.paths import project_version

    argv, operation = NOT_A_WORKSPACE[command]
    workspace.not_databricks = True
    code, out, err = mlops(*argv)
    assert code == 3
    assert err.splitlines()[-1] == (
        f"mlops {argv[0]}: {workspace.url} does not answer as a Databricks workspace (it answered '404 Not Found' "
        f"when asked to {operation.format(version=project_version())}, and so did the API every workspace serves): "
        f"check --host, DATABRICKS_HOST or the target's host in targets.yml")
    assert workspace.calls("GET", "/api/2.0/preview/scim/v2/Me")  # asked once, to tell a host from a missing object
