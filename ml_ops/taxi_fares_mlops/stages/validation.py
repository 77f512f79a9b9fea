"""Validation: checks a challenger must pass before promotion (the MLOps Stacks pattern).

On the training holdout (the same rows promotion compares on): absolute thresholds (``max_rmse``, ``min_r2``),
no regression over the champion beyond ``regression_margin`` overall and on any pickup-hour slice, and the same
input signature as the champion's. Every check is a row of ``model_validations`` (appended: each validation is
an event of one model version) and an MLflow metric; the run is tagged ``validation.status`` PASSED or FAILED.

``model_validation``: ``disabled`` skips the stage; ``dry_run`` records and lets promotion decide as if nothing
failed; ``enabled`` makes promotion keep the champion when a check fails. The challenger's and champion's
holdout rmse are handed to promotion, which does not score the holdout again.
"""
from __future__ import annotations

import logging
import math

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.features import LABEL, PICKUP_HOUR
from taxi_fares.model import spark_regression_metrics
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.config import VALIDATION, TrainingConfig
from taxi_fares_mlops.datasets import training_and_holdout
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.storage import MODEL_VALIDATIONS

logger = logging.getLogger(__name__)

PASSED, FAILED = "PASSED", "FAILED"
STATUS_TAG = "validation.status"
CHAMPION_TAG = "validation.champion_version"  # on a deployed version: the champion it was validated against


def recorded(tags: dict[str, str], version: str) -> dict | None:
    """A deployed version's validation as its tags record it, in the stage's output keys; None if not recorded."""
    if STATUS_TAG not in tags or "validation.challenger_rmse" not in tags:
        return None
    return {"validation_status": tags[STATUS_TAG], "mode": tags.get("validation.mode", ""),
            "failed": tags.get("validation.failed", ""), "challenger_version": version,
            "champion_version": tags.get(CHAMPION_TAG) or None,
            "challenger_rmse": float(tags["validation.challenger_rmse"]),
            "champion_rmse": float(tags["validation.champion_rmse"]) if tags.get("validation.champion_rmse") else None}


# Pickup-hour slices the challenger may not regress on: night, morning rush, midday, evening rush, evening.
SLICES = (("night", 0, 6), ("morning_rush", 6, 10), ("midday", 10, 16), ("evening_rush", 16, 20),
          ("evening", 20, 24))


def _slice_of(hour) -> F.Column:
    expression = F.lit(None)
    for name, low, high in reversed(SLICES):
        expression = F.when((hour >= low) & (hour < high), F.lit(name)).otherwise(expression)
    return expression


def slice_rmse(scored: DataFrame) -> dict[str, float]:
    """rmse per pickup-hour slice, one aggregation."""
    err = F.col("prediction") - F.col(LABEL).cast("double")
    rows = (scored.groupBy(_slice_of(F.col(PICKUP_HOUR)).alias("slice"))
            .agg(F.count(F.lit(1)).alias("n"), F.sum(err * err).alias("ss")).collect())
    return {r["slice"]: math.sqrt(r["ss"] / r["n"]) for r in rows if r["slice"] is not None and r["n"]}


@stage(VALIDATION)
def validation(spark: SparkSession, config: TrainingConfig, context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    challenger, champion = registry.contenders(config.deployed_version)
    if champion is not None and champion.version == challenger.version:
        champion = None  # nothing to compare with: the challenger already is the champion

    # the tables at the versions the config names (a deployment: those the version's training read)
    _, holdout = training_and_holdout(spark, context.lakehouse.as_of(config.table_versions.as_dict()), config)
    holdout = holdout.cache()
    try:
        with telemetry.span("score holdout", model_version=challenger.version):
            ours = context.tracking.score(spark, holdout, challenger).cache()
            metrics, slices = spark_regression_metrics(ours, LABEL, "prediction"), slice_rmse(ours)
            ours.unpersist()
        theirs, their_slices = None, {}
        if champion is not None:
            with telemetry.span("score holdout", model_version=champion.version):
                scored = context.tracking.score(spark, holdout, champion).cache()
                theirs, their_slices = spark_regression_metrics(scored, LABEL, "prediction"), slice_rmse(scored)
                scored.unpersist()
    finally:
        holdout.unpersist()

    # (check, slice, value, threshold, passed)
    checks = []
    if config.max_rmse is not None:
        checks.append(("max_rmse", "all", metrics["rmse"], config.max_rmse, metrics["rmse"] <= config.max_rmse))
    checks.append(("min_r2", "all", metrics["r2"], config.min_r2, metrics["r2"] >= config.min_r2))
    if theirs is not None:
        limit = theirs["rmse"] * (1 + config.regression_margin)
        checks.append(("no_regression", "all", metrics["rmse"], limit, metrics["rmse"] <= limit))
        for name, _, _ in SLICES:
            if name in slices and name in their_slices:
                limit = their_slices[name] * (1 + config.regression_margin)
                checks.append(("no_slice_regression", name, slices[name], limit, slices[name] <= limit))
        same = context.tracking.input_schema(challenger) == context.tracking.input_schema(champion)
        checks.append(("same_signature", "all", float(same), 1.0, same))
    failed = [f"{check}" + (f"[{part}]" if part != "all" else "") for check, part, _, _, ok in checks if not ok]
    status = FAILED if failed else PASSED

    rows = [(config.model_name, challenger.version, champion.version if champion else None, check, part,
             float(value), float(threshold), ok, config.model_validation, context.mlflow_run_id)
            for check, part, value, threshold, ok in checks]
    schema = ("model_name string, model_version string, champion_version string, check string, slice string, "
              "value double, threshold double, passed boolean, mode string, mlflow_run_id string")
    context.lakehouse.write(spark.createDataFrame(rows, schema).withColumn("validated_at", F.current_timestamp()),
                            MODEL_VALIDATIONS, mode="append")
    context.wrote(MODEL_VALIDATIONS)
    context.tracking.log_metrics({f"validation.{check}" + (f".{part}" if part != "all" else ""): float(value)
                                  for check, part, value, _, _ in checks})
    context.tracking.set_tags({STATUS_TAG: status, "validation.mode": config.model_validation,
                               "validation.failed": ",".join(failed)})
    if config.deployed_version is not None:  # the deployment's promotion step, a run of its own, reads it there
        registry.set_version_tags(challenger.version, {
            STATUS_TAG: status, "validation.mode": config.model_validation, "validation.failed": ",".join(failed),
            CHAMPION_TAG: champion.version if champion else "", "validation.challenger_rmse": repr(metrics["rmse"]),
            "validation.champion_rmse": repr(theirs["rmse"]) if theirs else ""})
    for name in failed:
        logger.warning("validation of model %s version %s: check %s failed (%s)", config.model_name,
                       challenger.version, name, config.model_validation)
    logger.info("validation of model %s version %s: %s (%s)", config.model_name, challenger.version, status,
                config.model_validation)
    return {"validation_status": status, "mode": config.model_validation, "failed": ",".join(failed),
            "challenger_version": challenger.version, "champion_version": champion.version if champion else None,
            "challenger_rmse": metrics["rmse"], "champion_rmse": theirs["rmse"] if theirs else None,
            "checks": len(checks)}
