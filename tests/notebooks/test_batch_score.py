# Databricks notebook source
# MAGIC %md
# MAGIC # Notebook tests (Nutter): the batch scoring job
# MAGIC
# MAGIC Trains a small champion with `orchestrator/notebooks/train` (promoted by `deploy`), then runs
# MAGIC `orchestrator/notebooks/batch_score` and asserts on its exit summary and the predictions table. Runs locally
# MAGIC with `mlops test-notebooks --local`, and on a workspace with `nutter run`.
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
from taxi_fares_mlops.storage import PREDICTIONS, RAW_TRIPS, Lakehouse

START, END = "2016-01-04", "2016-01-18"
SHARED = ["wheel_base_path", "wheel_version", "lakehouse_root", "mlflow_experiment", "model_name"]
PARAMS = {name: dbutils.widgets.get(name) for name in SHARED}
PARAMS.update(start_date=START, end_date=END)
FOLDER = dbutils.widgets.get("orchestrator_path").rstrip("/")
LAKEHOUSE = Lakehouse(dbutils.widgets.get("lakehouse_root"))


def predictions():
    return spark.read.format("delta").load(LAKEHOUSE.table_path(PREDICTIONS))


class BatchScoringNotebookTest(NutterFixture):
    def before_all(self):
        LAKEHOUSE.write(generate_trips(spark, 20_000, START, END, seed=12), RAW_TRIPS)
        trained = json.loads(dbutils.notebook.run(f"{FOLDER}/train", 3600, dict(PARAMS, max_iter="30")))
        self.champion = trained["stages"]["training"]["model_version"]
        # what the deployment job does for a new version: its promotion step makes the first one champion
        deploy = {name: PARAMS[name] for name in SHARED}
        dbutils.notebook.run(f"{FOLDER}/deploy", 3600, dict(deploy, model_version=self.champion,
                                                            deployment_task="promotion"))
        raw = spark.read.format("delta").load(LAKEHOUSE.table_path(RAW_TRIPS))
        self.trips_in_range = raw.filter((F.col("tpep_pickup_datetime") >= START)
                                         & (F.col("tpep_pickup_datetime") < END)).count()

    def run_a_scoring(self):
        self.first = json.loads(dbutils.notebook.run(f"{FOLDER}/batch_score", 3600, PARAMS))

    def assertion_a_scoring(self):
        assert self.first["status"] == "SUCCESS", self.first
        assert self.first["stages"]["batch_scoring"]["model_version"] == self.champion
        assert self.first["stages"]["batch_scoring"]["rows"] == self.trips_in_range
        assert predictions().count() == predictions().select("trip_id").distinct().count() == self.trips_in_range

    def run_b_rescoring_without_feature_engineering(self):
        params = dict(PARAMS, execute_feature_engineering="false")
        self.second = json.loads(dbutils.notebook.run(f"{FOLDER}/batch_score", 3600, params))

    def assertion_b_rescoring_without_feature_engineering(self):
        assert self.second["stages"]["feature_engineering"] == {"status": "SKIPPED"}
        assert predictions().count() == self.trips_in_range
        run_ids = [r[0] for r in predictions().select("mlflow_run_id").distinct().collect()]
        assert run_ids == [self.second["mlflow_run_id"]]


result = BatchScoringNotebookTest().execute_tests()
print(result.to_string())
result.exit(dbutils)
