"""The deployment job's steps for one registered version: what it is judged on, and the approval gate.

A deployment judges the version that started it on its own training run's holdout: the run's range, holdout
fraction, seed and validation mode, and the Delta versions it read (``mlops lineage`` prints them), with the
deployment job's gates (validation mode and thresholds, promotion margin, approval). ``judging_config`` builds that
``TrainingConfig``; the validation and promotion stages take it as they take a training run's.

The approval step follows Databricks' deployment-job example: it passes once the version carries a tag whose key
is the task's name (``approval``) and whose value is ``approved``. Until then it records the hold on the version
(``approval.status`` PENDING, the champion it waits against) and fails the task: an operator approves with
``mlops approve --model M --version N`` (which sets the tag) and repairs the run, whose promotion step then judges
and promotes. With ``require_approval`` false it passes at once. Both the hold and the pass name what the version
did online against the champion, when the monitoring job on the inference table recorded it (its ``online.*``
tags: a shadow or A/B comparison), so the person approving sees it.
"""
from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from taxi_fares_mlops import provenance
from taxi_fares_mlops.config import (APPROVAL, CHAMPION, TRAINING_PARAMETERS, DeploymentConfig, TrainingConfig,
                                     known)
from taxi_fares_mlops.errors import RegistryError
from taxi_fares_mlops.online_traffic import describe_comparison
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.tracking import (APPROVAL_TAG, APPROVAL_TASK, APPROVED_VALUE, HELD_BY_DEPLOYMENT_TAG,
                                       JUDGED_AGAINST_TAG, NO_CHAMPION, PENDING, Tracking, read_lineage)

logger = logging.getLogger(__name__)

NOT_REQUIRED, APPROVED = "not_required", "approved"
# What the deployment's run parameters say, not the training run's.
_DEPLOYMENT_OWN = ("model_name", "mlflow_experiment", "mlflow_registry_uri", "lakehouse_root", "table_schema",
                   "secret_scope")


def judging_config(config: DeploymentConfig, tracking: Tracking) -> TrainingConfig:
    """The version's training parameters with the deployment's gates: what validation and promotion judge it by.
    The version is the one given, else the newest (a trigger that fired for several versions at once)."""
    registry = tracking.registry(config.model_name)
    version = config.model_version or registry.newest_version()
    lineage = read_lineage(config.model_name, version)
    trained = tracking.run_params(lineage.run_id)
    values = {p.name: trained.get(p.name, p.default) for p in TRAINING_PARAMETERS}
    own = config.as_params()
    values.update({name: own[name] for name in _DEPLOYMENT_OWN}, **config.gates(),
                  databricks_job_id="", databricks_run_id="")  # the deployment's run carries its own ids
    if lineage.tables and len(lineage.table_versions) == len(lineage.tables):
        # the holdout as training saw it, whatever the tables hold now
        values.update(table_versions=provenance.format_tables(lineage.table_versions),
                      execute_feature_engineering="false")
    judged = TrainingConfig.from_mapping(values)
    object.__setattr__(judged, "deployed_version", version)  # not a parameter: what this deployment judges
    return judged


@stage(APPROVAL)
def approval(spark: SparkSession, config: TrainingConfig, context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    version = str(config.deployed_version)
    if not config.require_approval:
        return {"approval": NOT_REQUIRED, "model_version": version}
    # what the version did online against the champion, as the monitoring of online traffic recorded it
    online = describe_comparison(registry.version_tags(version))
    if registry.is_approved(version):
        logger.info("approval: model %s version %s carries %s=%s; %s", config.model_name, version, APPROVAL_TASK,
                    APPROVED_VALUE, online)
        return {"approval": APPROVED, "model_version": version, "online": online}
    champion = registry.aliases().get(CHAMPION) or NO_CHAMPION
    registry.set_version_tags(version, {JUDGED_AGAINST_TAG: champion, APPROVAL_TAG: PENDING,
                                        HELD_BY_DEPLOYMENT_TAG: known(config_run_id(context)) or "local"})
    raise RegistryError(f"model '{config.model_name}' version {version} waits for approval (tag "
                        f"{APPROVAL_TASK}={APPROVED_VALUE}): approve it with `mlops approve --model "
                        f"{config.model_name} --version {version}`, then repair this run (its promotion step "
                        f"judges and promotes it); {online}")


def config_run_id(context: StageContext) -> str:
    """The Databricks run of this deployment, as the run's provenance tags record it ("" locally)."""
    return context.tracking.run_tags(context.mlflow_run_id).get(provenance.RUN_ID, "")
