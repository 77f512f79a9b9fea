"""Shared fixtures: one local Spark session (Delta enabled) for the whole run, and a lakehouse per test.

There is deliberately no tests/__init__.py: nutter installs a top-level ``tests`` package that it would shadow.
"""
import datetime as dt
import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


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
