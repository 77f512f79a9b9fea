"""Packaging for the MLOps wheel, ``taxi_fares_mlops``: stages that wire ``taxi_fares`` to storage and MLflow.

It pins ``taxi_fares`` to the same version (both come from the repository's VERSION file). pyspark and
delta-spark are an extra because a Databricks runtime provides them outside pip's view.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = (HERE.parent / "VERSION").read_text(encoding="utf-8").strip()

setup(
    name="taxi_fares_mlops",
    version=VERSION,
    description="MLOps stages for the taxi-fare model: feature tables, training, promotion, batch scoring",
    packages=find_packages(include=["taxi_fares_mlops", "taxi_fares_mlops.*"]),
    package_data={"taxi_fares_mlops": ["resources/*"]},
    python_requires=">=3.10",
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
    ],
    extras_require={
        # Provided by the Databricks runtime; installed locally by requirements/runtime.txt.
        "spark": ["pyspark>=3.5", "delta-spark>=3.2"],
        # The online service (taxi_fares_mlops.serving): no Spark, no JVM; its container installs this extra.
        "serving": ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2.5", "deltalake>=1.0", "prometheus-client>=0.20",
                    "cloudpickle>=3.0", "scikit-learn>=1.4,<2", "numpy>=1.26"],
    },
)
