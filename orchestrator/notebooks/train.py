# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: training job
# MAGIC
# MAGIC Feature engineering, training and promotion for one date range. All logic lives in the wheels.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `wheel_base_path`, `wheel_version` | where the wheels are: `<wheel_base_path>/<wheel_version>/*.whl` |
# MAGIC | `start_date`, `end_date` | the range `[start_date, end_date)` (YYYY-MM-DD) |
# MAGIC | `execute_feature_engineering`, `execute_training`, `execute_promotion` | stage toggles (`true`/`false`) |
# MAGIC | `model_name`, `mlflow_experiment`, `mlflow_registry_uri` | the registered model and the MLflow runs |
# MAGIC | `lakehouse_root` | where the tables go (Delta folders), the run folders and local stores |
# MAGIC | `table_schema` | `<catalog>.<schema>`: keep the tables by name there (empty: folders under `lakehouse_root`) |
# MAGIC | `validation_mode` | `fail` or `quarantine` (drop) invalid trips |
# MAGIC | `secret_scope` | secret scope with `appinsights-connection-string` and `storage-connection-string` |
# MAGIC | `databricks_job_id`, `databricks_run_id` | set by the job (`{{job.id}}`, `{{job.run_id}}`) for telemetry |
# MAGIC | `holdout_fraction`, `max_training_rows` | holdout share; training sample bound (driver memory) |
# MAGIC | `promotion_margin`, `force_promote` | relative rmse gain needed to replace the champion; operator override |
# MAGIC | `learning_rate`, `max_iter`, `max_depth`, `max_leaf_nodes` | hyperparameters |
# MAGIC | `min_samples_leaf`, `l2_regularization`, `random_state` | hyperparameters |

# COMMAND ----------

# DBTITLE 1,Parameters
dbutils.widgets.text("wheel_base_path", "/Volumes/main/taxi_fares/wheels", "Wheel folder")
dbutils.widgets.text("wheel_version", "0.1.0", "Wheel version")
dbutils.widgets.text("start_date", "2016-01-01", "First day of the data range (YYYY-MM-DD)")
dbutils.widgets.text("end_date", "2016-03-01", "Day after the last day of the range (YYYY-MM-DD)")
dbutils.widgets.dropdown("execute_feature_engineering", "true", ["true", "false"], "Run feature engineering")
dbutils.widgets.dropdown("execute_training", "true", ["true", "false"], "Run training")
dbutils.widgets.dropdown("execute_promotion", "true", ["true", "false"], "Run promotion")
dbutils.widgets.text("model_name", "taxi_fares", "Registered model name")
dbutils.widgets.text("mlflow_experiment", "/Shared/taxi_fares", "MLflow experiment path")
dbutils.widgets.text("mlflow_registry_uri", "", "MLflow registry URI (empty: the workspace's; databricks-uc)")
dbutils.widgets.text("lakehouse_root", "", "Lakehouse root (empty: the runtime default)")
dbutils.widgets.text("table_schema", "", "Tables by name in <catalog>.<schema> (empty: Delta folders)")
dbutils.widgets.dropdown("validation_mode", "quarantine", ["fail", "quarantine"], "What to do with invalid trips")
dbutils.widgets.text("secret_scope", "taxi-fares", "Secret scope with the telemetry and storage credentials")
dbutils.widgets.text("databricks_job_id", "", "Databricks job id (the job passes {{job.id}})")
dbutils.widgets.text("databricks_run_id", "", "Databricks run id (the job passes {{job.run_id}})")
dbutils.widgets.text("holdout_fraction", "0.2", "Holdout fraction")
dbutils.widgets.text("max_training_rows", "1000000", "Rows sampled for training (bounds driver memory)")
dbutils.widgets.text("promotion_margin", "0.0", "Relative rmse gain the challenger needs over the champion")
dbutils.widgets.dropdown("force_promote", "false", ["true", "false"], "Promote the challenger whatever its score")
dbutils.widgets.text("learning_rate", "0.1", "Learning rate")
dbutils.widgets.text("max_iter", "200", "Boosting iterations")
dbutils.widgets.text("max_depth", "0", "Maximum tree depth (0: unlimited)")
dbutils.widgets.text("max_leaf_nodes", "31", "Maximum leaves per tree")
dbutils.widgets.text("min_samples_leaf", "20", "Minimum samples per leaf")
dbutils.widgets.text("l2_regularization", "0.0", "L2 regularization")
dbutils.widgets.text("random_state", "42", "Random seed")

# COMMAND ----------

# DBTITLE 1,Wheels to install
wheel_dir = f"{dbutils.widgets.get('wheel_base_path').rstrip('/')}/{dbutils.widgets.get('wheel_version')}"
ml_wheel = f"{wheel_dir}/taxi_fares-{dbutils.widgets.get('wheel_version')}-py3-none-any.whl"
mlops_wheel = f"{wheel_dir}/taxi_fares_mlops-{dbutils.widgets.get('wheel_version')}-py3-none-any.whl"

# COMMAND ----------

# MAGIC %pip install $ml_wheel $mlops_wheel

# COMMAND ----------

dbutils.library.restartPython()

# COMMAND ----------

# DBTITLE 1,Run the job
import json
import logging

from taxi_fares_mlops.config import TrainingConfig
from taxi_fares_mlops.jobs import run_job

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
summary = run_job(TrainingConfig.from_widgets(dbutils), secrets=dbutils.secrets)

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary))
