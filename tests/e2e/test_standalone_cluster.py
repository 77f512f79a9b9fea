"""Training and batch scoring on a Spark standalone cluster on loopback (one master, two workers with their own
executor JVMs and Python workers), as on a Databricks cluster: what only works when the driver and the executors
share a process fails here. Each job runs in its own process, as a user runs it."""
import json
import os
import subprocess
import sys

import pytest
from pyspark.testing import assertDataFrameEqual

from orchestrator.local.standalone import StandaloneCluster

START, END = "2016-01-04", "2016-01-11"
PARAMS = [f"--param={p}" for p in (f"start_date={START}", f"end_date={END}", "mlflow_experiment=standalone")]

pytestmark = pytest.mark.slow


def mlops(root, cluster, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env.update(MLOPS_HOME=str(root), MLOPS_SPARK_MASTER=cluster.url, MLOPS_SPARK_DRIVER_MEMORY="1g")
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def test_training_and_scoring_on_a_standalone_cluster(spark, tmp_path):
    root = tmp_path / "lakehouse"
    with StandaloneCluster(tmp_path / "cluster") as cluster:
        assert cluster.alive_workers() == 2
        mlops(root, cluster, "data", "generate", "--rows", "8000", "--start", START, "--end", END, "--seed", "4")
        trained = json.loads(mlops(root, cluster, "run", "training", "--local", "--json", *PARAMS,
                                   "--param=max_iter=20").stdout)
        assert trained["status"] == "SUCCESS"
        scored = json.loads(mlops(root, cluster, "run", "batch_scoring", "--local", "--json", *PARAMS).stdout)
        assert scored["status"] == "SUCCESS"
        executors = list((tmp_path / "cluster").glob("worker-*/app-*/*"))
        assert len({p.parent.parent.name for p in executors}) == 2, "both workers ran executors"
    trips = spark.read.format("delta").load(f"{root}/tables/raw_trips")
    predictions = spark.read.format("delta").load(f"{root}/tables/predictions")
    assertDataFrameEqual(predictions.select("trip_id"), trips.select("trip_id"))
