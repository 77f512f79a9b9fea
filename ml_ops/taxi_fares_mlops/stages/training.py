"""Training: point-in-time training set -> model -> MLflow params, metrics, artifacts -> version 'challenger'.

The tables are read at fixed Delta versions (``Lakehouse.as_of``): the latest when training starts, or those the
``table_versions`` parameter names to retrain on recorded data. Each table and the version read are recorded as
the run's dataset inputs, and the run's provenance tags (code and data) go on every version it registers."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import SparkSession

from taxi_fares import drift
from taxi_fares.features import LABEL, MODEL_FEATURES
from taxi_fares.model import bounded_sample, predict_spark, spark_regression_metrics, train_model
from taxi_fares.outliers import fit_outlier_detector
from taxi_fares_mlops import reports, telemetry
from taxi_fares_mlops.config import CHALLENGER, TRAINING, TrainingConfig
from taxi_fares_mlops.datasets import holdout_split, labelled_set
from taxi_fares_mlops.errors import DataError
from taxi_fares_mlops.faults import crash_point
from taxi_fares_mlops.provenance import TRAINING_CONTEXT
from taxi_fares_mlops.stage import StageContext, stage
from taxi_fares_mlops.tracking import DRIFT, OUTLIERS, REFERENCE_PROFILE, ModelRef, companion_name

logger = logging.getLogger(__name__)

# Rows of holdout predictions pulled to the driver for the plots: a fixed bound, whatever the data size.
PLOT_ROWS = 5000


@stage(TRAINING)
def training(spark: SparkSession, config: TrainingConfig, context: StageContext) -> dict:
    # The labelled rows are read by the sample's count, the sample and the holdout's predictions: the
    # point-in-time join is computed once and kept on the executors (memory, else their disks) for the stage.
    tables = context.lakehouse.as_of(config.table_versions.as_dict())
    labelled = labelled_set(spark, tables, config)
    with telemetry.span("record training data") as step:
        versions = context.tracking.log_table_inputs(spark, tables, TRAINING_CONTEXT)
        step.set_attributes({f"version.{table}": version for table, version in versions.items()})
    labelled = labelled.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        model, sample, metrics, reference, example = _fit_and_evaluate(labelled, config, context)
    finally:
        labelled.unpersist()

    with telemetry.span("log and register model") as step:
        version = context.tracking.log_model(model, sample[list(MODEL_FEATURES)].head(5), config.model_name)
        step.set_attribute("model_version", version)
    crash_point("training.after_fare_model_registered")
    registry = context.tracking.registry(config.model_name)
    with telemetry.span("fit and register outlier detector", rows=len(sample)) as step:
        detector = fit_outlier_detector(sample, config.model_params.random_state)
        detector_version = context.tracking.log_model(detector, sample[list(MODEL_FEATURES)].head(5).fillna(0.0),
                                                      companion_name(config.model_name, OUTLIERS), artifact=OUTLIERS)
        registry.link(version, OUTLIERS, detector_version)
        step.set_attribute("model_version", detector_version)
    with telemetry.span("register drift detector") as step:
        drift_version = context.tracking.log_drift_model(reference, example, companion_name(config.model_name, DRIFT))
        registry.link(version, DRIFT, drift_version)
        step.set_attribute("model_version", drift_version)
    registry.set_aliases(CHALLENGER, ModelRef(config.model_name, version, context.mlflow_run_id))
    return {"model_name": config.model_name, "model_version": version, "alias": CHALLENGER,
            "outlier_model_version": detector_version, "drift_model_version": drift_version,
            "table_versions": versions,
            "metrics": {k: round(v, 4) for k, v in metrics.items()}}


def _fit_and_evaluate(labelled, config: TrainingConfig, context: StageContext) -> tuple:
    """The model fitted on a bounded sample of the training rows, evaluated and profiled on the holdout; the
    metrics, the reference profile and the drift detector's input example are logged or returned."""
    train, holdout = holdout_split(labelled, config)
    seed = config.model_params.random_state
    # The bounded sample is the only data brought to the driver; its size is set by max_training_rows.
    with telemetry.span("build training sample") as step:
        sample: pd.DataFrame = bounded_sample(train, config.max_training_rows, seed=seed).toPandas()
        step.set_attribute("rows", len(sample))
    if sample.empty:
        raise DataError(f"no training rows for {config.start_date}..{config.end_date}")
    logger.info("training on %d rows with %s", len(sample), config.model_params.as_dict())
    with telemetry.span("fit model", rows=len(sample)):
        model = train_model(sample, config.model_params)

    baseline = float(sample[LABEL].mean())
    # The scored holdout is read by the evaluation, the profile (three passes), the plots and the drift
    # detector's example: the predictions are computed once and kept for the stage.
    scored = predict_spark(holdout, model).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with telemetry.span("evaluate on holdout") as step:
            metrics = spark_regression_metrics(scored, LABEL, "prediction", baseline=baseline)
            holdout_rows = int(metrics.pop("rows"))
            step.set_attribute("rows", holdout_rows)
        metrics.update({"train_rows": float(len(sample)), "holdout_rows": float(holdout_rows)})
        context.tracking.log_metrics(metrics)
        with telemetry.span("profile holdout for monitoring", rows=holdout_rows):
            reference = drift.profile(scored)
            context.tracking.log_dict(reference, REFERENCE_PROFILE)
        example = scored.select(*reference["numeric"], *reference["categorical"]).limit(5).toPandas()

        with tempfile.TemporaryDirectory() as tmp:
            plot_rows = scored.select(LABEL, "prediction").limit(PLOT_ROWS).toPandas()
            for path in reports.training_reports(sample, plot_rows, Path(tmp)):
                context.tracking.log_artifact(path, "reports")
    finally:
        scored.unpersist()
    return model, sample, metrics, reference, example
