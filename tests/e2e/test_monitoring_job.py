"""The monitoring job end to end, as a person runs it: `mlops run monitoring --local` on scored weeks.

One lakehouse, trained once and scored once over three weeks (one like the training data, one whose trip
distances are 1.5x, one with 3% injected extremes), then monitored week by week: the first run through the CLI, a
Spark of its own as a job cluster has; the others through the same runner on this process's Spark shared as an
all-purpose cluster is (``runner.local_cluster``, as ``mlops demo`` runs its jobs: same template, notebooks and
wheels, no JVM start each):

* the same distribution is OK, and a rerun of the range leaves the monitoring tables' counts unchanged;
* fewer rows than ``min_rows`` is INSUFFICIENT_DATA: nothing judged, no drift warning, no retraining;
* 3% extremes give an outlier share within [2%, 6%];
* the shifted week is DRIFT naming trip_distance; its notebook task reports it, the condition task passes, and
  the run-job task starts the training job exactly once, tagged with the monitoring run and the reason. The
  alert queries read only dimensions that run emitted.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from taxi_fares_mlops.storage import DRIFT_METRICS, OUTLIER_METRICS, PERFORMANCE_METRICS, Lakehouse

START, END = "2016-01-04", "2016-01-18"
SAME_WEEK = ("2016-01-18", "2016-01-25")
SHIFTED_WEEK = ("2016-01-25", "2016-02-01")
OUTLIER_WEEK = ("2016-02-01", "2016-02-08")
MLOPS = [sys.executable, "-m", "orchestrator.cli"]
MONITORING = Path(__file__).resolve().parents[2] / "alerts_and_dashboards"

pytestmark = pytest.mark.slow


def mlops(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(root)
    done = subprocess.run([*MLOPS, *args], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def run(root, job, start, end, *params, cli=False):
    """(summary, console) of a run of JOB on the range: ``mlops run JOB --local --json`` in a process of its own
    with ``cli``, else ``runner.run_local`` on this process's Spark shared as a local cluster."""
    overrides = [f"start_date={start}", f"end_date={end}", "mlflow_experiment=e2e", *params]
    if cli:
        done = mlops(root, "run", job, "--local", "--json", *[f"--param={p}" for p in overrides])
        return json.loads(done.stdout), done.stderr
    from orchestrator.local import runner
    from orchestrator.parameters import parse_overrides

    console = io.StringIO()
    with runner.local_cluster() as shared, contextlib.redirect_stderr(console):
        result = runner.run_local(job, parse_overrides(overrides), str(root), shared)
    if result.status != "SUCCESS":
        raise AssertionError(f"{job} ended {result.status}: {result.error}\n{console.getvalue()[-4000:]}")
    return result.summary, console.getvalue()


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    """A lakehouse with a trained champion and three scored weeks. The data, the training and the scoring are
    made in this process (the commands are test_local_jobs.py's subject); the monitoring runs go through mlops."""
    import mlflow

    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import CONFIGS
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, RAW_TRIPS

    root = tmp_path_factory.mktemp("monitoring") / "lakehouse"
    lakehouse = Lakehouse(str(root))
    lakehouse.write(generate_trips(spark, 20_000, START, END, seed=5), RAW_TRIPS)
    offset = 20_000
    for week, seed, drift in ((SAME_WEEK, 6, {}), (SHIFTED_WEEK, 7, {"shift": {"trip_distance": 1.5}}),
                              (OUTLIER_WEEK, 8, {"outliers": 0.03})):
        trips = generate_trips(spark, 10_000, *week, seed=seed, **drift)
        lakehouse.write(trips.withColumn("trip_id", F.col("trip_id") + offset), RAW_TRIPS, mode="append")
        offset += 10_000
    uri = f"sqlite:///{root}/mlflow.db"  # the store `mlops run --local` uses for this lakehouse
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MLOPS_HOME_ENV, str(root))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        # in process, the training run promotes its version itself (no deployment job runs after run_job)
        for job, start, end, extra in (("training", START, END, {"max_iter": "40", "execute_promotion": "true"}),
                                       ("batch_scoring", SAME_WEEK[0], OUTLIER_WEEK[1], {})):
            values = {p.name: p.default for p in CONFIGS[job].parameters()}
            values.update(start_date=start, end_date=end, lakehouse_root=str(root), mlflow_experiment="e2e", **extra)
            run_job(CONFIGS[job].from_mapping(values), spark)
    return root


def _counts(spark, root):
    lakehouse = Lakehouse(str(root))
    return {t: lakehouse.read(spark, t).count() for t in (DRIFT_METRICS, OUTLIER_METRICS, PERFORMANCE_METRICS)}


def _telemetry(root, run_id):
    path = Path(Lakehouse(str(root)).path("runs", run_id, "telemetry.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_same_distribution_is_ok_and_a_rerun_replaces_its_rows(spark, scored):
    summary, stderr = run(scored, "monitoring", *SAME_WEEK, cli=True)
    monitored = summary["stages"]["monitoring"]
    assert monitored["monitoring_status"] == "OK", monitored
    assert monitored["drifted_features"] == [] and monitored["outlier_share"] < 0.03
    assert 9_000 < monitored["rows"] <= 10_000
    assert 0.5 < monitored["performance"]["rmse_ratio"] < 1.25
    assert "task drifted: 'false' EQUAL_TO 'true' is false" in stderr
    run_id = summary["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{scored}/mlflow.db")
    assert client.get_run(run_id).data.tags["monitoring.status"] == "OK"

    counts = _counts(spark, scored)
    rerun, _ = run(scored, "monitoring", *SAME_WEEK)
    assert rerun["stages"]["monitoring"]["monitoring_status"] == "OK"
    assert _counts(spark, scored) == counts
    window = Lakehouse(str(scored)).read(spark, DRIFT_METRICS).filter(F.col("window_start") == SAME_WEEK[0])
    assert [r[0] for r in window.select("mlflow_run_id").distinct().collect()] == [rerun["mlflow_run_id"]]
    assert window.groupBy("feature", "metric").count().filter("count > 1").count() == 0


def test_too_few_rows_is_insufficient_data_with_no_alert_and_no_retraining(scored):
    summary, stderr = run(scored, "monitoring", *SHIFTED_WEEK, "min_rows=1000000")
    monitored = summary["stages"]["monitoring"]
    assert monitored["monitoring_status"] == "INSUFFICIENT_DATA" and monitored["drifted_features"] == []
    assert "task drifted: 'false' EQUAL_TO 'true' is false" in stderr
    assert "task retrain: excluded (drifted did not lead here)" in stderr
    assert "starting job training" not in stderr
    warnings = [r for r in _telemetry(scored, summary["mlflow_run_id"])
                if r["type"] == "log" and r["severity"].startswith("WARN")]
    assert warnings == []


def test_injected_extremes_give_an_outlier_share_near_their_rate(spark, scored):
    summary, _ = run(scored, "monitoring", *OUTLIER_WEEK, "retrain_on_drift=false")
    share = summary["stages"]["monitoring"]["outlier_share"]
    assert 0.02 <= share <= 0.06, summary["stages"]["monitoring"]
    rows = Lakehouse(str(scored)).read(spark, OUTLIER_METRICS).filter(F.col("window_start") == OUTLIER_WEEK[0])
    assert [(r["metric"], round(r["value"], 4)) for r in rows.collect()] == [("outlier_share", share)]


def test_drift_starts_exactly_one_training_run_tagged_with_the_monitoring_run(spark, scored):
    summary, stderr = run(scored, "monitoring", *SHIFTED_WEEK)
    monitored = summary["stages"]["monitoring"]
    assert monitored["monitoring_status"] in ("DRIFT", "DEGRADED")
    assert "trip_distance" in monitored["drifted_features"]
    assert "pickup_zip" not in monitored["drifted_features"]
    assert "task drifted: 'true' EQUAL_TO 'true' is true" in stderr
    assert "task retrain: starting job training" in stderr
    distance = {r["metric"]: r for r in Lakehouse(str(scored)).read(spark, DRIFT_METRICS).filter(
        (F.col("window_start") == SHIFTED_WEEK[0]) & (F.col("feature") == "trip_distance")).collect()}
    assert distance["psi"]["value"] > 0.2 and distance["psi"]["breached"] and distance["ks"]["value"] > 0.1

    client = MlflowClient(tracking_uri=f"sqlite:///{scored}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    retrains = client.search_runs(experiments, f"tags.`retraining.triggered_by` = '{summary['mlflow_run_id']}'")
    assert len(retrains) == 1
    retrain = retrains[0]
    assert retrain.data.tags["job"] == "training" and retrain.info.status == "FINISHED"
    assert retrain.data.tags["retraining.reason"].startswith(f"monitoring {monitored['monitoring_status']} for "
                                                             f"{SHIFTED_WEEK[0]}..{SHIFTED_WEEK[1]}: ")
    assert retrain.data.params["end_date"] == SHIFTED_WEEK[1]
    _alerts_read_only_what_the_stage_emits(_telemetry(scored, summary["mlflow_run_id"]))


def _alerts_read_only_what_the_stage_emits(rows):
    """Every custom dimension the alert queries read is one this run emitted, and the ARM rules run the .kql."""
    drift_logs = [r for r in rows if r["type"] == "log" and r["body"].startswith("drift in feature")]
    stage_span = next(r for r in rows if r["type"] == "span" and r["name"] == "stage monitoring")
    assert {r["attributes"]["feature"] for r in drift_logs} >= {"trip_distance"}
    emitted = {"drift.kql": set().union(*(r["attributes"] for r in drift_logs)),
               "monitoring_status.kql": set(stage_span["attributes"])}
    for name, names in emitted.items():
        query = (MONITORING / "kql" / name).read_text()
        read = set(re.findall(r"Properties\.(\w+)", query))
        assert read and read <= names, f"{name} reads {sorted(read - names)}, which the stage does not emit"
    rules = json.loads((MONITORING / "alerts" / "scheduled_query_rules.json").read_text())["resources"]
    queries = {r["properties"]["criteria"]["allOf"][0]["query"] for r in rules}
    files = {"\n".join(line for line in (MONITORING / "kql" / n).read_text().splitlines()
                       if not line.startswith("//")).strip() for n in emitted}
    assert queries == files
