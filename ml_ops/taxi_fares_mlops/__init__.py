"""taxi_fares_mlops: the MLOps stages that wire ``taxi_fares`` to Delta tables, MLflow, Blob storage and telemetry."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taxi_fares_mlops")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
