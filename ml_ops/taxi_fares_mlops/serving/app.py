"""The online inference service for the champion: FastAPI over a verified serving bundle.

* ``POST /v1/predict``: 1..``max_trips`` trips -> one fare per trip, an outlier flag and score per trip, and the
  drift status of the rolling window of recent trips. Bad input: 422 naming each bad field (quoting at most a
  short excerpt of a bad value); too many trips: 413.
* ``GET /health/live``: the process answers. ``GET /health/ready``: 503 until the bundle (models, features) is
  loaded, then 200 with the model version; 503 again, with the reason, while the features held are older than
  ``Settings.max_feature_age_hours``. Both open: the kubelet's probes carry no credentials.
* ``GET /v1/metadata``: the bundle's manifest (models, versions, run ids, feature snapshot) and the settings.
* Metrics (Prometheus text: requests by route and code, latency histogram, trips, outliers, the drift status, the
  model version) are not on this app: ``__main__`` serves them on a port of their own (``--metrics-port``) for
  the in-cluster scraper, so the callers' port has nothing open but the probes.

``/v1/predict`` and ``/v1/metadata`` need a caller (``taxi_fares_mlops.serving.auth``, one route dependency);
``/docs``, ``/redoc`` and ``/openapi.json`` exist only when ``Settings.docs`` asks for them. Every request passes
``taxi_fares_mlops.serving.limits.Limits`` (body size and read time, requests in flight).

A trip's inputs are built like batch scoring builds them (``taxi_fares.online``) from the online features, so the
service returns batch's prediction for the same trip, and a trip is checked with batch validation's own rules
(``taxi_fares.trip_rules``). A trip whose lookup time lies before the window of features held is a 422 naming
the window (``taxi_fares_mlops.serving.features``), never an answer from other features; every answer says as of
when its features are (``features_as_of``) and how old they are (``feature_age_seconds``).

Parsing, validation and prediction run on a thread pool sized to the pod's CPUs, never on the event loop, so the
probes answer while the pool is busy. Each predict call is one telemetry span
(role ``taxi_fares.serving``) with the model version, rows, outliers, drift status and the caller (app id and
object id, or the API key's position and fingerprint; never a credential); spans are exported in the background,
so a slow or unreachable Azure Monitor never delays a response. Needs neither Spark nor MLflow.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import gc
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from starlette.routing import Match
from threadpoolctl import threadpool_limits

from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, MODEL_FEATURES, PICKUP_TS, PICKUP_ZIP
from taxi_fares.binned_predict import predict_inputs
from taxi_fares.online import keys_of_seconds
from taxi_fares.outliers import OutlierScorer
from taxi_fares.trip_rules import broken_rules, nan_key, rows_breaking
from taxi_fares_mlops import telemetry
from taxi_fares_mlops.serving.auth import AuthSettings, Authenticator, Caller
from taxi_fares_mlops.serving.bundle import Bundle, load_bundle
from taxi_fares_mlops.serving.limits import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES, MAX_IN_FLIGHT, Limits
from taxi_fares_mlops.serving.features import IDENTITIES, OnlineFeatures, storage_options
from taxi_fares_mlops.serving.inference_log import InferenceLog, InferenceRow
from taxi_fares_mlops.serving.window import DRIFT, INSUFFICIENT_DATA, OK, DriftWindow

logger = logging.getLogger(__name__)

ROLE = "serving"
UNMATCHED = "<unmatched>"  # the one metric label of every path no route serves
EXCERPT_CHARS = 40         # a 422 quotes at most this much of a bad value
MAX_ERRORS = 20            # and names at most this many problems


@dataclass(frozen=True)
class Settings:
    bundle: str
    max_trips: int = 1000
    drift_window: int = 1000
    drift_min_rows: int = 200
    feature_tables: Optional[str] = None     # a lakehouse's tables folder to refresh features from (delta-rs)
    refresh_seconds: float = 300.0
    lookback_hours: float = 24.0
    # Older features than this make the service not ready (None: no limit, for replays of historical data such
    # as the 2016 sample every local run and test serves); the AKS overlays set 48 h.
    max_feature_age_hours: Optional[float] = None
    feature_identity: Optional[str] = None   # how delta-rs authenticates to the tables (features.IDENTITIES)
    telemetry_file: Optional[str] = None     # local JSON lines, when no Azure Monitor connection string is set
    connection_string: Optional[str] = None  # Application Insights; from APPLICATIONINSIGHTS_CONNECTION_STRING
    trusted_key: Optional[str] = None        # the public key (PEM file) the bundle's manifest must be signed with
    auth: AuthSettings = field(default_factory=AuthSettings)
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout: float = BODY_TIMEOUT_SECONDS
    max_in_flight: int = MAX_IN_FLIGHT
    cpu_threads: Optional[int] = None        # the pool predictions run on; default: the pod's CPUs
    docs: bool = False                       # /docs, /redoc and /openapi.json
    inference_table: Optional[str] = None    # a Delta table each answered request is appended to (delta-rs)
    challenger_mode: str = "off"             # off | shadow | ab: the bundle's challenger scored beside, or answering
    challenger_share: float = 0.0            # ab: the share of routing keys the challenger answers

    def checked(self) -> "Settings":
        problems = [f"{name} must be at least 1" for name in
                    ("max_trips", "drift_window", "drift_min_rows", "max_body_bytes", "max_in_flight")
                    if getattr(self, name) < 1]
        if self.body_timeout <= 0 or (self.cpu_threads is not None and self.cpu_threads < 1):
            problems.append("body_timeout must be positive and cpu_threads at least 1")
        if self.challenger_mode not in CHALLENGER_MODES:
            problems.append(f"challenger_mode must be one of {', '.join(CHALLENGER_MODES)}")
        elif self.challenger_mode == AB and not 0 < self.challenger_share < 1:
            problems.append("challenger_mode ab needs a challenger_share between 0 and 1 (exclusive)")
        elif self.challenger_mode != AB and self.challenger_share:
            problems.append("challenger_share is for challenger_mode ab")
        if self.drift_min_rows > self.drift_window:
            problems.append("drift_min_rows must not exceed drift_window")
        if self.refresh_seconds <= 0 or self.lookback_hours <= 0:
            problems.append("refresh_seconds and lookback_hours must be positive")
        if self.max_feature_age_hours is not None and not self.max_feature_age_hours > 0:
            problems.append("max_feature_age_hours must be positive")
        if self.feature_identity is not None and self.feature_identity not in IDENTITIES:
            problems.append(f"feature_identity must be one of {', '.join(IDENTITIES)}")
        if problems:
            raise ValueError("serving settings: " + "; ".join(problems))
        return self


# The times pandas' nanosecond timestamps hold (1677-09-21 .. 2262-04-11), with a margin for time zones and for
# rounding a time down to its feature window: a time outside them cannot be looked up, so it is a 422, not a 500.
EARLIEST_YEAR, LATEST_YEAR = 1678, 2261
# How the bundle's challenger takes part: not at all, scored in shadow (logged, not returned), or answering a share
# of the routing keys (A/B).
OFF, SHADOW, AB = "off", "shadow", "ab"
CHALLENGER_MODES = (OFF, SHADOW, AB)
CHAMPION_VARIANT, CHALLENGER_VARIANT = "champion", "challenger"
# The drift window is judged again once a tenth of it is new, and at most this often (on a thread of its own). A
# judgement of 1000 rows costs about 4 ms of interpreter time, which the requests it overlaps wait for: once a second
# that was 1% of 100-trip requests at one at a time, the p99 (measured); every 3 seconds it is below.
DRIFT_JUDGED_AT_MOST_EVERY_SECONDS = 3.0
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# The request's names for the columns batch validation's rules (taxi_fares.trip_rules) speak of.
FIELD_OF = {PICKUP_TS: "pickup_time", DROPOFF_TS: "dropoff_time", DISTANCE: "trip_distance",
            PICKUP_ZIP: "pickup_zip", DROPOFF_ZIP: "dropoff_zip"}


class Trip(BaseModel):
    """A trip as a request gives it: each field's type and range. Batch validation's rules, which read several
    fields, are checked on a request's trips at once (``Trips.breaking_rules``) and worded by ``CheckedTrip``."""
    model_config = ConfigDict(extra="forbid")

    pickup_time: dt.datetime
    dropoff_time: dt.datetime
    pickup_zip: int = Field(ge=1, le=99999)
    dropoff_zip: int = Field(ge=1, le=99999)
    trip_distance: float = Field(allow_inf_nan=False)  # its range is batch validation's (taxi_fares.trip_rules)

    @field_validator("pickup_time", "dropoff_time")
    @classmethod
    def _representable(cls, value: dt.datetime) -> dt.datetime:
        if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:  # checked before any zone arithmetic, which may overflow
            raise ValueError(f"the service takes times of the years {EARLIEST_YEAR} to {LATEST_YEAR}")
        return _utc(value)

    def logged(self) -> dict:
        """The trip as the inference table records it: times as naive UTC ISO 8601 (the request's own form)."""
        return {"pickup_time": self.pickup_time.replace(tzinfo=None).isoformat(),
                "dropoff_time": self.dropoff_time.replace(tzinfo=None).isoformat(),
                "pickup_zip": self.pickup_zip, "dropoff_zip": self.dropoff_zip, "trip_distance": self.trip_distance}


class CheckedTrip(Trip):
    """A trip with batch validation's rules checked one by one, each broken rule worded in its 422: the request
    model of the API's schema, and of a request whose trips did not all pass the quicker checks."""
    model_config = ConfigDict(extra="forbid", title="Trip")

    @model_validator(mode="after")
    def _valid_for_batch(self) -> "CheckedTrip":
        broken = broken_rules({PICKUP_TS: _micros(self.pickup_time), DROPOFF_TS: _micros(self.dropoff_time),
                               DISTANCE: self.trip_distance})
        if broken:
            raise ValueError("; ".join(f"{FIELD_OF.get(r.column, r.column)}: an invalid trip: {r.rule} "
                                       f"(batch validation's rule)" for r in broken))
        return self


class Trips(list):
    """A request's validated trips, with the columns prediction and the rules read, as numpy arrays made once."""

    def __init__(self, trips):
        super().__init__(trips)
        count = len(self)
        self.pickup_us = np.fromiter((_micros(t.pickup_time) for t in self), dtype=np.int64, count=count)
        self.dropoff_us = np.fromiter((_micros(t.dropoff_time) for t in self), dtype=np.int64, count=count)
        self.pickup_zip = np.fromiter((t.pickup_zip for t in self), dtype=np.int64, count=count)
        self.dropoff_zip = np.fromiter((t.dropoff_zip for t in self), dtype=np.int64, count=count)
        self.distance = np.fromiter((t.trip_distance for t in self), dtype=np.float64, count=count)

    def breaking_rules(self) -> bool:
        """Whether any trip breaks one of batch validation's rules (read from ``taxi_fares.trip_rules`` now)."""
        broken = rows_breaking({PICKUP_TS: self.pickup_us, DROPOFF_TS: self.dropoff_us, DISTANCE: self.distance,
                                nan_key(DISTANCE): np.isnan(self.distance)})
        return broken is not None and bool(np.any(broken))


def _micros(value: dt.datetime) -> int:
    """Whole microseconds since the epoch (Spark's ``unix_micros``), the time unit of the shared rules."""
    return (value - EPOCH) // dt.timedelta(microseconds=1)


def request_model(max_trips: int, trip: type[Trip] = CheckedTrip) -> type[BaseModel]:
    """The predict request: 1..``max_trips`` trips (a longer list is refused before its trips are validated)."""
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                        trips=(list[trip], Field(min_length=1, max_length=max_trips)))  # type: ignore[valid-type]


def _utc(value: dt.datetime) -> dt.datetime:
    """An instant in UTC; a time without a zone is read as UTC (as batch scoring reads the trips)."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """A short, JSON-safe stand-in for a bad value: small numbers as they are, text cut to ``limit`` characters,
    containers by kind. A 422 quoting whole values would echo up to the body limit, or text JSON cannot encode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    text = value if isinstance(value, str) else type(value).__name__
    text = text[:limit] + ("..." if len(text) > limit else "")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problems(error: ValidationError) -> list[dict]:
    """A validation error as a 422's ``detail``: where (under ``body``), what, and an excerpt of the value."""
    out = []
    for e in error.errors(include_url=False, include_context=False)[:MAX_ERRORS]:
        item = {"loc": ["body", *(excerpt(part) if isinstance(part, str) else part for part in e["loc"])],
                "type": e["type"], "msg": excerpt(e["msg"], 300)}
        if "input" in e:
            item["input"] = excerpt(e["input"])
        out.append(item)
    return out


def pod_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's limit, which
    the affinity does not show)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def one_openmp_thread() -> None:
    """The calling thread's OpenMP parallel regions use one thread (OpenMP's thread count is per thread)."""
    threadpool_limits(limits=1, user_api="openmp")


class FeaturesNotHeld(ValueError):
    """Trips whose lookup keys lie before the window of features held: (trip position, field, why) each."""

    def __init__(self, problems: list[tuple[int, str, str]]):
        super().__init__("; ".join(why for _, _, why in problems))
        self.problems = problems


READY, LOADING, FAILED, STALE = "ready", "loading", "failed", "features_too_old"
NOT_READY_REASONS = {LOADING: "the bundle is loading",
                     FAILED: "the bundle could not be loaded: the service's log says why",
                     STALE: "the features are older than the maximum age: /v1/metadata and the log say why"}


class Freshness:
    """The features' age and the readiness with its reason, computed when scraped (a gauge set at refresh time
    would age with no one noticing): ``taxi_fares_feature_age_seconds``, ``taxi_fares_readiness`` (one state of
    ready, loading, failed, features_too_old) and ``taxi_fares_feature_refresh_failures``."""

    def __init__(self, service: "Service"):
        self.service = service

    def collect(self):
        age = GaugeMetricFamily("taxi_fares_feature_age_seconds",
                                "seconds between now and the time the features held describe (features_as_of)")
        seconds = self.service.feature_age_seconds()
        if seconds is not None:
            age.add_metric([], seconds)
        yield age
        status = self.service.readiness()[0]
        yield StateSetMetricFamily("taxi_fares_readiness", "readiness and why not",
                                   {s: s == status for s in (READY, LOADING, FAILED, STALE)})
        features = self.service.features
        yield CounterMetricFamily("taxi_fares_feature_refresh_failures",
                                  "refreshes from the feature tables that failed (the rows held were kept)",
                                  value=features.refresh_failures if features is not None else 0)


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
        self.variants = Counter("taxi_fares_variant_requests", "predict requests by the model variant that answered",
                                ["variant"], registry=self.registry)
        self.shadow_failures = Counter("taxi_fares_shadow_failures", "requests the challenger failed to score in "
                                       "shadow (the champion answered)", registry=self.registry)
        self.inference_rows_dropped = Counter(
            "taxi_fares_inference_rows_dropped", "answered requests the inference table did not get (queue full, "
            "or writes failing)", registry=self.registry)
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
        self.profiled: list[int] = []
        self.load_error: Optional[str] = None
        self._stop = threading.Event()
        self.threads = settings.cpu_threads or pod_cpus()
        # CPU work (parsing, validation, features, model, outlier scores) runs here, never on the event loop. The
        # pool is the parallelism: each of its threads runs scikit-learn's OpenMP loops on one thread, or every
        # request's few rows would fan out over all the pod's CPUs and the threads spin against each other.
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="predict",
                                       initializer=one_openmp_thread)
        self.request_model = request_model(settings.max_trips)
        self.quick_model = request_model(settings.max_trips, Trip)
        self.inference_log: Optional[InferenceLog] = None
        if settings.inference_table:
            self.inference_log = InferenceLog(
                settings.inference_table, lambda: storage_options(settings.feature_identity),
                on_dropped=self.metrics.inference_rows_dropped.inc)
        self.clock = lambda: dt.datetime.now(dt.timezone.utc)  # what "now" is for the features' age
        self.metrics.registry.register(Freshness(self))

    @property
    def ready(self) -> bool:
        """The bundle is loaded: requests can be answered (``readiness`` also judges the features' age)."""
        return self.bundle is not None

    def feature_age_seconds(self) -> Optional[float]:
        as_of = self.features.snapshot.as_of if self.features is not None else None
        return None if as_of is None else (self.clock() - as_of.to_pydatetime()).total_seconds()

    def readiness(self) -> tuple[str, Optional[str]]:
        """(status, why not): loading, failed, features_too_old (older than ``max_feature_age_hours``) or ready."""
        if not self.ready:
            return (LOADING, None) if self.load_error is None else (FAILED, self.load_error)
        limit = self.settings.max_feature_age_hours
        age = self.feature_age_seconds()
        if limit is not None and (age is None or age > limit * 3600):
            assert self.features is not None
            snapshot = self.features.snapshot
            why = (f"features as of {snapshot.as_of.isoformat() if snapshot.as_of is not None else 'never'} are "
                   f"{'of unknown age' if age is None else f'{age / 3600:.1f} h old'}; at most {limit:g} h are "
                   f"served; ")
            if not self.features.tables_root:
                why += "no feature tables are configured to refresh them from (--feature-tables)"
            elif self.features.last_failure:
                why += f"the last refresh from {self.features.tables_root} failed: {self.features.last_failure}"
            else:
                why += f"the newest rows in {self.features.tables_root} are that old (feature engineering late?)"
            return STALE, why
        return READY, None

    def load(self) -> None:
        try:
            bundle = load_bundle(Path(self.settings.bundle), self.settings.trusted_key)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("serving bundle not loaded: %s", self.load_error)
            raise
        self.use(bundle)

    def use(self, bundle: Bundle) -> None:
        """Serve ``bundle`` (loaded and verified): its features, drift window and outlier scorer."""
        packaged = bundle.manifest.get("features") or {}
        read_at = packaged.get("snapshot_time")
        self.features = OnlineFeatures(bundle.pickup, bundle.dropoff, self.settings.feature_tables,
                                       self.settings.lookback_hours,
                                       bundle_lookback_hours=packaged.get("lookback_hours"),
                                       bundle_read_at=dt.datetime.fromisoformat(read_at) if read_at else None,
                                       identity=self.settings.feature_identity)
        self.features.refresh()
        if self.settings.challenger_mode != OFF and bundle.challenger_model is None:
            raise ValueError(f"--challenger-mode {self.settings.challenger_mode} needs a bundle with a challenger "
                             f"(mlops serving package --with-challenger); {bundle.root} has none")
        probe = np.zeros((1, len(MODEL_FEATURES)))  # a model that cannot take the inputs is found before serving
        for role, model in (("champion", bundle.fare_model), ("challenger", bundle.challenger_model)):
            if model is not None and (role == "champion" or self.settings.challenger_mode != OFF):
                try:
                    predict_inputs(model, probe, MODEL_FEATURES)
                except Exception as exc:  # noqa: BLE001
                    raise ValueError(f"the bundle's {role} cannot predict from the service's inputs "
                                     f"({', '.join(MODEL_FEATURES)}): {type(exc).__name__}: {exc}") from exc
        if self.window is not None:
            self.window.stop()
        self.window = DriftWindow(bundle.drift_detector, self.settings.drift_window, self.settings.drift_min_rows,
                                  min_seconds=DRIFT_JUDGED_AT_MOST_EVERY_SECONDS, background=True,
                                  on_judged=lambda judged: self.metrics.drift.state(judged.status))
        # Where each profiled column sits among the model's inputs followed by the prediction.
        self.profiled = [[*MODEL_FEATURES, "prediction"].index(c) for c in self.window.columns]
        self.outliers = OutlierScorer(bundle.outlier_model)
        self.metrics.model.labels(bundle.model_name, bundle.model_version).set(1)
        self.bundle = bundle
        logger.info("serving %s version %s from %s", bundle.model_name, bundle.model_version, bundle.root)

    def refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.refresh_seconds):
            if self.features is not None:
                self.features.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self.window is not None:
            self.window.stop()
        if self.inference_log is not None:
            self.inference_log.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, function, *args):
        """``function(*args)`` on the CPU pool; the event loop stays free for the probes and other requests."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def answer(self, trips: list[Trip], request_id: str, variant: str = CHAMPION_VARIANT
               ) -> tuple[bytes, dict, Optional[bytes], bytes]:
        """``predict``'s answer as JSON bytes (rendered here, on the pool: a thousand trips' answer is milliseconds
        of work the event loop would otherwise do), what the request's span records, in shadow mode the
        challenger's answer for the inference table (never returned), and the request as the table records it."""
        result, shadow = self.predict(trips, variant)
        body = _json_bytes({"request_id": request_id, **result})
        # What the inference table records: the trips as validated, written anew in one form (bounded by the trips
        # limit, whatever padding the body held, and readable by the Spark reader whatever form pydantic accepted)
        request = _json_bytes({"trips": [trip.logged() for trip in trips]}) if self.inference_log is not None \
            else b""
        shadowed = None if shadow is None else _json_bytes({
            "request_id": request_id, "model_name": self.bundle.model_name,
            "model_version": self.bundle.challenger_version, "variant": SHADOW,
            "predictions": [{"fare_amount": float(f)} for f in shadow]})
        return body, {"model_version": result["model_version"], "drift_status": result["drift"]["status"],
                      "outliers": sum(p["outlier"] for p in result["predictions"]), "variant": variant}, shadowed, \
            request

    def variant_for(self, key: str) -> str:
        """Who answers a routing key in A/B mode: the challenger for ``challenger_share`` of the keys, always the
        same for a key (a hash of the key and the challenger's version: a new challenger draws anew)."""
        if self.settings.challenger_mode != AB:
            return CHAMPION_VARIANT
        digest = hashlib.sha256(f"{self.bundle.challenger_version}:{key}".encode()).digest()
        drawn = int.from_bytes(digest[:8], "big") / 2 ** 64
        return CHALLENGER_VARIANT if drawn < self.settings.challenger_share else CHAMPION_VARIANT

    def parse(self, body: bytes) -> Trips:
        """The trips of a predict request's body (JSON); a pydantic ValidationError for anything else. Each field
        is checked by pydantic, batch validation's rules on all the trips at once; a request that fails either is
        validated again trip by trip, so its 422 names every problem of every trip, rules included."""
        try:
            trips = Trips(self.quick_model.model_validate_json(body).trips)  # type: ignore[attr-defined]
        except ValidationError:
            trips = None
        if trips is not None and not trips.breaking_rules():
            return trips
        return Trips(self.request_model.model_validate_json(body).trips)  # type: ignore[attr-defined]

    def predict(self, trips: list[Trip], variant: str = CHAMPION_VARIANT) -> tuple[dict, Optional[np.ndarray]]:
        # Arrays straight from the validated trips: a request's few rows cost less in numpy than in pandas frames.
        trips = trips if isinstance(trips, Trips) else Trips(trips)
        pickup_us, dropoff_us = trips.pickup_us, trips.dropoff_us
        snapshot = self.features.snapshot  # one snapshot per request, whatever a refresh swaps in meanwhile
        pickup_s, dropoff_s = pickup_us // 1_000_000, dropoff_us // 1_000_000  # rounded down, as Spark does
        outside = snapshot.outside_keys(*keys_of_seconds(pickup_s, dropoff_s), lambda i, column: getattr(
            trips[i], "pickup_time" if column == PICKUP_TS else "dropoff_time"))
        if outside:
            raise FeaturesNotHeld(outside)
        values = snapshot.inputs.matrix(pickup_s, dropoff_s, trips.pickup_zip, trips.dropoff_zip, trips.distance)
        answering = self.bundle.challenger_model if variant == CHALLENGER_VARIANT else self.bundle.fare_model
        fares = predict_inputs(answering, values, MODEL_FEATURES)
        shadow = None
        if self.settings.challenger_mode == SHADOW:
            try:  # the challenger never costs the champion's answer
                shadow = predict_inputs(self.bundle.challenger_model, values, MODEL_FEATURES)
            except Exception:  # noqa: BLE001
                self.metrics.shadow_failures.inc()
                logger.exception("the challenger failed to score in shadow; the champion answered")
        # As monitoring scores the detector: no earlier feature row reads as 0.
        scores = self.outliers.score_samples(np.nan_to_num(values, nan=0.0))
        flags = self.outliers.is_outlier(scores)
        if variant == CHAMPION_VARIANT:  # the window's predictions are the champion's, as its reference profile
            status = self.window.add_values(np.column_stack([values, fares])[:, self.profiled])
        else:
            status = self.window.current
        self.metrics.trips.inc(len(trips))
        self.metrics.outliers.inc(int(flags.sum()))
        self.metrics.variants.labels(variant).inc()
        version = self.bundle.challenger_version if variant == CHALLENGER_VARIANT else self.bundle.model_version
        extra = {} if self.settings.challenger_mode == OFF else {"variant": variant}
        return {"model_name": self.bundle.model_name, "model_version": version, **extra,
                "predictions": [{"fare_amount": float(f), "outlier": bool(o), "outlier_score": float(s)}
                                for f, o, s in zip(fares, flags, scores)],
                "drift": status.as_dict(),
                "features_as_of": snapshot.as_of.tz_localize(None).isoformat() if snapshot.as_of is not None
                else None,
                "feature_age_seconds": self.feature_age_seconds()}, shadow


def create_app(settings: Settings, load_in_background: bool = True) -> FastAPI:
    service = Service(settings)
    authenticate = Authenticator(settings.auth)
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

    docs = settings.docs
    app = FastAPI(title="taxi_fares online inference", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    app.state.service = service
    # Outermost first: Measured sees every answer, the limits' refusals included.
    app.add_middleware(Limits, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       max_in_flight=settings.max_in_flight)
    app.add_middleware(Measured, metrics=service.metrics, routes=app.router.routes)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "live"}

    # The probes are open to anyone who can reach the pod: they say what state the service is in, never why in
    # detail (exception text, paths, storage URIs). The why is logged once per change and is in /v1/metadata.
    reported: dict[str, Optional[str]] = {}

    @app.get("/health/ready")
    def ready():
        status, why = service.readiness()
        if status != READY:
            if reported.get(status) != why:
                reported[status] = why
                logger.warning("not ready (%s): %s", status, why or "loading")
            return JSONResponse({"status": status, "detail": NOT_READY_REASONS[status]}, status_code=503)
        return {"status": READY, "model_version": service.bundle.model_version}

    @app.get("/v1/metadata")
    def metadata(caller: Caller = Depends(authenticate)):  # noqa: B008 (FastAPI's dependency idiom)
        if not service.ready:
            return JSONResponse({"detail": "not ready"}, status_code=503)
        snapshot = service.features.snapshot
        status, why = service.readiness()
        return {"manifest": service.bundle.manifest, "readiness": {"status": status, "detail": why},
                "features": {"source": snapshot.source, "loaded_at": snapshot.loaded_at.isoformat(),
                             "newest": snapshot.newest, "pickup_rows": len(snapshot.pickup),
                             "dropoff_rows": len(snapshot.dropoff), "refreshes": service.features.refreshes,
                             "refresh_failures": service.features.refresh_failures,
                             "as_of": snapshot.as_of.isoformat() if snapshot.as_of is not None else None,
                             "window_start": snapshot.window_start.isoformat()
                             if snapshot.window_start is not None else None,
                             "age_seconds": service.feature_age_seconds(),
                             "last_refresh_failure": service.features.last_failure},
                "drift": {**service.window.current.as_dict(), "judgements": service.window.judgements,
                          "rows_since_judged": service.window.rows_since_judged},
                "inference_table": service.inference_log.status() if service.inference_log is not None else None,
                "settings": {k: v for k, v in asdict(settings).items() if k != "connection_string"},
                "model_features": list(MODEL_FEATURES)}

    # The body is read here, after authentication (a caller without credentials never costs a body read), and
    # parsed, validated and predicted on the CPU pool.
    @app.post("/v1/predict", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": service.request_model.model_json_schema()}}}})
    async def predict(request: Request, caller: Caller = Depends(authenticate)):  # noqa: B008
        request_id = uuid.uuid4().hex
        headers = {"X-Request-Id": request_id}
        started, received_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
        body = await request.body()
        try:
            trips = await service.run(service.parse, body)
        except ValidationError as error:
            too_long = [e for e in error.errors(include_url=False, include_input=False) if e["type"] == "too_long"
                        and tuple(e["loc"]) == ("trips",)]
            if too_long:
                return JSONResponse({"request_id": request_id, "detail": f"{too_long[0]['ctx']['actual_length']} "
                                     f"trips in one request; at most {settings.max_trips} are accepted"},
                                    status_code=413, headers=headers)
            return JSONResponse({"request_id": request_id, "detail": problems(error)}, status_code=422,
                                headers=headers)
        if not service.ready:
            return JSONResponse({"request_id": request_id, "detail": "the model is not loaded yet"},
                                status_code=503, headers=headers)
        current = tracer.get("telemetry")
        attributes = {"request_id": request_id, "rows": len(trips), **caller.attributes()}
        spanning = current.span("POST /v1/predict", kind="SERVER", **attributes) \
            if current is not None else telemetry.span("POST /v1/predict")
        logged = service.inference_log

        client_request_id = request.headers.get("x-client-request-id")
        # A/B routing key: who calls, when authenticated (sticky per caller, and a caller cannot pick the model that
        # answers by choosing a header); without authentication (loopback), the caller's X-Client-Request-Id, else
        # the request
        variant = service.variant_for(requester(caller) if caller.kind != "anonymous"
                                      else client_request_id or request_id)

        def log(status: int, answer: bytes, version: str, request_text: bytes) -> None:
            if logged is not None:  # queued only: the table is written on the log's own thread
                logged.record(InferenceRow(
                    received_at, request_id, client_request_id, status,
                    int((time.perf_counter() - started) * 1000), request_text.decode("utf-8"),
                    answer.decode("utf-8"), f"{service.bundle.model_name}/{version}", requester(caller)))

        with spanning as span:
            try:
                answer, summary, shadowed, logged_request = await service.run(service.answer, trips, request_id,
                                                                              variant)
            except FeaturesNotHeld as refused:
                span.set_attributes({"refused": "features_not_held"})
                detail = [{"loc": ["body", "trips", i, field], "type": "features_not_held", "msg": why}
                          for i, field, why in refused.problems[:MAX_ERRORS]]
                refusal = JSONResponse({"request_id": request_id, "detail": detail}, status_code=422,
                                       headers=headers)
                log(422, bytes(refusal.body), service.bundle.model_version,
                    _json_bytes({"trips": [trip.logged() for trip in trips]}))
                return refusal
            span.set_attributes(summary)
        log(200, answer, summary["model_version"], logged_request)
        if shadowed is not None:
            log(200, shadowed, service.bundle.challenger_version, logged_request)
        return Response(answer, media_type="application/json", headers=headers)

    return app


def _json_bytes(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def requester(caller: Caller) -> str:
    """Who called, for the inference table's ``requester``: the application (or object) id of a token, the key's
    position and fingerprint, or ``anonymous``; never a credential."""
    if caller.kind == "api-key":
        return f"api-key:{caller.key_index}:{caller.key_fingerprint}"
    return caller.app_id or caller.object_id or caller.kind


class Measured:
    """Requests by route and status code, and their latency, as one pure-ASGI middleware. The label is the route's
    template (``/v1/predict``), never the raw path: every path no route serves is one label, ``<unmatched>``
    (2,000 made-up paths made 2,005 series when the raw path was the label)."""

    def __init__(self, app, metrics: Metrics, routes):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def label(self, scope) -> str:
        route = scope.get("route")  # set by FastAPI's router when a route matched
        if route is None:  # refused before routing (the limits): the route the path would have reached
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or UNMATCHED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_measured(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            endpoint = self.label(scope)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _load_then_refresh(service: Service) -> None:
    try:
        service.load()
    except Exception:  # reported by /health/ready
        return
    # What is loaded now lives as long as the process (about 200k objects the cyclic collector tracks, in the models
    # and features): out of its reach, a full collection no longer walks them for 90 ms holding the interpreter
    # lock, which made the probes wait behind a large request's allocations.
    gc.collect()
    gc.freeze()
    service.refresh_loop()
