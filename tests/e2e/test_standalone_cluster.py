"""Jobs on a Spark standalone cluster on loopback (one master, two workers with their own executor JVMs and Python
workers), as on a Databricks cluster, with every table by name, as Unity Catalog holds them: what only works when
the driver and the executors share a process fails here, and so does a run that cannot find the tables an earlier
run wrote. Each command runs in its own process, as a user runs it. The names live in a catalog persisted under
MLOPS_HOME (Hive metastore on embedded Derby), so runs in separate processes share them, as two runs on
Databricks share Unity Catalog.

(One test for both: each job run here starts a driver and two executor JVMs, the slowest thing the suite does.)"""
import json
import os
import subprocess
import sys

import pytest
from pyspark.testing import assertDataFrameEqual

from orchestrator.local.standalone import StandaloneCluster

START, END = "2016-01-04", "2016-01-11"
SCHEMA = "spark_catalog.taxi_fares"
PARAMS = [f"--param={p}" for p in (
    f"start_date={START}", f"end_date={END}", "mlflow_experiment=standalone", f"table_schema={SCHEMA}")]

pytestmark = pytest.mark.slow


def mlops(root, cluster, *args):
    """``mlops ARGS`` in a process of its own, its jobs on ``cluster`` (None: the default local Spark)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env.update(MLOPS_HOME=str(root), MLOPS_SPARK_DRIVER_MEMORY="1g")
    if cluster is not None:
        env["MLOPS_SPARK_MASTER"] = cluster.url
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=root)
    assert done.returncode == 0, f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def test_training_and_scoring_on_a_standalone_cluster_with_tables_by_name(spark, tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    generated = mlops(root, None, "data", "generate", "--rows", "8000", "--start", START, "--end", END,
                      "--seed", "4", "--table-schema", SCHEMA)
    assert f"wrote table 'raw_trips' at {SCHEMA}.raw_trips" in generated.stderr
    with StandaloneCluster(tmp_path / "cluster") as cluster:
        assert cluster.alive_workers() == 2
        done = mlops(root, cluster, "run", "training", "--local", "--json", *PARAMS, "--param=max_iter=20")
        trained = json.loads(done.stdout)
        assert trained["status"] == "SUCCESS"
        assert trained["tables"]["pickup_features"] == f"{SCHEMA}.pickup_features"
        # A quiet console: the stages and their durations, not Ivy, the wheel build or alembic.
        assert "stage training finished in" in done.stderr
        for chatter in ("found io.delta", ":: resolving dependencies", "alembic", "Getting build dependencies"):
            assert chatter not in done.stderr, chatter
        # (training's stages, then the deployment job's three steps on the version it registered)
        assert len(done.stderr.splitlines()) < 80, done.stderr
        assert "deployment job on taxi_fares version 1: SUCCESS" in done.stderr
        # Another process, no feature engineering: scoring can only find the features by the first run's names.
        scored = json.loads(mlops(root, cluster, "run", "batch_scoring", "--local", "--json", *PARAMS,
                                  "--param=execute_feature_engineering=false").stdout)
        assert scored["status"] == "SUCCESS"
        assert scored["tables"] == {"predictions": f"{SCHEMA}.predictions"}
        executors = list((tmp_path / "cluster").glob("worker-*/app-*/*"))
        assert len({p.parent.parent.name for p in executors}) == 2, "both workers ran executors"
    # Managed tables: in the warehouse under MLOPS_HOME, not in the path-mode folders.
    assert not (root / "tables").exists()
    warehouse = root / "warehouse" / "taxi_fares.db"
    trips = spark.read.format("delta").load(str(warehouse / "raw_trips"))
    predictions = spark.read.format("delta").load(str(warehouse / "predictions"))
    assert predictions.count() == scored["stages"]["batch_scoring"]["rows"]
    assertDataFrameEqual(predictions.select("trip_id"), trips.select("trip_id"))
