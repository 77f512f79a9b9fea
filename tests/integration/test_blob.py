"""Batch scoring publishes its predictions to a real Azurite: parts and a manifest that can be trusted, nothing
half-published when the endpoint dies mid-publish, and no storage key anywhere."""
import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient
from mlflow import MlflowClient
from pyspark.sql import functions as F

from fakes.tcp_proxy import CuttingProxy
from orchestrator.local.azurite import ACCOUNT_KEY, Azurite
from taxi_fares_mlops.blob import CURRENT, MANIFEST, scrub
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.storage import PREDICTIONS

CONTAINER = "predictions-test"


@pytest.fixture
def azurite(tmp_path):
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One lakehouse and MLflow store for the module: its tests publish what scoring one champion gives, and
    training is not their subject, so the first test that asks for the champion trains it for all."""
    return tmp_path_factory.mktemp("blob")


@pytest.fixture
def champion(spark, trips_lakehouse, mlflow_store, training_config):
    trained = MlflowClient().search_registered_models("name = 'taxi_fares'")
    if not (trained and "champion" in trained[0].aliases):
        run_job(training_config(max_iter=5), spark)
    return trips_lakehouse


def _container(connection_string):
    return BlobServiceClient.from_connection_string(connection_string).get_container_client(CONTAINER)


def _check_manifest(container, manifest_path):
    manifest = json.loads(container.download_blob(manifest_path).readall())
    total = 0
    for part in manifest["files"]:
        data = container.download_blob(part["path"]).readall()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert len(data) == part["bytes"]
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == part["rows"]
        assert {"trip_id", "prediction", "model_version", "mlflow_run_id"} <= set(table.column_names)
        total += table.num_rows
    assert total == manifest["rows"]
    return manifest


def test_scoring_publishes_parts_and_a_manifest_that_match_the_table(
        spark, champion, scoring_config, azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    summary = run_job(scoring_config(execute_feature_engineering=False, blob_container=CONTAINER,
                                     blob_rows_per_part=3000), spark)
    published = summary["stages"]["batch_scoring"]["blob"]
    run_id = summary["mlflow_run_id"]
    assert published["manifest"] == f"predictions/taxi_fares/2016-01-04_2016-01-18/run={run_id}/{MANIFEST}"
    manifest = _check_manifest(_container(azurite.connection_string), published["manifest"])
    table_rows = champion.read(spark, PREDICTIONS).filter(F.col("mlflow_run_id") == run_id).count()
    assert manifest["rows"] == table_rows == published["rows"]
    assert len(manifest["files"]) == published["files"] >= 6
    assert (manifest["model_version"], manifest["mlflow_run_id"]) == ("1", run_id)


def test_publishing_is_off_without_a_connection_and_required_when_asked(
        spark, champion, scoring_config, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    summary = run_job(scoring_config(execute_feature_engineering=False), spark)
    assert "blob" not in summary["stages"]["batch_scoring"]
    before = champion.read(spark, PREDICTIONS).collect()
    with pytest.raises(StageError, match="publish_predictions=true but no storage connection"):
        run_job(scoring_config(execute_feature_engineering=False, publish_predictions="true"), spark)
    assert sorted(champion.read(spark, PREDICTIONS).collect()) == sorted(before)


@pytest.mark.slow
def test_azurite_dying_mid_publish_leaves_no_manifest_and_a_rerun_publishes_all(
        spark, champion, scoring_config, azurite, monkeypatch, caplog):
    proxy = CuttingProxy(azurite.port, rb"PUT /devstoreaccount1/" + CONTAINER.encode() + rb"/predictions/[^ ]*part-",
                         after=2, on_cut=azurite.stop)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/"))
    config = scoring_config(execute_feature_engineering=False, blob_container=CONTAINER, blob_rows_per_part=2000)
    with pytest.raises(StageError) as excinfo:
        run_job(config, spark)
    message = str(excinfo.value)
    assert proxy.cut.is_set()
    assert "stage 'batch_scoring' failed: StorageError: could not publish predictions to account 'devstoreaccount1', " \
           f"container '{CONTAINER}', path 'predictions/taxi_fares/2016-01-04_2016-01-18/run=" in message
    assert ACCOUNT_KEY not in message

    azurite.start()  # same port, same folder: what was uploaded before the cut is still there
    container = _container(azurite.connection_string)
    names = [b.name for b in container.list_blobs(name_starts_with="predictions/")]
    assert names, "some parts were uploaded before the cut"
    assert not [n for n in names if n.endswith(MANIFEST) or n.endswith(CURRENT)]  # nothing marked current

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    summary = run_job(config, spark)
    manifest = _check_manifest(container, summary["stages"]["batch_scoring"]["blob"]["manifest"])
    assert len(manifest["files"]) == 10 and manifest["rows"] == summary["stages"]["batch_scoring"]["rows"]
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert ACCOUNT_KEY not in logs


def test_one_part_is_published_without_a_shuffle_and_more_parts_are_balanced(spark):
    """A run of fewer rows than a part (a day's scoring) uploads its rows as read: no shuffle of them first."""
    from taxi_fares_mlops.blob import as_parts

    def plan(df):
        return df._jdf.queryExecution().executedPlan().toString()

    rows = spark.range(0, 3000, numPartitions=3)
    one = as_parts(rows, 3000, 5000)
    assert one.rdd.getNumPartitions() == 1 and "Exchange" not in plan(one)
    assert sorted(r.id for r in one.collect()) == list(range(3000))
    three = as_parts(rows, 3000, 1000)
    assert "Exchange" in plan(three)
    sizes = [len(part) for part in three.rdd.glom().collect()]
    assert len(sizes) == 3 and sum(sizes) == 3000 and all(900 <= n <= 1100 for n in sizes), sizes


def test_scrub_removes_keys_and_sas_signatures():
    connection = "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024&sig=abc%2Bdef"
    text = ("failed: https://acct.blob.core.windows.net/c/b.parquet?sv=2024&sig=abc%2Bdef "
            "with sv=2024&sig=abc%2Bdef")
    cleaned = scrub(text, connection)
    assert "sig=abc" not in cleaned and "https://acct.blob.core.windows.net/c/b.parquet?***" in cleaned
    assert scrub(f"key {ACCOUNT_KEY}", f"AccountKey={ACCOUNT_KEY};") == "key ***"


@pytest.mark.slow
def test_no_storage_or_instrumentation_key_in_logs_traces_envelopes_or_mlflow(
        spark, champion, scoring_config, azurite, monkeypatch, caplog):
    from fakes.ingestion import INSTRUMENTATION_KEY, IngestionCapture

    caplog.set_level("DEBUG")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    capture = IngestionCapture()
    try:
        monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", capture.connection_string)
        to_azure_monitor = run_job(scoring_config(execute_feature_engineering=False, blob_container=CONTAINER), spark)
    finally:
        capture.stop()
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING")
    to_file = run_job(scoring_config(execute_feature_engineering=False, blob_container=CONTAINER), spark)

    trace_file = champion.path("runs", to_file["mlflow_run_id"], "telemetry.jsonl")
    texts = {
        "logs": "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records),
        "trace file": open(trace_file).read(),
        # every envelope field but iKey, which is the ingestion protocol's address field
        "envelopes": json.dumps([{k: v for k, v in e.items() if k != "iKey"} for e in capture.envelopes]),
    }
    for summary in (to_azure_monitor, to_file):
        run = MlflowClient().get_run(summary["mlflow_run_id"])
        texts[f"mlflow {summary['mlflow_run_id']}"] = json.dumps([run.data.params, run.data.tags])
        texts[f"summary {summary['mlflow_run_id']}"] = json.dumps(summary)
    assert capture.envelopes and "stage batch_scoring" in texts["trace file"]
    for where, text in texts.items():
        assert ACCOUNT_KEY not in text, where
        assert INSTRUMENTATION_KEY not in text, where


def test_the_executors_get_a_container_sas_never_the_account_key(azurite):
    """The uploader travels pickled inside every Spark task: it must not carry the key. What it carries instead
    uploads to its container (a real Azurite), and nothing else: no read, no other container."""
    import cloudpickle
    from azure.core.exceptions import HttpResponseError

    from taxi_fares_mlops.blob import BlobTarget, _partition_uploader, executor_connection_string

    target = BlobTarget(azurite.connection_string, CONTAINER)
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(CONTAINER)
    executors = executor_connection_string(target)
    assert ACCOUNT_KEY not in executors and "AccountKey" not in executors and "SharedAccessSignature=" in executors
    assert ACCOUNT_KEY.encode() not in cloudpickle.dumps(_partition_uploader(executors, CONTAINER, "p"))
    service = BlobServiceClient.from_connection_string(executors)
    service.get_blob_client(CONTAINER, "p/part-0.parquet").upload_blob(b"rows", overwrite=True)
    with pytest.raises(HttpResponseError):
        service.get_blob_client(CONTAINER, "p/part-0.parquet").download_blob().readall()
    with pytest.raises(HttpResponseError):
        service.get_blob_client("another-container", "x").upload_blob(b"rows")


def test_at_debug_level_no_key_sas_or_token_reaches_the_console(azurite, tmp_path):
    """`mlops -v` / MLOPS_LOG_LEVEL=DEBUG turns the Azure SDK's HTTP logging on: the requests it logs, a message
    that names a connection string and a traceback holding a SAS URL all pass through the redacting filter."""
    import subprocess
    import sys

    from taxi_fares_mlops.blob import BlobTarget, executor_connection_string

    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(CONTAINER)
    sas_connection = executor_connection_string(BlobTarget(azurite.connection_string, CONTAINER))
    signature = dict(p.split("=", 1) for p in sas_connection.split(";"))["SharedAccessSignature"]
    sig = dict(p.split("=", 1) for p in signature.split("&"))["sig"]
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcGVyYXRvciJ9.c2lnbmF0dXJl"
    script = f'''
import logging
from azure.storage.blob import BlobServiceClient
from taxi_fares_mlops.logs import configure_logging
configure_logging("DEBUG")
log = logging.getLogger("taxi_fares_mlops.blob")
service = BlobServiceClient.from_connection_string({sas_connection!r}, logging_enable=True)
blob = service.get_blob_client({CONTAINER!r}, "debug/part.parquet")
blob.upload_blob(b"rows", overwrite=True, logging_enable=True)
log.debug("publishing with %s", {azurite.connection_string!r})
log.info("calling the workspace with Authorization: Bearer {token}")
try:
    raise RuntimeError("upload failed: " + blob.url)
except RuntimeError:
    log.exception("publish failed")
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Request URL" in output and "publish failed" in output and "RuntimeError" in output  # it did log
    for secret in (ACCOUNT_KEY, sig, token):
        assert secret not in output, secret


def test_a_range_has_one_current_set_the_last_published_and_older_sets_stay_readable(
        spark, champion, scoring_config, azurite, monkeypatch):
    from taxi_fares_mlops.blob import BlobTarget, current, range_prefix

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    config = scoring_config(execute_feature_engineering=False, blob_container=CONTAINER)
    first, second = (run_job(config, spark) for _ in range(2))
    container = _container(azurite.connection_string)
    folder = range_prefix("taxi_fares", config.start_date, config.end_date)
    pointer = json.loads(container.download_blob(f"{folder}/{CURRENT}").readall())
    assert pointer["prefix"] == f"{folder}/run={second['mlflow_run_id']}"
    assert pointer["manifest"] == second["stages"]["batch_scoring"]["blob"]["manifest"]
    assert current(BlobTarget(azurite.connection_string, CONTAINER), folder)["mlflow_run_id"] == second["mlflow_run_id"]
    older = _check_manifest(container, first["stages"]["batch_scoring"]["blob"]["manifest"])  # still readable
    assert older["mlflow_run_id"] == first["mlflow_run_id"] and older["rows"] > 0
