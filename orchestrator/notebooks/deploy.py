# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: deployment job
# MAGIC
# MAGIC One step of deploying one registered version: validation, approval or promotion (the task's
# MAGIC `deployment_task`). A new version of the model starts the job (`trigger.model`, MODEL_VERSION_READY) with
# MAGIC `model_name` and `model_version`. All logic lives in the wheels.
# MAGIC
# MAGIC | parameter | meaning |
# MAGIC |---|---|
# MAGIC | `wheel_base_path`, `wheel_version` | the wheels, `<wheel_base_path>/<wheel_version>/*.whl` (deploy time) |
# MAGIC | `target_policy` | the target's gates, lakehouse, registry and wheels (deploy time: a run cannot change it) |
# MAGIC | `deployment_task` | `validation`, `approval` or `promotion`: the task's step (deploy time) |
# MAGIC | `model_name`, `model_version` | the version to deploy (empty version: the newest) |
# MAGIC | `mlflow_experiment`, `mlflow_registry_uri` | the MLflow runs and the registry |
# MAGIC | `lakehouse_root`, `table_schema` | where the tables are (the holdout: at the versions training read) |
# MAGIC | `secret_scope` | secret scope with `appinsights-connection-string` |
# MAGIC | `databricks_job_id`, `databricks_run_id` | set by the job (`{{job.id}}`, `{{job.run_id}}`) |
# MAGIC | `model_validation`, `max_rmse`, `min_r2`, `regression_margin` | validation: mode and thresholds |
# MAGIC | `require_approval` | hold the version until `mlops approve --model M --version N` tags it approved |
# MAGIC | `promotion_margin`, `force_promote` | relative rmse gain needed to replace the champion; operator override |

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

from taxi_fares_mlops.config import DeploymentConfig
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.logs import configure_logging

configure_logging()
DeploymentConfig.declare_widgets(dbutils)  # labelled, with dropdowns: from the one declaration
summary = run_job(DeploymentConfig.from_widgets(dbutils), secrets=dbutils.secrets)

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary))
