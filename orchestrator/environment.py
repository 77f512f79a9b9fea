"""The operator tool's ``MLOPS_*`` environment variables, declared on top of the MLOps wheel's
(``taxi_fares_mlops.environment``): ``VARIABLES`` here is the whole registry, which the reference page
``docs/reference/environment.md`` is generated from."""
from __future__ import annotations

from taxi_fares_mlops.environment import (CRASH_AT, HOME, LOG_LEVEL, SPARK_CONF_FILE, SPARK_MASTER, SPARK_REMOTE,
                                          VARIABLES, Variable, declare)

# The wheel's variables, so that the operator tool reads every variable from here.
__all__ = ["VARIABLES", "Variable", "CRASH_AT", "HOME", "LOG_LEVEL", "SPARK_CONF_FILE", "SPARK_MASTER", "SPARK_REMOTE"]

SPARK_DRIVER_MEMORY = declare(
    "MLOPS_SPARK_DRIVER_MEMORY", "The local driver's heap.", default="2g", scope="local")
SPARK_SHUFFLE_PARTITIONS = declare(
    "MLOPS_SPARK_SHUFFLE_PARTITIONS", "`spark.sql.shuffle.partitions` of a local session.", default="4",
    kind="integer", scope="local")
SPARK_JAVA_OPTIONS = declare(
    "MLOPS_SPARK_JAVA_OPTIONS", "Extra options for the local driver and executor JVMs (the test suite runs "
    "short-lived JVMs with `-XX:TieredStopAtLevel=1`).", scope="local")
TARGETS_FILE = declare(
    "MLOPS_TARGETS_FILE", "Another targets file for `mlops deploy` and `run` (forks, tests). Default: "
    "`job_templates/targets.yml`.",
    kind="path", scope="local")
APPROVER = declare(
    "MLOPS_APPROVER", "Who `mlops approve` records as the approver of a local registry's version (remote "
    "approvals record the workspace identity). Default: the login name.", scope="local")
POLL_SECONDS = declare(
    "MLOPS_POLL_SECONDS", "How often `mlops run`/`repair` poll a remote run's state.", default="10",
    kind="number", scope="local")
VERBOSE = declare(
    "MLOPS_VERBOSE", "A local notebook kernel prints the whole traceback of a failed notebook.", kind="flag",
    scope="local")
SECRET_PREFIX = declare(
    "MLOPS_SECRET_", "Prefix of the local stand-ins for Databricks secrets: `dbutils.secrets.get(scope, key)` "
    "reads `MLOPS_SECRET_<SCOPE>__<KEY>` (upper case, other characters as `_`), or `.secrets.env`.",
    scope="local")
SERVING_LOAD_DELAY = declare(
    "MLOPS_SERVING_LOAD_DELAY_SECONDS", "Test hook of the test suite's service launcher "
    "(`tests/integration/test_serving.py`): the online "
    "service waits this long before loading its bundle, so a test sees `/health/ready` answer 503 first.",
    kind="number", scope="test")
