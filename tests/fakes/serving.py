"""A small, real serving bundle built in seconds without Spark or MLflow, and ways to call the service on it: in
process through ASGI (no server), or as the real `python -m taxi_fares_mlops.serving` process on 127.0.0.1.

The bundle has the layout and the signature `mlops serving package` writes (a fare model, an outlier detector,
a drift reference profile and feature rows over a week of synthetic trips, all trained here with the project's
own functions), so the service loads it through the same checks. For tests of what the service lets in and how
it holds up, not of the model's numbers: tests/integration/test_serving.py covers those on a bundle packaged
from a real training run.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

ZIPS = tuple(range(10001, 10021))
START = pd.Timestamp("2016-01-04", tz="UTC")
DAYS = 7
BLOCK_SPARK_AND_MLFLOW = ("import sys; sys.modules['pyspark'] = None; sys.modules['mlflow'] = None; "
                          "from taxi_fares_mlops.serving.__main__ import main; sys.exit(main(sys.argv[1:]))")


def _features(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    from taxi_fares.columns import DROPOFF_COUNT, DROPOFF_IS_WEEKEND, PICKUP_COUNT, PICKUP_MEAN_FARE, TS, ZIP

    pickup_ts = pd.date_range(START, periods=DAYS * 96, freq="15min")
    dropoff_ts = pd.date_range(START, periods=DAYS * 48, freq="30min")
    pickup = pd.DataFrame([(z, t) for z in ZIPS for t in pickup_ts], columns=[ZIP, TS])
    pickup[PICKUP_MEAN_FARE] = rng.uniform(8, 25, len(pickup))
    pickup[PICKUP_COUNT] = rng.integers(1, 30, len(pickup))
    dropoff = pd.DataFrame([(z, t) for z in ZIPS for t in dropoff_ts], columns=[ZIP, TS])
    dropoff[DROPOFF_COUNT] = rng.integers(1, 20, len(dropoff))
    dropoff[DROPOFF_IS_WEEKEND] = dropoff[TS].dt.dayofweek >= 5
    return pickup, dropoff


def sample_trips(count: int, seed: int = 0) -> list[dict]:
    """Plausible trips inside the bundle's week, as a request's JSON holds them."""
    rng = np.random.default_rng(seed)
    trips = []
    for _ in range(count):
        pickup = START.tz_localize(None) + pd.Timedelta(seconds=int(rng.integers(0, (DAYS - 1) * 86400)))
        minutes = float(rng.uniform(3, 40))
        trips.append({"pickup_time": pickup.isoformat(),
                      "dropoff_time": (pickup + pd.Timedelta(minutes=minutes)).isoformat(),
                      "pickup_zip": int(rng.choice(ZIPS)), "dropoff_zip": int(rng.choice(ZIPS)),
                      "trip_distance": round(minutes * float(rng.uniform(0.15, 0.4)), 2)})
    return trips


def _profile(frame: pd.DataFrame) -> dict:
    """The drift reference profile of ``frame``, as ``taxi_fares.drift.profile`` computes it in Spark."""
    from taxi_fares.drift import CATEGORICAL, NUMERIC, QUANTILES
    from taxi_fares.drift_detector import PROFILE_VERSION, category_counts

    out = {"version": PROFILE_VERSION, "rows": len(frame), "numeric": {}, "categorical": {}}
    for c in NUMERIC:
        values = frame[c].astype(float).dropna().to_numpy()
        edges = sorted({float(q) for q in np.quantile(values, QUANTILES)})
        out["numeric"][c] = {"edges": edges, "cdf": [float(np.mean(values <= e)) for e in edges],
                             "mean": float(values.mean()), "std": float(values.std()),
                             "null_share": 1 - len(values) / len(frame)}
    for c in CATEGORICAL:
        counts = category_counts(frame[c])
        n = sum(counts.values())
        out["categorical"][c] = {"shares": {v: k / n for v, k in sorted(counts.items())},
                                 "null_share": 1 - n / len(frame)}
    return out


def build_bundle(root: Path, seed: int = 3, with_challenger: bool = False) -> tuple[Path, Path]:
    """A signed serving bundle at ``root``/bundle; returns (bundle folder, the trusted public key's PEM file). With
    ``with_challenger``, version 2 of the fare model (trained on fares 20% higher) travels beside version 1."""
    import cloudpickle
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from taxi_fares.columns import MODEL_FEATURES
    from taxi_fares.model import ModelParams, train_model
    from taxi_fares.online import OnlineInputs
    from taxi_fares.outliers import fit_outlier_detector
    from taxi_fares_mlops.serving.bundle import (CHALLENGER, DRIFT, FARE, FEATURE_FILES, FORMAT, MANIFEST, OUTLIERS,
                                                 PICKLE, PICKUP, REFERENCE_PROFILE, SIGNATURE, checksums)
    from taxi_fares_mlops.signing import fingerprint, public_pem, sign

    rng = np.random.default_rng(seed)
    pickup, dropoff = _features(rng)
    trips = pd.DataFrame(sample_trips(3000, seed)).rename(columns={
        "pickup_time": "tpep_pickup_datetime", "dropoff_time": "tpep_dropoff_datetime"})
    inputs = OnlineInputs(pickup, dropoff)(trips)
    label = 3.0 + 2.5 * inputs["trip_distance"] + rng.normal(0, 1, len(inputs))
    model = train_model(inputs.assign(fare_amount=label), ModelParams(max_iter=20))
    pickled = [(FARE, model)]
    if with_challenger:
        pickled.append((CHALLENGER, train_model(inputs.assign(fare_amount=label * 1.2), ModelParams(max_iter=20))))
    detector = fit_outlier_detector(inputs, seed=seed)
    profile = _profile(inputs.assign(prediction=model.predict(inputs[list(MODEL_FEATURES)])))

    bundle = Path(root) / "bundle"
    import taxi_fares.model

    cloudpickle.register_pickle_by_value(taxi_fares.model)  # as training logs it: loads without pyspark
    try:
        for kind, obj in (*pickled, (OUTLIERS, detector)):
            (bundle / "models" / kind).mkdir(parents=True)
            (bundle / "models" / kind / PICKLE).write_bytes(cloudpickle.dumps(obj))
    finally:
        cloudpickle.unregister_pickle_by_value(taxi_fares.model)
    (bundle / "models" / DRIFT / REFERENCE_PROFILE).parent.mkdir(parents=True)
    (bundle / "models" / DRIFT / REFERENCE_PROFILE).write_text(json.dumps(profile))
    (bundle / "features").mkdir()
    pickup.to_parquet(bundle / FEATURE_FILES[PICKUP], index=False)
    dropoff.to_parquet(bundle / FEATURE_FILES["dropoff"], index=False)
    key = Ed25519PrivateKey.generate()
    models = {FARE: {"name": "taxi_fares", "version": "1", "run_id": "run-fare", "path": f"models/{FARE}"}}
    for kind in (OUTLIERS, DRIFT):
        models[kind] = {"name": f"taxi_fares_{kind}", "version": "1", "run_id": f"run-{kind}",
                        "path": f"models/{kind}", "fare_model_version": "1"}
    if with_challenger:
        models[CHALLENGER] = {"name": "taxi_fares", "version": "2", "run_id": "run-challenger",
                              "path": f"models/{CHALLENGER}"}
    manifest = {"format": FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "model_name": "taxi_fares", "alias": "champion", "models": models,
                "features": {"source": "synthetic", "snapshot_time": START.isoformat(), "since": START.isoformat(),
                             "lookback_hours": DAYS * 24.0, "rows": {PICKUP: len(pickup), "dropoff": len(dropoff)}},
                "signing_key": fingerprint(key), "files": checksums(bundle)}
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (bundle / MANIFEST).write_bytes(data)
    (bundle / SIGNATURE).write_bytes(sign(data, key))
    trusted = Path(root) / "trusted.pub"
    trusted.write_bytes(public_pem(key))
    return bundle, trusted


def loaded_app(settings):
    """``create_app(settings)`` with its bundle loaded in this thread (no lifespan, no server): for ASGI calls."""
    from taxi_fares_mlops.serving.app import create_app
    from taxi_fares_mlops.serving.bundle import load_bundle

    app = create_app(settings)
    app.state.service.use(load_bundle(Path(settings.bundle), settings.trusted_key))
    return app


async def asgi(app, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None,
               chunks: Optional[list] = None, stall_after: Optional[int] = None,
               timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request through the ASGI app: (status, headers, body). ``chunks`` sends the body in parts without a
    Content-Length (as a chunked upload arrives); ``stall_after`` stops sending after that many parts. An app that
    has not answered after ``timeout`` seconds fails the call (asyncio.TimeoutError)."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    parts = chunks if chunks is not None else [body]
    if chunks is None and "content-length" not in headers and body:
        headers["content-length"] = str(len(body))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
             "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]}
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    if stall_after is not None:
        queue = queue[:stall_after]
    answer = {"status": None, "headers": {}, "body": b""}
    disconnected = asyncio.Event()

    async def receive():
        if queue:
            return queue.pop(0)
        await disconnected.wait()  # a stalled client, or one that has sent everything: wait
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout)
    finally:
        disconnected.set()
    return answer["status"], answer["headers"], answer["body"]


def call_asgi(app, method: str, path: str, body=None, headers: Optional[dict] = None):
    """(status, JSON or bytes, headers) of one request, run to completion; ``body`` as JSON unless bytes."""
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    status, out_headers, out = asyncio.run(asgi(app, method, path, raw or b"",
                                                {"content-type": "application/json", **(headers or {})}))
    parsed = json.loads(out) if out_headers.get("content-type", "").startswith("application/json") else out
    return status, parsed, out_headers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, headers: Optional[dict] = None, timeout: float = 30):
    """(status, JSON or text, headers) of a GET, or a POST of ``body`` (JSON unless bytes), over real HTTP."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, out_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, out_headers = error.code, error.read(), error.headers
    text = raw.decode()
    is_json = out_headers.get("content-type", "").startswith("application/json")
    return status, json.loads(text) if is_json else text, out_headers


def start_service(bundle: Path, trusted: Path, *args, host: str = "127.0.0.1", port: Optional[int] = None,
                  wait: bool = True, env: Optional[dict] = None, ready_path: str = "/health/ready"):
    """The real service process (pyspark and mlflow blocked) on ``host``; returns (process, base URL)."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-c", BLOCK_SPARK_AND_MLFLOW, "--bundle", str(bundle),
                                "--trusted-key", str(trusted), "--host", host, "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while wait and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited {process.returncode}:\n{process.stdout.read()}")
        try:
            if http(url + ready_path, timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        if wait:
            process.kill()
            raise AssertionError(f"the service was not ready in 90 s:\n{process.stdout.read()}")
    return process, url


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
