"""The workspace as it really answers (issue 34, item 9), handled by the tool: a request applied and then left
unanswered is sent again by the SDK, so run-now carries an idempotency token and a create sent twice leaves one
job; a wrong or expired token is a 403 "Invalid access token." named as such."""


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
    assert len(workspace.calls("POST", "/api/2.2/jobs/create")) == 4  # one sent twice
    assert sorted(s["name"] for s in workspace.jobs.values()) == [
        "taxi_fares_batch_scoring", "taxi_fares_monitoring", "taxi_fares_training"]
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
