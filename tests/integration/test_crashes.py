"""Runs that die without a word (SIGKILL at a crash point, `MLOPS_CRASH_AT`), as a lost node ends them, and runs of
one job at once. Four kill points: during the feature MERGE, after the fare model is registered, after the
predictions commit (before Blob storage), during the Parquet part uploads. After each kill: the tables hold the old
or the new state, never a mix; no manifest points at missing parts; the killed MLflow run does not stay RUNNING
(the next run of the job ends it as KILLED, with a note); a rerun of the same range ends with exactly the rows of a
clean run.

The tests share one site (a lakehouse of generated trips, a sqlite MLflow store with a trained champion, an Azurite):
each killed job is a process of its own (the stages, MLflow and Spark in one Python process, as on a cluster's
driver), so SIGKILL ends all of it; the reruns run in the test process on the shared Spark session.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from azure.storage.blob import BlobServiceClient
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from orchestrator.errors import UsageError
from orchestrator.local.azurite import Azurite
from orchestrator.local.runner import job_lock
from taxi_fares.features import FEATURE_KEYS, pickup_features
from taxi_fares.synthetic import generate_trips
from taxi_fares_mlops.blob import MANIFEST
from taxi_fares_mlops.config import CONFIGS
from taxi_fares_mlops.datasets import validated_trips
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import MLOPS_HOME_ENV, PICKUP_FEATURES, PREDICTIONS, RAW_TRIPS, Lakehouse

pytestmark = pytest.mark.slow

START, END = "2016-01-04", "2016-01-18"
CONTAINER = "crash-predictions"
EXPERIMENT = "crash"

# A job in a process of its own: job name and parameter overrides (JSON) as arguments.
JOB = """
import json, sys
from taxi_fares_mlops.config import CONFIGS
from taxi_fares_mlops.jobs import run_job
config = CONFIGS[sys.argv[1]]
values = {p.name: p.default for p in config.parameters()}
values.update(json.loads(sys.argv[2]))
run_job(config.from_mapping(values))
"""


class Site:
    def __init__(self, root: Path, azurite: Azurite):
        self.lakehouse = Lakehouse(str(root / "lakehouse"))
        self.azurite = azurite

    def params(self, **changes):
        values = {"start_date": START, "end_date": END, "lakehouse_root": self.lakehouse.root,
                  "mlflow_experiment": EXPERIMENT, "max_iter": "10", "execute_feature_engineering": "false",
                  "blob_container": CONTAINER, "execute_promotion": "true"}  # training promotes in the same run
        values.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in changes.items()})
        return values

    def config(self, job, **changes):
        config = CONFIGS[job]
        values = {p.name: p.default for p in config.parameters()}
        values.update({k: v for k, v in self.params(**changes).items() if k in values})
        return config.from_mapping(values)

    def killed(self, job, point, **changes):
        """Run ``job`` in a process of its own with crash point ``point`` armed; return the run it left RUNNING."""
        params = {k: v for k, v in self.params(**changes).items() if k in {p.name for p in CONFIGS[job].parameters()}}
        env = {**os.environ, "MLOPS_CRASH_AT": point}
        done = subprocess.run([sys.executable, "-c", JOB, job, json.dumps(params)], env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        (dead,) = [r for r in self.runs(job) if r.info.status == "RUNNING"]
        return dead

    def runs(self, job):
        client = MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        return client.search_runs([experiment], f"tags.job = '{job}'")

    def container(self):
        return BlobServiceClient.from_connection_string(self.azurite.connection_string).get_container_client(CONTAINER)


@pytest.fixture(scope="module")
def site(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-site")
    azurite = Azurite(root / "azurite").start()
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root}/mlflow.db"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv(MLOPS_HOME_ENV, str(root / "lakehouse"))
        patch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        site = Site(root, azurite)
        site.lakehouse.write(generate_trips(spark, 6_000, START, END, seed=5), RAW_TRIPS)
        run_job(site.config("training", execute_feature_engineering=True, execute_training=False,
                            execute_promotion=False), spark)
        yield site
    azurite.stop()


@pytest.fixture
def champion(spark, site):
    """A complete champion trio (the registration kill test leaves one; trained here when run alone)."""
    if "champion" not in _aliases():
        run_job(site.config("training"), spark)


def _assert_ended_by(dead, rerun):
    ended = MlflowClient().get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["mlops.ended_by"] == rerun["mlflow_run_id"]
    assert "left RUNNING by a process that died" in ended.data.tags["mlops.note"]


def _aliases(name="taxi_fares"):
    found = MlflowClient().search_registered_models(f"name = '{name}'")
    return {a: str(v) for a, v in found[0].aliases.items()} if found else {}


def test_killed_while_registering_leaves_no_half_champion_and_the_next_run_ends_it(spark, site):
    client = MlflowClient()
    before = _aliases()
    dead = site.killed("training", "training.after_fare_model_registered")
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'taxi_fares'"))
    half = str(versions[-1])
    # the half-registered version has no alias and no companions; champion still points at a complete version
    assert _aliases() == before
    assert client.get_model_version("taxi_fares", half).aliases == []
    for companion in ("taxi_fares_outliers", "taxi_fares_drift"):
        tagged = [v.tags.get("fare_model_version") for v in client.search_model_versions(f"name = '{companion}'")]
        assert half not in tagged

    rerun = run_job(site.config("training", force_promote=True), spark)
    assert rerun["status"] == "SUCCESS"
    _assert_ended_by(dead, rerun)
    new = str(int(half) + 1)
    assert _aliases() == {"champion": new, "challenger": new}
    for companion in ("taxi_fares_outliers", "taxi_fares_drift"):
        assert client.get_model_version_by_alias(companion, "champion").tags["fare_model_version"] == new
    assert client.get_model_version("taxi_fares", half).aliases == []


def _features_of(spark, lakehouse, start, end):
    """What a clean feature-engineering run of the range computes (the rows its MERGE upserts)."""
    config = CONFIGS["training"].from_mapping({**{p.name: p.default for p in CONFIGS["training"].parameters()},
                                               "start_date": start, "end_date": end,
                                               "lakehouse_root": lakehouse.root})
    return pickup_features(validated_trips(spark, lakehouse, config, with_lookback=True).valid, config.start_date,
                           config.end_date)


def _log_versions(lakehouse, table):
    return sorted(p.name for p in Path(lakehouse.table_path(table), "_delta_log").glob("*.json"))


def test_killed_during_the_feature_merge_leaves_the_old_table_and_a_rerun_the_clean_rows(spark, site):
    lakehouse = site.lakehouse
    # a third week arrives: its MERGE inserts rows and updates those of the overlap
    lakehouse.write(generate_trips(spark, 3_000, "2016-01-18", "2016-01-25", seed=6), RAW_TRIPS, mode="append")
    old = lakehouse.read(spark, PICKUP_FEATURES).collect()
    log_before = _log_versions(lakehouse, PICKUP_FEATURES)
    files_before = set(Path(lakehouse.table_path(PICKUP_FEATURES)).glob("*.parquet"))

    dead = site.killed("training", "feature_engineering.during_merge", start_date="2016-01-11",
                       end_date="2016-01-25", execute_feature_engineering=True, execute_training=False,
                       execute_promotion=False)
    # killed with the MERGE's data files written and its commit not: the table is the old one, row for row
    assert set(Path(lakehouse.table_path(PICKUP_FEATURES)).glob("*.parquet")) - files_before
    assert _log_versions(lakehouse, PICKUP_FEATURES) == log_before
    assertDataFrameEqual(lakehouse.read(spark, PICKUP_FEATURES), old)

    rerun = run_job(site.config("training", start_date="2016-01-11", end_date="2016-01-25",
                                execute_feature_engineering=True, execute_training=False, execute_promotion=False),
                    spark)
    _assert_ended_by(dead, rerun)
    table = lakehouse.read(spark, PICKUP_FEATURES)
    assert table.count() == table.select(*FEATURE_KEYS).distinct().count()
    fresh = _features_of(spark, lakehouse, "2016-01-11", "2016-01-25")
    fresh_keys = fresh.select(*FEATURE_KEYS)
    assertDataFrameEqual(table.join(fresh_keys, list(FEATURE_KEYS), "left_semi"), fresh)
    untouched = spark.createDataFrame(old, table.schema).join(fresh_keys, list(FEATURE_KEYS), "left_anti")
    assertDataFrameEqual(table.join(fresh_keys, list(FEATURE_KEYS), "left_anti"), untouched)


def _check_manifests(container):
    """Every manifest in the container lists parts that exist; returns the manifests' folders."""
    names = {b.name for b in container.list_blobs(name_starts_with="predictions/")}
    folders = []
    for name in sorted(n for n in names if n.endswith(MANIFEST)):
        manifest = json.loads(container.download_blob(name).readall())
        assert {p["path"] for p in manifest["files"]} <= names, name
        folders.append(manifest["prefix"])
    return names, folders


def _scoring_range_is_clean(spark, lakehouse, run_id, start="2016-01-04", end="2016-01-18"):
    """Exactly one prediction per valid trip of the range, all of run ``run_id``."""
    predictions = lakehouse.read(spark, PREDICTIONS).filter(
        (F.col("tpep_pickup_datetime") >= start) & (F.col("tpep_pickup_datetime") < end))
    trips = lakehouse.read(spark, RAW_TRIPS).filter(
        (F.col("tpep_pickup_datetime") >= start) & (F.col("tpep_pickup_datetime") < end))
    assertDataFrameEqual(predictions.select("trip_id"), trips.select("trip_id"))
    assert {r.mlflow_run_id for r in predictions.select("mlflow_run_id").distinct().collect()} == {run_id}


@pytest.mark.parametrize("point", ["batch_scoring.after_predictions_commit", "batch_scoring.during_part_uploads"])
def test_scoring_killed_before_its_manifest_leaves_no_manifest_and_a_rerun_publishes_all(spark, site, champion, point):
    lakehouse = site.lakehouse
    dead = site.killed("batch_scoring", point, blob_rows_per_part=300)
    # the Delta table is the system of record: the kill came after its one commit, so it holds the new range
    _scoring_range_is_clean(spark, lakehouse, dead.info.run_id)
    names, folders = _check_manifests(site.container())
    dead_folder = [n for n in names if f"run={dead.info.run_id}/" in n]
    assert not [n for n in dead_folder if n.endswith(MANIFEST)]
    if point.endswith("during_part_uploads"):
        assert dead_folder  # some parts made it; without a manifest no reader takes them

    rerun = run_job(site.config("batch_scoring", blob_rows_per_part=300), spark)
    _assert_ended_by(dead, rerun)
    _scoring_range_is_clean(spark, lakehouse, rerun["mlflow_run_id"])
    _, after = _check_manifests(site.container())
    assert after == sorted(folders + [rerun["stages"]["batch_scoring"]["blob"]["manifest"].rsplit("/", 1)[0]])


def test_two_training_runs_at_once_register_two_versions_and_champion_stays_whole(site, champion):
    """Two jobs that train (a scheduled training and a retraining, say) may overlap on Databricks: each registers
    its version, and champion always names a complete trio."""
    client = MlflowClient()
    before = {int(v.version) for v in client.search_model_versions("name = 'taxi_fares'")}
    runs_before = {r.info.run_id for r in site.runs("training")}
    params = json.dumps({k: v for k, v in site.params(force_promote=True).items()
                         if k in {p.name for p in CONFIGS["training"].parameters()}})
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, "training", params], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for job in jobs:
        _, err = job.communicate(timeout=900)
        assert job.returncode == 0, err[-3000:]
    new = {int(v.version) for v in client.search_model_versions("name = 'taxi_fares'")} - before
    assert len(new) == 2
    champion = _aliases()["champion"]
    assert int(champion) in new
    for companion in ("taxi_fares_outliers", "taxi_fares_drift"):
        assert client.get_model_version_by_alias(companion, "champion").tags["fare_model_version"] == champion
    # neither took the other, alive, for a dead run to end
    runs = [r for r in site.runs("training") if r.info.run_id not in runs_before]
    assert [(r.info.status, "mlops.ended_by" in r.data.tags) for r in runs] == [("FINISHED", False)] * 2


def test_a_second_run_of_a_job_is_refused_while_the_first_holds_its_lock_and_a_killed_holder_frees_it(tmp_path):
    root = str(tmp_path / "lakehouse")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from orchestrator.local.runner import job_lock\n"
        f"with job_lock({root!r}, 'batch_scoring'):\n    print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"job batch_scoring is already running on {root} "
                                             rf"\(pid {holder.pid}, started .*\): one run at a time"):
            with job_lock(root, "batch_scoring"):
                pass
        with job_lock(root, "training"):  # another job is not held up
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            with job_lock(root, "batch_scoring"):
                break
        except UsageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
