"""Operator tooling for the taxi-fare jobs (the ``mlops`` command). The notebooks live in ``notebooks/``."""
