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
from taxi_fares_mlops.config import CHALLENGER, CHAMPION
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


def log_model(model, input_example: pd.DataFrame, registered_name: str, artifact: str = "model") -> str:
    """Log a fitted scikit-learn model with its signature and input example, and register it.

    Saved with cloudpickle: MLflow 3.8 (Databricks Runtime 18 LTS ML) offers pickle and cloudpickle only; the
    skops format came in later MLflow releases. Requirements are given explicitly rather than inferred, which
    would import the model in a subprocess. Returns the new version.
    """
    signature = infer_signature(input_example, model.predict(input_example))
    info = mlflow.sklearn.log_model(
        model,
        name=artifact,
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


# The training run's profile of its holdout features and predictions, which monitoring compares ranges with.
REFERENCE_PROFILE = "monitoring/reference_profile.json"
# The outlier detector trained with a fare model is registered as "<model>_outliers"; each version names the
# other in a version tag, so a mismatch is detected rather than scored.
OUTLIERS_SUFFIX = "_outliers"
FARE_VERSION_TAG = "fare_model_version"
OUTLIER_VERSION_TAG = "outlier_model_version"


APPROVAL_TAG = "approval.status"
PENDING, APPROVED = "PENDING", "APPROVED"


def outlier_model_name(model_name: str) -> str:
    return model_name + OUTLIERS_SUFFIX


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

    def log_dict(self, data: dict, path: str) -> None:
        mlflow.log_dict(data, path)

    def input_schema(self, model: "ModelRef") -> list:
        """The model version's input signature as JSON data ([] when it was logged without one)."""
        signature = mlflow.models.get_model_info(model.uri).signature
        return signature.inputs.to_dict() if signature is not None else []

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(MlflowClient().get_run(run_id).data.metrics)

    def load_dict(self, run_id: str, path: str) -> Optional[dict]:
        """The JSON artifact ``path`` of run ``run_id``, or None when the run has no such artifact."""
        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
        except (MlflowException, OSError):
            return None

    def registry(self, model_name: str) -> "Registry":
        return Registry(model_name)

    def log_model(self, model, input_example: pd.DataFrame, registered_name: str, artifact: str = "model") -> str:
        return log_model(model, input_example, registered_name, artifact)

    def score(self, spark: SparkSession, df: DataFrame, model: "ModelRef", output_col: str = "prediction"
              ) -> DataFrame:
        return score(spark, df, model, output_col)


class Registry:
    """The registered model ``name`` and its ``champion``/``challenger`` aliases."""

    def outlier_companion(self, fare: "ModelRef") -> Optional["ModelRef"]:
        """The outlier detector trained with fare model version ``fare``; None for a version trained before
        detectors existed. A RegistryError naming both versions when the two do not belong together."""
        version = self.version_tags(fare.version).get(OUTLIER_VERSION_TAG)
        if version is None:
            return None
        companion = Registry(outlier_model_name(self.name), self.client)
        detector = companion.by_version(int(version))
        belongs_to = companion.version_tags(detector.version).get(FARE_VERSION_TAG)
        if belongs_to != fare.version:
            raise RegistryError(f"model '{companion.name}' version {detector.version} belongs to '{self.name}' version "
                                f"{belongs_to}, not version {fare.version}: retrain, or repair the "
                                f"'{OUTLIER_VERSION_TAG}' tag of '{self.name}' version {fare.version}")
        return detector

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

    def promote(self, fare: "ModelRef") -> None:
        """Move ``champion`` to ``fare`` and to its outlier detector (a mismatched pair is refused first)."""
        detector = self.outlier_companion(fare)
        self.set_alias(CHAMPION, fare.version)
        if detector is not None:
            Registry(detector.name, self.client).set_alias(CHAMPION, detector.version)

    def approve(self, version: int, approver: str, when: str) -> "ModelRef":
        """An operator's approval of a version promotion held (``approval.status`` PENDING): recorded on the
        version (who, when), then the version becomes champion. A RegistryError for anything not pending."""
        fare = self.by_version(version)
        status = self.version_tags(fare.version).get(APPROVAL_TAG)
        if status != PENDING:
            raise RegistryError(f"model '{self.name}' version {version} is not waiting for approval "
                                f"({APPROVAL_TAG}: {status or 'not set'})")
        self.promote(fare)
        for key, value in ((APPROVAL_TAG, APPROVED), ("approval.by", approver), ("approval.at", when)):
            self.set_version_tag(fare.version, key, value)
        return fare

    def contenders(self) -> tuple[ModelRef, Optional[ModelRef]]:
        """(challenger, champion or None); a RegistryError when there is no challenger to judge."""
        challenger = self.by_alias(CHALLENGER)
        if challenger is None:
            raise RegistryError(f"model '{self.name}' has no '{CHALLENGER}' version: run the job with "
                                f"execute_training=true")
        return challenger, self.by_alias(CHAMPION)

    def set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags or {})

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
