"""Fixtures of the integration tests that talk to the operator tool: the strict workspace emulator and the
``mlops`` command run in-process."""
import pytest

from fakes.databricks_workspace import TEST_TOKEN as TOKEN
from fakes.databricks_workspace import WorkspaceEmulator
from orchestrator.cli import main


@pytest.fixture
def workspace(monkeypatch):
    fake = WorkspaceEmulator(TOKEN, volumes=("/Volumes/staging/taxi_fares/wheels",)).start()
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_ID",
                 "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "DATABRICKS_AUTH_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("MLOPS_POLL_SECONDS", "0.01")
    yield fake
    fake.stop()


@pytest.fixture
def mlops(capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr), and keep everything it printed."""
    printed = []

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        printed.append(out + err)
        return code, out, err

    run.printed = printed
    return run
