"""Fixtures of the integration tests that talk to the operator tool: the strict workspace emulator and the
``mlops`` command run in-process."""
import re
from pathlib import Path

import pytest

from fakes.databricks_workspace import TEST_TOKEN as TOKEN
from fakes.databricks_workspace import WorkspaceEmulator
from orchestrator.cli import main
from orchestrator.paths import REPO_ROOT


def emulator_targets(url: str, path: Path) -> Path:
    """The project's targets file with every workspace target's host replaced by the emulator's URL: the tests
    say where they go as an operator would, in targets.yml (a DATABRICKS_HOST naming another host is refused)."""
    text = (REPO_ROOT / "job_templates/targets.yml").read_text(encoding="utf-8")
    hosts = re.findall(r"^    host: (\S+)$", text, flags=re.M)
    assert hosts, "targets.yml names no host"
    for host in hosts:
        text = text.replace(f"    host: {host}\n", f"    host: {url}\n")
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    """The emulator, with ``targets_file``: targets.yml pointing every workspace target at it (also set as
    ``MLOPS_TARGETS_FILE``), and ``DATABRICKS_HOST`` the same URL, as CI sets it."""
    fake = WorkspaceEmulator(TOKEN, volumes=("/Volumes/staging/taxi_fares/wheels",)).start()
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_ID",
                 "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "DATABRICKS_AUTH_TYPE"):
        monkeypatch.delenv(name, raising=False)
    fake.targets_file = emulator_targets(fake.url, tmp_path / "emulator-targets.yml")
    monkeypatch.setenv("MLOPS_TARGETS_FILE", str(fake.targets_file))
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
