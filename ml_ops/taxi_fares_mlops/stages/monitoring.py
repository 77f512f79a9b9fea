"""Monitoring: the scored range against the model's training profile: feature and prediction drift, and, where
the fares are known, the realized error against the holdout's.

Runs as the monitoring job (daily, after scoring), or at the end of the batch-scoring job
(``execute_monitoring=true``), on the predictions written for the range by the version monitored: the champion's
rows of ``predictions`` by default, another version's rows of ``shadow_predictions`` when told
(``model_alias=challenger``, ``model_version=N``). Every statistic is one Spark aggregation over the range
(``taxi_fares.drift``); nothing is collected but per-feature counts. Results replace the window's rows of that
model version in ``drift_metrics`` and ``performance_metrics`` (one row per window, model version, feature and
metric; a rerun never duplicates, another version's rows are left alone), go to MLflow as metrics and the
``monitoring.status`` tag, and to telemetry: the stage's span carries the summary and each drifted feature is a
warning log with its statistic, which Log Analytics can chart and alert on. The same statistics also replace the
window's rows of ``<table>_drift_metrics`` and ``<table>_profile_metrics`` (Databricks data profiling's columns,
``taxi_fares.profile_tables``), and the run logs ``monitoring/drift_report.html`` (``drift_report``), drawn from
the same counts: the stage's output ``drift_report`` is its artifact URI.

With ``monitored_source=inference_requests`` it reads the online service's inference table instead, and also
compares the served variants over the range (``online_traffic.compare_variants``: ``variant_comparison``, the
run's ``comparison.*`` metrics, and each challenger's figures on its version's ``online.*`` tags, which the
deployment job's approval step names).

Drift is judged by the drift model registered with the model version (``<model>_drift``: the training profile
and the rule of ``taxi_fares.drift_detector``, with this run's thresholds); the outlier detector registered with
it (``<model>_outliers``) flags trips, and their share goes to ``outlier_metrics``. Both are linked to the fare
model by version tags; a mismatched pair is refused. Both are loaded only from copies whose files match the
digests recorded when they were registered (``tracking.download_verified``); the drift model first, before any
row is read, so a tampered or unrecorded version fails the stage before it writes anything.

Status: ``INSUFFICIENT_DATA`` (fewer than ``min_rows`` scored rows: nothing is judged), ``DEGRADED`` (realized
rmse above the holdout's by more than ``rmse_degradation``), ``DRIFT`` (some feature's PSI above
``psi_threshold`` or KS statistic above ``ks_threshold``, or an outlier share above ``outlier_rate_threshold``),
else ``OK``.
"""
from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any, Union

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from taxi_fares import drift, profile_tables
from taxi_fares.features import LABEL, MODEL_FEATURES, in_range, model_input_columns
from taxi_fares.model import spark_regression_metrics
from taxi_fares.outliers import OUTLIER
from taxi_fares.schema import PICKUP_TS
from taxi_fares_mlops import drift_report, telemetry
from taxi_fares_mlops.config import CHAMPION, MONITORING, MonitoringConfig, ScoringConfig
from taxi_fares_mlops.datasets import with_features
from taxi_fares_mlops.errors import DataError, RegistryError
from taxi_fares_mlops.online_traffic import FIGURES, compare_variants, comparison_tags, online_scored
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.stages.batch_scoring import predictions_table
from taxi_fares_mlops.storage import (DRIFT_METRICS, DRIFT_METRICS_SUFFIX, INFERENCE_REQUESTS, OUTLIER_METRICS,
                                      PERFORMANCE_METRICS, PROFILE_METRICS_SUFFIX, VARIANT_COMPARISON)
from taxi_fares_mlops.tracking import DRIFT as DRIFT_MODEL, REFERENCE_PROFILE

logger = logging.getLogger(__name__)

OK, DRIFT, DEGRADED, INSUFFICIENT_DATA = "OK", "DRIFT", "DEGRADED", "INSUFFICIENT_DATA"
STATUS_TAG = "monitoring.status"


@stage(MONITORING)
def monitoring(spark: SparkSession, config: Union[ScoringConfig, MonitoringConfig], context: StageContext) -> dict:
    registry = context.tracking.registry(config.model_name)
    model = registry.resolve(config.model_alias, config.model_version)
    judge = _drift_detector(context, registry, model).with_thresholds(config.psi_threshold, config.ks_threshold)
    start, end = config.time_range
    table, _, _ = predictions_table(registry, model)
    online = getattr(config, "monitored_source", "predictions") == INFERENCE_REQUESTS
    if online:
        # online traffic, monitored as batch predictions are: the trips this version answered, with their fares
        if not context.lakehouse.exists(spark, INFERENCE_REQUESTS):
            raise DataError(f"table '{INFERENCE_REQUESTS}' does not exist: serve with an inference table "
                            f"(mlops serve --local writes one) before monitoring it")
        table = INFERENCE_REQUESTS
        scored = online_scored(spark, context.lakehouse, model.version, start, end)
    else:
        if not context.lakehouse.exists(spark, table):
            raise DataError(f"table '{table}' does not exist: run the job with execute_batch_scoring=true")
        scored = (context.lakehouse.read(spark, table)
                  .filter(in_range(F.col(PICKUP_TS), start, end) & (F.col("model_version") == model.version)))
    # Read by several aggregations below (profile comparison, category counts, outliers, error): joined once.
    current = (with_features(spark, context.lakehouse, config, scored)
               .select(*model_input_columns(), "prediction", F.col(LABEL).cast("double").alias(LABEL)).cache())
    try:
        outputs = _judge(spark, config, context, model, judge, current, table)
    finally:
        current.unpersist()
    if online:
        outputs["variant_comparison"] = _compare_variants(spark, context, registry, start, end)
    return outputs


def _compare_variants(spark, context: StageContext, registry, start, end) -> list[dict]:
    """The served variants' errors side by side over the window's online traffic (``variant_comparison`` and the
    run's metrics ``comparison.<variant>_v<version>.<figure>``), and each compared challenger's figures on its
    version's tags (``online.*``), where the approval step and ``mlops approve`` show them."""
    with telemetry.span("compare the served variants"):
        rows = compare_variants(spark, context.lakehouse, start=start, end=end, model_name=registry.name)
    if rows:
        context.wrote(VARIANT_COMPARISON)
    context.tracking.log_metrics({f"comparison.{row['variant']}_v{row['model_version']}.{figure}": float(row[figure])
                                  for row in rows for figure in FIGURES if row[figure] is not None})
    for version, tags in comparison_tags(rows, registry.aliases().get(CHAMPION)).items():
        try:
            registry.by_version(int(version))
        except (RegistryError, ValueError) as exc:  # answers of a version the registry no longer holds
            logger.warning("online comparison: version %s of model %s not tagged: %s", version, registry.name, exc)
            continue
        registry.set_version_tags(version, tags)
    return [{k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()} for row in rows]


def _drift_detector(context: StageContext, registry, model) -> drift.DriftDetector:
    """The drift model registered with ``model`` (``<model>_drift``); for a version trained before drift models
    were registered, a detector on the profile its training run logged."""
    companion = registry.companion(model, DRIFT_MODEL)
    if companion is not None:
        return context.tracking.drift_detector(companion)
    reference = context.tracking.load_dict(model.run_id, REFERENCE_PROFILE)
    if reference is None:
        raise RegistryError(f"model '{model.name}' version {model.version} has no drift model and no reference "
                            f"profile ({REFERENCE_PROFILE} in run {model.run_id}): retrain it to monitor it")
    return drift.DriftDetector(reference)


def _judge(spark, config, context: StageContext, model, judge: drift.DriftDetector, current, table: str) -> dict:

    detector = context.tracking.registry(config.model_name).outlier_companion(model)
    with telemetry.span("compare with the training profile", model_version=model.version) as step:
        summary = drift.summarize(current, judge)
        rows, features = summary.rows, judge.judge(summary)
        step.set_attribute("rows", rows)
    outliers: dict[str, Any] = {}
    if detector is not None and rows:
        with telemetry.span("flag outliers", model_version=detector.version):
            flagged = context.tracking.score(spark, current.na.fill(0.0, subset=list(MODEL_FEATURES)), detector,
                                             "outlier")
            share = flagged.agg(F.avg((F.col("outlier") == OUTLIER).cast("double"))).first()[0]
            outliers = {"outlier_share": float(share), "outlier_model_version": detector.version}
    window = {"window_start": config.start_date, "window_end": config.end_date, "model_name": model.name,
              "model_version": model.version}
    if rows < config.min_rows:
        status, drifted, performance, many_outliers = INSUFFICIENT_DATA, [], {}, False
        logger.info("monitoring: %d scored rows in %s..%s, fewer than min_rows=%d: nothing judged",
                    rows, config.start_date, config.end_date, config.min_rows)
    else:
        drifted = [f for f in features if judge.drifted(f)]
        many_outliers = outliers.get("outlier_share", 0.0) > config.outlier_rate_threshold
        if many_outliers:
            logger.warning("outliers: %.2f%% of the range's trips (threshold %.2f%%)", 100 * outliers["outlier_share"],
                           100 * config.outlier_rate_threshold,
                           extra={"outlier_share": outliers["outlier_share"], "model_version": model.version})
        for f in drifted:
            statistics = {k: v for k, v in (("psi", f.psi), ("ks", f.ks)) if drift.finite(v) is not None}
            logger.warning("drift in feature %s: %s", f.feature,
                           ", ".join(f"{k} {v:.4f}" for k, v in statistics.items()),
                           extra={"feature": f.feature, "model_version": model.version, **statistics})
        performance = _performance(current, context, model.run_id)
        degraded = performance.get("rmse_ratio") is not None and \
            performance["rmse_ratio"] > 1 + config.rmse_degradation
        status = DEGRADED if degraded else DRIFT if drifted or many_outliers else OK

    metric_rows = [(f.feature, name, drift.finite(value), _threshold(name, config), f in drifted)
                   for f in features for name, value in f.metrics().items()]
    perf_rows = [("model", name, drift.finite(value), None, False) for name, value in performance.items()]
    outlier_rows = [("model", "outlier_share", outliers["outlier_share"], config.outlier_rate_threshold,
                     many_outliers)] if outliers else []
    _replace(spark, context, DRIFT_METRICS, metric_rows, window, config)
    _replace(spark, context, OUTLIER_METRICS, outlier_rows, window, config)
    _replace(spark, context, PERFORMANCE_METRICS, perf_rows, window, config)
    _replace_profiling(spark, context, table, config, str(model.version), [
        (DRIFT_METRICS_SUFFIX, profile_tables.DRIFT_SCHEMA,
         profile_tables.drift_rows(judge, summary, features, [f.feature for f in drifted], config.start_date,
                                   config.end_date, str(model.version))),
        (PROFILE_METRICS_SUFFIX, profile_tables.PROFILE_SCHEMA,
         profile_tables.profile_rows(judge, summary, config.start_date, config.end_date, str(model.version),
                                     performance, outliers.get("outlier_share")))])
    context.tracking.log_metrics({f"drift.{f.feature}.{name}": value for f in features
                                  for name, value in f.metrics().items() if drift.finite(value) is not None})
    context.tracking.log_metrics({f"performance.{k}": v for k, v in performance.items() if v is not None})
    if outliers:
        context.tracking.log_metrics({"outliers.share": outliers["outlier_share"]})
    context.tracking.set_tags({STATUS_TAG: status})
    with telemetry.span("draw the drift report", model_version=model.version):
        report = _log_drift_report(spark, config, context, model, judge, summary, features, drifted, status)
    logger.info("monitoring status %s for %s..%s (model version %s, %d rows)", status, config.start_date,
                config.end_date, model.version, rows)
    # The stage's span carries the scalar outputs: status, rows, version and the drifted features' names.
    return {"monitoring_status": status, "rows": rows, "model_version": model.version,
            "drifted": ",".join(f.feature for f in drifted), "drifted_features": [f.feature for f in drifted],
            "drift_report": report,
            **({"rmse_ratio": round(performance["rmse_ratio"], 4)} if performance.get("rmse_ratio") else {}),
            **({"outlier_share": round(outliers["outlier_share"], 4)} if outliers else {}),
            "performance": {k: round(v, 4) for k, v in performance.items() if v is not None}}


def _threshold(metric: str, config):
    return {"psi": config.psi_threshold, "ks": config.ks_threshold}.get(metric)


def _performance(current, context: StageContext, run_id: str) -> dict:
    """Realized rmse/mae on the range's trips with a known fare, and the ratio to the holdout's rmse."""
    try:
        realized = spark_regression_metrics(current.filter(F.col(LABEL).isNotNull()), LABEL, "prediction")
    except ValueError:  # no trip of the range has its fare yet
        return {}
    holdout = context.tracking.run_metrics(run_id)
    out = {"rows": float(realized["rows"]), "rmse": realized["rmse"], "mae": realized["mae"],
           "holdout_rmse": holdout.get("rmse"), "holdout_mae": holdout.get("mae")}
    out["rmse_ratio"] = out["rmse"] / out["holdout_rmse"] if out["holdout_rmse"] else None
    return out


def _replace(spark, context: StageContext, table: str, rows, window: dict, config) -> None:
    """The window's rows of the model version in ``table`` replaced by ``rows`` in one commit (a rerun never
    duplicates; monitoring the challenger leaves the champion's rows of the window as they were)."""
    schema = ("window_start date, window_end date, model_name string, model_version string, feature string, "
              "metric string, value double, threshold double, breached boolean, mlflow_run_id string")
    data = [(window["window_start"], window["window_end"], window["model_name"], str(window["model_version"]),
             feature, metric, value, threshold, breached, context.mlflow_run_id)
            for feature, metric, value, threshold, breached in rows]
    df = spark.createDataFrame(data, schema).withColumn("computed_at", F.current_timestamp())
    context.lakehouse.replace_range(spark, df, table, "window_start", config.start_date, config.end_date,
                                    only={"model_version": str(window["model_version"])})
    context.wrote(table)


def _replace_profiling(spark, context: StageContext, monitored: str, config, model_id: str, outputs) -> None:
    """The window's rows of the model version in ``<monitored>_drift_metrics`` and ``<monitored>_profile_metrics``
    (Databricks data profiling's columns, ``taxi_fares.profile_tables``) replaced, one commit per table."""
    start, end = config.time_range
    for suffix, schema, rows in outputs:
        df = (spark.createDataFrame(rows, schema).withColumn("mlflow_run_id", F.lit(context.mlflow_run_id))
              .withColumn("computed_at", F.current_timestamp()))
        context.lakehouse.replace_range(spark, df, monitored + suffix, "window.start", start, end,
                                        only={"model_id": model_id})
        context.wrote(monitored + suffix)


RECENT_WINDOWS = 8


def _recent_windows(spark, context: StageContext, model) -> list[drift_report.WindowResult]:
    """The model version's last ``RECENT_WINDOWS`` windows with a realized error or an outlier share (this one
    included): a few rows of the stage's own tables."""
    metrics: list[Any] = ["rmse", "holdout_rmse", "mae", "outlier_share"]
    rows = (context.lakehouse.read(spark, PERFORMANCE_METRICS).unionByName(
                context.lakehouse.read(spark, OUTLIER_METRICS))
            .filter((F.col("model_name") == model.name) & (F.col("model_version") == str(model.version))
                    & F.col("metric").isin(metrics))
            .groupBy("window_start", "window_end").pivot("metric", metrics).agg(F.first("value"))
            .orderBy(F.desc("window_start")).limit(RECENT_WINDOWS).collect())
    return [drift_report.WindowResult(str(r["window_start"]), str(r["window_end"]), r["rmse"], r["holdout_rmse"],
                                      r["mae"], r["outlier_share"]) for r in reversed(rows)]


def _log_drift_report(spark, config, context: StageContext, model, judge: drift.DriftDetector, summary, features,
                      drifted, status: str) -> str:
    """Draw the report from the counts already made, log it to the run; return its artifact URI."""
    header = drift_report.ReportHeader(
        model.name, str(model.version), str(config.start_date), str(config.end_date), status, summary.rows,
        judge.psi_threshold, judge.ks_threshold, config.outlier_rate_threshold, context.mlflow_run_id)
    page = drift_report.render(header, features, [f.feature for f in drifted],
                               profile_tables.distributions(judge, summary), _recent_windows(spark, context, model))
    with tempfile.TemporaryDirectory(prefix="drift-report-") as folder:
        path = Path(folder) / drift_report.REPORT_NAME
        path.write_text(page, encoding="utf-8")
        return context.tracking.log_artifact(path, drift_report.REPORT_FOLDER)


RETRAIN_ON = (DRIFT, DEGRADED)


def retraining_task_values(summary: dict, config: MonitoringConfig) -> dict[str, str]:
    """What the monitoring job's next tasks read (``{{tasks.monitor.values.<key>}}``): the status, whether to
    retrain (``retrain_on_drift`` and a DRIFT or DEGRADED status), this MLflow run, and the reason to tag."""
    monitored = summary["stages"].get(MONITORING, {})
    status = monitored.get("monitoring_status", "")
    cause = monitored.get("drifted") or ("error above the holdout's" if status == DEGRADED else "")
    return {"status": status,
            "retrain": "true" if config.retrain_on_drift and status in RETRAIN_ON else "false",
            "mlflow_run_id": summary["mlflow_run_id"],
            "reason": f"monitoring {status} for {config.start_date}..{config.end_date}: {cause}"}
