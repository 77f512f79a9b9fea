"""``run_job``: the one call a notebook makes. It runs the stages the config turns on, in order, inside one
MLflow run, and returns a JSON-ready summary for ``dbutils.notebook.exit``.

The MLflow run always ends in a terminal state: FINISHED when every stage succeeded, FAILED otherwise (the
exception propagates so the Databricks task fails and its notifications fire).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

import mlflow
from pyspark.sql import SparkSession

from taxi_fares_mlops.config import (APPROVAL, BATCH_SCORING, FEATURE_ENGINEERING, MONITORING, PROMOTION,
                                     STREAMING_SCORING, TRAINING, VALIDATION, DeploymentConfig, MonitoringConfig,
                                     ScoringConfig, ScoringStreamConfig, TrainingConfig, known)
from taxi_fares_mlops import provenance, telemetry
from taxi_fares_mlops.credentials import Credentials
from taxi_fares_mlops.spark import get_spark
from taxi_fares_mlops.stage import StageContext, skip
from taxi_fares_mlops.stages import (batch_scoring, deployment, feature_engineering, monitoring, promotion,
                                     streaming_scoring, training, validation)
from taxi_fares_mlops.storage import Lakehouse
from taxi_fares_mlops.summary import SUCCESS, JobSummary
from taxi_fares_mlops.tracking import Tracking, end_stale_runs, process_tags, setup_experiment

logger = logging.getLogger(__name__)

STAGE_FUNCTIONS = {
    FEATURE_ENGINEERING: feature_engineering,
    TRAINING: training,
    PROMOTION: promotion,
    BATCH_SCORING: batch_scoring,
    MONITORING: monitoring,
    VALIDATION: validation,
    APPROVAL: deployment.approval,
    STREAMING_SCORING: streaming_scoring,
}

JobConfigType = Union[TrainingConfig, ScoringConfig, MonitoringConfig, ScoringStreamConfig, DeploymentConfig]


def run_job(config: JobConfigType, spark: Optional[SparkSession] = None, secrets: Any = None) -> dict:
    """Run the job described by ``config``; return its summary. Raises ``StageError`` if a stage fails.

    ``secrets`` is ``dbutils.secrets`` (or anything with ``get(scope, key)``): where credentials come from.
    """
    if spark is None and getattr(config, "needs_spark", True):
        spark = get_spark(f"taxi_fares.{config.job}", persistent_catalog=bool(config.table_schema))
    lakehouse = Lakehouse(config.lakehouse_root or None, config.table_schema or None)
    credentials = Credentials(secrets, config.secret_scope)
    if config.mlflow_registry_uri:
        mlflow.set_registry_uri(config.mlflow_registry_uri)
    experiment_id = setup_experiment(config.mlflow_experiment)
    run_name = f"{config.job} {config.run_range}"
    logger.info("job %s started (%s), lakehouse %s", config.job, run_name, lakehouse.root)
    with mlflow.start_run(run_name=run_name, tags={"job": config.job, **config.run_tags(), **process_tags()}) as run:
        mlflow.log_params(config.as_params())
        job_id, job_run_id = provenance.job_ids(run.data.tags, known(config.databricks_job_id),
                                                known(config.databricks_run_id))
        mlflow.set_tags(provenance.code_tags(job_id, job_run_id))
        end_stale_runs(experiment_id, config.job, run.info.run_id)
        context = StageContext(lakehouse, Tracking(run.info.run_id, experiment_id), credentials=credentials)
        observed = _start_telemetry(config, context)
        try:
            with telemetry.span(f"job {config.job}", kind="SERVER", record_exception=False, job=config.job):
                # a deployment's stages judge one version by its training run's parameters (stages.deployment)
                judged = deployment.judging_config(config, context.tracking) \
                    if isinstance(config, DeploymentConfig) else config
                for name in config.STAGES:
                    if config.stage_enabled(name):
                        STAGE_FUNCTIONS[name](spark, judged, context)
                    elif not isinstance(config, DeploymentConfig):  # a deployment task runs one step of three
                        skip(context, name, f"execute_{name}=false")
        finally:
            if observed is not None:
                observed.shutdown()
    logger.info("job %s finished; MLflow run %s", config.job, context.mlflow_run_id)
    return summarize(config, context).as_dict()


def _start_telemetry(config: JobConfigType, context: StageContext) -> Optional[telemetry.Telemetry]:
    attributes = {"mlflow_run_id": context.mlflow_run_id, "mlflow_experiment_id": context.mlflow_experiment_id,
                  "databricks_job_id": known(config.databricks_job_id),
                  "databricks_run_id": known(config.databricks_run_id)}
    connection = context.credentials.get(telemetry.CONNECTION_STRING_SECRET, telemetry.CONNECTION_STRING_ENV)
    local_file = None
    if not connection and context.lakehouse.is_local:
        local_file = Path(context.lakehouse.path("runs", context.mlflow_run_id, "telemetry.jsonl"))
    if not connection and local_file is None:
        logger.info("telemetry is off: no connection string and the lakehouse is not a local folder")
        return None
    return telemetry.Telemetry.start(config.job, attributes, connection, local_file)


def summarize(config: JobConfigType, context: StageContext) -> JobSummary:
    scoring = context.results.get(BATCH_SCORING)
    scored = scoring.outputs["model_version"] if scoring is not None and scoring.status == SUCCESS else None
    return JobSummary(config.job, SUCCESS, context.mlflow_run_id, context.mlflow_experiment_id,
                      str(config.start_date or ""), str(config.end_date or ""), dict(context.results),
                      {t: context.lakehouse.location(t) for t in context.tables_written}, config.model_name,
                      context.tracking.registry(config.model_name).aliases(), scored)
