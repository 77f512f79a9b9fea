"""The ``MLOPS_*`` environment variables the MLOps wheel reads, declared once: name, kind, default and meaning.

Code reads a variable through its declaration (``SPARK_MASTER.get()``), never through ``os.environ`` with a literal
name. The operator tool declares its own in ``orchestrator.environment``, on top of these: together they are the
one registry the reference page (``docs/reference/environment.md``) is generated from. The ``scope`` says who sets
a variable: ``product`` ones matter wherever the wheels run; ``local`` ones only to the embedded default (local
Spark, the local job runner, the operator tool); ``test`` ones only to the test suite.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

SCOPES = ("product", "local", "test")


@dataclass(frozen=True)
class Variable:
    name: str
    doc: str
    default: Optional[str] = None
    kind: str = "text"       # text, path, integer, number, flag (any non-empty value is on)
    scope: str = "product"

    def get(self) -> Optional[str]:
        """The variable's value; its default when unset or empty."""
        return os.environ.get(self.name) or self.default

    def is_set(self) -> bool:
        return bool(os.environ.get(self.name))


VARIABLES: list[Variable] = []


def declare(name: str, doc: str, default: Optional[str] = None, kind: str = "text",
            scope: str = "product") -> Variable:
    """Add a variable to ``VARIABLES`` (each name once)."""
    if not name.startswith("MLOPS_") or any(v.name == name for v in VARIABLES) or scope not in SCOPES:
        raise ValueError(f"bad declaration of {name}")
    variable = Variable(name, doc, default, kind, scope)
    VARIABLES.append(variable)
    return variable


HOME = declare(
    "MLOPS_HOME", "The local lakehouse root: Delta tables, the MLflow sqlite store, staged wheels, checkpoints, the "
    "development signing key. Default: `.mlops/` in the repository (the operator tool) or the working folder.",
    kind="path")
LOG_LEVEL = declare(
    "MLOPS_LOG_LEVEL", "The jobs' log level (`DEBUG` brings third-party logs back); `mlops -v` sets `DEBUG` for "
    "the local jobs it starts.", default="INFO")
SPARK_REMOTE = declare(
    "MLOPS_SPARK_REMOTE", "A Spark Connect URL (`sc://host:port`): the jobs connect there instead of starting "
    "local Spark, as serverless compute and shared-access clusters run them.")
SPARK_CONF_FILE = declare(
    "MLOPS_SPARK_CONF_FILE", "A JSON object of Spark settings added to a local session the wheel starts itself "
    "(`null` removes a setting). The local job runner writes one with its tuning; nothing reads it on Databricks.",
    kind="path", scope="local")
SPARK_MASTER = declare(
    "MLOPS_SPARK_MASTER", "The master of a local session (`local[N]`, or `spark://...` of a local standalone "
    "cluster).", default="local[2]", scope="local")
SIGNING_KEY_FILE = declare(
    "MLOPS_SIGNING_KEY_FILE", "The Ed25519 private key (PEM file) `mlops serving package` signs a bundle's manifest "
    "with (CD: a secure file). `--local` uses a development key under `MLOPS_HOME` instead.", kind="path")
TRUSTED_KEY_FILE = declare(
    "MLOPS_TRUSTED_KEY_FILE", "The Ed25519 public key (PEM file) the online service verifies a bundle's signature "
    "with before it loads anything (AKS: a mounted ConfigMap).", kind="path")

# The online service's settings (python -m taxi_fares_mlops.serving): each is also a command-line option of the
# same name; the Kubernetes overlays set them here, so the container's command is the same everywhere.
SERVING_AUTH = declare(
    "MLOPS_SERVING_AUTH", "How the online service authenticates callers: `entra` (Microsoft Entra ID bearer "
    "tokens), `api-key` (keys from a mounted file) or `none` (loopback only, unless allowed).")
SERVING_ENTRA_TENANT = declare("MLOPS_SERVING_ENTRA_TENANT", "The Entra ID tenant (directory) id of the callers.")
SERVING_ENTRA_AUDIENCE = declare(
    "MLOPS_SERVING_ENTRA_AUDIENCE", "The audiences a token must carry (comma-separated): the API's client id or "
    "App ID URI.")
SERVING_ENTRA_ISSUER = declare(
    "MLOPS_SERVING_ENTRA_ISSUER", "The issuers a token may come from (comma-separated); default the tenant's v1 and "
    "v2 issuers.")
SERVING_JWKS_URL = declare(
    "MLOPS_SERVING_JWKS_URL", "Where the signing keys are published; default the tenant's "
    "`https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`.")
SERVING_REQUIRED_ROLE = declare(
    "MLOPS_SERVING_REQUIRED_ROLE", "An app role a token must carry in its `roles` claim (403 without it).")
SERVING_API_KEYS_FILE = declare(
    "MLOPS_SERVING_API_KEYS_FILE", "A file of API keys, one per line (several at once for rotation).", kind="path")
SERVING_ALLOW_UNAUTHENTICATED = declare(
    "MLOPS_SERVING_ALLOW_UNAUTHENTICATED", "Serve without authentication on an address other than loopback "
    "(refused otherwise: exit 2 before the port opens).", kind="flag")
SERVING_MAX_BODY_BYTES = declare(
    "MLOPS_SERVING_MAX_BODY_BYTES", "The largest request body, in bytes (413 beyond).", kind="integer")
SERVING_BODY_TIMEOUT = declare(
    "MLOPS_SERVING_BODY_TIMEOUT_SECONDS", "How long a request body may stall between chunks (408 beyond).",
    kind="number")
SERVING_HEADER_TIMEOUT = declare(
    "MLOPS_SERVING_HEADER_TIMEOUT_SECONDS", "How long a client may take to send its request's headers.",
    kind="number")
SERVING_MAX_IN_FLIGHT = declare(
    "MLOPS_SERVING_MAX_IN_FLIGHT", "Requests handled at once (503 with `Retry-After` beyond).", kind="integer")
SERVING_CPU_THREADS = declare(
    "MLOPS_SERVING_CPU_THREADS", "Threads that run the model off the event loop (default: the CPUs the pod has).",
    kind="integer")
SERVING_METRICS_PORT = declare(
    "MLOPS_SERVING_METRICS_PORT", "The separate port `/metrics` is served on, for the in-cluster scraper.",
    kind="integer")
SERVING_CONNECTION_STRING_FILE = declare(
    "MLOPS_SERVING_CONNECTION_STRING_FILE", "A file holding the Application Insights connection string the online "
    "service sends telemetry with (AKS: a mounted Secret, so the secret is not in the process's environment); "
    "without it, `APPLICATIONINSIGHTS_CONNECTION_STRING`.", kind="path")
SERVING_FEATURE_TABLES = declare(
    "MLOPS_SERVING_FEATURE_TABLES", "The lakehouse tables folder or `abfss://` URI the online service refreshes "
    "its features from (delta-rs); unset, it serves the bundle's snapshot.")
SERVING_FEATURE_IDENTITY = declare(
    "MLOPS_SERVING_FEATURE_IDENTITY", "How delta-rs authenticates to the feature tables: `workload-identity` (the "
    "pod's Azure workload identity: the federated token file the AKS webhook mounts).")
SERVING_INFERENCE_TABLE = declare(
    "MLOPS_SERVING_INFERENCE_TABLE", "A Delta table (local folder or `abfss://` URI) the online service appends "
    "each answered request to, in Databricks' inference-table columns (delta-rs, off the request path, with "
    "`MLOPS_SERVING_FEATURE_IDENTITY`'s credentials); unset, nothing is logged.")
SERVING_CHALLENGER_MODE = declare(
    "MLOPS_SERVING_CHALLENGER_MODE", "How the bundle's challenger takes part: `off` (default), `shadow` (scored "
    "beside the champion and logged to the inference table, never returned) or `ab` (answers "
    "`MLOPS_SERVING_CHALLENGER_SHARE` of the routing keys).")
SERVING_CHALLENGER_SHARE = declare(
    "MLOPS_SERVING_CHALLENGER_SHARE", "With `ab`: the share of routing keys (the authenticated caller; without "
    "authentication, `X-Client-Request-Id`, else the request) the challenger answers, between 0 and 1.",
    kind="number")
SERVING_REFRESH_SECONDS = declare(
    "MLOPS_SERVING_REFRESH_SECONDS", "Seconds between refreshes of the online features.", kind="number")
SERVING_LOOKBACK_HOURS = declare(
    "MLOPS_SERVING_LOOKBACK_HOURS", "Hours of features before the newest row a refresh keeps; a trip older than "
    "that window is refused (422) and left to batch scoring.", kind="number")
SERVING_MAX_FEATURE_AGE_HOURS = declare(
    "MLOPS_SERVING_MAX_FEATURE_AGE_HOURS", "The online service is not ready (503, with the reason) while its newest "
    "features are older than this; unset, no limit (historical data).", kind="number")
CRASH_AT = declare(
    "MLOPS_CRASH_AT", "Test hook: the job process kills itself with SIGKILL at the named crash point "
    "(`taxi_fares_mlops.faults.POINTS`); unset, every point is a no-op.", scope="test")
