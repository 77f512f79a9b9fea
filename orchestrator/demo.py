"""``mlops demo`` (what ``make demo`` runs): the jobs end to end on the embedded default.

1. Generate synthetic trips into the local lakehouse.
2. Run the training job on January: it registers version 1, and the deployment job runs on it (as the model
   trigger would on a workspace): validation, approval, promotion; the first model becomes champion.
3. Run the training job again on January and February with other hyperparameters, show what made the new version
   (``mlops lineage``), and let its deployment job's promotion gate compare it with the champion and decide.
4. Run the incremental scoring job (``scoring_stream``) for the first time: a new checkpoint, so it scores every
   trip ``raw_trips`` holds.
5. Run the batch-scoring job on February with the champion, publishing to a local Azurite Blob endpoint (it
   replaces the range's rows the stream wrote, with the same predictions).
6. A March whose trip distances drifted (x1.5) lands in ``raw_trips``; the incremental scoring job's second run
   computes the feature windows of those new trips and scores only them.
7. The monitoring job on March: monitoring reports DRIFT, and the job's run-job task starts the training job,
   whose deployment job decides on the retrained model.
8. The champion packaged (a signed serving bundle), served on loopback by the online service with its inference
   table, and sent some of March's trips as requests; the monitoring job then monitors that online traffic, and
   both drift reports' locations are printed.

Every job runs exactly as on Databricks: rendered from its template, its notebook installing the wheels. The jobs
share one local Spark, as jobs on an all-purpose cluster do: it starts once, for the data and every job, and
each notebook gets its own session on it (``mlops run --local`` starts a Spark per run, as a job cluster does).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
        scored, monitoring, online = _steps(root, rows, seed, shared)
    print(f"\nDemo finished in {time.monotonic() - started:.0f}s. Where to look:")
    print(f"  lakehouse tables   {root}/tables/")
    print("  MLflow runs        .venv/bin/mlops ui   (then open http://127.0.0.1:5000)")
    print(f"  telemetry          .venv/bin/mlops trace {scored.mlflow_run_id}")
    print(f"  blob output        {root}/azurite (Azurite's data folder)")
    print("  rerun a stage      .venv/bin/mlops run batch_scoring --local --param execute_feature_engineering=false")
    print("  new trips scored   .venv/bin/mlops data generate --append ...; .venv/bin/mlops run scoring_stream --local")
    print(f"  inference table    {root}/tables/inference_requests   (the online service's requests and answers)")
    print(f"  drift report       {drift_report_location(monitoring)}   (open it in a browser)")
    print(f"  online drift       {drift_report_location(online)}   (the same report, over online traffic)")
    return 0


def drift_report_location(monitoring: JobSummary) -> str:
    """Where the monitoring run's drift report is: its artifact URI (``file://`` for the local store)."""
    uri = monitoring.stages["monitoring"].outputs.get("drift_report")
    return str(uri) if uri else "none (the monitoring stage drew no report)"


def _set_aside_stream_progress(root: str) -> None:
    """The demo replaces raw_trips, which a stream's checkpoint from an earlier run refuses (a rewrite): such
    progress is moved aside, never deleted, and the stream starts anew on the new table."""
    from taxi_fares_mlops.config import SCORING_STREAM_JOB
    from taxi_fares_mlops.storage import CHECKPOINTS

    progress = Path(root) / CHECKPOINTS / SCORING_STREAM_JOB
    if progress.exists():
        aside = progress.with_name(f"{SCORING_STREAM_JOB}.before-demo-{time.strftime('%Y%m%dT%H%M%S')}")
        progress.rename(aside)
        print(f"the incremental scoring job's progress over the previous raw_trips is set aside in {aside}")


def _streamed(summary: JobSummary) -> str:
    out = summary.stages["streaming_scoring"].outputs
    return (f"{out['rows']:,} trips scored in {out['micro_batches']} micro-batch(es) by {out['model_name']} "
            f"version {out['model_version']}, {out['quarantined']:,} quarantined, {out['feature_rows_merged']:,} "
            f"feature rows merged; progress kept in {out['checkpoint']}")


def _steps(root: str, rows: int, seed: int, shared: dict) -> tuple[JobSummary, JobSummary, JobSummary]:
    from taxi_fares.synthetic import generate_trips
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse

    _banner(f"1/8 generating {rows:,} synthetic trips ({DATA_START} to {DATA_END}, seed {seed})")
    _set_aside_stream_progress(root)
    spark = tuned_session("mlops-demo")  # the cluster's
    Lakehouse(root).write(generate_trips(spark, rows, DATA_START, DATA_END, seed=seed), RAW_TRIPS)

    _banner("2/8 training job on January, then the deployment job on the version it registered (the first "
            "model is promoted)")
    _run("training", root, shared, start_date="2016-01-01", end_date="2016-02-01", max_iter="60")

    _banner("3/8 training job on January and February, more boosting iterations; its version's lineage; the "
            "deployment job's promotion gate decides")
    second = _run("training", root, shared, start_date="2016-01-01", end_date="2016-03-01", max_iter="200")
    version = second.stages["training"].outputs["model_version"]
    print(_lineage(root, second.model_name, int(version)))
    promotion = _deployed(second, "promotion")
    print(f"deployment job on v{version}: validation {_validation_status(second.model_name, version)}, "
          f"promotion gate {promotion['decision']} (challenger rmse {promotion['challenger_rmse']}, previous "
          f"champion rmse {promotion['champion_rmse']})")

    _banner("4/8 incremental scoring job, first run: a new checkpoint, so every trip raw_trips holds")
    print(_streamed(_run("scoring_stream", root, shared)))

    _banner("5/8 batch scoring job on February with the champion, publishing to Azurite (local Blob storage); it "
            "replaces the range's rows the stream wrote")
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

    _banner("6/8 a drifted March (trip distances x1.5) lands in raw_trips; the incremental scoring job's second "
            "run computes its features and scores only the new trips")
    drifted = generate_trips(spark, rows // 2, *DRIFTED, seed=seed + 1, shift={"trip_distance": 1.5})
    offset = rows  # the first step's trip ids are 0..rows-1
    Lakehouse(root).write(drifted.withColumn("trip_id", drifted["trip_id"] + offset), RAW_TRIPS, mode="append")
    print(_streamed(_run("scoring_stream", root, shared)))

    _banner("7/8 monitoring job on March, which retrains on drift")
    monitoring = _run("monitoring", root, shared, start_date=DRIFTED[0], end_date=DRIFTED[1],
                      execute_feature_engineering="false")
    monitored = monitoring.stages["monitoring"].outputs
    print(f"monitoring: {monitored['monitoring_status']} (drifted: {monitored.get('drifted') or 'none'}); "
          f"retraining ran if the status was DRIFT or DEGRADED (see 'task retrain' above)")

    _banner("8/8 the champion served online (signed bundle, inference table), March's trips sent as requests; the "
            "monitoring job on that online traffic")
    online = _online(root, shared, spark, second.model_name)
    return scored, monitoring, online


ONLINE_TRIPS, TRIPS_PER_REQUEST = 3000, 100
# The features the bundle carries: March's, counted back from the newest window (the stream computes those ending
# up to an hour after the last drop-off, so a day more than March).
LOOKBACK_HOURS = 32 * 24


def _online(root: str, shared: dict, spark, model: str) -> JobSummary:
    """The champion packaged and served on loopback as ``mlops serve --local`` serves it (its requests written to
    ``inference_requests``), sent every n-th valid trip of March, then the monitoring job over that table."""
    from pyspark.sql import functions as F

    from orchestrator.local.server import free_port
    from orchestrator.registry import use_registry
    from orchestrator.service_commands import serve_command
    from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, PICKUP_TS, PICKUP_ZIP
    from taxi_fares.schema import QUARANTINE, validate_trips
    from taxi_fares_mlops.serving.package import package
    from taxi_fares_mlops.signing import development_key, development_public_key, load_private_key
    from taxi_fares_mlops.storage import INFERENCE_REQUESTS, RAW_TRIPS, Lakehouse

    lakehouse = Lakehouse(root)
    use_registry(root, None)
    bundle = Path(root) / "serving" / "bundle"
    manifest = package(spark, lakehouse, bundle, model, lookback_hours=LOOKBACK_HOURS,
                       signing_key=load_private_key(development_key(root)))
    print(f"packaged {model} version {manifest['models']['fare']['version']} at {bundle}, signed")
    march = lakehouse.read(spark, RAW_TRIPS).filter(
        (F.col(PICKUP_TS) >= DRIFTED[0]) & (F.col(PICKUP_TS) < DRIFTED[1]))
    valid = validate_trips(march, QUARANTINE).valid
    rows = valid.count()
    every = max(1, rows // ONLINE_TRIPS)
    picked = valid.filter(F.col("trip_id") % every == 0).orderBy("trip_id").limit(ONLINE_TRIPS).collect()
    trips = [{"pickup_time": r[PICKUP_TS].isoformat(), "dropoff_time": r[DROPOFF_TS].isoformat(),
              "pickup_zip": r[PICKUP_ZIP], "dropoff_zip": r[DROPOFF_ZIP], "trip_distance": r[DISTANCE]}
             for r in picked]
    port = free_port()
    log_path = Path(root) / "serving" / "service.log"
    command = serve_command(bundle, root, "127.0.0.1", port, ("--trusted-key", str(development_public_key(root)),
                                                              "--lookback-hours", str(LOOKBACK_HOURS)))
    with open(log_path, "w") as log:
        service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, service, log_path)
        answered, refused = 0, 0
        for start in range(0, len(trips), TRIPS_PER_REQUEST):
            status, body = _post(f"{base}/v1/predict", {"trips": trips[start:start + TRIPS_PER_REQUEST]},
                                 f"demo-{start // TRIPS_PER_REQUEST}")
            if status == 200:
                answered += len(body["predictions"])
            else:
                refused += 1
                print(f"  a request was refused ({status}): {str(body)[:300]}")
        print(f"served at {base}: {answered:,} of {rows:,} valid March trips answered in "
              f"{-(-len(trips) // TRIPS_PER_REQUEST)} requests ({refused} refused); its log: {log_path}")
    finally:
        service.terminate()  # the service writes what its inference log still holds, then exits
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
    monitoring = _run("monitoring", root, shared, start_date=DRIFTED[0], end_date=DRIFTED[1],
                      monitored_source=INFERENCE_REQUESTS, min_rows="500", retrain_on_drift="false",
                      execute_feature_engineering="false")
    monitored = monitoring.stages["monitoring"].outputs
    print(f"online monitoring: {monitored['monitoring_status']} over {monitored.get('rows')} answered trips "
          f"(drifted: {monitored.get('drifted') or 'none'}); retraining is off for this run")
    return monitoring


def _wait_ready(base: str, service: subprocess.Popen, log_path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise JobFailed(f"demo stopped: the online service exited {service.returncode}; its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise JobFailed(f"demo stopped: the online service was not ready in {seconds:.0f} s; its log: {log_path}")


def _post(url: str, payload: dict, client_request_id: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), method="POST", headers={
        "Content-Type": "application/json", "X-Client-Request-Id": client_request_id})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"{}")
