"""Training and batch scoring through Spark Connect, as serverless jobs compute and shared-access clusters run
them: the jobs talk to a local Spark Connect server (with Delta Lake) over gRPC, so any use of ``sparkContext``,
RDDs, the JVM or the Python ``DeltaTable`` API fails here. Each job runs in its own process, as a user runs it."""
import json
import os
import subprocess
import sys

import pytest
from pyspark.testing import assertDataFrameEqual

from orchestrator.local.spark_connect import SparkConnectServer

START, END = "2016-01-04", "2016-01-11"
RANGE = [f"start_date={START}", f"end_date={END}", "mlflow_experiment=connect"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Started from a shell whose MLflow variables name another store (as `mlops approve` leaves them, or a user's
    profile): the server serves every job's lakehouse, so it must not pass them to its Python workers, which load
    each job's model from the job's own registry."""
    folder = tmp_path_factory.mktemp("connect")
    elsewhere = f"sqlite:///{folder}/elsewhere.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", elsewhere)
        patch.setenv("MLFLOW_REGISTRY_URI", elsewhere)
        running = SparkConnectServer(folder / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


def mlops(root, server, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env.update(MLOPS_HOME=str(root), MLOPS_SPARK_REMOTE=server.url)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def test_training_and_scoring_run_unchanged_over_spark_connect(spark, server, tmp_path):
    root = tmp_path / "lakehouse"
    mlops(root, server, "data", "generate", "--rows", "8000", "--start", START, "--end", END, "--seed", "3")
    params = [f"--param={p}" for p in RANGE]
    trained = mlops(root, server, "run", "training", "--local", "--json", *params, "--param=max_iter=20")
    assert f"connecting to Spark Connect at {server.url}" in trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["status"] == "SUCCESS" and summary["stages"]["training"]["model_version"] == "1"
    # the version it registered went through the deployment job (as the model trigger would start it): champion
    assert "deployment job on taxi_fares version 1: SUCCESS" in trained.stderr, trained.stderr[-3000:]
    scored = json.loads(mlops(root, server, "run", "batch_scoring", "--local", "--json", *params).stdout)
    assert scored["status"] == "SUCCESS"
    trips = spark.read.format("delta").load(f"{root}/tables/raw_trips")
    predictions = spark.read.format("delta").load(f"{root}/tables/predictions")
    assertDataFrameEqual(predictions.select("trip_id"), trips.select("trip_id"))
    assert scored["stages"]["batch_scoring"]["rows"] == trips.count()
