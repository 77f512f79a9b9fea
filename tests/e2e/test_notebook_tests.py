"""The Nutter notebook tests, run the way CI runs them locally: `mlops test-notebooks --local`."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from fakes.ingestion import INSTRUMENTATION_KEY, IngestionCapture
from jvm_options import for_a_long_lived_jvm

pytestmark = pytest.mark.slow

TOKEN = "dapi-notebook-tests-secret-1a2b3c4d"


def test_notebook_tests_pass_and_write_a_junit_report(tmp_path):
    """Also run with secrets set (a Databricks token, an Application Insights connection string): neither reaches
    the console, the JUnit report or anything under the home folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(tmp_path / "home")
    for_a_long_lived_jvm(env)  # one Spark serves all the notebooks for minutes
    capture = IngestionCapture()
    env.update(DATABRICKS_TOKEN=TOKEN, APPLICATIONINSIGHTS_CONNECTION_STRING=capture.connection_string)
    report = tmp_path / "notebook-tests.xml"
    try:
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "test-notebooks", "--local", "--junit",
                               str(report)], capture_output=True, text=True, env=env, timeout=1800)
    finally:
        capture.stop()
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    written = [done.stdout, done.stderr, report.read_text()]
    written += [p.read_bytes().decode("latin-1") for p in (tmp_path / "home").rglob("*")
                if p.is_file() and "envs" not in p.relative_to(tmp_path / "home").parts]
    assert not [text for text in written if TOKEN in text or INSTRUMENTATION_KEY in text]
    suites = ET.parse(report).getroot()
    cases = {(c.get("classname"), c.get("name")) for c in suites.iter("testcase")}
    assert cases == {
        ("tests/notebooks/test_train.py", "a_first_training"),
        ("tests/notebooks/test_train.py", "b_retraining_without_feature_engineering"),
        ("tests/notebooks/test_batch_score.py", "a_scoring"),
        ("tests/notebooks/test_batch_score.py", "b_rescoring_without_feature_engineering"),
        ("tests/notebooks/test_monitor.py", "a_monitoring_a_drifted_week"),
        ("tests/notebooks/test_monitor.py", "b_rerunning_the_week"),
    }
    assert suites.get("failures") == "0" and suites.get("errors") == "0"
    assert "PASSED  test_train.py::a_first_training" in done.stdout
    # One Spark for all (as on one cluster), each notebook with its own lakehouse and MLflow store all the same.
    assert done.stderr.count("starting local Spark") == 1
    stores = sorted(p.relative_to(tmp_path / "home").as_posix() for p in (tmp_path / "home").rglob("mlflow.db"))
    assert stores == [f"notebook-tests/{name}/mlflow.db" for name in ("test_batch_score", "test_monitor", "test_train")]


def test_no_matching_notebook_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "test-notebooks", "--local", "--pattern",
                           "test_nothing_*"], capture_output=True, text=True,
                          env={**os.environ, "MLOPS_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "no notebook tests match" in done.stderr
