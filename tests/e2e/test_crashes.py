"""Runs that die without a word (SIGKILL at a crash point, `MLOPS_CRASH_AT`), as a lost node ends them, and two
runs of one job at once. After a kill: no alias points at the half-registered version, the killed MLflow run
does not stay RUNNING (the next run of the job ends it as KILLED, with a note), and a rerun completes the work."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.errors import ConfigurationError
from orchestrator.local.runner import job_lock

START, END = "2016-01-04", "2016-01-18"
MLOPS = [sys.executable, "-m", "orchestrator.cli"]

pytestmark = pytest.mark.slow


def mlops(root, *args, crash_at=None, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_", "MLOPS_CRASH"))}
    env["MLOPS_HOME"] = str(root)
    if crash_at:
        env["MLOPS_CRASH_AT"] = crash_at
    done = subprocess.run([*MLOPS, *args], capture_output=True, text=True, env=env, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def test_a_run_killed_while_registering_leaves_no_half_champion_and_the_next_run_ends_it(tmp_path):
    root = tmp_path / "lakehouse"
    mlops(root, "data", "generate", "--rows", "20000", "--start", START, "--end", END, "--seed", "5")
    params = [f"--param={p}" for p in (f"start_date={START}", f"end_date={END}", "max_iter=20",
                                       "mlflow_experiment=crash")]
    killed = mlops(root, "run", "training", "--local", *params, crash_at="training.after_fare_model_registered",
                   check=False)
    assert killed.returncode == 1, killed.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("crash").experiment_id
    (dead,) = client.search_runs([experiment], "tags.job = 'training'")
    assert dead.info.status == "RUNNING"
    assert [str(v.version) for v in client.search_model_versions("name = 'taxi_fares'")] == ["1"]
    assert client.get_registered_model("taxi_fares").aliases == {}
    assert client.search_registered_models("name = 'taxi_fares_outliers'") == []

    rerun = json.loads(mlops(root, "run", "training", "--local", "--json", *params).stdout)
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
