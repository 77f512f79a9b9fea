"""The inference table: the real service process (tests/fakes/serving.py's signed bundle, API keys) appends every
answered request to a Delta table with delta-rs, off the request path, in Databricks' inference-table columns; it
is read back with delta-rs and with Spark. A table that cannot be written never fails a request (the rows are
dropped and counted in /metrics); a retried micro-batch is written once; a full queue drops, never blocks."""
import datetime as dt
import hashlib
import json
import time

import pytest
from deltalake import DeltaTable

from fakes.serving import build_bundle, free_port, http, sample_trips, start_service, stop
from taxi_fares_mlops.serving.inference_log import SCHEMA, InferenceLog, InferenceRow

KEY = "inference-key-0123456789abcdef"
COLUMNS = ["request_date", "request_time", "databricks_request_id", "client_request_id", "status_code",
           "execution_duration_ms", "request", "response", "served_entity_id", "requester", "logging_error_codes"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    keys = root / "keys"
    keys.write_text(KEY + "\n")
    return (*build_bundle(root), keys, root)


def _post(url, body, **headers):
    return http(url + "/v1/predict", body, headers={"Authorization": f"Bearer {KEY}", **headers})


def _logged(url, rows, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = http(url + "/v1/metadata", headers={"Authorization": f"Bearer {KEY}"})[1]["inference_table"]
        if status["written_rows"] + status["dropped_rows"] >= rows:
            return status
        time.sleep(0.2)
    raise AssertionError(f"the inference table did not get {rows} rows in {seconds} s: {status}")


def test_every_answered_request_lands_in_the_table_read_back_by_delta_rs_and_spark(bundle, spark):
    folder, trusted, keys, root = bundle
    table = root / "inference_requests"
    process, url = start_service(folder, trusted, "--auth", "api-key", "--api-keys-file", str(keys),
                                 "--inference-table", str(table))
    try:
        sent = [sample_trips(3, seed=i) for i in range(4)]
        answers = [_post(url, {"trips": trips}, **({"X-Client-Request-Id": "order-17"} if i == 0 else {}))
                   for i, trips in enumerate(sent)]
        assert [a[0] for a in answers] == [200] * 4, answers
        old = {"pickup_time": "2015-06-01T10:00:00", "dropoff_time": "2015-06-01T10:20:00", "pickup_zip": 10001,
               "dropoff_zip": 10002, "trip_distance": 3.0}  # long before the features held: a 422, logged
        refused = _post(url, {"trips": [old]})
        assert refused[0] == 422 and refused[1]["detail"][0]["type"] == "features_not_held"
        assert _post(url, {"trips": [{"pickup_time": "x"}]})[0] == 422  # never reached the model: not logged
        status = _logged(url, 5)
        assert status["written_rows"] == 5 and status["dropped_rows"] == 0, status
    finally:
        stop(process)

    rows = DeltaTable(str(table)).to_pandas().sort_values("request_time").reset_index(drop=True)
    assert list(rows.columns) == COLUMNS and len(rows) == 5
    types = {f["name"]: f["type"] for f in json.loads(DeltaTable(str(table)).schema().to_json())["fields"]}
    assert types == {"request_date": "date", "request_time": "timestamp", "databricks_request_id": "string",
                     "client_request_id": "string", "status_code": "integer", "execution_duration_ms": "long",
                     "request": "string", "response": "string", "served_entity_id": "string", "requester": "string",
                     "logging_error_codes": {"type": "array", "elementType": "string", "containsNull": True}}
    assert SCHEMA.names == COLUMNS
    answered, refusal = rows.iloc[:4], rows.iloc[4]
    assert list(answered["status_code"]) == [200] * 4 and refusal["status_code"] == 422
    assert [json.loads(r)["trips"] for r in answered["request"]] == [[_as_read(t) for t in r] for r in sent]
    responses = [json.loads(r) for r in answered["response"]]
    assert [r["request_id"] for r in responses] == list(answered["databricks_request_id"])
    assert [r["request_id"] for r in responses] == [a[1]["request_id"] for a in answers]
    assert [len(r["predictions"]) for r in responses] == [3] * 4
    assert json.loads(refusal["response"])["detail"][0]["type"] == "features_not_held"
    assert answered["client_request_id"].iloc[0] == "order-17" and rows["client_request_id"].iloc[1:].isna().all()
    fingerprint = hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert set(rows["requester"]) == {f"api-key:0:{fingerprint}"}
    assert set(rows["served_entity_id"]) == {"taxi_fares/1"}
    assert (rows["execution_duration_ms"] >= 0).all()
    assert (rows["request_date"] == rows["request_time"].dt.date).all()
    assert not any(KEY in str(value) for value in rows.to_numpy().ravel())
    # Spark reads the same table (the monitoring job's reader)
    read = spark.read.format("delta").load(str(table))
    assert read.columns == COLUMNS
    assert sorted(r.databricks_request_id for r in read.select("databricks_request_id").collect()) == \
        sorted(rows["databricks_request_id"])


def test_a_table_that_cannot_be_written_never_fails_a_request_and_the_rows_are_counted(bundle):
    folder, trusted, keys, root = bundle
    blocker = root / "not-a-folder"
    blocker.write_text("a file where the table's folder would be")
    metrics_port = free_port()
    process, url = start_service(folder, trusted, "--auth", "api-key", "--api-keys-file", str(keys),
                                 "--inference-table", str(blocker / "inference_requests"),
                                 "--metrics-port", str(metrics_port))
    try:
        answers = [_post(url, {"trips": sample_trips(2, seed=i)}) for i in range(3)]
        assert [a[0] for a in answers] == [200] * 3
        status = _logged(url, 3)
        assert status["dropped_rows"] == 3 and status["written_rows"] == 0 and status["last_failure"], status
        metrics = http(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        assert "taxi_fares_inference_rows_dropped_total 3.0" in metrics
    finally:
        stop(process)
    output = process.stdout.read()
    assert "inference table" in output and "dropped 3 row(s)" in output, output[-3000:]


def _as_read(trip: dict) -> dict:
    """A request's trip as the service read it: times to the microsecond (pydantic's datetime)."""
    import pandas as pd

    return {**trip, **{k: pd.Timestamp(trip[k]).floor("us").isoformat() for k in ("pickup_time", "dropoff_time")}}


def _row(i: int) -> InferenceRow:
    return InferenceRow(dt.datetime(2016, 1, 5, 12, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i), f"id-{i}",
                        None, 200, 3, json.dumps({"trips": []}), json.dumps({"request_id": f"id-{i}"}),
                        "taxi_fares/1", "anonymous")


def test_a_retried_micro_batch_is_written_once(tmp_path):
    log = InferenceLog(str(tmp_path / "t"), flush_seconds=3600)
    try:
        batch = [_row(i) for i in range(3)]
        log._write(batch, 1)
        log._write(batch, 1)  # the commit landed but its answer was lost: the retry finds it in the table
        log._write([_row(3)], 2)
    finally:
        log.stop()
    table = DeltaTable(str(tmp_path / "t"))
    assert sorted(table.to_pandas()["databricks_request_id"]) == ["id-0", "id-1", "id-2", "id-3"]
    assert table.transaction_version(log.app_id) == 2


def test_a_full_queue_drops_and_counts_rows_without_blocking(tmp_path):
    counted = []
    log = InferenceLog(str(tmp_path / "t"), max_queued_rows=2, flush_seconds=3600, on_dropped=counted.append)
    try:
        started = time.monotonic()
        for i in range(5):
            log.record(_row(i))
        assert time.monotonic() - started < 0.5
        assert log.dropped == 3 and sum(counted) == 3
        assert log.flush() and log.written == 2
    finally:
        log.stop()
    assert len(DeltaTable(str(tmp_path / "t")).to_pandas()) == 2


def test_the_queue_is_bounded_in_bytes_and_rows_left_at_stop_are_counted(tmp_path):
    counted = []
    log = InferenceLog(str(tmp_path / "t"), max_queued_bytes=3 * _row(0).size, flush_seconds=0.05, batch_rows=1,
                       storage_options=lambda: time.sleep(2) or {}, on_dropped=counted.append)  # a slow store
    for i in range(5):
        log.record(_row(i))
    assert log.dropped == 2  # the bytes bound: three rows fit
    time.sleep(0.5)  # one row is being written, two wait
    log.stop(timeout=0.2)
    assert log.dropped == 4 and sum(counted) == 4 and log.status()["queued_rows"] == 0


def test_the_table_records_the_validated_trips_not_the_bodys_padding(bundle, tmp_path):
    from fakes.serving import call_asgi, loaded_app
    from taxi_fares_mlops.serving.app import Settings

    folder, trusted, _, _ = bundle
    table = tmp_path / "inference_requests"
    app = loaded_app(Settings(bundle=str(folder), trusted_key=str(trusted), inference_table=str(table)))
    trip = sample_trips(1, seed=9)[0]
    padded = ('{"trips": [' + json.dumps({**trip, "pickup_zip": str(trip["pickup_zip"])}) + "]" + " " * 500_000
              + "}").encode()
    status, _, _ = call_asgi(app, "POST", "/v1/predict", padded)
    assert status == 200
    assert app.state.service.inference_log.flush()
    app.state.service.stop()
    logged = DeltaTable(str(table)).to_pandas()["request"].iloc[0]
    assert len(logged) < 300 and json.loads(logged) == {"trips": [_as_read(trip)]}  # the zip as the int read
