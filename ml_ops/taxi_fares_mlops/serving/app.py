"""The online inference service for the champion: FastAPI over a verified serving bundle.

* ``POST /v1/predict``: 1..``max_trips`` trips -> one fare per trip, an outlier flag and score per trip, and the
  drift status of the rolling window of recent trips. Bad input: 422 naming each bad field; too many trips: 413.
* ``GET /health/live``: the process answers. ``GET /health/ready``: 503 until the bundle (models, features) is
  loaded, then 200 with the model version.
* ``GET /v1/metadata``: the bundle's manifest (models, versions, run ids, feature snapshot) and the settings.
* ``GET /metrics``: Prometheus text: requests by endpoint and code, latency histogram, trips, outliers, the drift
  status, the model version.

A trip's inputs are built like batch scoring builds them (``taxi_fares.online``) from the online features, so the
service returns batch's prediction for the same trip. Each predict call is one telemetry span (role
``taxi_fares.serving``) with the model version, rows, outliers and drift status; spans are exported in the
background, so a slow or unreachable Azure Monitor never delays a response. Needs neither Spark nor MLflow.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, model_validator

from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, MODEL_FEATURES, PICKUP_TS, PICKUP_ZIP
from taxi_fares.outliers import OutlierScorer
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.serving.bundle import Bundle, load_bundle
from taxi_fares_mlops.serving.features import OnlineFeatures
from taxi_fares_mlops.serving.window import DRIFT, INSUFFICIENT_DATA, OK, DriftWindow

logger = logging.getLogger(__name__)

ROLE = "serving"
LOAD_DELAY_ENV = "MLOPS_SERVING_LOAD_DELAY_SECONDS"


@dataclass(frozen=True)
class Settings:
    bundle: str
    max_trips: int = 1000
    drift_window: int = 1000
    drift_min_rows: int = 200
    feature_tables: Optional[str] = None     # a lakehouse's tables folder to refresh features from (delta-rs)
    refresh_seconds: float = 300.0
    lookback_hours: float = 24.0
    telemetry_file: Optional[str] = None     # local JSON lines, when no Azure Monitor connection string is set
    connection_string: Optional[str] = None  # Application Insights; from APPLICATIONINSIGHTS_CONNECTION_STRING
    trusted_key: Optional[str] = None        # the public key (PEM file) the bundle's manifest must be signed with

    def checked(self) -> "Settings":
        problems = [f"{name} must be at least 1" for name in ("max_trips", "drift_window", "drift_min_rows")
                    if getattr(self, name) < 1]
        if self.drift_min_rows > self.drift_window:
            problems.append("drift_min_rows must not exceed drift_window")
        if self.refresh_seconds <= 0 or self.lookback_hours <= 0:
            problems.append("refresh_seconds and lookback_hours must be positive")
        if problems:
            raise ValueError("serving settings: " + "; ".join(problems))
        return self


class Trip(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pickup_time: dt.datetime
    dropoff_time: dt.datetime
    pickup_zip: int = Field(ge=1, le=99999)
    dropoff_zip: int = Field(ge=1, le=99999)
    trip_distance: float = Field(ge=0, le=1000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> "Trip":
        if _utc(self.dropoff_time) < _utc(self.pickup_time):
            raise ValueError("dropoff_time is before pickup_time")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trips: list[Trip] = Field(min_length=1)


def _utc(value: dt.datetime) -> dt.datetime:
    """An instant in UTC; a time without a zone is read as UTC (as batch scoring reads the trips)."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("taxi_fares_requests", "HTTP requests", ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("taxi_fares_request_duration_seconds", "request latency", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=self.registry)
        self.trips = Counter("taxi_fares_trips_predicted", "trips predicted", registry=self.registry)
        self.outliers = Counter("taxi_fares_outliers", "trips flagged as outliers", registry=self.registry)
        self.drift = Enum("taxi_fares_drift_status", "drift status of the recent-requests window",
                          states=[OK, DRIFT, INSUFFICIENT_DATA], registry=self.registry)
        self.drift.state(INSUFFICIENT_DATA)
        self.model = Gauge("taxi_fares_model_info", "the model version served", ["model_name", "model_version"],
                           registry=self.registry)


class Service:
    """The loaded state: bundle, features, drift window. ``ready`` once ``load`` has succeeded."""

    def __init__(self, settings: Settings):
        self.settings = settings.checked()
        self.metrics = Metrics()
        self.bundle: Optional[Bundle] = None
        self.features: Optional[OnlineFeatures] = None
        self.window: Optional[DriftWindow] = None
        self.outliers: Optional[OutlierScorer] = None
        self.load_error: Optional[str] = None
        self._stop = threading.Event()

    @property
    def ready(self) -> bool:
        return self.bundle is not None

    def load(self) -> None:
        delay = float(os.environ.get(LOAD_DELAY_ENV) or 0)
        if delay > 0:  # a fault-injection hook for tests of readiness (off unless the variable is set)
            time.sleep(delay)
        try:
            bundle = load_bundle(Path(self.settings.bundle), self.settings.trusted_key)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("serving bundle not loaded: %s", self.load_error)
            raise
        self.features = OnlineFeatures(bundle.pickup, bundle.dropoff, self.settings.feature_tables,
                                       self.settings.lookback_hours)
        self.features.refresh()
        self.window = DriftWindow(bundle.drift_detector, self.settings.drift_window, self.settings.drift_min_rows)
        self.outliers = OutlierScorer(bundle.outlier_model)
        self.metrics.model.labels(bundle.model_name, bundle.model_version).set(1)
        self.bundle = bundle
        logger.info("serving %s version %s from %s", bundle.model_name, bundle.model_version, self.settings.bundle)

    def refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.refresh_seconds):
            if self.features is not None:
                self.features.refresh()

    def stop(self) -> None:
        self._stop.set()

    def predict(self, trips: list[Trip]) -> dict:
        frame = pd.DataFrame({
            PICKUP_TS: pd.to_datetime([_utc(t.pickup_time) for t in trips], utc=True),
            DROPOFF_TS: pd.to_datetime([_utc(t.dropoff_time) for t in trips], utc=True),
            PICKUP_ZIP: [t.pickup_zip for t in trips], DROPOFF_ZIP: [t.dropoff_zip for t in trips],
            DISTANCE: [float(t.trip_distance) for t in trips]})
        inputs = self.features.snapshot.inputs(frame)
        fares = np.asarray(self.bundle.fare_model.predict(inputs), dtype=float)
        filled = inputs.fillna(0.0)  # as monitoring scores the detector: no earlier feature row reads as 0
        scores = self.outliers.score_samples(filled)
        flags = self.outliers.is_outlier(scores)
        status = self.window.add(inputs.assign(prediction=fares))
        self.metrics.trips.inc(len(trips))
        self.metrics.outliers.inc(int(flags.sum()))
        self.metrics.drift.state(status.status)
        return {"model_name": self.bundle.model_name, "model_version": self.bundle.model_version,
                "predictions": [{"fare_amount": float(f), "outlier": bool(o), "outlier_score": float(s)}
                                for f, o, s in zip(fares, flags, scores)],
                "drift": status.as_dict()}


def create_app(settings: Settings, load_in_background: bool = True) -> FastAPI:
    service = Service(settings)
    tracer: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tracer["telemetry"] = telemetry.Telemetry.start(
            ROLE, {"service": "taxi_fares.serving"}, settings.connection_string,
            Path(settings.telemetry_file) if settings.telemetry_file else None) \
            if settings.connection_string or settings.telemetry_file else None
        loader = threading.Thread(target=_load_then_refresh, args=(service,), name="serving-load", daemon=True)
        loader.start()
        if not load_in_background:
            loader.join()
        yield
        service.stop()
        if tracer.get("telemetry") is not None:
            tracer["telemetry"].shutdown()

    app = FastAPI(title="taxi_fares online inference", lifespan=lifespan)
    app.state.service = service

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "live"}

    @app.get("/health/ready")
    def ready():
        if not service.ready:
            return JSONResponse({"status": "loading" if service.load_error is None else "failed",
                                 "detail": service.load_error}, status_code=503)
        return {"status": "ready", "model_version": service.bundle.model_version}

    @app.get("/v1/metadata")
    def metadata():
        if not service.ready:
            return JSONResponse({"detail": "not ready"}, status_code=503)
        snapshot = service.features.snapshot
        return {"manifest": service.bundle.manifest,
                "features": {"source": snapshot.source, "loaded_at": snapshot.loaded_at.isoformat(),
                             "newest": snapshot.newest, "pickup_rows": len(snapshot.pickup),
                             "dropoff_rows": len(snapshot.dropoff), "refreshes": service.features.refreshes,
                             "refresh_failures": service.features.refresh_failures},
                "settings": {k: v for k, v in asdict(settings).items() if k != "connection_string"},
                "model_features": list(MODEL_FEATURES)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # async: the work is CPU-bound and short, so it runs on the event loop rather than hopping to a thread pool
    # where requests would only contend for the interpreter lock.
    @app.post("/v1/predict")
    async def predict(body: PredictRequest, response: Response):
        request_id = uuid.uuid4().hex
        response.headers["X-Request-Id"] = request_id
        if len(body.trips) > settings.max_trips:
            return JSONResponse({"request_id": request_id, "detail": f"{len(body.trips)} trips in one request; "
                                 f"at most {settings.max_trips} are accepted"}, status_code=413,
                                headers={"X-Request-Id": request_id})
        if not service.ready:
            return JSONResponse({"request_id": request_id, "detail": "the model is not loaded yet"},
                                status_code=503, headers={"X-Request-Id": request_id})
        current = tracer.get("telemetry")
        spanning = current.span("POST /v1/predict", kind="SERVER", request_id=request_id, rows=len(body.trips)) \
            if current is not None else telemetry.span("POST /v1/predict")
        with spanning as span:
            result = service.predict(body.trips)
            span.set_attributes({"model_version": result["model_version"], "drift_status": result["drift"]["status"],
                                 "outliers": sum(p["outlier"] for p in result["predictions"])})
        return {"request_id": request_id, **result}

    return app


def _load_then_refresh(service: Service) -> None:
    try:
        service.load()
    except Exception:  # reported by /health/ready
        return
    service.refresh_loop()
