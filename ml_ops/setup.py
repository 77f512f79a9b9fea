"""The version of the MLOps wheel and its dependencies, which pin ``taxi_fares`` to that same version: both read
from the repository's VERSION file (setuptools reads dynamic values only from inside the project's folder).
Everything else is in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup

VERSION = (Path(__file__).resolve().parent.parent / "VERSION").read_text(encoding="utf-8").strip()

setup(
    version=VERSION,
    install_requires=[
        f"taxi_fares=={VERSION}",
        # Ranges that a Databricks ML runtime's own copies satisfy, so %pip leaves them in place.
        "mlflow>=3.1,<4",
        "cloudpickle>=3.0",  # the model's pickle (also an mlflow dependency); by-value registration needs 2.0+
        "pandas>=2.0,<3",
        "pyarrow>=15",
        "matplotlib>=3.7",
        # Not part of a Databricks runtime: telemetry (OpenTelemetry -> Azure Monitor) and Blob output.
        "opentelemetry-sdk>=1.30",
        "azure-monitor-opentelemetry-exporter>=1.0.0b30",
        "azure-storage-blob>=12.19",
        # Verifies registered digests and bundle signatures (taxi_fares_mlops.signing); mlflow requires it already,
        # so a Databricks runtime has it.
        "cryptography>=42",
    ],
)
