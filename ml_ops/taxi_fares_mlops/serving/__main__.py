"""``python -m taxi_fares_mlops.serving --bundle DIR``: the service's command, the same in the container and in
``mlops serve --local``.

Fails closed: on any address but loopback (127.0.0.0/8, ::1, localhost) it refuses to start without
authentication (exit 2, before the port opens) unless ``--allow-unauthenticated`` says the risk is taken. Every
authentication and limit setting can also come from the environment (``MLOPS_SERVING_*``, see ``ENVIRONMENT``),
which is how the Kubernetes overlays set them: the container's command is the same everywhere.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from dataclasses import replace
from typing import Optional, Sequence

from taxi_fares_mlops import environment, redaction
from taxi_fares_mlops.serving import limits
from taxi_fares_mlops.serving.app import CHALLENGER_MODES, OFF, Settings, create_app
from taxi_fares_mlops.serving.auth import MODES, NONE, AuthSettings
from taxi_fares_mlops.serving.bundle import BundleError, verify
from taxi_fares_mlops.serving.features import IDENTITIES
from taxi_fares_mlops.signing import TRUSTED_KEY_ENV


logger = logging.getLogger("taxi_fares_mlops.serving")
# How long a thread runs Python before the interpreter lock is handed to another waiting thread (Python: 5 ms).
SWITCH_INTERVAL_SECONDS = 0.001

# option -> the variable (declared in taxi_fares_mlops.environment) that gives its default; a list option takes
# comma-separated values
ENVIRONMENT = {
    "auth": environment.SERVING_AUTH, "entra_tenant": environment.SERVING_ENTRA_TENANT,
    "entra_audience": environment.SERVING_ENTRA_AUDIENCE, "entra_issuer": environment.SERVING_ENTRA_ISSUER,
    "jwks_url": environment.SERVING_JWKS_URL, "required_role": environment.SERVING_REQUIRED_ROLE,
    "api_keys_file": environment.SERVING_API_KEYS_FILE,
    "allow_unauthenticated": environment.SERVING_ALLOW_UNAUTHENTICATED,
    "max_body_bytes": environment.SERVING_MAX_BODY_BYTES, "body_timeout": environment.SERVING_BODY_TIMEOUT,
    "header_timeout": environment.SERVING_HEADER_TIMEOUT, "max_in_flight": environment.SERVING_MAX_IN_FLIGHT,
    "cpu_threads": environment.SERVING_CPU_THREADS, "metrics_port": environment.SERVING_METRICS_PORT,
    "feature_tables": environment.SERVING_FEATURE_TABLES, "feature_identity": environment.SERVING_FEATURE_IDENTITY,
    "inference_table": environment.SERVING_INFERENCE_TABLE,
    "challenger_mode": environment.SERVING_CHALLENGER_MODE, "challenger_share": environment.SERVING_CHALLENGER_SHARE,
    "refresh_seconds": environment.SERVING_REFRESH_SECONDS, "lookback_hours": environment.SERVING_LOOKBACK_HOURS,
    "max_feature_age_hours": environment.SERVING_MAX_FEATURE_AGE_HOURS,
    "connection_string_file": environment.SERVING_CONNECTION_STRING_FILE,
}


def _env(option: str, default=None, kind=str):
    value = ENVIRONMENT[option].get()
    if not value:
        return default
    if kind is list:
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind is bool:  # only a plain yes or no: "off" or "disabled" must not switch a control off (or on)
        word = value.strip().lower()
        if word not in ("1", "true", "yes", "0", "false", "no"):
            raise SystemExit(f"error: {ENVIRONMENT[option].name}={value!r} is neither true/yes/1 nor false/no/0")
        return word in ("1", "true", "yes")
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"error: {ENVIRONMENT[option].name}={value!r} is not a {kind.__name__}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to any address


def exposure_refusal(host: str, auth: str, allow_unauthenticated: bool) -> Optional[str]:
    """Why the service must not start (one line), or None: no authentication on an address others can reach."""
    if auth != NONE or is_loopback(host) or allow_unauthenticated:
        return None
    return (f"error: refusing to serve on {host} without authentication: pass --auth entra --entra-tenant ID "
            f"--entra-audience ID, or --auth api-key --api-keys-file FILE (or bind 127.0.0.1; "
            f"--allow-unauthenticated takes the risk)")


def build_parser() -> argparse.ArgumentParser:
    """The service's options; each authentication and limit option defaults to its ``MLOPS_SERVING_*`` variable."""
    p = argparse.ArgumentParser(prog="taxi_fares_mlops.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="the serving bundle folder (`mlops serving package`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-trips", type=int, default=1000, help="trips per request above which it gets a 413")
    p.add_argument("--drift-window", type=int, default=1000, help="recent trips the drift status is judged on")
    p.add_argument("--drift-min-rows", type=int, default=200, help="trips in the window before drift is judged")
    c = p.add_argument_group("challenger (A/B and shadow tests)")
    c.add_argument("--challenger-mode", choices=CHALLENGER_MODES, default=_env("challenger_mode", OFF),
                   help="the bundle's challenger (mlops serving package --with-challenger): off; shadow, scored "
                        "beside the champion and logged to the inference table, never returned; or ab, answering "
                        "--challenger-share of the routing keys")
    c.add_argument("--challenger-share", type=float, default=_env("challenger_share", 0.0, float),
                   help="with ab: the share of routing keys (the authenticated caller; without authentication, "
                        "X-Client-Request-Id, else the request) the challenger answers, sticky per key")
    f = p.add_argument_group("features")
    f.add_argument("--feature-tables", default=_env("feature_tables"),
                   help="refresh online features from this lakehouse tables folder or abfss:// URI (delta-rs)")
    f.add_argument("--feature-identity", choices=IDENTITIES, default=_env("feature_identity"),
                   help="how delta-rs authenticates to the tables: workload-identity (the pod's Azure workload "
                        "identity); default: none needed (a local folder)")
    f.add_argument("--inference-table", default=_env("inference_table"),
                   help="append each answered request to this Delta table (folder or abfss:// URI; Databricks' "
                        "inference-table columns), off the request path; rows that cannot be written are dropped "
                        "and counted, never a failed request")
    f.add_argument("--refresh-seconds", type=float, default=_env("refresh_seconds", 300.0, float),
                   help="seconds between refreshes from --feature-tables")
    f.add_argument("--lookback-hours", type=float, default=_env("lookback_hours", 24.0, float),
                   help="hours of features before the newest row a refresh keeps: older trips are refused (422)")
    f.add_argument("--max-feature-age-hours", type=float, default=_env("max_feature_age_hours", None, float),
                   help="not ready (503, with the reason) while the newest features held are older than this "
                        "(default: no limit, for historical data)")
    p.add_argument("--telemetry-file", help="write telemetry as JSON lines here when no connection string is set")
    p.add_argument("--connection-string-file", default=_env("connection_string_file"),
                   help="a file holding the Application Insights connection string (a mounted secret); default "
                        "$APPLICATIONINSIGHTS_CONNECTION_STRING")
    p.add_argument("--trusted-key", default=environment.TRUSTED_KEY_FILE.get(),
                   help=f"the Ed25519 public key (PEM) the bundle must be signed with (default ${TRUSTED_KEY_ENV})")
    a = p.add_argument_group("authentication")
    a.add_argument("--auth", choices=MODES, default=_env("auth", NONE),
                   help="entra (bearer tokens), api-key (a key file) or none (loopback only, or with "
                        "--allow-unauthenticated)")
    a.add_argument("--entra-tenant", default=_env("entra_tenant"), help="the Entra ID tenant id")
    a.add_argument("--entra-audience", action="append", default=_env("entra_audience", kind=list),
                   help="an accepted audience (the API's client id or App ID URI); repeat for several")
    a.add_argument("--entra-issuer", action="append", default=_env("entra_issuer", kind=list),
                   help="an accepted issuer (default: the tenant's v1 and v2 issuers); repeat for several")
    a.add_argument("--jwks-url", default=_env("jwks_url"),
                   help="the signing keys (default: https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys)")
    a.add_argument("--required-role", default=_env("required_role"),
                   help="an app role the token's roles claim must hold (403 otherwise)")
    a.add_argument("--api-keys-file", default=_env("api_keys_file"),
                   help="a mounted secret file of API keys, one per line (several: rotation)")
    a.add_argument("--allow-unauthenticated", action="store_true",
                   default=_env("allow_unauthenticated", False, bool),
                   help="serve without authentication on a non-loopback address (refused otherwise)")
    a.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json (off by default)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-bytes", type=int, default=_env("max_body_bytes", limits.MAX_BODY_BYTES, int),
                     help="a larger request body gets a 413 (default 1 MiB)")
    lim.add_argument("--body-timeout", type=float,
                     default=_env("body_timeout", limits.BODY_TIMEOUT_SECONDS, float),
                     help="seconds a request body may take to arrive (then 408)")
    lim.add_argument("--header-timeout", type=float,
                     default=_env("header_timeout", limits.HEADER_TIMEOUT_SECONDS, float),
                     help="seconds a request's headers may take to arrive (then the connection is closed)")
    lim.add_argument("--max-in-flight", type=int, default=_env("max_in_flight", limits.MAX_IN_FLIGHT, int),
                     help="requests inside the app beyond which a 503 with Retry-After answers (probes excepted)")
    lim.add_argument("--cpu-threads", type=int, default=_env("cpu_threads", None, int),
                     help="threads for parsing and prediction (default: the pod's CPUs)")
    p.add_argument("--metrics-port", type=int, default=_env("metrics_port", None, int),
                   help="serve Prometheus metrics on this port (same host), for the in-cluster scraper; "
                        "not served on --port")
    return p


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def read_connection_string(path: str) -> str:
    """The Application Insights connection string from a mounted secret file. Unreadable or empty is a ValueError
    (the service refuses to start): telemetry that silently goes nowhere is found out in an incident, not at start."""
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().strip()
    except OSError as exc:
        raise ValueError(f"--connection-string-file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"--connection-string-file {path} is empty")
    return value


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(bundle=args.bundle, max_trips=args.max_trips, drift_window=args.drift_window,
                    drift_min_rows=args.drift_min_rows, feature_tables=args.feature_tables,
                    refresh_seconds=args.refresh_seconds, lookback_hours=args.lookback_hours,
                    max_feature_age_hours=args.max_feature_age_hours, feature_identity=args.feature_identity,
                    telemetry_file=args.telemetry_file, inference_table=args.inference_table,
                    challenger_mode=args.challenger_mode, challenger_share=args.challenger_share,
                    connection_string=os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or None,
                    trusted_key=args.trusted_key,
                    auth=AuthSettings(mode=args.auth, tenant=args.entra_tenant,
                                      audiences=tuple(args.entra_audience or ()),
                                      issuers=tuple(args.entra_issuer or ()), jwks_url=args.jwks_url,
                                      required_role=args.required_role,
                                      api_keys_file=args.api_keys_file).checked(),
                    max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                    max_in_flight=args.max_in_flight, cpu_threads=args.cpu_threads, docs=args.docs).checked()


def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.protect_all()  # the service's own lines and uvicorn's alike (uvicorn is told to add no handler)
    refusal = exposure_refusal(args.host, args.auth, args.allow_unauthenticated)
    if refusal:  # first, before anything is read or opened
        print(refusal, file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
        if args.connection_string_file:  # the mounted secret, instead of the environment
            settings = replace(settings, connection_string=read_connection_string(args.connection_string_file))
        if args.metrics_port is not None and args.metrics_port == args.port:
            raise ValueError("--metrics-port must differ from --port")
        if args.header_timeout <= 0:
            raise ValueError("--header-timeout must be positive")
        # Refused before the port opens: an incomplete or mismatched bundle never serves (the models and
        # features then load in the background while /health/ready answers 503).
        verify(args.bundle, args.trusted_key)  # its signature and every file, before anything is unpickled
    except (ValueError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)  # reads the API keys file
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.auth.mode == NONE:
        logger.warning("serving WITHOUT authentication on %s:%d: anyone who reaches it is served", args.host,
                       args.port)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, args.host, registry=app.state.service.metrics.registry)
    # The event loop hands over the interpreter lock to and from the pool's threads at every probe's few steps:
    # after at most 1 ms of their Python work instead of 5 ms (measured with the pool saturated by 1 MB requests:
    # liveness's 90th percentile fell from 0.1-0.2 s to 0.05 s, with the same requests answered).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    # log_config=None: uvicorn adds no handlers of its own, so its lines reach the root's redacting handler
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, log_config=None,
                **limits.server_options(header_timeout=args.header_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
