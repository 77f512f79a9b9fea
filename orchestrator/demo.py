"""``mlops demo`` (what ``make demo`` runs): the jobs end to end on the embedded default.

1. Generate synthetic trips into the local lakehouse.
2. Run the training job on January: it registers version 1, and the deployment job runs on it (as the model
   trigger would on a workspace): validation, approval, promotion; the first model becomes champion.
3. Run the training job again on January and February with other hyperparameters, show what made the new version
   (``mlops lineage``), and let its deployment job's promotion gate compare it with the champion and decide.
4. Run the batch-scoring job on February with the champion, publishing to a local Azurite Blob endpoint.
5. Add a March whose trip distances drifted (x1.5), score it, and run the monitoring job on it: monitoring
   reports DRIFT, and the job's run-job task starts the training job, whose validation and promotion gate
   decide on the retrained model.

Every job runs exactly as on Databricks: rendered from its template, its notebook installing the wheels. The jobs
share one local Spark, as jobs on an all-purpose cluster do: it starts once, for the data and every job, and
each notebook gets its own session on it (``mlops run --local`` starts a Spark per run, as a job cluster does).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from orchestrator.errors import JobFailed
from orchestrator.local import runner
from orchestrator.local.azurite import Azurite
from taxi_fares_mlops.summary import JobSummary

DATA_START, DATA_END = "2016-01-01", "2016-03-01"
DRIFTED = ("2016-03-01", "2016-04-01")


def _banner(text: str) -> None:
    print(f"\n=== {text}", file=sys.stderr, flush=True)


_DEPLOYMENTS: dict[str, dict[str, dict]] = {}  # training MLflow run -> its deployment's last step's outputs


def _run(job: str, lakehouse: str, shared: dict, **params: str) -> JobSummary:
    result = runner.run_local(job, params, lakehouse, shared)
    print(runner.describe(result, job, lakehouse), flush=True)
    if result.status != "SUCCESS" or result.job_summary is None:
        raise JobFailed(f"demo stopped: the {job} job failed")
    if result.deployment is not None:  # the version it registered went through the deployment job
        if result.deployment.status != "SUCCESS" or result.deployment.job_summary is None:
            raise JobFailed(f"demo stopped: the deployment job failed on the version {job} registered")
        _DEPLOYMENTS[result.job_summary.mlflow_run_id] = {
            name: dict(stage.outputs) for name, stage in result.deployment.job_summary.stages.items()}
    return result.job_summary


def _deployed(trained: JobSummary, step: str) -> dict:
    """The outputs of the deployment job's last step (promotion) on the version ``trained`` registered."""
    return _DEPLOYMENTS[trained.mlflow_run_id][step]


def _validation_status(model: str, version: str) -> str:
    """The deployment's validation step's outcome, as it tags the version (each step is a run of its own)."""
    from taxi_fares_mlops.tracking import Registry

    return Registry(model).version_tags(version).get("validation.status", "not recorded")


def _lineage(root: str, model: str, version: int) -> str:
    """What ``mlops lineage --local --model M --version N`` prints."""
    from orchestrator.lineage import describe
    from orchestrator.registry import use_registry
    from taxi_fares_mlops.tracking import read_lineage

    use_registry(root, None)
    return f"$ mlops lineage --local --model {model} --version {version}\n{describe(read_lineage(model, version))}"


def run_demo(root: str, rows: int = 200_000, seed: int = 42) -> int:
    started = time.monotonic()
    with runner.local_cluster("mlops-demo") as shared:
        scored, monitoring = _steps(root, rows, seed, shared)
    print(f"\nDemo finished in {time.monotonic() - started:.0f}s. Where to look:")
    print(f"  lakehouse tables   {root}/tables/")
    print("  MLflow runs        .venv/bin/mlops ui   (then open http://127.0.0.1:5000)")
    print(f"  telemetry          .venv/bin/mlops trace {scored.mlflow_run_id}")
    print(f"  blob output        {root}/azurite (Azurite's data folder)")
    print("  rerun a stage      .venv/bin/mlops run batch_scoring --local --param execute_feature_engineering=false")
    print(f"  drift report       {drift_report_location(monitoring)}   (open it in a browser)")
    return 0


def drift_report_location(monitoring: JobSummary) -> str:
    """Where the monitoring run's drift report is: its artifact URI (``file://`` for the local store)."""
    uri = monitoring.stages["monitoring"].outputs.get("drift_report")
    return str(uri) if uri else "none (the monitoring stage drew no report)"


def _steps(root: str, rows: int, seed: int, shared: dict) -> tuple[JobSummary, JobSummary]:
    from taxi_fares.synthetic import generate_trips
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse

    _banner(f"1/5 generating {rows:,} synthetic trips ({DATA_START} to {DATA_END}, seed {seed})")
    spark = tuned_session("mlops-demo")  # the cluster's
    Lakehouse(root).write(generate_trips(spark, rows, DATA_START, DATA_END, seed=seed), RAW_TRIPS)

    _banner("2/5 training job on January, then the deployment job on the version it registered (the first "
            "model is promoted)")
    _run("training", root, shared, start_date="2016-01-01", end_date="2016-02-01", max_iter="60")

    _banner("3/5 training job on January and February, more boosting iterations; its version's lineage; the "
            "deployment job's promotion gate decides")
    second = _run("training", root, shared, start_date="2016-01-01", end_date="2016-03-01", max_iter="200")
    version = second.stages["training"].outputs["model_version"]
    print(_lineage(root, second.model_name, int(version)))
    promotion = _deployed(second, "promotion")
    print(f"deployment job on v{version}: validation {_validation_status(second.model_name, version)}, "
          f"promotion gate {promotion['decision']} (challenger rmse {promotion['challenger_rmse']}, previous "
          f"champion rmse {promotion['champion_rmse']})")

    _banner("4/5 batch scoring job on February with the champion, publishing to Azurite (local Blob storage)")
    with Azurite(Path(root) / "azurite") as azurite:
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        try:
            scored = _run("batch_scoring", root, shared, start_date="2016-02-01", end_date="2016-03-01",
                          execute_feature_engineering="false")
        finally:
            os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    published = scored.stages["batch_scoring"].outputs.get("blob", {})
    print(f"published {published.get('rows')} rows in {published.get('files')} Parquet part(s): container "
          f"{published.get('container')}, {published.get('manifest')}")

    _banner("5/5 a drifted March (trip distances x1.5): scoring, then the monitoring job, which retrains on drift")
    drifted = generate_trips(spark, rows // 2, *DRIFTED, seed=seed + 1, shift={"trip_distance": 1.5})
    offset = rows  # the first step's trip ids are 0..rows-1
    Lakehouse(root).write(drifted.withColumn("trip_id", drifted["trip_id"] + offset), RAW_TRIPS, mode="append")
    _run("batch_scoring", root, shared, start_date=DRIFTED[0], end_date=DRIFTED[1])
    monitoring = _run("monitoring", root, shared, start_date=DRIFTED[0], end_date=DRIFTED[1])
    monitored = monitoring.stages["monitoring"].outputs
    print(f"monitoring: {monitored['monitoring_status']} (drifted: {monitored.get('drifted') or 'none'}); "
          f"retraining ran if the status was DRIFT or DEGRADED (see 'task retrain' above)")
    return scored, monitoring
