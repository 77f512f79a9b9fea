# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: monitoring job
# MAGIC
# MAGIC Compares a scored date range with the champion's training profile (feature and prediction drift, outlier
# MAGIC share, realized error where fares are known). All logic lives in the wheels. It sets the task values
# MAGIC `status`, `retrain` and `mlflow_run_id`: the job's next task starts the training job when `retrain` is true.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `wheel_base_path`, `wheel_version` | the wheels, `<wheel_base_path>/<wheel_version>/*.whl` (deploy time) |
# MAGIC | `target_policy` | the target's gates, lakehouse, registry and wheels (deploy time: a run cannot change it) |
# MAGIC | `start_date`, `end_date` | the range `[start_date, end_date)` (YYYY-MM-DD) |
# MAGIC | `execute_feature_engineering`, `execute_monitoring` | stage toggles; this job has no feature stage |
# MAGIC | `model_name`, `mlflow_experiment`, `mlflow_registry_uri` | the registered model and the MLflow runs |
# MAGIC | `lakehouse_root` | where the tables are (Delta folders), the run folders and local stores |
# MAGIC | `table_schema` | `<catalog>.<schema>`: keep the tables by name there (empty: folders under `lakehouse_root`) |
# MAGIC | `validation_mode` | `fail` the job on invalid trips, or `quarantine` them (kept in `quarantined_trips`) |
# MAGIC | `secret_scope` | secret scope with `appinsights-connection-string` and `storage-connection-string` |
# MAGIC | `databricks_job_id`, `databricks_run_id` | set by the job (`{{job.id}}`, `{{job.run_id}}`) for telemetry |
# MAGIC | `model_alias`, `model_version` | the model whose predictions to judge: an alias, or a version number |
# MAGIC | `psi_threshold`, `ks_threshold` | PSI or KS statistic above which a feature has drifted |
# MAGIC | `outlier_rate_threshold` | share of trips the outlier detector flags above which the range is DRIFT |
# MAGIC | `rmse_degradation`, `min_rows` | rmse excess over the holdout that is DEGRADED; fewer rows: no verdict |
# MAGIC | `retrain_on_drift` | start the training job when the status is `DRIFT` or `DEGRADED` |
# MAGIC | `monitored_source` | `predictions` (batch scoring) or `inference_requests` (what was answered online) |

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

from taxi_fares_mlops.config import MonitoringConfig
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.stages.monitoring import retraining_task_values
from taxi_fares_mlops.logs import configure_logging

configure_logging()
MonitoringConfig.declare_widgets(dbutils)  # labelled, with dropdowns: from the one declaration
config = MonitoringConfig.from_widgets(dbutils)
summary = run_job(config, secrets=dbutils.secrets)

# COMMAND ----------

# DBTITLE 1,Tell the next task whether to retrain
for key, value in retraining_task_values(summary, config).items():
    dbutils.jobs.taskValues.set(key, value)

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary))
