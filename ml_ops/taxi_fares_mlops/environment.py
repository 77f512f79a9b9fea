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
CRASH_AT = declare(
    "MLOPS_CRASH_AT", "Test hook: the job process kills itself with SIGKILL at the named crash point "
    "(`taxi_fares_mlops.faults.POINTS`); unset, every point is a no-op.", scope="test")
