"""MLflow in one place: the experiment, model logging, the registry with its aliases, and scoring by URI.

Locally MLflow runs on a sqlite store (``MLFLOW_TRACKING_URI=sqlite:///<lakehouse>/mlflow.db``, set by the local
runner); artifacts then go next to the database. On Databricks the workspace (or Unity Catalog) provides both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from taxi_fares.features import model_input_columns
from taxi_fares_mlops.errors import RegistryError

logger = logging.getLogger(__name__)

RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"


def setup_experiment(name: str) -> str:
    """Use the experiment ``name``, creating it if missing. Returns its id."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        uri = mlflow.get_tracking_uri()
        if uri.startswith("sqlite:///"):
            artifact_location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
        logger.info("created MLflow experiment %s (%s)", name, experiment_id)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_model(model, input_example: pd.DataFrame, registered_name: str) -> str:
    """Log a fitted scikit-learn model with its signature and input example, and register it.

    Saved with cloudpickle: MLflow 3.8 (Databricks Runtime 18 LTS ML) offers pickle and cloudpickle only; the
    skops format came in later MLflow releases. Requirements are given explicitly rather than inferred, which
    would import the model in a subprocess. Returns the new version.
    """
    signature = infer_signature(input_example, model.predict(input_example))
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        input_example=input_example,
        serialization_format="cloudpickle",
        pip_requirements=[f"scikit-learn=={installed_version('scikit-learn')}",
                          f"cloudpickle=={installed_version('cloudpickle')}"],
        registered_model_name=registered_name,
    )
    return str(info.registered_model_version)


@dataclass(frozen=True)
class ModelRef:
    """A resolved registered model version."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Tracking:
    """The job's MLflow run, as the stages see it: metrics, tags, artifacts, and the model registry. Built once
    by ``run_job`` and handed to every stage in its context, so no stage talks to MLflow by itself."""

    def __init__(self, run_id: str, experiment_id: str):
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_artifact(self, path: Path, folder: str) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def registry(self, model_name: str) -> "Registry":
        return Registry(model_name)

    def log_model(self, model, input_example: pd.DataFrame, registered_name: str) -> str:
        return log_model(model, input_example, registered_name)

    def score(self, spark: SparkSession, df: DataFrame, model: "ModelRef", output_col: str = "prediction"
              ) -> DataFrame:
        return score(spark, df, model, output_col)


class Registry:
    """The registered model ``name`` and its ``champion``/``challenger`` aliases."""

    def __init__(self, name: str, client: Optional[MlflowClient] = None):
        self.name = name
        self.client = client or MlflowClient()

    def by_alias(self, alias: str) -> Optional[ModelRef]:
        """The version behind ``alias``, or None if the model or the alias does not exist. (Read through the
        model's aliases: stores disagree on the error code of a missing alias, never on a missing model's.)"""
        version = self.aliases().get(alias)
        if version is None:
            return None
        return self.by_version(int(version))

    def by_version(self, version: int) -> ModelRef:
        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            if exc.error_code == RESOURCE_DOES_NOT_EXIST:
                raise RegistryError(f"model '{self.name}' has no version {version}") from exc
            raise
        return ModelRef(self.name, str(mv.version), mv.run_id)

    def resolve(self, alias: str, version: Optional[int] = None) -> ModelRef:
        """``version`` if given, else the version behind ``alias``; a RegistryError naming what is missing."""
        if version is not None:
            return self.by_version(version)
        ref = self.by_alias(alias)
        if ref is None:
            raise RegistryError(f"model '{self.name}' has no alias '{alias}'")
        return ref

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)
        logger.info("model %s: alias %s -> version %s", self.name, alias, version)

    def aliases(self) -> dict[str, str]:
        """alias -> version; empty when the model is not registered yet. Any other failure propagates."""
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == RESOURCE_DOES_NOT_EXIST:
                return {}
            raise
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def score(spark: SparkSession, df: DataFrame, model: ModelRef, output_col: str = "prediction") -> DataFrame:
    """``df`` with the registered model's predictions, computed on the executors (``mlflow.pyfunc.spark_udf``).

    The model is loaded once per Python worker; rows travel in Arrow batches; nothing is collected.
    """
    predict = mlflow.pyfunc.spark_udf(spark, model.uri, result_type="double", env_manager="local")
    return df.withColumn(output_col, predict(F.struct(*model_input_columns())))
