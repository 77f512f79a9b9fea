"""Features the online service can vouch for, on a real signed bundle (tests/fakes/serving.py) and real Delta
tables written with delta-rs: a trip before the window of features held is a 422 naming the window; every answer
says as of when its features are and how old; past the maximum age the service is not ready and its metrics say
why; a refresh from the Delta tables moves the window forward and makes it ready again (the real process)."""
import datetime as dt
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import yaml
from deltalake import write_deltalake
from prometheus_client import generate_latest

from fakes.serving import START, ZIPS, build_bundle, call_asgi, free_port, http, loaded_app, start_service, stop
from taxi_fares.columns import DROPOFF_COUNT, DROPOFF_IS_WEEKEND, PICKUP_COUNT, PICKUP_MEAN_FARE, TS, ZIP
from taxi_fares.online import latest_rows
from taxi_fares_mlops.serving.app import Settings
from taxi_fares_mlops.serving.features import (DROPOFF_TABLE, PICKUP_TABLE, WORKLOAD_IDENTITY, read_delta,
                                               storage_options)

# The fake bundle's week (tests/fakes/serving.py), packaged with a lookback of the whole week: pickup rows every
# 15 minutes up to START + 7 days - 15 min, dropoff rows every 30 minutes up to START + 7 days - 30 min.
PICKUP_NEWEST = START + pd.Timedelta(days=7) - pd.Timedelta(minutes=15)
DROPOFF_NEWEST = START + pd.Timedelta(days=7) - pd.Timedelta(minutes=30)
PICKUP_SINCE = PICKUP_NEWEST - pd.Timedelta(days=7)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("features-bundle"))


def _app(bundle, **settings):
    return loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), **settings))


def _trip(pickup, minutes=12.0, zips=(10001, 10002)) -> dict:
    pickup = pd.Timestamp(pickup).tz_localize(None) if pd.Timestamp(pickup).tzinfo else pd.Timestamp(pickup)
    return {"pickup_time": pickup.isoformat(), "dropoff_time": (pickup + pd.Timedelta(minutes=minutes)).isoformat(),
            "pickup_zip": zips[0], "dropoff_zip": zips[1], "trip_distance": 2.5}


def _naive(ts) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).isoformat()


def test_a_trip_before_the_window_held_is_a_422_naming_the_window(bundle):
    app = _app(bundle)
    first = PICKUP_SINCE  # the earliest pickup lookup key the held rows answer exactly
    assert call_asgi(app, "POST", "/v1/predict", {"trips": [_trip(first)]})[0] == 200
    early = first - pd.Timedelta(seconds=1)  # its lookup key is a 15-minute slot earlier
    status, body, _ = call_asgi(app, "POST", "/v1/predict", {"trips": [_trip(first), _trip(early)]})
    assert status == 422, body
    assert body["detail"] == [{
        "loc": ["body", "trips", 1, "pickup_time"], "type": "features_not_held",
        "msg": f"pickup_time {_naive(early)}: features held cover {_naive(PICKUP_SINCE)}..{_naive(PICKUP_NEWEST)}; "
               f"older trips are scored by batch"}]
    # A trip after the newest features is answered (features are as-of), and says how old they are.
    assert call_asgi(app, "POST", "/v1/predict", {"trips": [_trip(PICKUP_NEWEST + pd.Timedelta(days=1))]}
                     )[0] == 200


def test_each_answer_says_as_of_when_and_how_old_its_features_are(bundle):
    app = _app(bundle)
    now = DROPOFF_NEWEST + pd.Timedelta(hours=30, seconds=5)
    app.state.service.clock = lambda: now.to_pydatetime()
    status, body, _ = call_asgi(app, "POST", "/v1/predict", {"trips": [_trip(START + pd.Timedelta(days=2))]})
    assert status == 200, body
    # The response keeps its shape and adds the two fields: the older table's newest row, and its age now.
    assert {"request_id", "model_name", "model_version", "predictions", "drift"} < set(body)
    assert body["features_as_of"] == _naive(DROPOFF_NEWEST)
    assert body["feature_age_seconds"] == 30 * 3600 + 5
    features = call_asgi(app, "GET", "/v1/metadata")[1]["features"]
    assert features["as_of"] == DROPOFF_NEWEST.isoformat() and features["age_seconds"] == 30 * 3600 + 5
    assert features["window_start"] == PICKUP_SINCE.isoformat()


def _metric(app, line_start: str) -> str:
    lines = generate_latest(app.state.service.metrics.registry).decode().splitlines()
    found = [line for line in lines if line.startswith(line_start)]
    assert found, f"no metric line starts with {line_start!r}"
    return found[0]


def test_past_the_max_feature_age_the_service_is_not_ready_and_its_metrics_say_why(bundle):
    app = _app(bundle, max_feature_age_hours=48)
    service = app.state.service
    service.clock = lambda: (DROPOFF_NEWEST + pd.Timedelta(hours=47)).to_pydatetime()
    assert call_asgi(app, "GET", "/health/ready")[:2] == (200, {"status": "ready", "model_version": "1"})
    assert _metric(app, 'taxi_fares_readiness{taxi_fares_readiness="ready"}').endswith(" 1.0")
    service.clock = lambda: (DROPOFF_NEWEST + pd.Timedelta(hours=49)).to_pydatetime()
    status, body, _ = call_asgi(app, "GET", "/health/ready")
    assert status == 503 and body == {"status": "features_too_old", "detail": "the features are older than the "
                                      "maximum age: /v1/metadata and the log say why"}, body  # no paths, no errors
    why = call_asgi(app, "GET", "/v1/metadata")[1]["readiness"]
    assert why["status"] == "features_too_old"
    assert why["detail"].startswith(f"features as of {DROPOFF_NEWEST.isoformat()} are 49.0 h old; at most 48 h "
                                    f"are served; no feature tables are configured")
    assert _metric(app, "taxi_fares_feature_age_seconds ") == f"taxi_fares_feature_age_seconds {49 * 3600.0}"
    assert _metric(app, 'taxi_fares_readiness{taxi_fares_readiness="features_too_old"}').endswith(" 1.0")
    assert _metric(app, 'taxi_fares_readiness{taxi_fares_readiness="ready"}').endswith(" 0.0")
    # Without a limit (the default: historical data), the same features are ready.
    unlimited = _app(bundle)
    unlimited.state.service.clock = service.clock
    assert call_asgi(unlimited, "GET", "/health/ready")[0] == 200


def _features(newest: pd.Timestamp, days: float, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pickup and dropoff feature rows for ZIPS over ``days`` up to ``newest``, as feature engineering writes them."""
    rng = np.random.default_rng(seed)
    pickup_ts = pd.date_range(end=newest, periods=int(days * 96), freq="15min")
    dropoff_ts = pd.date_range(end=newest, periods=int(days * 48), freq="30min")
    pickup = pd.DataFrame([(z, t) for z in ZIPS for t in pickup_ts], columns=[ZIP, TS])
    pickup[PICKUP_MEAN_FARE] = rng.uniform(8, 25, len(pickup))
    pickup[PICKUP_COUNT] = rng.integers(1, 30, len(pickup))
    dropoff = pd.DataFrame([(z, t) for z in ZIPS for t in dropoff_ts], columns=[ZIP, TS])
    dropoff[DROPOFF_COUNT] = rng.integers(1, 20, len(dropoff))
    dropoff[DROPOFF_IS_WEEKEND] = dropoff[TS].dt.dayofweek >= 5
    return pickup, dropoff


def _write_tables(root, pickup, dropoff) -> None:
    write_deltalake(f"{root}/{PICKUP_TABLE}", pickup, mode="overwrite")
    write_deltalake(f"{root}/{DROPOFF_TABLE}", dropoff, mode="overwrite")


def test_a_refresh_reads_each_zips_latest_row_before_the_window_however_long_it_was_quiet(tmp_path):
    pickup, _ = _features(pd.Timestamp("2016-02-29T23:45", tz="UTC"), days=6)
    quiet = pickup[(pickup[ZIP] != ZIPS[0]) | (pickup[TS] < pd.Timestamp("2016-02-25", tz="UTC"))]  # 5 days quiet
    write_deltalake(f"{tmp_path}/{PICKUP_TABLE}", quiet)
    held = read_delta(str(tmp_path), PICKUP_TABLE, lookback_hours=24)
    expected = latest_rows(quiet, pd.Timestamp("2016-02-28T23:45", tz="UTC"))
    assert len(held) == len(expected) and held[ZIP].tolist() == expected[ZIP].tolist()
    assert (pd.to_datetime(held[TS], utc=True) == pd.to_datetime(expected[TS], utc=True)).all()
    assert held[PICKUP_MEAN_FARE].tolist() == expected[PICKUP_MEAN_FARE].tolist()


def test_a_refresh_from_the_delta_tables_moves_the_window_forward_and_readiness_green(bundle, tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    metrics_port = free_port()
    process, url = start_service(*bundle, "--feature-tables", str(tables), "--refresh-seconds", "0.5",
                                 "--lookback-hours", "24", "--max-feature-age-hours", "48",
                                 "--metrics-port", str(metrics_port), ready_path="/health/live")
    try:
        deadline = time.monotonic() + 60
        while (ready := http(url + "/health/ready"))[1]["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body, _ = ready
        assert status == 503 and body["status"] == "features_too_old", body
        assert str(tables) not in json.dumps(body)  # the open probe names no path
        why = http(url + "/v1/metadata")[1]["readiness"]["detail"]
        assert f"the last refresh from {tables} failed" in why  # no tables yet: the bundle's 2016 rows
        scraped = http(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        assert 'taxi_fares_readiness{taxi_fares_readiness="features_too_old"} 1.0' in scraped

        newest = pd.Timestamp.now(tz="UTC").floor("30min") - pd.Timedelta(minutes=30)
        _write_tables(tables, *_features(newest, days=3))
        deadline = time.monotonic() + 60
        while (ready := http(url + "/health/ready"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready[0] == 200, ready[1]
        scraped = http(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        assert 'taxi_fares_readiness{taxi_fares_readiness="ready"} 1.0' in scraped
        age = float(next(line for line in scraped.splitlines()
                         if line.startswith("taxi_fares_feature_age_seconds ")).split()[1])
        assert 0 < age < 3 * 3600

        status, body, _ = http(url + "/v1/predict", {"trips": [_trip(newest - pd.Timedelta(hours=2))]})
        assert status == 200, body
        assert body["features_as_of"] == _naive(newest) and 0 < body["feature_age_seconds"] < 3 * 3600
        # The window moved: the bundle's 2016 week is no longer held, nor what the tables hold before 24 h.
        since = newest - pd.Timedelta(hours=24)
        for old in (START + pd.Timedelta(days=2), newest - pd.Timedelta(hours=30)):
            status, body, _ = http(url + "/v1/predict", {"trips": [_trip(old)]})
            assert status == 422, body
            assert body["detail"][0]["msg"] == (f"pickup_time {_naive(old)}: features held cover {_naive(since)}.."
                                                f"{_naive(newest)}; older trips are scored by batch")
    finally:
        stop(process)


def test_workload_identity_options_come_from_the_pods_federated_token(tmp_path):
    token = tmp_path / "azure-identity-token"
    token.write_text("a.federated.token")
    env = {"AZURE_CLIENT_ID": "client", "AZURE_TENANT_ID": "tenant", "AZURE_FEDERATED_TOKEN_FILE": str(token),
           "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"}
    assert storage_options(WORKLOAD_IDENTITY, env) == {
        "azure_client_id": "client", "azure_tenant_id": "tenant", "azure_federated_token_file": str(token),
        "azure_authority_host": "https://login.microsoftonline.com/"}
    assert storage_options(None, env) == {}
    with pytest.raises(ValueError, match="AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE not set"):
        storage_options(WORKLOAD_IDENTITY, {"AZURE_TENANT_ID": "tenant"})


class TokenEndpoint:
    """Entra ID's token endpoint on 127.0.0.1: records each request's form, answers 400 (no token is given)."""

    def __init__(self):
        self.forms: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                endpoint.forms.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": "invalid_client"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self):
        self.server.shutdown()


def test_delta_rs_exchanges_the_federated_token_for_an_abfss_table(tmp_path):
    """delta-rs, given the workload-identity options for an abfss:// URI, presents the token file's content to
    the tenant's token endpoint (a local one here): the options are the ones it uses for workload identity."""
    token = tmp_path / "azure-identity-token"
    token.write_text("the-pods-federated-token")
    endpoint = TokenEndpoint()
    try:
        options = storage_options(WORKLOAD_IDENTITY, {
            "AZURE_CLIENT_ID": "client-id-of-the-identity", "AZURE_TENANT_ID": "tenant-id",
            "AZURE_FEDERATED_TOKEN_FILE": str(token), "AZURE_AUTHORITY_HOST": endpoint.url})
        with pytest.raises(Exception):  # noqa: B017 (the endpoint gives no token: any refusal will do)
            read_delta("abfss://features@account.dfs.core.windows.net/tables", PICKUP_TABLE, 24,
                       {**options, "allow_http": "true", "max_retries": "0", "timeout": "5s"})
    finally:
        endpoint.stop()
    assert endpoint.forms, "delta-rs never asked the token endpoint"
    form = endpoint.forms[0]
    assert "client_assertion=the-pods-federated-token" in form and "client_id=client-id-of-the-identity" in form
    assert "jwt-bearer" in form


def test_the_settings_come_from_the_environment_the_overlays_set(monkeypatch):
    from taxi_fares_mlops.serving.__main__ import parse, settings_from

    monkeypatch.setenv("MLOPS_SERVING_FEATURE_TABLES", "abfss://lakehouse@account.dfs.core.windows.net/tables")
    monkeypatch.setenv("MLOPS_SERVING_FEATURE_IDENTITY", WORKLOAD_IDENTITY)
    monkeypatch.setenv("MLOPS_SERVING_MAX_FEATURE_AGE_HOURS", "48")
    monkeypatch.setenv("MLOPS_SERVING_REFRESH_SECONDS", "120")
    settings = settings_from(parse(["--bundle", "/bundle"]))
    assert (settings.feature_tables, settings.feature_identity, settings.max_feature_age_hours,
            settings.refresh_seconds) == ("abfss://lakehouse@account.dfs.core.windows.net/tables",
                                          WORKLOAD_IDENTITY, 48.0, 120.0)
    assert dt.timedelta(hours=settings.lookback_hours) == dt.timedelta(hours=24)


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_each_overlay_refreshes_features_as_the_pods_identity_and_bounds_their_age(overlay, monkeypatch):
    """The overlays' environment, as the container reads it: an abfss:// refresh with workload identity and a
    48 h maximum age (rendered by `kubectl kustomize`, as tests/unit/test_serving_manifests.py does)."""
    from orchestrator.paths import REPO_ROOT
    from taxi_fares_mlops.serving.__main__ import parse, settings_from

    folder = REPO_ROOT / "service_deployment" / "k8s" / "overlays" / overlay
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True)
    deployment = next(d for d in yaml.safe_load_all(rendered.stdout) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for variable in container["env"]:
        if variable["name"].startswith("MLOPS_SERVING_") and "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    settings = settings_from(parse(["--bundle", "/bundle", "--host", "0.0.0.0"]))
    assert settings.feature_tables.startswith("abfss://") and settings.feature_identity == WORKLOAD_IDENTITY
    assert settings.max_feature_age_hours == 48 and settings.refresh_seconds == 300
