"""Where a remote command goes: the target's host from targets.yml, or ``--host`` said on purpose. A
``DATABRICKS_HOST`` left in the shell that names another workspace is refused before any request (issue 34,
item 6: a dev deploy must never land in another workspace because of a leftover variable)."""
import pytest

from orchestrator.paths import REPO_ROOT

ELSEWHERE = "https://adb-9999999999999999.9.azuredatabricks.net"
STAGING = "https://adb-1000000000000002.2.azuredatabricks.net"  # the staging host of the project's targets.yml

REMOTE_COMMANDS = {
    "deploy": ("deploy", "--target", "staging"),
    "deploy-dry-run": ("deploy", "--target", "staging", "--dry-run"),
    "run": ("run", "training", "--target", "staging"),
    "runs": ("runs", "training", "--target", "staging"),
    "repair": ("repair", "7", "--target", "staging"),
    "schedule": ("schedule", "training", "--target", "staging", "--pause"),
    "test-notebooks": ("test-notebooks", "--target", "staging", "--cluster-id", "0101-abc", "--dry-run"),
    "approve": ("approve", "--target", "staging", "--version", "1"),
}


@pytest.mark.parametrize("argv", REMOTE_COMMANDS.values(), ids=REMOTE_COMMANDS.keys())
def test_a_databricks_host_naming_another_workspace_is_refused(workspace, mlops, monkeypatch, argv):
    monkeypatch.setenv("DATABRICKS_HOST", ELSEWHERE)
    code, out, err = mlops(*argv)
    assert code == 2, err
    assert err.splitlines()[-1] == (
        f"mlops {argv[0]}: DATABRICKS_HOST is {ELSEWHERE} but target 'staging' is {workspace.url}: unset "
        f"DATABRICKS_HOST, or pass --host {ELSEWHERE} if that workspace is meant")
    assert out == "" and workspace.requests == []


def test_host_says_on_purpose_where_a_command_goes(workspace, mlops, monkeypatch):
    """targets.yml names the real staging host; the operator sends this deploy to another workspace on purpose
    (here the emulator), with DATABRICKS_HOST saying the same."""
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(REPO_ROOT / "job_templates/targets.yml"))
    code, _, err = mlops("deploy", "--target", "staging")
    assert code == 2 and f"target 'staging' is {STAGING}" in err and workspace.requests == []
    code, _, err = mlops("deploy", "--target", "staging", "--host", workspace.url)
    assert code == 0, err
    assert "deploying version" in err and f"({workspace.url})" in err
    from orchestrator.templates import JOBS

    assert len(workspace.jobs) == len(JOBS)
    code, out, err = mlops("runs", "training", "--target", "staging", "--host", workspace.url + "/")
    assert code == 0, err


def test_host_and_databricks_host_must_agree(workspace, mlops):
    code, _, err = mlops("runs", "training", "--target", "staging", "--host", ELSEWHERE)
    assert code == 2
    assert err.splitlines()[-1] == (f"mlops runs: --host {ELSEWHERE} and DATABRICKS_HOST {workspace.url} disagree: "
                                    f"unset DATABRICKS_HOST or give the same host to both")
    assert workspace.requests == []


def test_host_without_databricks_host_goes_where_it_says(workspace, mlops, monkeypatch):
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(REPO_ROOT / "job_templates/targets.yml"))
    monkeypatch.delenv("DATABRICKS_HOST")
    code, _, err = mlops("deploy", "--target", "staging", "--dry-run", "--host", workspace.url)
    assert code == 0, err
    assert workspace.requests == []


@pytest.mark.parametrize("host", ["adb-1.1.azuredatabricks.net", "http://adb-1.1.azuredatabricks.net",
                                  "https://adb-1.1.azuredatabricks.net/?o=1"])
def test_a_host_that_is_not_a_workspace_url_is_refused(workspace, mlops, host):
    code, _, err = mlops("runs", "training", "--target", "staging", "--host", host)
    assert code == 2
    assert err.splitlines()[-1].startswith(f"mlops runs: --host '{host}' is not a workspace URL: give https://")
    assert workspace.requests == []
