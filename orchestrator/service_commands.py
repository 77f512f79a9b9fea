"""``mlops serving package``, ``mlops serve`` and ``mlops serving loadtest``: the online service from the
operator's side. The service itself is ``taxi_fares_mlops.serving``; these commands build its bundle from the
local registry and lakehouse, run it on loopback, and measure it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Optional

from orchestrator.console import progress
from orchestrator.errors import OperatorError, UsageError

MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 64
MAX_SECONDS = 600.0


def bundle_path(root: str, given: Optional[str]) -> Path:
    return Path(given) if given else Path(root) / "serving" / "bundle"


def _use_registry(args: argparse.Namespace, root: str) -> tuple[str, Any]:
    """Point MLflow at the local store (``--local``) or the target's workspace registry (``--target``); returns
    (model name, the lakehouse the feature tables are read from)."""
    from orchestrator.registry import use_registry
    from taxi_fares_mlops.storage import Lakehouse

    variables = use_registry(root, args.target, args.local)
    if args.target:
        return args.model or variables["model_name"], Lakehouse(variables["lakehouse_root"],
                                                                variables.get("table_schema") or None)
    return args.model or "taxi_fares", Lakehouse(root)


def cmd_serving_package(args: argparse.Namespace, root: str) -> int:
    from taxi_fares_mlops.config import CHAMPION
    from taxi_fares_mlops.errors import RegistryError
    from taxi_fares_mlops.outputs import ForeignOutputError
    from taxi_fares_mlops.serving.package import package
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.environment import SPARK_REMOTE

    if args.lookback_hours <= 0:
        raise UsageError(f"--lookback-hours must be positive, got {args.lookback_hours}")
    if args.target and not SPARK_REMOTE.get():
        raise UsageError(f"packaging from target '{args.target}' reads its feature tables through Spark "
                         f"Connect: set {SPARK_REMOTE.name} to the cluster's sc://... URL")
    signing_key = _signing_key(args, root)
    model, lakehouse = _use_registry(args, root)
    destination = Path(args.out) if args.out else bundle_path(root, None)
    started = time.monotonic()
    spark = tuned_session("mlops-serving-package")
    try:
        manifest = package(spark, lakehouse, destination, model, alias=args.alias or CHAMPION, version=args.version,
                           lookback_hours=args.lookback_hours, signing_key=signing_key,
                           challenger_alias=args.with_challenger)
    except (RegistryError, ForeignOutputError) as exc:
        raise UsageError(str(exc)) from exc
    models = manifest["models"]
    progress(f"packaged {models['fare']['name']} version {models['fare']['version']} with "
             f"{models['outliers']['name']} {models['outliers']['version']} and {models['drift']['name']} "
             f"{models['drift']['version']}"
             + (f", challenger version {models['challenger']['version']}" if "challenger" in models else "")
             + f", {sum(manifest['features']['rows'].values()):,} feature rows, "
             f"at {destination} in {time.monotonic() - started:.1f}s, signed by key {manifest['signing_key']}")
    return 0


def _signing_key(args: argparse.Namespace, root: str):
    """The bundle's Ed25519 signing key: ``--signing-key``, else the file ``MLOPS_SIGNING_KEY_FILE`` names (CD: a
    secure file), else, with ``--local`` only, the development key under ``MLOPS_HOME`` (made on first use)."""
    from taxi_fares_mlops.signing import SIGNING_KEY_ENV, KeyFileError, development_key, load_private_key

    path = args.signing_key or os.environ.get(SIGNING_KEY_ENV)
    try:
        if path:
            return load_private_key(path)
        if args.local:
            return load_private_key(development_key(root))
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    raise UsageError(f"packaging from target '{args.target}' needs the bundle-signing key: pass "
                     f"--signing-key FILE or set {SIGNING_KEY_ENV} (CD: the signing key's secure file)")


def trusted_key_path(args: argparse.Namespace, root: str) -> Path:
    """The public key the local service trusts: ``--trusted-key``, else ``MLOPS_TRUSTED_KEY_FILE``, else the
    public half of the development key that ``mlops serving package --local`` signs with."""
    from taxi_fares_mlops.signing import TRUSTED_KEY_ENV, development_public_key

    given = getattr(args, "trusted_key", None) or os.environ.get(TRUSTED_KEY_ENV)
    path = Path(given) if given else development_public_key(root)
    if not path.is_file():
        raise UsageError(f"no trusted key at {path}: run `mlops serving package --local` first (it makes "
                         f"the development key), or pass --trusted-key FILE")
    return path


def cmd_smoke(args: argparse.Namespace, root: str) -> int:
    """A deployed service's smoke test: ready, one prediction, and the version the registry's champion has."""
    from taxi_fares.synthetic import ALL_ZIPS
    from taxi_fares_mlops.errors import RegistryError
    from taxi_fares_mlops.tracking import Registry

    parts = _loopback(args.url)
    if getattr(args, "expect_version", None):
        model, champion, expected = args.model or "taxi_fares", args.expect_version, "expected"
    else:
        model, _ = _use_registry(args, root)
        expected = f"the registry's {args.alias}"
        try:
            champion = Registry(model).resolve(args.alias).version
        except RegistryError as exc:
            raise UsageError(str(exc)) from exc
    headers = {"Content-Type": "application/json", **caller_headers(args)}
    base = f"http://{parts.hostname}:{parts.port or 80}"
    deadline = time.monotonic() + args.wait
    status = None
    while status != 200:
        status = _status(base + "/health/ready")
        if status != 200 and time.monotonic() > deadline:
            raise SmokeFailure(f"{base}/health/ready answers {status or 'nothing'} after {args.wait:.0f}s")
        time.sleep(0 if status == 200 else 1)
    body = json.dumps({"trips": sample_trips(1, 1, ALL_ZIPS, held_window(base, caller_headers(args)))}).encode()
    request = urllib.request.Request(base + "/v1/predict", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        hint = "" if error.code not in (401, 403) else (
            " (it authenticates: pass --bearer-token-file or --api-key-file)" if "Authorization" not in headers
            else " (the credential sent was refused)")
        raise SmokeFailure(f"{base}/v1/predict answers {error.code}{hint}") from None
    served = str(answer["model_version"])
    fare = answer["predictions"][0]["fare_amount"]
    if served != str(champion):
        raise SmokeFailure(f"the service answers with {model} version {served}; {expected} is version {champion}")
    progress(f"smoke test passed: ready, one prediction ({fare:.2f}), version {served} = "
             f"{'expected' if getattr(args, 'expect_version', None) else args.alias}")
    return 0


def caller_headers(args: argparse.Namespace) -> dict:
    """The ``Authorization`` header for ``--bearer-token-file`` (the whole file) or ``--api-key-file`` (its first
    key, as the service's key file lists them); none without either. Both modes take ``Bearer <credential>``."""
    token_file, keys_file = getattr(args, "bearer_token_file", None), getattr(args, "api_key_file", None)
    path = token_file or keys_file
    if not path:
        return {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the credential file {path}: {exc}") from None
    if token_file:
        credential = "".join(line.strip() for line in lines)
    else:
        credential = next((k.strip() for k in lines if k.strip() and not k.strip().startswith("#")), "")
    if not credential:
        raise UsageError(f"the credential file {path} is empty")
    return {"Authorization": f"Bearer {credential}"}


def _status(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class SmokeFailure(OperatorError):
    """The deployed service is not what the registry says it should be."""

    exit_code = 1


def serve_command(bundle: Path, root: Optional[str], host: str, port: int, extra: tuple = ()) -> list[str]:
    """The service's command line, the one the container runs (with the local lakehouse's feature tables)."""
    command = [sys.executable, "-m", "taxi_fares_mlops.serving", "--bundle", str(bundle), "--host", host,
               "--port", str(port), *extra]
    if root is not None:
        command += ["--feature-tables", str(Path(root) / "tables"),
                    "--telemetry-file", str(Path(root) / "serving" / "telemetry.jsonl"),
                    "--inference-table", str(Path(root) / "tables" / "inference_requests")]
    return command


def cmd_serve(args: argparse.Namespace, root: str) -> int:
    if not args.local:
        raise UsageError("only --local serving is available here: deployed services run on AKS "
                         "(service_deployment/k8s, released by the CD pipeline)")
    bundle = bundle_path(root, args.bundle)
    if not (bundle / "manifest.json").is_file():
        raise UsageError(f"no serving bundle at {bundle}: run `mlops serving package --local` first")
    trusted = trusted_key_path(args, root)
    from taxi_fares_mlops.serving.__main__ import is_loopback

    if not is_loopback(args.host):
        raise UsageError(f"--host {args.host} is not a loopback address: `mlops serve --local` serves "
                         f"without authentication, so only on this machine (127.0.0.1)")
    # First, before anything else it prints: whoever reaches the port is served.
    progress(f"UNAUTHENTICATED: no credentials are asked for; anyone who can reach {args.host}:{args.port} on this "
             f"machine is served (deployed services authenticate: docs/security.md)")
    progress(f"serving {bundle} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    command = serve_command(bundle, root, args.host, args.port, ("--trusted-key", str(trusted)))
    # The service replaces this process (exec), so a supervisor's SIGTERM reaches it: run as a child, the service
    # outlived a terminated `mlops serve` and kept the port.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


# --- A/B comparison -------------------------------------------------------------------------------------------

def cmd_serving_compare(args: argparse.Namespace, root: str) -> int:
    """The served variants' errors side by side, from the inference table and the fares that arrived since."""
    from orchestrator.local.spark import tuned_session
    from orchestrator.registry import use_registry
    from taxi_fares_mlops.online_traffic import compare_variants, log_comparison
    from taxi_fares_mlops.storage import INFERENCE_REQUESTS, VARIANT_COMPARISON, Lakehouse

    if not args.local:
        raise UsageError("only --local comparison is available here: on Databricks, read variant_comparison "
                         "written by the same function in a job")
    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since must be an ISO date or time, got {args.since!r}") from None
    lakehouse = Lakehouse(root)
    if not Path(lakehouse.table_path(INFERENCE_REQUESTS)).is_dir():
        raise UsageError(f"no inference table at {lakehouse.table_path(INFERENCE_REQUESTS)}: serve with "
                         f"`mlops serve --local` (it writes one) and send requests first")
    use_registry(root, None)
    spark = tuned_session("mlops-serving-compare")
    rows = compare_variants(spark, lakehouse, since)
    if not rows:
        progress("no answered requests in the inference table" + (f" since {args.since}" if since else ""))
        return 1
    run_id = log_comparison(rows, args.experiment)
    print(f"{'variant':<11} {'version':>7} {'trips':>7} {'with fare':>9} {'rmse':>8} {'mae':>8} {'mean':>8}")
    for row in rows:
        print(f"{row['variant']:<11} {row['model_version']:>7} {row['trips']:>7} {row['trips_with_fare']:>9} "
              + " ".join(f"{row[k]:>8.3f}" if row[k] is not None else f"{'-':>8}"
                         for k in ("rmse", "mae", "mean_prediction")))
    progress(f"written to {lakehouse.location(VARIANT_COMPARISON)} and MLflow experiment '{args.experiment}' "
             f"(run {run_id})")
    return 0


# --- load test ------------------------------------------------------------------------------------------------

def _loopback(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url must be http://<loopback host>:<port>, got {url!r}")
    try:
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"--url {url!r} is not a loopback address: the load test only runs against a "
                         f"service on this machine")
    return parts


def sample_trips(count: int, seed: int, zips: tuple, window: Optional[tuple] = None) -> list[dict]:
    """``count`` plausible trips, the same for the same seed: in ``window`` (start, end) when given (the features
    a service holds), else in January 2016 (the synthetic data's span)."""
    rng = random.Random(seed)
    start, end = window or (dt.datetime(2016, 1, 4), dt.datetime(2016, 1, 18))
    span = max(1, int((end - start).total_seconds()))
    trips = []
    for _ in range(count):
        pickup = start + dt.timedelta(seconds=rng.randrange(span))
        minutes = rng.uniform(3, 40)
        trips.append({"pickup_time": pickup.isoformat(),
                      "dropoff_time": (pickup + dt.timedelta(minutes=minutes)).isoformat(),
                      "pickup_zip": rng.choice(zips), "dropoff_zip": rng.choice(zips),
                      "trip_distance": round(minutes * rng.uniform(0.15, 0.4), 2)})
    return trips


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    trips_per_request: int
    seconds: float
    latencies: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        errors = sum(self.errors.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        return (f"{self.requests} requests x {self.trips_per_request} trips at concurrency {self.concurrency}: "
                f"{self.throughput:,.1f} req/s ({self.throughput * self.trips_per_request:,.0f} trips/s), "
                f"p50 {1000 * self.percentile(.50):.1f} ms, p95 {1000 * self.percentile(.95):.1f} ms, "
                f"p99 {1000 * self.percentile(.99):.1f} ms, errors {errors}{f' ({detail})' if detail else ''}")

    def as_dict(self) -> dict:
        return {"requests": self.requests, "concurrency": self.concurrency, "trips": self.trips_per_request,
                "seconds": round(self.seconds, 3), "throughput_rps": round(self.throughput, 2),
                "p50_ms": round(1000 * self.percentile(.50), 2), "p95_ms": round(1000 * self.percentile(.95), 2),
                "p99_ms": round(1000 * self.percentile(.99), 2), "errors": sum(self.errors.values())}


def held_window(base: str, headers: Optional[dict] = None) -> Optional[tuple]:
    """(start, end) of the features a running service holds, from its /v1/metadata; None if it does not say. Trips
    older than that are batch's (the service answers them 422), so the synthetic ones are drawn inside it."""
    request = urllib.request.Request(base + "/v1/metadata", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            features = json.loads(response.read()).get("features", {})
        start, end = features.get("window_start"), features.get("as_of")
    except (OSError, ValueError, AttributeError):
        return None
    if not start or not end:
        return None
    start_at, end_at = (dt.datetime.fromisoformat(v).replace(tzinfo=None) for v in (start, end))
    return (start_at + dt.timedelta(hours=1), end_at) if end_at > start_at + dt.timedelta(hours=1) else None


def loadtest(url: str, requests: int, concurrency: int, trips: int = 1, seed: int = 7,
             max_seconds: float = MAX_SECONDS, path: str = "/v1/predict", bodies: Optional[list] = None,
             headers: Optional[dict] = None) -> LoadResult:
    """``requests`` POSTs of ``trips`` trips to ``url`` + ``path`` from ``concurrency`` threads, each on its own
    keep-alive connection; stops early (counting the rest as errors) once ``max_seconds`` have passed. The bodies
    are 16 requests of synthetic trips unless given (``bodies``: encoded JSON, used in turn); ``headers`` are
    added to each request (``Authorization`` for a service that authenticates)."""

    if not 1 <= requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be in 1..{MAX_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency}")
    parts = _loopback(url)
    if bodies is None:
        from taxi_fares.synthetic import ALL_ZIPS

        window = held_window(f"http://{parts.hostname}:{parts.port or 80}", headers)
        bodies = [json.dumps({"trips": sample_trips(trips, seed + i, ALL_ZIPS, window)}).encode() for i in range(16)]
    result = LoadResult(requests, concurrency, trips, 0.0)
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + max_seconds

    def worker(index: int) -> None:
        connection = HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
        n = 0
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            if time.monotonic() > deadline:
                with lock:
                    result.errors["deadline"] = result.errors.get("deadline", 0) + 1
                continue
            body = bodies[(index + n) % len(bodies)]
            n += 1
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
                response = connection.getresponse()
                response.read()
                outcome = None if response.status == 200 else f"HTTP {response.status}"
            except OSError as exc:
                outcome = type(exc).__name__
                connection.close()
                connection = HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
            elapsed = time.perf_counter() - started
            with lock:
                if outcome is None:
                    result.latencies.append(elapsed)
                else:
                    result.errors[outcome] = result.errors.get(outcome, 0) + 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def cmd_loadtest(args: argparse.Namespace, root: str) -> int:
    result = loadtest(args.url, args.requests, args.concurrency, args.trips, headers=caller_headers(args))
    print(json.dumps(result.as_dict()) if args.json else result.describe())
    return 0 if not result.errors else 1
