# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: incremental scoring job
# MAGIC
# MAGIC Scores the trips committed to `raw_trips` since the last run (a Delta stream with its checkpoint under the
# MAGIC lakehouse), their feature windows recomputed first, with the batch jobs' code, and stops (`available_now`)
# MAGIC or keeps going (`continuous`). Deployed with a `table_update` trigger on `raw_trips` where the tables are in
# MAGIC Unity Catalog. All logic lives in the wheels.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `wheel_base_path`, `wheel_version` | the wheels, `<wheel_base_path>/<wheel_version>/*.whl` (deploy time) |
# MAGIC | `target_policy` | the target's gates, lakehouse, registry and wheels (deploy time: a run cannot change it) |
# MAGIC | `model_name`, `mlflow_experiment`, `mlflow_registry_uri` | the registered model and the MLflow runs |
# MAGIC | `lakehouse_root` | where the tables and the stream's checkpoint are |
# MAGIC | `table_schema` | `<catalog>.<schema>`: keep the tables by name there (empty: folders under `lakehouse_root`) |
# MAGIC | `execute_feature_engineering` | recompute the feature windows each micro-batch's trips fall in, first |
# MAGIC | `validation_mode` | `fail` the job on invalid trips, or `quarantine` them (kept in `quarantined_trips`) |
# MAGIC | `secret_scope` | secret scope with `appinsights-connection-string` |
# MAGIC | `databricks_job_id`, `databricks_run_id` | set by the job (`{{job.id}}`, `{{job.run_id}}`) for telemetry |
# MAGIC | `model_alias`, `model_version` | the model to score with: an alias, or a version number that overrides it |
# MAGIC | `trigger_mode` | `available_now`: score what arrived, then stop; `continuous`: keep scoring |
# MAGIC | `processing_interval_seconds` | seconds between micro-batches in `continuous` mode |
# MAGIC | `max_files_per_trigger` | files of `raw_trips` one micro-batch reads at most |
# MAGIC | `feature_watermark_hours` | how late a trip may arrive and still update its feature windows |

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

from taxi_fares_mlops.config import ScoringStreamConfig
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.logs import configure_logging

configure_logging()
ScoringStreamConfig.declare_widgets(dbutils)  # labelled, with dropdowns: from the one declaration
summary = run_job(ScoringStreamConfig.from_widgets(dbutils), secrets=dbutils.secrets)

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary))
