"""The operator tool's version and its pin on the MLOps wheel (the same version), read from VERSION; everything
else is in pyproject.toml. Installed (editable) into the development environment by ``make install``."""
from pathlib import Path

from setuptools import setup

VERSION = (Path(__file__).resolve().parent / "VERSION").read_text(encoding="utf-8").strip()

setup(
    version=VERSION,
    install_requires=[
        f"taxi_fares_mlops=={VERSION}",
        "databricks-sdk>=0.40",
        "PyYAML>=6",
        # `mlops test-notebooks` runs and reports the Nutter notebook tests with nutter's own classes.
        "nutter>=0.1.35",
    ],
)
