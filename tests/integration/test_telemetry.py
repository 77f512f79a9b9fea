"""Telemetry against a real local ingestion endpoint: envelopes per stage with the right role and run id, log
lines as traces, failures as exceptions; an unreachable or stalled endpoint never fails or hangs a job."""
import json
import logging
import socket
import time
from pathlib import Path

import pytest

from fakes.ingestion import INSTRUMENTATION_KEY, IngestionCapture
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.telemetry import format_tree, read_local

STAGE_TYPES = ("RemoteDependencyData", "RequestData")


@pytest.fixture
def capture(monkeypatch):
    server = IngestionCapture()
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", server.connection_string)
    yield server
    server.stop()


def _named(capture, name):
    return [e for e in capture.envelopes
            if e["data"]["baseType"] in STAGE_TYPES and e["data"]["baseData"]["name"] == name]


@pytest.mark.slow
def test_training_and_scoring_send_one_envelope_per_stage(spark, trips_lakehouse, mlflow_store, capture,
                                                          training_config, scoring_config):
    trained = run_job(training_config(max_iter=5), spark)
    scored = run_job(scoring_config(execute_feature_engineering=False), spark)

    for summary, role, stages in ((trained, "taxi_fares.training", ("feature_engineering", "training", "promotion")),
                                  (scored, "taxi_fares.batch_scoring", ("batch_scoring",))):
        job = _named(capture, f"job {summary['job']}")
        assert len(job) == 1 and job[0]["data"]["baseType"] == "RequestData"
        for stage in stages:
            envelopes = _named(capture, f"stage {stage}")
            assert len(envelopes) == 1, stage
            envelope = envelopes[0]
            assert envelope["tags"]["ai.cloud.role"] == role
            properties = envelope["data"]["baseData"]["properties"]
            assert properties["mlflow_run_id"] == summary["mlflow_run_id"]
            assert properties["mlflow_experiment_id"] == summary["mlflow_experiment_id"]
            assert properties["stage"] == stage
    assert not _named(capture, "stage feature_engineering")[0]["data"]["baseData"]["properties"].get(
        "mlflow_run_id") == scored["mlflow_run_id"]  # the skipped stage of the scoring job sent nothing

    messages = [e["data"]["baseData"] for e in capture.of_type("MessageData")]
    started = [m for m in messages if m["message"] == "stage training started"]
    assert len(started) == 1 and started[0]["properties"]["mlflow_run_id"] == trained["mlflow_run_id"]
    steps = [e["data"]["baseData"] for e in capture.of_type("RemoteDependencyData")]
    fit = [s for s in steps if s["name"] == "fit model"]
    assert len(fit) == 1 and int(fit[0]["properties"]["rows"]) > 1000
    assert capture.of_type("ExceptionData") == []


def test_a_failing_stage_sends_an_exception(spark, trips_lakehouse, mlflow_store, capture, scoring_config):
    with pytest.raises(StageError):
        run_job(scoring_config(model_alias="challenger"), spark)
    exceptions = capture.of_type("ExceptionData")
    assert len(exceptions) == 1
    details = exceptions[0]["data"]["baseData"]["exceptions"][0]
    assert "has no alias 'challenger'" in details["message"]
    assert exceptions[0]["tags"]["ai.cloud.role"] == "taxi_fares.batch_scoring"
    stage = _named(capture, "stage batch_scoring")[0]["data"]["baseData"]
    assert stage["success"] is False


def test_without_a_connection_string_telemetry_goes_to_the_run_folder(
        spark, trips_lakehouse, mlflow_store, training_config, monkeypatch):
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    summary = run_job(training_config(execute_training=False, execute_promotion=False), spark)
    path = trips_lakehouse.root + f"/runs/{summary['mlflow_run_id']}/telemetry.jsonl"
    rows = read_local(Path(path))
    names = [r["name"] for r in rows if r["type"] == "span"]
    assert names.count("stage feature_engineering") == 1 and names.count("job training") == 1
    assert {r["attributes"]["mlflow_run_id"] for r in rows if r["type"] == "span"} == {summary["mlflow_run_id"]}
    tree = format_tree(rows).splitlines()
    assert tree[0].startswith("job training ")
    assert any(line.startswith("  stage feature_engineering ") for line in tree)
    assert any(line.startswith("    merge pickup_features ") for line in tree)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _telemetry_waits(connection_string: str) -> tuple[float, float]:
    """Seconds a job's thread spends in telemetry against ``connection_string``: emitting 50 stage-like spans with a
    log line each (the exporters run in background threads), and shutting down (bounded)."""
    from taxi_fares_mlops.telemetry import Telemetry

    telemetry = Telemetry.start("training", {"mlflow_run_id": "r1"}, connection_string, None)
    started = time.monotonic()
    for i in range(50):
        with telemetry.span(f"step {i}", rows=i):
            logging.getLogger("taxi_fares_mlops.test").info("step %d", i)
        time.sleep(0.02)  # a batch is exported every 0.5 s: several exports fall inside the loop
    emitting = time.monotonic() - started
    started = time.monotonic()
    telemetry.shutdown()
    return emitting, time.monotonic() - started


@pytest.mark.slow
def test_an_unreachable_or_stalled_endpoint_costs_seconds_not_the_job(spark, trips_lakehouse, mlflow_store,
                                                                      training_config, monkeypatch, caplog):
    """What telemetry may cost a job is measured where it could wait (span and log calls, shutdown), not as the
    difference of two jobs' wall times, which the machine's other work moves by more than the bound."""
    from taxi_fares_mlops.telemetry import SHUTDOWN_SECONDS

    stalled_server = IngestionCapture(stall=True)
    try:
        for endpoint in (f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:"
                         f"{_closed_port()}/", stalled_server.connection_string):
            emitting, stopping = _telemetry_waits(endpoint)
            # A synchronous export would wait out its 3-s timeout at least once in the loop (1 s of sleeps).
            assert emitting < 2.5, (endpoint, emitting)
            assert stopping < SHUTDOWN_SECONDS + 1.5, (endpoint, stopping)
        # A whole job against the stalled endpoint: it succeeds, with at most one warning about telemetry.
        monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", stalled_server.connection_string)
        caplog.clear()
        summary = run_job(training_config(execute_training=False, execute_promotion=False), spark)
        assert summary["status"] == "SUCCESS"
    finally:
        stalled_server.stop()
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "telemetry" in r.getMessage()]
    assert len(warnings) <= 1


def test_no_secret_reaches_logs_traces_or_envelopes(spark, trips_lakehouse, mlflow_store, capture, training_config,
                                                    caplog):
    caplog.set_level("DEBUG")
    summary = run_job(training_config(execute_training=False, execute_promotion=False), spark)
    assert summary["status"] == "SUCCESS"
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert INSTRUMENTATION_KEY not in logs and "IngestionEndpoint" not in logs
    assert capture.envelopes, "the run sent no envelopes: nothing was checked"
    for envelope in capture.envelopes:
        content = json.dumps({k: v for k, v in envelope.items() if k != "iKey"})  # iKey: the protocol's address
        assert INSTRUMENTATION_KEY not in content
