"""taxi_fares: the ML logic of the taxi-fare model.

Pure functions over Spark DataFrames (and pandas where the model needs it). This package never imports
mlflow, dbutils or azure code and never reads or writes storage: the MLOps wheel does that.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taxi_fares")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
