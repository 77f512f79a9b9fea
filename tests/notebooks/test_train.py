# Databricks notebook source
# MAGIC %md
# MAGIC # Notebook tests (Nutter): the training job
# MAGIC
# MAGIC Runs `orchestrator/notebooks/train` with small parameters on its own lakehouse and asserts on its exit summary
# MAGIC and tables. Runs locally with `mlops test-notebooks --local`, and on a workspace with `nutter run`.
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

from runtime.nutterfixture import NutterFixture
from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.storage import PICKUP_FEATURES, RAW_TRIPS, Lakehouse

START, END = "2016-01-04", "2016-01-18"
SHARED = ["wheel_base_path", "wheel_version", "lakehouse_root", "mlflow_experiment", "model_name"]
PARAMS = {name: dbutils.widgets.get(name) for name in SHARED}
PARAMS.update(start_date=START, end_date=END, max_iter="30", max_training_rows="50000")
NOTEBOOK = f"{dbutils.widgets.get('orchestrator_path').rstrip('/')}/train"
LAKEHOUSE = Lakehouse(dbutils.widgets.get("lakehouse_root"))


class TrainingNotebookTest(NutterFixture):
    def before_all(self):
        LAKEHOUSE.write(generate_trips(spark, 20_000, START, END, seed=11), RAW_TRIPS)

    def run_a_first_training(self):
        self.first = json.loads(dbutils.notebook.run(NOTEBOOK, 3600, PARAMS))

    def assertion_a_first_training(self):
        assert self.first["status"] == "SUCCESS", self.first
        # the training job trains and registers; validation and promotion are the deployment job's
        assert {name: s["status"] for name, s in self.first["stages"].items()} == {
            "feature_engineering": "SUCCESS", "training": "SUCCESS", "validation": "SKIPPED", "promotion": "SKIPPED"}
        metrics = self.first["stages"]["training"]["metrics"]
        assert metrics["rmse"] < 0.7 * metrics["baseline_rmse"], metrics
        version = self.first["stages"]["training"]["model_version"]
        assert self.first["model"]["aliases"] == {"challenger": version}
        assert spark.read.format("delta").load(LAKEHOUSE.table_path(PICKUP_FEATURES)).count() > 0

    def run_b_retraining_without_feature_engineering(self):
        params = dict(PARAMS, execute_feature_engineering="false", max_iter="1", learning_rate="0.01")
        self.second = json.loads(dbutils.notebook.run(NOTEBOOK, 3600, params))

    def assertion_b_retraining_without_feature_engineering(self):
        stages = self.second["stages"]
        assert stages["feature_engineering"] == {"status": "SKIPPED"}
        assert stages["promotion"] == {"status": "SKIPPED"}
        assert stages["training"]["model_version"] != self.first["stages"]["training"]["model_version"]
        assert self.second["model"]["aliases"] == {"challenger": stages["training"]["model_version"]}


result = TrainingNotebookTest().execute_tests()
print(result.to_string())
result.exit(dbutils)
