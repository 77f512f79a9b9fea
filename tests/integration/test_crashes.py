"""Runs that die without a word (SIGKILL at a crash point, `MLOPS_CRASH_AT`), as a lost node ends them, and two
runs of one job at once. After a kill: no alias points at the half-registered version, the killed MLflow run
does not stay RUNNING (the next run of the job ends it as KILLED, with a note), and a rerun completes the work."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.errors import ConfigurationError
from orchestrator.local.runner import job_lock
from taxi_fares_mlops.jobs import run_job

START, END = "2016-01-04", "2016-01-18"

pytestmark = pytest.mark.slow


# The killed run: a job process of its own (the stages, MLflow and Spark in one Python process, as on a cluster's
# driver), so SIGKILL ends all of it. The rerun happens in the test process, on the shared Spark session.
JOB = """
import sys
from taxi_fares_mlops.config import TRAINING_PARAMETERS, TrainingConfig
from taxi_fares_mlops.jobs import run_job
values = {p.name: p.default for p in TRAINING_PARAMETERS}
values.update(start_date=sys.argv[1], end_date=sys.argv[2], lakehouse_root=sys.argv[3], mlflow_experiment="crash",
              max_iter="20")
run_job(TrainingConfig.from_mapping(values))
"""


def test_a_run_killed_while_registering_leaves_no_half_champion_and_the_next_run_ends_it(
        spark, trips_lakehouse, mlflow_store, training_config):
    root = trips_lakehouse.root
    env = {**os.environ, "MLOPS_CRASH_AT": "training.after_fare_model_registered"}
    killed = subprocess.run([sys.executable, "-c", JOB, START, END, root], env=env, capture_output=True, text=True,
                            timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("crash").experiment_id
    (dead,) = client.search_runs([experiment], "tags.job = 'training'")
    assert dead.info.status == "RUNNING"
    assert [str(v.version) for v in client.search_model_versions("name = 'taxi_fares'")] == ["1"]
    assert client.get_registered_model("taxi_fares").aliases == {}
    assert client.search_registered_models("name = 'taxi_fares_outliers'") == []

    # The killed run had written the feature tables: the rerun trains on them.
    rerun = run_job(training_config(mlflow_experiment="crash", max_iter="20", execute_feature_engineering="false"),
                    spark)
    assert rerun["status"] == "SUCCESS"
    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["mlops.ended_by"] == rerun["mlflow_run_id"]
    assert "left RUNNING by a process that died" in ended.data.tags["mlops.note"]
    assert {a: str(v) for a, v in client.get_registered_model("taxi_fares").aliases.items()} == \
        {"champion": "2", "challenger": "2"}
    for companion in ("taxi_fares_outliers", "taxi_fares_drift"):
        champion = client.get_model_version_by_alias(companion, "champion")
        assert champion.tags["fare_model_version"] == "2"
    assert client.get_model_version("taxi_fares", "1").aliases == []


def test_a_second_run_of_a_job_is_refused_while_the_first_holds_its_lock_and_a_killed_holder_frees_it(tmp_path):
    root = str(tmp_path / "lakehouse")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from orchestrator.local.runner import job_lock\n"
        f"with job_lock({root!r}, 'batch_scoring'):\n    print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigurationError, match=rf"job batch_scoring is already running on {root} "
                                                     rf"\(pid {holder.pid}, started .*\): one run at a time"):
            with job_lock(root, "batch_scoring"):
                pass
        with job_lock(root, "training"):  # another job is not held up
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            with job_lock(root, "batch_scoring"):
                break
        except ConfigurationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
