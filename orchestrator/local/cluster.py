"""One local Spark shared by several notebook processes, as a Databricks cluster is shared by the notebooks it runs.

On Databricks, ``dbutils.notebook.run`` and the jobs of an all-purpose cluster run each notebook in a Python
process of its own, attached to the cluster's one Spark driver: the child gets its own ``SparkSession`` (its own
SQL settings and temporary views) on the cluster's Spark application, and pays no Spark start. Locally the same
holds: a process that owns a Spark session hands ``sharing_environment(spark)`` to the notebook processes it
starts, and the kernel of each calls ``attach()`` first. Nothing else changes for the notebook: ``get_spark``
returns the active session, which is the attached one.

The environment holds the secret of the JVM's Py4J gateway (loopback only): it is handed to child processes and
never printed.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

GATEWAY_PORT = "PYSPARK_GATEWAY_PORT"      # pyspark's own names: its launch_gateway() connects to that JVM
GATEWAY_SECRET = "PYSPARK_GATEWAY_SECRET"


def sharing_environment(spark) -> dict[str, str]:
    """Variables with which a notebook process attaches to ``spark``'s JVM; empty when ``spark`` has no JVM
    here (a Spark Connect session: its notebooks reach the same server through ``MLOPS_SPARK_REMOTE``)."""
    context = getattr(spark, "_sc", None)  # a classic session's SparkContext; Spark Connect sessions have none
    if context is None:
        return {}
    parameters = context._gateway.gateway_parameters
    return {GATEWAY_PORT: str(parameters.port), GATEWAY_SECRET: parameters.auth_token}


def attach(environ: Optional[Mapping[str, str]] = None):
    """In a process started with ``sharing_environment``: a new session on the shared Spark application, made
    the active one (so ``get_spark`` returns it); None when the process was not started to share a Spark."""
    environ = os.environ if environ is None else environ
    if GATEWAY_PORT not in environ:
        return None
    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    gateway = launch_gateway()  # connects to the running JVM named by the two variables, starts none
    jvm = gateway.jvm
    context = jvm.org.apache.spark.api.java.JavaSparkContext.fromSparkContext(
        jvm.org.apache.spark.SparkContext.getOrCreate())
    sessions = jvm.org.apache.spark.sql.SparkSession
    owner = sessions.builder().getOrCreate()
    # The application's settings (Delta, time zone, shuffle partitions) with settings of this session's own.
    spark = SparkSession(SparkContext(gateway=gateway, jsc=context), owner.newSession())
    # pyspark made the new session the JVM's default too: the owner's stays the default, this one is active here.
    sessions.setDefaultSession(owner)
    sessions.setActiveSession(spark._jsparkSession)
    return spark
