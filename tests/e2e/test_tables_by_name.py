"""Tables by Unity Catalog name: with ``table_schema`` every table is a managed table ``<catalog>.<schema>.<t>``.
Locally the names live in a catalog persisted under MLOPS_HOME (Hive metastore on embedded Derby), so two job runs
in separate processes share them, as two runs on Databricks share Unity Catalog."""
import json
import os
import subprocess
import sys

import pytest

START, END = "2016-01-04", "2016-01-11"
SCHEMA = "spark_catalog.taxi_fares"
PARAMS = [f"--param={p}" for p in (
    f"start_date={START}", f"end_date={END}", "mlflow_experiment=by_name", f"table_schema={SCHEMA}")]

pytestmark = pytest.mark.slow


def mlops(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(root)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=root)
    assert done.returncode == 0, f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def test_a_second_run_in_another_process_reads_the_first_runs_tables_by_name(spark, tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    generated = mlops(root, "data", "generate", "--rows", "8000", "--start", START, "--end", END, "--seed", "3",
                      "--table-schema", SCHEMA)
    assert f"wrote table 'raw_trips' at {SCHEMA}.raw_trips" in generated.stderr
    done = mlops(root, "run", "training", "--local", "--json", *PARAMS, "--param=max_iter=20")
    trained = json.loads(done.stdout)
    assert trained["status"] == "SUCCESS"
    # A quiet console: the stages and their durations, not Ivy, the wheel build or alembic.
    assert "stage training finished in" in done.stderr
    for chatter in ("found io.delta", ":: resolving dependencies", "alembic", "Getting build dependencies"):
        assert chatter not in done.stderr, chatter
    assert len(done.stderr.splitlines()) < 40, done.stderr
    assert trained["tables"]["pickup_features"] == f"{SCHEMA}.pickup_features"
    # A second process: no feature engineering, so scoring can only find the features by the first run's names.
    scored = json.loads(mlops(root, "run", "batch_scoring", "--local", "--json", *PARAMS,
                              "--param=execute_feature_engineering=false").stdout)
    assert scored["status"] == "SUCCESS"
    assert scored["tables"] == {"predictions": f"{SCHEMA}.predictions"}
    # Managed tables: in the warehouse under MLOPS_HOME, not in the path-mode folders.
    assert not (root / "tables").exists()
    warehouse = root / "warehouse" / "taxi_fares.db"
    trips = spark.read.format("delta").load(str(warehouse / "raw_trips")).count()
    predictions = spark.read.format("delta").load(str(warehouse / "predictions"))
    assert predictions.count() == trips == scored["stages"]["batch_scoring"]["rows"]
