"""The monitoring job end to end, as a person runs it: `mlops run monitoring --local` on a scored week whose trip
distances drifted. Its notebook task reports DRIFT, its condition task passes, and its run-job task starts the
training job exactly once, tagged with the monitoring run and the reason."""
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

START, END = "2016-01-04", "2016-01-18"
WEEK = ("2016-01-18", "2016-01-25")
MLOPS = [sys.executable, "-m", "orchestrator.cli"]

pytestmark = pytest.mark.slow


def mlops(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(root)
    done = subprocess.run([*MLOPS, *args], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def run_json(root, job, start, end, *params):
    args = [f"--param={p}" for p in (f"start_date={start}", f"end_date={end}", "mlflow_experiment=e2e", *params)]
    return json.loads(mlops(root, "run", job, "--local", "--json", *args).stdout)


def test_drift_starts_exactly_one_training_run_tagged_with_the_monitoring_run(tmp_path):
    root = tmp_path / "lakehouse"
    mlops(root, "data", "generate", "--rows", "20000", "--start", START, "--end", END, "--seed", "5")
    mlops(root, "data", "generate", "--rows", "10000", "--start", WEEK[0], "--end", WEEK[1], "--seed", "6",
          "--shift", "trip_distance=1.5", "--append")
    run_json(root, "training", START, END, "max_iter=40")
    run_json(root, "batch_scoring", *WEEK)

    done = mlops(root, "run", "monitoring", "--local", "--json", f"--param=start_date={WEEK[0]}",
                 f"--param=end_date={WEEK[1]}", "--param=mlflow_experiment=e2e")
    summary = json.loads(done.stdout)
    monitored = summary["stages"]["monitoring"]
    assert monitored["monitoring_status"] in ("DRIFT", "DEGRADED")
    assert "trip_distance" in monitored["drifted_features"]
    assert "task drifted: 'true' EQUAL_TO 'true' is true" in done.stderr
    assert "task retrain: starting job training" in done.stderr

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    retrains = client.search_runs(experiments, f"tags.`retraining.triggered_by` = '{summary['mlflow_run_id']}'")
    assert len(retrains) == 1
    retrain = retrains[0]
    assert retrain.data.tags["job"] == "training" and retrain.info.status == "FINISHED"
    assert retrain.data.tags["retraining.reason"].startswith(f"monitoring {monitored['monitoring_status']} for "
                                                             f"{WEEK[0]}..{WEEK[1]}: ")
    assert retrain.data.params["end_date"] == WEEK[1]
