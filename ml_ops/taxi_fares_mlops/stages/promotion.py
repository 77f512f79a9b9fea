"""Promotion: challenger vs champion on the same holdout; 'champion' moves only if the challenger is better.

The challenger wins when no champion exists, when ``force_promote`` is set (recorded as such), or when its rmse
is at least ``promotion_margin`` (relative) below the champion's, unless validation ran with
``model_validation=enabled`` and failed: then the champion stays (``blocked_by_validation``), forced or not.
With ``require_approval`` a winning challenger is held (``awaiting_approval``, version tag ``approval.status``
PENDING, and ``approval.judged_against`` the champion version it was compared with) until an operator runs
``mlops approve``, which refuses it if the champion has moved since.
Both scores and the decision go to MLflow; scores the validation stage computed are not computed again.
"""
from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from taxi_fares.features import LABEL
from taxi_fares.model import spark_regression_metrics
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import PROMOTION, VALIDATION, TrainingConfig
from taxi_fares_mlops.datasets import training_and_holdout
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.summary import SUCCESS
from taxi_fares_mlops.errors import RegistryError
from taxi_fares_mlops.spark import get_spark
from taxi_fares_mlops.stages.validation import recorded
from taxi_fares_mlops.tracking import (APPROVAL_TAG, APPROVAL_TASK, APPROVED_VALUE, JUDGED_AGAINST_TAG,
                                       NO_CHAMPION, PENDING)

logger = logging.getLogger(__name__)

PROMOTED, KEPT, FORCED, FIRST, ALREADY = "promoted", "kept_champion", "forced", "first_champion", "already_champion"
BLOCKED = "blocked_by_validation"
AWAITING = "awaiting_approval"


def decide(challenger_rmse: float, champion_rmse: float | None, margin: float, force: bool) -> str:
    """The promotion decision, as one of the constants above."""
    if champion_rmse is None:
        return FIRST
    if force:
        return FORCED
    return PROMOTED if challenger_rmse <= champion_rmse * (1.0 - margin) else KEPT


@stage(PROMOTION)
def promotion(spark: SparkSession, config: TrainingConfig, context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    challenger, champion = registry.contenders(config.deployed_version)
    if champion is not None and champion.version == challenger.version:
        context.tracking.set_tags({"promotion.decision": ALREADY})
        return _outcome(ALREADY, champion.version, challenger.version, None, None)

    validation = context.results.get(VALIDATION)
    validated = validation.outputs if validation is not None and validation.status == SUCCESS else None
    if validated is None and config.deployed_version is not None:  # the deployment's validation step, its own run
        validated = recorded(registry.version_tags(challenger.version), challenger.version)
    if validated and validated["challenger_version"] == challenger.version and (
            validated["champion_version"] == (champion.version if champion else None)):
        challenger_rmse, champion_rmse = validated["challenger_rmse"], validated["champion_rmse"]
    else:
        # a deployment's promotion step starts no Spark unless the recorded scores are stale
        spark = spark or get_spark("taxi_fares.promotion", persistent_catalog=bool(config.table_schema))
        _, holdout = training_and_holdout(spark, context.lakehouse.as_of(config.table_versions.as_dict()), config)
        holdout = holdout.cache()
        try:
            challenger_rmse = _rmse(spark, context, holdout, challenger)
            champion_rmse = _rmse(spark, context, holdout, champion) if champion else None
        finally:
            holdout.unpersist()

    decision = decide(challenger_rmse, champion_rmse, config.promotion_margin, config.force_promote)
    failed_validation = validated and validated["mode"] == "enabled" and validated["validation_status"] != "PASSED"
    if failed_validation:
        logger.warning("promotion: challenger v%s failed validation (%s): the champion stays", challenger.version,
                       validated["failed"])
        decision = BLOCKED
    if config.deployed_version is not None and config.require_approval and not registry.is_approved(
            challenger.version):  # the approval step passed, or this step was run alone: refused either way
        raise RegistryError(f"model '{config.model_name}' version {challenger.version} is not approved (tag "
                            f"{APPROVAL_TASK}={APPROVED_VALUE}): `mlops approve` it, then repair the run")
    if decision in (PROMOTED, FORCED, FIRST) and config.require_approval and config.deployed_version is None:
        # What the decision rests on, written before the hold: `mlops approve` refuses it once the champion moved.
        registry.set_version_tag(challenger.version, JUDGED_AGAINST_TAG, champion.version if champion else NO_CHAMPION)
        registry.set_version_tag(challenger.version, "approval.decision", decision)
        registry.set_version_tag(challenger.version, APPROVAL_TAG, PENDING)
        logger.warning("promotion: challenger v%s would be %s; it waits for `mlops approve --model %s --version %s`",
                       challenger.version, decision, config.model_name, challenger.version)
        decision = AWAITING
    metrics = {"promotion.challenger_rmse": challenger_rmse}
    if champion_rmse is not None:
        metrics["promotion.champion_rmse"] = champion_rmse
    context.tracking.log_metrics(metrics)
    context.tracking.set_tags({"promotion.decision": decision,
                               "promotion.force_promote": str(config.force_promote).lower(),
                               "promotion.challenger_version": challenger.version,
                               "promotion.champion_version": champion.version if champion else ""})
    if decision in (PROMOTED, FORCED, FIRST):
        registry.promote(challenger)
        champion_version = challenger.version
    else:
        champion_version = champion.version if champion else None
    logger.info("promotion: %s (challenger v%s rmse %.4f, champion %s rmse %s)", decision, challenger.version,
                challenger_rmse, f"v{champion.version}" if champion else "none",
                f"{champion_rmse:.4f}" if champion_rmse is not None else "-")
    return _outcome(decision, champion_version, challenger.version, challenger_rmse, champion_rmse)


def _outcome(decision: str, champion_version: str, challenger_version: str, challenger_rmse: float | None,
             champion_rmse: float | None) -> dict:
    """The stage's outputs: the same keys on every branch (None where a score was not computed)."""
    return {"decision": decision, "champion_version": champion_version, "challenger_version": challenger_version,
            "challenger_rmse": round(challenger_rmse, 4) if challenger_rmse is not None else None,
            "champion_rmse": round(champion_rmse, 4) if champion_rmse is not None else None}


def _rmse(spark, context: StageContext, holdout, model) -> float:
    with telemetry.span("score holdout", model_version=model.version):
        return spark_regression_metrics(context.tracking.score(spark, holdout, model), LABEL, "prediction")["rmse"]
