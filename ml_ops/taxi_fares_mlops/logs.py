"""Logging for the entry points (the notebooks and the ``mlops`` tool): the stages' progress and warnings on the
console, third-party chatter (Azure SDK HTTP logging, py4j, urllib3, Spark Connect's gRPC, MLflow internals) kept
at WARNING unless the level is DEBUG. Every handler redacts secrets (``redaction``), at every level. Library modules
only ever call ``logging.getLogger(__name__)``."""
from __future__ import annotations

import logging
import os
import sys

from taxi_fares_mlops import environment, redaction

LOG_LEVEL_ENV = environment.LOG_LEVEL.name  # DEBUG brings third-party logs back (mlops -v sets it for local jobs)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
THIRD_PARTY = ("azure", "py4j", "urllib3", "alembic", "matplotlib", "mlflow", "databricks.sdk", "opentelemetry",
               "pyspark", "grpc", "git", "PIL", "numba", "fsspec", "asyncio")


def configure_logging(level: str | None = None) -> int:
    """Configure the root logger once for this process; returns the level used."""
    name = (level or environment.LOG_LEVEL.get() or "INFO").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"{LOG_LEVEL_ENV}={name} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    root = logging.getLogger()
    if not root.handlers:  # a notebook on Databricks (or pytest) may own the handlers already: keep them
        logging.basicConfig(format=FORMAT, stream=sys.stderr)
    redaction.protect_all(root)  # whatever the level: -v shows the Azure SDK's requests, never their secrets
    root.setLevel(numeric)
    if numeric > logging.DEBUG:  # Spark's Python workers (spark_udf) log MLflow and its migrations on their own
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for noisy in THIRD_PARTY:
        logging.getLogger(noisy).setLevel(logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING)
    if numeric > logging.DEBUG:  # the SDK's fallbacks (host metadata, download URLs) are not the operator's concern
        logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
    return numeric
