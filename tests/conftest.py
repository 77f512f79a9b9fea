"""Shared fixtures: one local Spark session (Delta enabled) for the whole run, and a lakehouse per test.

There is deliberately no tests/__init__.py: nutter installs a top-level ``tests`` package that it would shadow.
"""
import datetime as dt
import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Set before the Spark JVM starts, so the Python workers that load models (spark_udf) inherit it too.
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"


@pytest.fixture(scope="session")
def spark():
    from taxi_fares_mlops.spark import get_spark

    session = get_spark("taxi-fares-tests")
    yield session
    session.stop()


@pytest.fixture
def lakehouse(tmp_path, monkeypatch):
    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, Lakehouse

    root = tmp_path / "lakehouse"
    monkeypatch.setenv(MLOPS_HOME_ENV, str(root))
    return Lakehouse(str(root))


def ts(text: str) -> dt.datetime:
    """A naive UTC datetime from 'YYYY-MM-DD HH:MM[:SS]' (the session time zone is UTC)."""
    return dt.datetime.fromisoformat(text)


@pytest.fixture
def make_trips(spark):
    """Build a raw-trip DataFrame from (pickup, dropoff, distance, fare, pickup_zip, dropoff_zip) tuples."""
    from taxi_fares.schema import RAW_TRIP_SCHEMA

    def build(rows):
        parsed = [
            (ts(p) if isinstance(p, str) else p, ts(d) if isinstance(d, str) else d, dist, fare, pz, dz)
            for p, d, dist, fare, pz, dz in rows
        ]
        return spark.createDataFrame(parsed, RAW_TRIP_SCHEMA)

    return build


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real, empty sqlite MLflow store for one test; fails the test if it leaves a run open."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    active = mlflow.active_run()
    if active is not None:
        mlflow.end_run("KILLED")
    assert active is None, "a run was left open"
