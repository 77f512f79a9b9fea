"""Packaging for the operator tool: the ``orchestrator`` package and its ``mlops`` command.

Installed (editable) into the development environment by ``make install``. It depends on the MLOps wheel at
the same version, read from the repository's VERSION file.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "VERSION").read_text(encoding="utf-8").strip()

setup(
    name="taxi_fares_orchestrator",
    version=VERSION,
    description="Operator tooling for the taxi-fare MLOps jobs: build, run locally, deploy, trigger, repair",
    packages=find_packages(include=["orchestrator", "orchestrator.*"]),
    python_requires=">=3.10",
    install_requires=[
        f"taxi_fares_mlops=={VERSION}",
        "databricks-sdk>=0.40",
        "PyYAML>=6",
        # `mlops test-notebooks` runs and reports the Nutter notebook tests with nutter's own classes.
        "nutter>=0.1.35",
    ],
    entry_points={"console_scripts": ["mlops = orchestrator.cli:main"]},
)
