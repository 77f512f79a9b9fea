# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: training job
# MAGIC
# MAGIC Feature engineering, training, profiling and registration for one date range; the deployment job judges
# MAGIC each version registered (validation, approval, promotion). All logic lives in the wheels.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `wheel_base_path`, `wheel_version` | the wheels, `<wheel_base_path>/<wheel_version>/*.whl` (deploy time) |
# MAGIC | `target_policy` | the target's gates, lakehouse, registry and wheels (deploy time: a run cannot change it) |
# MAGIC | `start_date`, `end_date` | the range `[start_date, end_date)` (YYYY-MM-DD) |
# MAGIC | `execute_feature_engineering`, `execute_training` | stage toggles (`true`/`false`) |
# MAGIC | `model_name`, `mlflow_experiment`, `mlflow_registry_uri` | the registered model and the MLflow runs |
# MAGIC | `lakehouse_root` | where the tables go (Delta folders), the run folders and local stores |
# MAGIC | `table_schema` | `<catalog>.<schema>`: keep the tables by name there (empty: folders under `lakehouse_root`) |
# MAGIC | `validation_mode` | `fail` the job on invalid trips, or `quarantine` them (kept in `quarantined_trips`) |
# MAGIC | `secret_scope` | secret scope with `appinsights-connection-string` and `storage-connection-string` |
# MAGIC | `databricks_job_id`, `databricks_run_id` | set by the job (`{{job.id}}`, `{{job.run_id}}`) for telemetry |
# MAGIC | `holdout_fraction`, `max_training_rows` | holdout share; training sample bound (driver memory) |
# MAGIC | `retrain_reason`, `triggered_by` | why this run retrains and the MLflow run that started it (tagged) |
# MAGIC | `table_versions` | retrain on these Delta versions (`raw_trips=3,...`, as `mlops lineage` prints them) |
# MAGIC | `learning_rate`, `max_iter`, `max_depth`, `max_leaf_nodes` | hyperparameters |
# MAGIC | `min_samples_leaf`, `l2_regularization`, `random_state` | hyperparameters |

# COMMAND ----------

# DBTITLE 1,Wheels to install
# Fixed at deploy time: the deployer writes these three as the task's base parameters, never as job parameters
# (the Jobs API refuses a run naming a parameter the job does not define). The job's own widgets come from its config.
dbutils.widgets.text("wheel_base_path", "/Volumes/main/taxi_fares/wheels", "Wheel folder (deploy time)")
dbutils.widgets.text("wheel_version", "0.1.0", "Wheel version (deploy time)")
dbutils.widgets.text("target_policy", "", "Target policy (deploy time)")
import json

deployed = json.loads(dbutils.widgets.get("target_policy") or "{}")
for name in ("wheel_base_path", "wheel_version"):  # a job that still declares them as job parameters: refused
    if deployed and dbutils.widgets.get(name) != deployed.get(name):
        raise ValueError(f"{name} '{dbutils.widgets.get(name)}' is not the deployed '{deployed.get(name)}': the "
                         f"wheels are fixed at deploy time; redeploy (mlops deploy) instead of overriding them")
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

from taxi_fares_mlops.config import TrainingConfig
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.logs import configure_logging

configure_logging()
TrainingConfig.declare_widgets(dbutils)  # labelled, with dropdowns: from the one declaration
summary = run_job(TrainingConfig.from_widgets(dbutils), secrets=dbutils.secrets)

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary))
