"""The version of the ML wheel, read from the repository's VERSION file; everything else is in pyproject.toml.

setuptools reads a dynamic version only from files inside the project's folder, and VERSION sits one level up.
"""
from pathlib import Path

from setuptools import setup

setup(version=(Path(__file__).resolve().parent.parent / "VERSION").read_text(encoding="utf-8").strip())
