# Databricks notebook source
# MAGIC %md
# MAGIC # Notebook tests (Nutter): the monitoring job's notebook
# MAGIC
# MAGIC Trains a small champion with `orchestrator/notebooks/train` (promoted by `deploy`) on two weeks, scores a third
# MAGIC week whose trip distances drifted (x1.5) with `orchestrator/notebooks/batch_score`, then runs
# MAGIC `orchestrator/notebooks/monitor` and asserts on its exit summary and the monitoring tables. Runs locally with
# MAGIC `mlops test-notebooks --local`, and on a workspace with `nutter run`.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `orchestrator_path` | folder of the orchestrator notebooks, relative to this one or absolute |
# MAGIC | `wheel_base_path`, `wheel_version` | the wheels under test |
# MAGIC | `lakehouse_root`, `mlflow_experiment`, `model_name` | where the test writes (keep them apart from real data) |

# COMMAND ----------

dbutils.widgets.text("orchestrator_path", "../../orchestrator/notebooks", "Orchestrator notebooks folder")
dbutils.widgets.text("wheel_base_path", "/Volumes/main/taxi_fares/wheels", "Wheel folder")
dbutils.widgets.text("wheel_version", "0.1.0", "Wheel version")
dbutils.widgets.text("lakehouse_root", "/Volumes/main/taxi_fares/notebook_tests", "Test lakehouse root")
dbutils.widgets.text("mlflow_experiment", "/Shared/taxi_fares_notebook_tests", "Test MLflow experiment")
dbutils.widgets.text("model_name", "taxi_fares_notebook_tests", "Test model name")

# COMMAND ----------

wheel_dir = f"{dbutils.widgets.get('wheel_base_path').rstrip('/')}/{dbutils.widgets.get('wheel_version')}"
ml_wheel = f"{wheel_dir}/taxi_fares-{dbutils.widgets.get('wheel_version')}-py3-none-any.whl"
mlops_wheel = f"{wheel_dir}/taxi_fares_mlops-{dbutils.widgets.get('wheel_version')}-py3-none-any.whl"

# COMMAND ----------

# MAGIC %pip install $ml_wheel $mlops_wheel

# COMMAND ----------

dbutils.library.restartPython()

# COMMAND ----------

import json

from pyspark.sql import functions as F
from runtime.nutterfixture import NutterFixture
from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.storage import DRIFT_METRICS, RAW_TRIPS, Lakehouse

START, END, WEEK = "2016-01-04", "2016-01-18", ("2016-01-18", "2016-01-25")
SHARED = ["wheel_base_path", "wheel_version", "lakehouse_root", "mlflow_experiment", "model_name"]
PARAMS = {name: dbutils.widgets.get(name) for name in SHARED}
FOLDER = dbutils.widgets.get("orchestrator_path").rstrip("/")
LAKEHOUSE = Lakehouse(dbutils.widgets.get("lakehouse_root"))
DRIFTED = dict(PARAMS, start_date=WEEK[0], end_date=WEEK[1])


def drift_rows():
    table = spark.read.format("delta").load(LAKEHOUSE.table_path(DRIFT_METRICS))
    return table.filter(F.col("window_start") == WEEK[0])


class MonitoringNotebookTest(NutterFixture):
    def before_all(self):
        history = generate_trips(spark, 20_000, START, END, seed=12)
        drifted = generate_trips(spark, 10_000, *WEEK, seed=13, shift={"trip_distance": 1.5})
        LAKEHOUSE.write(history.unionByName(drifted.withColumn("trip_id", F.col("trip_id") + 20_000)), RAW_TRIPS)
        trained = json.loads(dbutils.notebook.run(f"{FOLDER}/train", 3600,
                                                  dict(PARAMS, start_date=START, end_date=END, max_iter="30")))
        # what the deployment job does for a new version: its promotion step makes the first one champion
        version = trained["stages"]["training"]["model_version"]
        dbutils.notebook.run(f"{FOLDER}/deploy", 3600, dict(PARAMS, deployment_task="promotion", model_version=version))
        dbutils.notebook.run(f"{FOLDER}/batch_score", 3600, DRIFTED)

    def run_a_monitoring_a_drifted_week(self):
        self.first = json.loads(dbutils.notebook.run(f"{FOLDER}/monitor", 3600, DRIFTED))

    def assertion_a_monitoring_a_drifted_week(self):
        monitored = self.first["stages"]["monitoring"]
        assert monitored["status"] == "SUCCESS", self.first
        assert monitored["monitoring_status"] in ("DRIFT", "DEGRADED"), monitored
        assert "trip_distance" in monitored["drifted_features"]
        assert drift_rows().filter((F.col("feature") == "trip_distance") & F.col("breached")).count() >= 1

    def run_b_rerunning_the_week(self):
        self.rows = drift_rows().count()
        self.second = json.loads(dbutils.notebook.run(f"{FOLDER}/monitor", 3600, DRIFTED))

    def assertion_b_rerunning_the_week(self):
        assert drift_rows().count() == self.rows
        assert [r[0] for r in drift_rows().select("mlflow_run_id").distinct().collect()] == [
            self.second["mlflow_run_id"]]


result = MonitoringNotebookTest().execute_tests()
print(result.to_string())
result.exit(dbutils)
