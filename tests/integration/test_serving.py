"""The online service on a real bundle, over real HTTP: a champion trained and batch-scored in process, packaged
from the sqlite registry and the Delta feature tables, then served by `python -m taxi_fares_mlops.serving` in a
subprocess where pyspark and mlflow cannot be imported (the service must need neither)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from fakes.ingestion import IngestionCapture
from taxi_fares_mlops.serving.bundle import BundleError, verify
from taxi_fares_mlops.signing import development_key, development_public_key, load_private_key, sign

START, END = "2016-01-04", "2016-01-18"
# The bundle keeps the features of the whole range, so every scored trip can be compared with batch.
LOOKBACK_HOURS = 15 * 24
MAX_TRIPS, WINDOW, MIN_ROWS = 200, 1000, 500
# The service's command as the container runs it, where neither Spark nor MLflow can be imported. With
# MLOPS_SERVING_LOAD_DELAY_SECONDS (a test hook, declared in orchestrator.environment) the bundle loads that much
# later, so a test sees readiness answer 503 first: the delay lives here, not in the product.
BLOCK_SPARK_AND_MLFLOW = (
    "import os, sys, time; sys.modules['pyspark'] = None; sys.modules['mlflow'] = None; "
    "from taxi_fares_mlops.serving import app; delay = float(os.environ.get('MLOPS_SERVING_LOAD_DELAY_SECONDS') or 0); "
    "load = app.load_bundle; app.load_bundle = lambda *a: (time.sleep(delay), load(*a))[1]; "
    "from taxi_fares_mlops.serving.__main__ import main; sys.exit(main(sys.argv[1:]))")

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None, timeout=30):
    """(status, JSON or text, headers) of a GET, or a POST of ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    text = raw.decode()
    return status, (json.loads(text) if headers.get("content-type", "").startswith("application/json") else text), \
        headers


def _trusted(bundle):
    """The public half of the development key the bundle is signed with (the `served` fixture's lakehouse holds
    it, beside the bundle), as `mlops serve --local` trusts it."""
    return str(development_public_key(Path(bundle).parent / "lakehouse"))


def serve(bundle, *args, wait=True, env=None):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-c", BLOCK_SPARK_AND_MLFLOW, "--bundle", str(bundle), "--port",
                                str(port), "--trusted-key", _trusted(bundle), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while wait and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited {process.returncode}:\n{process.stdout.read()}")
        try:
            if call(url + "/health/ready", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.3)
    return process, url


@pytest.fixture(scope="module")
def served(spark, tmp_path_factory):
    """A lakehouse with a trained and batch-scored champion, its bundle, and the service running on it."""
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import SCORING_PARAMETERS, TRAINING_PARAMETERS, ScoringConfig, TrainingConfig
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.serving.package import package
    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, PREDICTIONS, RAW_TRIPS, Lakehouse
    import mlflow

    root = tmp_path_factory.mktemp("serving")
    lakehouse = Lakehouse(str(root / "lakehouse"))
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MLOPS_HOME_ENV, lakehouse.root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        lakehouse.write(generate_trips(spark, 20_000, START, END, seed=5), RAW_TRIPS)
        common = dict(start_date=START, end_date=END, lakehouse_root=lakehouse.root, mlflow_experiment="serving")
        training = {**{p.name: p.default for p in TRAINING_PARAMETERS}, **common, "max_iter": "40",
                    "execute_promotion": "true"}  # in process: promoted by this run, not a deployment job
        version = run_job(TrainingConfig.from_mapping(training), spark)["stages"]["training"]["model_version"]
        scoring = {**{p.name: p.default for p in SCORING_PARAMETERS}, **common}
        run_job(ScoringConfig.from_mapping(scoring), spark)
        batch = lakehouse.read(spark, PREDICTIONS).orderBy("trip_id").toPandas()
        manifest = package(spark, lakehouse, root / "bundle", "taxi_fares", lookback_hours=LOOKBACK_HOURS,
                           signing_key=load_private_key(development_key(lakehouse.root)))
    metrics_port = _free_port()
    process, url = serve(root / "bundle", "--max-trips", str(MAX_TRIPS), "--drift-window", str(WINDOW),
                         "--drift-min-rows", str(MIN_ROWS), "--feature-tables", lakehouse.path("tables"),
                         "--lookback-hours", str(LOOKBACK_HOURS),
                         "--telemetry-file", str(root / "telemetry.jsonl"), "--metrics-port", str(metrics_port))
    state = {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
             "batch": batch, "version": version, "manifest": manifest, "bundle": root / "bundle",
             "telemetry": root / "telemetry.jsonl", "process": process, "lakehouse": lakehouse.root, "mlflow": uri}
    yield state
    state["process"].terminate()
    state["process"].wait(timeout=30)


def _trips(frame: pd.DataFrame, distance_factor=1.0) -> list[dict]:
    return [{"pickup_time": r.tpep_pickup_datetime.isoformat(), "dropoff_time": r.tpep_dropoff_datetime.isoformat(),
             "pickup_zip": int(r.pickup_zip), "dropoff_zip": int(r.dropoff_zip),
             "trip_distance": float(r.trip_distance) * distance_factor} for r in frame.itertuples()]


def test_the_service_returns_batch_scorings_predictions(served):
    batch, url = served["batch"], served["url"]
    assert 18_000 < len(batch) <= 20_000
    online = []
    for start in range(0, len(batch), MAX_TRIPS):
        status, body, headers = call(url + "/v1/predict", {"trips": _trips(batch.iloc[start:start + MAX_TRIPS])})
        assert status == 200, body
        assert body["model_name"] == "taxi_fares" and body["model_version"] == served["version"]
        assert headers["X-Request-Id"] == body["request_id"] and len(body["request_id"]) == 32
        online += body["predictions"]
    assert len(online) == len(batch)
    worst = max(abs(p["fare_amount"] - b) for p, b in zip(online, batch["prediction"]))
    assert worst <= 1e-9, f"online and batch predictions differ by up to {worst}"
    assert all(isinstance(p["outlier"], bool) and isinstance(p["outlier_score"], float) for p in online)
    assert sum(p["outlier"] for p in online) < 0.1 * len(online)


def _judged_window(url, after: int, seconds: float = 10.0) -> dict:
    """The drift window's status once a judgement after the first ``after`` covers all its rows (judgements run on
    a thread of their own, at most every 3 seconds: a burst of requests is judged within 3 seconds of its end)."""
    deadline = time.monotonic() + seconds
    while True:
        drift = call(url + "/v1/metadata")[1]["drift"]
        if (drift["judgements"] > after and drift["rows_since_judged"] == 0) or time.monotonic() > deadline:
            return drift
        time.sleep(0.1)


def test_the_drift_status_is_judged_on_a_window_of_recent_trips(served):
    url = served["url"]
    sample = served["batch"].sample(WINDOW, random_state=3)  # trips from the whole range, like the training data
    before = call(url + "/v1/metadata")[1]["drift"]["judgements"]
    for i in range(0, WINDOW, MAX_TRIPS):
        call(url + "/v1/predict", {"trips": _trips(sample.iloc[i:i + MAX_TRIPS])})
    drift = _judged_window(url, before)  # the window holds only these trips
    assert drift["status"] == "OK" and drift["window_rows"] == WINDOW, drift
    judged = drift["judgements"]
    started = time.monotonic()
    for start in range(0, WINDOW, MAX_TRIPS):  # the window filled with trips 1.5x as long
        answered = call(url + "/v1/predict", {"trips": _trips(sample.iloc[start:start + MAX_TRIPS], 1.5)})[1]
    # A request never waits for a judgement: it reports the last one, at most 3 seconds old when requests keep coming.
    assert answered["drift"]["window_rows"] == WINDOW and time.monotonic() - started < 30
    drift = _judged_window(url, judged)
    assert drift["status"] == "DRIFT" and "trip_distance" in drift["drifted_features"], drift
    assert drift["window_rows"] == WINDOW
    assert call(url + "/metrics")[0] == 404  # metrics are on their own port, for the in-cluster scraper
    metrics = call(served["metrics"])[1]
    assert 'taxi_fares_drift_status{taxi_fares_drift_status="DRIFT"} 1.0' in metrics
    assert f'taxi_fares_model_info{{model_name="taxi_fares",model_version="{served["version"]}"}} 1.0' in metrics
    assert 'taxi_fares_requests_total{code="200",endpoint="/v1/predict"}' in metrics
    assert "taxi_fares_request_duration_seconds_bucket" in metrics


def test_bad_input_gets_a_422_naming_each_field_and_too_many_trips_a_413(served):
    url, good = served["url"], _trips(served["batch"].iloc[:1])[0]
    status, body, _ = call(url + "/v1/predict", {"trips": [
        {**good, "pickup_zip": 0}, {k: v for k, v in good.items() if k != "trip_distance"},
        {**good, "dropoff_time": "2016-01-01T00:00:00"}, {**good, "pickup_time": "yesterday"},
        {**good, "extra": 1}]})
    assert status == 422
    located = {(tuple(e["loc"]), e["type"]) for e in body["detail"]}
    assert located >= {(("body", "trips", 0, "pickup_zip"), "greater_than_equal"),
                       (("body", "trips", 1, "trip_distance"), "missing"),
                       (("body", "trips", 2), "value_error"),
                       (("body", "trips", 3, "pickup_time"), "datetime_from_date_parsing"),
                       (("body", "trips", 4, "extra"), "extra_forbidden")}, located
    assert any("dropoff_time: an invalid trip: the dropoff is before the pickup" in e["msg"]
               for e in body["detail"])
    assert call(url + "/v1/predict", {"trips": []})[0] == 422
    status, body, _ = call(url + "/v1/predict", {"trips": [good] * (MAX_TRIPS + 1)})
    assert status == 413 and body["detail"] == f"{MAX_TRIPS + 1} trips in one request; at most {MAX_TRIPS} are accepted"


def test_an_extreme_trip_is_flagged_as_an_outlier(served):
    typical = _trips(served["batch"].iloc[:1])[0]
    # 400 miles in a minute at 3 am between zips no trip has used (so no feature row either). A huge distance
    # alone is not enough: an isolation forest ranks values beyond its samples' range like the largest of them.
    extreme = {"pickup_time": "2016-01-10T03:00:00", "dropoff_time": "2016-01-10T03:01:00", "pickup_zip": 99999,
               "dropoff_zip": 99998, "trip_distance": 400.0}
    status, body, _ = call(served["url"] + "/v1/predict", {"trips": [typical, extreme]})
    assert status == 200
    normal, outlier = body["predictions"]
    assert outlier["outlier"] is True and normal["outlier"] is False
    assert outlier["outlier_score"] < normal["outlier_score"]


def test_readiness_is_503_until_the_bundle_is_loaded(served):
    process, url = serve(served["bundle"], wait=False, env={"MLOPS_SERVING_LOAD_DELAY_SECONDS": "4"})
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
            try:
                seen.append(call(url + "/health/ready", timeout=2)[:2])
                if seen[-1][0] == 503 and len(seen) == 1:
                    assert call(url + "/health/live")[0] == 200
                    early = call(url + "/v1/predict", {"trips": _trips(served["batch"].iloc[:1])})
                    assert early[0] == 503 and early[1]["detail"] == "the model is not loaded yet"
            except OSError:
                pass
            time.sleep(0.2)
        assert seen[0] == (503, {"status": "loading", "detail": "the bundle is loading"})
        assert seen[-1] == (200, {"status": "ready", "model_version": served["version"]})
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_health_metadata_and_one_telemetry_span_per_prediction(served):
    url = served["url"]
    assert call(url + "/health/live")[:2] == (200, {"status": "live"})
    assert call(url + "/health/ready")[:2] == (200, {"status": "ready", "model_version": served["version"]})
    metadata = call(url + "/v1/metadata")[1]
    assert metadata["manifest"]["models"]["fare"]["version"] == served["version"]
    assert {metadata["manifest"]["models"][k]["fare_model_version"] for k in ("outliers", "drift")} == \
        {served["version"]}
    assert metadata["features"]["source"].endswith("tables") and metadata["features"]["refreshes"] >= 1
    status, body, _ = call(url + "/v1/predict", {"trips": _trips(served["batch"].iloc[:3])})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [json.loads(line) for line in served["telemetry"].read_text().splitlines()] \
            if served["telemetry"].exists() else []
        mine = [r for r in rows if r["type"] == "span" and r["attributes"].get("request_id") == body["request_id"]]
        if mine:
            break
        time.sleep(0.5)
    assert len(mine) == 1
    assert mine[0]["name"] == "POST /v1/predict"
    assert {k: mine[0]["attributes"][k] for k in ("model_version", "rows", "drift_status")} == \
        {"model_version": served["version"], "rows": 3, "drift_status": body["drift"]["status"]}


def test_an_incomplete_or_mismatched_bundle_is_refused(served, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(served["bundle"], broken)
    (broken / "features" / "dropoff.parquet").unlink()
    with pytest.raises(BundleError, match=r"features/dropoff.parquet is listed in the manifest but missing"):
        verify(broken, _trusted(served["bundle"]))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(served["bundle"], mismatched)
    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["models"]["drift"]["fare_model_version"] = "99"
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    data = (mismatched / "manifest.json").read_bytes()  # signed again, so the companions' check is what refuses it
    (mismatched / "manifest.sig").write_bytes(sign(data, load_private_key(development_key(served["lakehouse"]))))
    done = subprocess.run([sys.executable, "-c", BLOCK_SPARK_AND_MLFLOW, "--bundle", str(mismatched),
                           "--trusted-key", _trusted(served["bundle"])], capture_output=True, text=True, timeout=60)
    version = served["version"]
    assert done.returncode == 2
    assert (f"model 'taxi_fares_drift' version {version} belongs to 'taxi_fares' version 99, not version {version}"
            in done.stderr)

    altered = tmp_path / "altered"
    shutil.copytree(served["bundle"], altered)
    with open(altered / "models" / "fare" / "model.pkl", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"models/fare/model.pkl does not match its SHA-256 in the manifest"):
        verify(altered, _trusted(served["bundle"]))
    assert not any(Path(served["bundle"]).parent.glob(".bundle.building-*"))
    assert os.access(served["bundle"] / "manifest.json", os.R_OK)


def _mlops(served, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env.update(MLOPS_HOME=served["lakehouse"], MLFLOW_TRACKING_URI=served["mlflow"])
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_mlops_packages_serves_and_load_tests_the_local_champion(served):
    packaged = _mlops(served, "serving", "package", "--local", "--lookback-hours", str(LOOKBACK_HOURS))
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    bundle = Path(served["lakehouse"]) / "serving" / "bundle"
    assert f"packaged taxi_fares version {served['version']} with taxi_fares_outliers" in packaged.stderr
    assert json.loads((bundle / "manifest.json").read_text())["models"]["fare"]["version"] == served["version"]

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = served["lakehouse"]
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--local", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if call(url + "/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        # `mlops serve --local` refreshes its features from the lakehouse, holding the last 24 h (its default):
        # the range's latest trips are answered, older ones are batch's (a 422 naming the window)
        batch = served["batch"]
        latest = batch[batch.tpep_pickup_datetime >= batch.tpep_pickup_datetime.max() - pd.Timedelta(hours=6)]
        status, body, _ = call(url + "/v1/predict", {"trips": _trips(latest.iloc[:5])})
        assert status == 200 and body["model_version"] == served["version"], body
        load = _mlops(served, "serving", "loadtest", "--url", url, "--requests", "40", "--concurrency", "4",
                      "--trips", "10", "--json")
        assert load.returncode == 0, load.stderr
        figures = json.loads(load.stdout)
        assert figures["requests"] == 40 and figures["errors"] == 0 and figures["p99_ms"] >= figures["p50_ms"] > 0
        smoke = _mlops(served, "serving", "smoke", "--url", url, "--local")
        assert smoke.returncode == 0, smoke.stderr
        assert "smoke test passed: ready, one prediction" in smoke.stderr
        assert f"version {served['version']} = champion" in smoke.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)
    # stopping the command stops the service (it is the command's own process): nothing is left on the port
    with pytest.raises(OSError):
        call(url + "/health/live", timeout=2)
    refused = _mlops(served, "serving", "loadtest", "--url", "http://10.1.2.3:80", "--requests", "1")
    assert refused.returncode == 2 and "is not a loopback address" in refused.stderr
    remote = _mlops(served, "serving", "package", "--target", "staging")
    assert remote.returncode == 2
    assert "reads its feature tables through Spark Connect: set MLOPS_SPARK_REMOTE" in remote.stderr


def test_the_containers_command_runs_from_its_requirements_file_alone(served, dist, tmp_path):
    """What the Dockerfile installs (service_deployment/requirements.txt, then the two wheels with --no-deps) is enough
    for the Dockerfile's command: built here as a virtual environment, since no Docker engine runs on this machine."""
    import venv

    from orchestrator.paths import REPO_ROOT

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    # No bytecode compilation: nothing here checks it, and it was about 20 s of this test's 75 on a slow day.
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    subprocess.run([*pip, "-r", str(REPO_ROOT / "service_deployment" / "requirements.txt")], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", *map(str, sorted(dist.glob("*.whl")))], check=True, timeout=300)
    for absent in ("pyspark", "mlflow"):
        assert subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True).returncode != 0

    dockerfile = (REPO_ROOT / "service_deployment" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M)[1])
    port = _free_port()
    cmd = [str(python) if a == "python" else str(served["bundle"]) if a == "/bundle" else
           "127.0.0.1" if a == "0.0.0.0" else str(port) if a == "8080" else a for a in cmd]
    # The pod gets the public key from a mounted ConfigMap through MLOPS_TRUSTED_KEY_FILE; without one nothing loads.
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "MLOPS_TRUSTED_KEY_FILE": _trusted(served["bundle"])})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and ready != 200:
            try:
                ready = call(url + "/health/ready", timeout=2)[0]
            except OSError:
                time.sleep(0.5)
        status, body, _ = call(url + "/v1/predict", {"trips": _trips(served["batch"].iloc[:20])})
        assert status == 200
        expected = served["batch"]["prediction"].iloc[:20].tolist()
        assert max(abs(p["fare_amount"] - e) for p, e in zip(body["predictions"], expected)) <= 1e-9
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_request_spans_reach_azure_monitor_and_a_stalled_exporter_costs_no_latency(served):
    """Pointed at a real ingestion endpoint on loopback, each predict call is one `requests` row of role
    taxi_fares.serving with its dimensions; pointed at one that accepts and never answers, requests still
    answer in milliseconds (export runs in the background), and the connection string is never echoed."""
    trips = {"trips": _trips(served["batch"].iloc[:4])}
    for stall in (False, True):
        capture = IngestionCapture(stall=stall)
        process, url = serve(served["bundle"], env={"APPLICATIONINSIGHTS_CONNECTION_STRING":
                                                    capture.connection_string})
        try:
            timings = []
            for _ in range(20):
                started = time.monotonic()
                status, body, _ = call(url + "/v1/predict", trips)
                timings.append(time.monotonic() - started)
                assert status == 200
            assert "IngestionEndpoint" not in json.dumps(call(url + "/v1/metadata")[1])
            if stall:
                # The exporter's timeout is 3 s and it exports every 0.5 s: waiting on it would show here.
                assert max(timings) < 1.0, timings
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not [
                    e for e in capture.of_type("RequestData")
                    if e["data"]["baseData"]["properties"].get("request_id") == body["request_id"]]:
                time.sleep(0.5)
            mine = [e for e in capture.of_type("RequestData")
                    if e["data"]["baseData"]["properties"].get("request_id") == body["request_id"]]
            assert len(mine) == 1
            assert mine[0]["tags"]["ai.cloud.role"] == "taxi_fares.serving"
            assert mine[0]["data"]["baseData"]["name"] == "POST /v1/predict"
            properties = mine[0]["data"]["baseData"]["properties"]
            assert {k: properties[k] for k in ("model_version", "rows", "drift_status")} == \
                {"model_version": served["version"], "rows": "4", "drift_status": body["drift"]["status"]}
        finally:
            process.terminate()
            process.wait(timeout=30)
            capture.stop()


def test_a_new_champion_reaches_the_service_by_repackaging_and_a_restart(spark, served):
    """Last in this module: it moves the champion the other tests serve."""
    import mlflow

    from taxi_fares_mlops.config import TRAINING_PARAMETERS, TrainingConfig
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.serving.package import package
    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, Lakehouse

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MLOPS_HOME_ENV, served["lakehouse"])
        patch.setenv("MLFLOW_TRACKING_URI", served["mlflow"])
        mlflow.set_tracking_uri(served["mlflow"])
        mlflow.set_registry_uri(served["mlflow"])
        values = {**{p.name: p.default for p in TRAINING_PARAMETERS}, "start_date": START, "end_date": END,
                  "lakehouse_root": served["lakehouse"], "mlflow_experiment": "serving", "max_iter": "30",
                  "execute_feature_engineering": "false", "force_promote": "true", "execute_promotion": "true"}
        new = run_job(TrainingConfig.from_mapping(values), spark)["stages"]["training"]["model_version"]
        package(spark, Lakehouse(served["lakehouse"]), served["bundle"], "taxi_fares", lookback_hours=LOOKBACK_HOURS,
                signing_key=load_private_key(development_key(served["lakehouse"])))
    assert new != served["version"]
    stale = _mlops(served, "serving", "smoke", "--url", served["url"], "--local")
    assert stale.returncode == 1
    assert (f"the service answers with taxi_fares version {served['version']}; the registry's champion is version "
            f"{new}") in stale.stderr
    served["process"].terminate()
    served["process"].wait(timeout=30)
    process, url = serve(served["bundle"])
    served["process"] = process
    status, body, _ = call(url + "/v1/predict", {"trips": _trips(served["batch"].iloc[:1])})
    assert status == 200 and body["model_version"] == new
    assert call(url + "/v1/metadata")[1]["manifest"]["models"]["outliers"]["version"] == new
