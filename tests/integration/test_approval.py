"""`mlops approve` decides on current facts: a held version records the champion it was judged against, and an
approval after the champion has moved is refused with both versions named; a remote approval records the identity
the workspace authenticates, never an environment variable."""
import re

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.paths import REPO_ROOT
from taxi_fares_mlops.jobs import run_job

HELD = {"require_approval": "true", "max_iter": "150", "execute_feature_engineering": "false"}


def _held_versions(*judged_against):
    """Versions 1..n of 'held_model' registered straight in the sqlite registry, version 1 the champion; version
    i+1 held, judged against ``judged_against[i]`` (None: not recorded)."""
    client = MlflowClient()
    client.create_registered_model("held_model")
    for _ in range(len(judged_against) + 1):
        client.create_model_version("held_model", "file:///nowhere", run_id=None)
    client.set_registered_model_alias("held_model", "champion", "1")
    for version, champion in enumerate(judged_against, start=2):
        client.set_model_version_tag("held_model", str(version), "approval.status", "PENDING")
        if champion is not None:
            client.set_model_version_tag("held_model", str(version), "approval.judged_against", champion)
    return client


@pytest.mark.parametrize("judged_against, message", [
    ("3", "model 'held_model' version 2 was judged against version 3 but the champion now is version 1"),
    ("none", "model 'held_model' version 2 was judged against no champion but the champion now is version 1"),
    (None, "model 'held_model' version 2 was judged against an unrecorded champion but the champion now is "
           "version 1"),
])
def test_the_registry_refuses_an_approval_judged_against_another_champion(mlflow_store, judged_against, message):
    from taxi_fares_mlops.errors import RegistryError
    from taxi_fares_mlops.tracking import Registry

    client = _held_versions(judged_against, "1")
    with pytest.raises(RegistryError) as excinfo:
        Registry("held_model").approve(2, "someone", "2026-01-01T00:00:00+00:00")
    assert str(excinfo.value).startswith(message + ": re-validate it against the current champion")
    assert client.get_model_version("held_model", "2").tags["approval.status"] == "PENDING"
    assert str(client.get_registered_model("held_model").aliases["champion"]) == "1"
    # version 3, judged against the champion it would replace, is approved
    Registry("held_model").approve(3, "someone", "2026-01-01T00:00:00+00:00")
    assert str(client.get_registered_model("held_model").aliases["champion"]) == "3"


@pytest.mark.slow
def test_an_approval_judged_against_a_champion_that_has_moved_is_refused(
        spark, trips_lakehouse, mlflow_store, training_config, mlops):
    first = run_job(training_config(), spark)
    judged_against = first["stages"]["promotion"]["champion_version"]
    held = run_job(training_config(**HELD), spark)
    version = held["stages"]["training"]["model_version"]
    assert held["stages"]["promotion"]["decision"] == "awaiting_approval"
    client = MlflowClient()
    assert client.get_model_version("taxi_fares", version).tags["approval.judged_against"] == judged_against

    # Meanwhile another version becomes champion (a forced promotion without approval).
    moved = run_job(training_config(force_promote="true", execute_feature_engineering="false"), spark)
    champion = moved["stages"]["promotion"]["champion_version"]
    assert champion not in (judged_against, version)

    code, _, err = mlops("approve", "--model", "taxi_fares", "--version", version)
    assert code == 2
    assert (f"mlops approve: model 'taxi_fares' version {version} was judged against version {judged_against} but "
            f"the champion now is version {champion}: re-validate it against the current champion (run the "
            f"deployment job for version {version} again: `mlops run deployment --param model_version={version}`), "
            f"or retrain") in err
    assert str(client.get_registered_model("taxi_fares").aliases["champion"]) == champion
    assert client.get_model_version("taxi_fares", version).tags["approval.status"] == "PENDING"


@pytest.mark.slow
def test_a_remote_approval_records_the_workspace_identity_not_a_variable(
        spark, trips_lakehouse, mlflow_store, training_config, workspace, mlops, monkeypatch, tmp_path):
    run_job(training_config(), spark)
    version = run_job(training_config(**HELD), spark)["stages"]["training"]["model_version"]
    # The target's registry is this test's sqlite store; its workspace is the emulator.
    targets = (REPO_ROOT / "job_templates/targets.yml").read_text()
    staging = re.search(r"\n  staging:\n(?:    .*\n|      .*\n|\s*\n)*", targets).group(0)
    changed = re.sub(r"    host: \S+", f"    host: {workspace.url}", staging)
    changed = re.sub(r"    mlflow_registry_uri: \S+", f"    mlflow_registry_uri: {mlflow_store}", changed)
    changed = re.sub(r"    model_name: \S+", "    model_name: taxi_fares", changed)
    (tmp_path / "targets.yml").write_text(targets.replace(staging, changed))
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(tmp_path / "targets.yml"))
    monkeypatch.setenv("MLOPS_APPROVER", "someone.who.set.a.variable@example.com")

    workspace.fail("GET", "/api/2.0/preview/scim/v2/Me", 403, message="Invalid access token.")
    code, _, err = mlops("approve", "--target", "staging", "--version", version)
    assert code == 3 and "while trying to read the caller's identity (403" in err
    client = MlflowClient(registry_uri=mlflow_store)
    assert client.get_model_version("taxi_fares", version).tags["approval.status"] == "PENDING"  # fails closed

    workspace.identity["userName"] = "release.manager@example.com"
    code, out, err = mlops("approve", "--target", "staging", "--version", version)
    assert code == 0, err
    tags = client.get_model_version("taxi_fares", version).tags
    assert (tags["approval.status"], tags["approval.by"]) == ("APPROVED", "release.manager@example.com")
    assert len(workspace.calls("GET", "/api/2.0/preview/scim/v2/Me")) == 2
