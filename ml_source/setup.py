"""Packaging for the ML wheel, ``taxi_fares``: pure ML logic, no MLOps plumbing.

pyspark is an extra on purpose: a Databricks runtime already ships it (outside pip's view), and a hard
requirement would make ``%pip install`` pull a second Spark onto the cluster.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = (HERE.parent / "VERSION").read_text(encoding="utf-8").strip()

setup(
    name="taxi_fares",
    version=VERSION,
    description="NYC taxi fare prediction: schema, validation, features, model and synthetic data",
    packages=find_packages(include=["taxi_fares", "taxi_fares.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "pandas>=2.0,<3",
        "scikit-learn>=1.4,<2",
        "scipy>=1.11",
    ],
    extras_require={
        # Provided by the Databricks runtime; install locally with `pip install taxi_fares[spark]`.
        "spark": ["pyspark>=3.5"],
    },
)
