"""MLflow in one place: the experiment, model logging, the registry with its aliases, and scoring by URI.

Locally MLflow runs on a sqlite store (``MLFLOW_TRACKING_URI=sqlite:///<lakehouse>/mlflow.db``, set by the local
runner); artifacts then go next to the database. On Databricks the workspace (or Unity Catalog) provides both.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Optional

import cloudpickle
import mlflow
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.spark_dataset import SparkDataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import taxi_fares.binned_predict
import taxi_fares.model
from taxi_fares.drift_detector import KS_THRESHOLD, PSI_THRESHOLD, DriftDetector
from taxi_fares.features import MODEL_FEATURES, model_input_columns
from taxi_fares_mlops import provenance
from taxi_fares_mlops.checksums import sha256
from taxi_fares_mlops.config import CHALLENGER, CHAMPION
from taxi_fares_mlops.errors import RegistryError, TrackingError, first_line
from taxi_fares_mlops.storage import Lakehouse

logger = logging.getLogger(__name__)

RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
HOST_TAG, PID_TAG = "mlops.host", "mlops.pid"
# Pickled by value into a logged fare model: the regressor's class and the code it predicts with.
BY_VALUE = (taxi_fares.model, taxi_fares.binned_predict)


def use_store(tracking_uri: str, registry_uri: str) -> None:
    """Point this process's MLflow at a tracking store and a registry (the environment variables say the same for
    child processes; a URI set earlier in the process would otherwise win over them)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)


def setup_experiment(name: str) -> str:
    """Use the experiment ``name``, creating it if missing. Returns its id. The job's first call to the tracking
    store: a store that is unreachable or locked is a ``TrackingError`` naming it, before anything is written."""
    try:
        return _setup_experiment(name)
    except Exception as exc:  # MlflowException over HTTP, SQLAlchemy's OperationalError for a database store
        raise TrackingError(f"MLflow tracking store {_shown(mlflow.get_tracking_uri())} {_store_problem(exc)}"
                            ) from exc


def _shown(uri: str) -> str:
    return re.sub(r"//[^@/]+@", "//***@", uri)  # a user:password part never reaches a message


def _store_problem(exc: Exception) -> str:
    text = str(exc)
    if "database is locked" in text:
        return "is locked by another process (database is locked): retry when it ends"
    for reason in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if reason in text:
            return f"is unreachable ({reason})"
    return f"failed: {first_line(exc, with_type=True)}"


def _setup_experiment(name: str) -> str:
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
    would import the model in a subprocess. Classes of ``taxi_fares.model`` (the fare regressor) and the
    prediction code they call (``taxi_fares.binned_predict``) are pickled by value, so the model loads where only
    those requirements are installed, without this package's wheels.
    Returns the new version.
    """
    signature = infer_signature(input_example, model.predict(input_example))
    for module in BY_VALUE:
        cloudpickle.register_pickle_by_value(module)
    try:
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
    finally:
        for module in BY_VALUE:
            cloudpickle.unregister_pickle_by_value(module)
    version = str(info.registered_model_version)
    record_digests(ModelRef(registered_name, version, info.run_id))
    return version


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
# Two companion models are trained with each fare model and registered beside it: the outlier detector
# ("<model>_outliers") and the drift detector ("<model>_drift"). Each version names the other in a version tag
# (the fare version's "<kind>_model_version", the companion's "fare_model_version"), so a mismatch is detected
# rather than scored, and promotion moves "champion" on all three together.
OUTLIERS, DRIFT = "outliers", "drift"
COMPANIONS = {OUTLIERS: "outlier_model_version", DRIFT: "drift_model_version"}
FARE_VERSION_TAG = "fare_model_version"
OUTLIER_VERSION_TAG = COMPANIONS[OUTLIERS]


APPROVAL_TAG = "approval.status"
PENDING, APPROVED = "PENDING", "APPROVED"
# On a held version: the champion version it was judged against when promotion held it ("none" when there was no
# champion). An approval is refused when the champion has moved since: the comparison it rests on is stale.
JUDGED_AGAINST_TAG = "approval.judged_against"
NO_CHAMPION = "none"
# Databricks' deployment-job approval: the approval task passes once the version carries a tag whose key is the
# task's name and whose value is "approved" (what the UI's Approve button sets); `mlops approve` sets it too.
APPROVAL_TASK, APPROVED_VALUE = "approval", "approved"
# On a version the deployment job's approval task holds (value: the Databricks run, or "local"). Such a version has
# no promotion decision yet: approving it records the approval, and the job's promotion task (the run repaired, or
# run again) judges and promotes it. A version the promotion stage held was judged a winner: approving promotes it.
HELD_BY_DEPLOYMENT_TAG = "approval.held_by_deployment_run"


def companion_name(model_name: str, kind: str) -> str:
    return f"{model_name}_{kind}"


def outlier_model_name(model_name: str) -> str:
    return companion_name(model_name, OUTLIERS)


class DriftModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """``<model>_drift`` as an MLflow pyfunc: the training profile (an artifact) in a ``DriftDetector``.

    ``predict`` takes a frame of the profiled columns (the model's inputs and its prediction) and returns one row
    per feature with its PSI, KS statistic, chi-square p-value, null share and whether it drifted; the params
    ``psi_threshold`` and ``ks_threshold`` override the registered defaults."""

    detector: Optional[DriftDetector] = None

    def load_context(self, context) -> None:
        with open(context.artifacts["reference_profile"]) as f:
            self.detector = DriftDetector(json.load(f))

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        params = params or {}
        detector = self.detector.with_thresholds(params.get("psi_threshold"), params.get("ks_threshold"))
        return detector.predict(model_input)


def log_drift_model(reference: dict, example: pd.DataFrame, registered_name: str) -> str:
    """Log and register the drift detector built from ``reference``; returns the new version."""
    detector = DriftDetector(reference)
    signature = infer_signature(example, detector.predict(example),
                                params={"psi_threshold": PSI_THRESHOLD, "ks_threshold": KS_THRESHOLD})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference_profile.json"
        path.write_text(json.dumps(reference))
        info = mlflow.pyfunc.log_model(
            name=DRIFT,
            python_model=DriftModel(),
            artifacts={"reference_profile": str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"{package}=={installed_version(package)}" for package in
                              ("taxi_fares", "taxi_fares_mlops", "pandas", "numpy", "scipy")],
            registered_model_name=registered_name,
        )
    version = str(info.registered_model_version)
    record_digests(ModelRef(registered_name, version, info.run_id))
    return version


class TableDataset(SparkDataset):
    """A Delta table at one version, as an MLflow dataset input: its source (path or name, and version), its schema
    and a digest of its query plan (``semanticHash``: no data is read).

    MLflow's ``SparkDataset`` also profiles the data when it is logged: an approximate count that runs a Spark job
    passing every row of the table through Python workers (and needs ``sparkContext``, which Spark Connect lacks).
    That is a full pass over each table a run reads, for a number the run does not need: no profile here. (Nor
    ``mlflow.data.from_spark``: given version 0, which it reads as no version, it records the latest instead.)"""

    @property
    def profile(self) -> None:
        return None


def table_dataset(lakehouse: Lakehouse, df: DataFrame, table: str, version: int) -> TableDataset:
    """``df`` (``table`` read at ``version`` from ``lakehouse``) as an MLflow dataset with a Delta source."""
    where = {"delta_table_name": lakehouse.location(table)} if lakehouse.schema else {"path": lakehouse.location(table)}
    return TableDataset(df=df, source=DeltaDatasetSource(**where, delta_table_version=version),
                        name=f"{table}@v{version}")


def log_table_inputs(spark: SparkSession, lakehouse: Lakehouse, context: str) -> dict[str, int]:
    """Record each table the ``as_of`` view ``lakehouse`` read, at the version it read, as a dataset input of the
    active run (``context``: what the run used it for), and their summary as the run's ``provenance.tables`` tag.
    Each input also carries its table and version as tags: MLflow's Delta source leaves a version 0 out."""
    versions = lakehouse.read_versions
    datasets = [table_dataset(lakehouse, lakehouse.read(spark, t), t, v) for t, v in versions.items()]
    mlflow.log_inputs(datasets=list(datasets), contexts=[context] * len(datasets),
                      tags_list=[{provenance.INPUT_TABLE: t, provenance.INPUT_VERSION: str(v)}
                                 for t, v in versions.items()])
    mlflow.set_tag(provenance.TABLES, provenance.format_tables(versions))
    logger.info("recorded the %s data: %s", context, provenance.format_tables(versions))
    return versions


@dataclass(frozen=True)
class TableRead:
    """One Delta table a training run read, at the version it read (None: not recorded)."""

    table: str
    version: Optional[int]
    location: str


@dataclass(frozen=True)
class Lineage:
    """What made a registered version: its run, the code (``provenance.*`` tags: the version's own, else its
    run's), the tables training read, and the run's metrics."""

    model: str
    version: str
    run_id: str
    experiment_id: str
    run_status: str
    code: dict[str, str]
    tables: list[TableRead]
    metrics: dict[str, float]

    @property
    def table_versions(self) -> dict[str, int]:
        return {t.table: t.version for t in self.tables if t.version is not None}


def read_lineage(model: str, version: int) -> Lineage:
    """The lineage of ``model`` version ``version`` from the registry and tracking store MLflow points at. A
    RegistryError when the version or its run does not exist; a TrackingError when the store fails."""
    registry = Registry(model)
    try:
        ref = registry.by_version(version)
        version_tags = registry.version_tags(ref.version)
        try:
            run = MlflowClient().get_run(ref.run_id)
        except MlflowException as exc:
            if exc.error_code == RESOURCE_DOES_NOT_EXIST:
                raise RegistryError(f"model '{model}' version {ref.version} names run {ref.run_id}, which the "
                                    f"tracking store does not have (deleted?)") from exc
            raise
    except MlflowException as exc:
        raise TrackingError(f"reading model '{model}' version {version} from {_shown(mlflow.get_tracking_uri())} "
                            f"failed: {first_line(exc, with_type=True)}") from exc
    code = {**provenance.of(run.data.tags), **provenance.of(version_tags)}  # the version's own tags first
    code.pop(provenance.TABLES, None)
    return Lineage(model, ref.version, run.info.run_id, run.info.experiment_id, run.info.status, code,
                   _training_inputs(run), dict(run.data.metrics))


def _training_inputs(run) -> list[TableRead]:
    reads = []
    for dataset_input in (run.inputs.dataset_inputs if run.inputs else []):
        tags = {t.key: t.value for t in dataset_input.tags}
        if tags.get("mlflow.data.context") != provenance.TRAINING_CONTEXT:
            continue
        dataset = dataset_input.dataset
        try:
            source = json.loads(dataset.source or "{}")
        except ValueError:
            source = {}
        # MLflow's Delta source leaves a version 0 out: the input's own tag has it whatever the version.
        version = tags.get(provenance.INPUT_VERSION, source.get("delta_table_version"))
        reads.append(TableRead(tags.get(provenance.INPUT_TABLE, dataset.name),
                               int(version) if version is not None else None,
                               source.get("path") or source.get("delta_table_name") or dataset.source))
    return reads


def process_tags() -> dict[str, str]:
    """Where a run's process lives (host and pid), so a later run can tell a dead run from a live one."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive_here(run) -> bool:
    """True when the run's process is alive on this machine (a run of another host cannot be checked)."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def end_stale_runs(experiment_id: str, job: str, current_run_id: str) -> list[str]:
    """End as KILLED the runs of ``job`` still RUNNING in the experiment, but the current one, with a note.

    A job runs one at a time (``max_concurrent_runs: 1`` on Databricks, a lock in the local runner), so a run of
    the same job still RUNNING when another starts is one whose process died without ending it (a lost node, a
    kill -9). A run whose process is still alive on this machine (two runs started by hand at once) is left
    alone. Returns the ids of the runs ended."""
    client = MlflowClient()
    stale = [r.info.run_id for r in client.search_runs(
        [experiment_id], f"tags.job = '{job}' and attributes.status = 'RUNNING'", max_results=100)
        if r.info.run_id != current_run_id and not _alive_here(r)]
    for run_id in stale:
        client.set_tag(run_id, "mlops.ended_by", current_run_id)
        client.set_tag(run_id, "mlops.note", f"left RUNNING by a process that died; marked KILLED when run "
                                             f"{current_run_id} of job {job} started")
        client.set_terminated(run_id, "KILLED")
    if stale:
        logger.warning("job %s: %d earlier run(s) left RUNNING by a process that died, now KILLED: %s", job,
                       len(stale), ", ".join(stale))
    return stale


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

    def log_artifact(self, path: Path, folder: str) -> str:
        """Log the file ``path`` under ``folder``; return its URI among the run's artifacts (a ``file:`` URI for a
        local store), which a person can open."""
        mlflow.log_artifact(str(path), artifact_path=folder)
        return mlflow.get_artifact_uri(f"{folder}/{path.name}")

    def log_dict(self, data: dict, path: str) -> None:
        mlflow.log_dict(data, path)

    def input_schema(self, model: "ModelRef") -> list:
        """The model version's input signature as JSON data ([] when it was logged without one)."""
        signature = mlflow.models.get_model_info(model.uri).signature
        return signature.inputs.to_dict() if signature is not None else []

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(MlflowClient().get_run(run_id).data.metrics)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(MlflowClient().get_run(run_id).data.tags)

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(MlflowClient().get_run(run_id).data.params)

    def load_dict(self, run_id: str, path: str) -> Optional[dict]:
        """The JSON artifact ``path`` of run ``run_id``, or None when the run has no such artifact."""
        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
        except (MlflowException, OSError):
            return None

    def registry(self, model_name: str) -> "Registry":
        return Registry(model_name)

    def log_table_inputs(self, spark: SparkSession, lakehouse: Lakehouse, context: str) -> dict[str, int]:
        return log_table_inputs(spark, lakehouse, context)

    def provenance_tags(self) -> dict[str, str]:
        """The run's ``provenance.*`` tags (code and data): what each version it registers carries too."""
        return provenance.of(MlflowClient().get_run(self.run_id).data.tags)

    def log_model(self, model, input_example: pd.DataFrame, registered_name: str, artifact: str = "model") -> str:
        version = log_model(model, input_example, registered_name, artifact)
        Registry(registered_name).set_version_tags(version, self.provenance_tags())
        return version

    def log_drift_model(self, reference: dict, example: pd.DataFrame, registered_name: str) -> str:
        version = log_drift_model(reference, example, registered_name)
        Registry(registered_name).set_version_tags(version, self.provenance_tags())
        return version

    def drift_detector(self, model: "ModelRef") -> DriftDetector:
        """The ``DriftDetector`` inside registered drift model version ``model``, loaded from a copy whose files
        match the digests recorded at registration (``download_verified``)."""
        with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
            path = download_verified(model, Path(tmp))
            return mlflow.pyfunc.load_model(str(path)).unwrap_python_model().detector

    def check_artifacts(self, model: "ModelRef") -> None:
        """An ``ArtifactDigestError`` when the version's files differ from the digests recorded at registration:
        for a stage to refuse before it reads any data (its loaders check again what they load)."""
        with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
            download_verified(model, Path(tmp))

    def check_inputs(self, model: "ModelRef") -> None:
        check_inputs(model)

    def score(self, spark: SparkSession, df: DataFrame, model: "ModelRef", output_col: str = "prediction"
              ) -> DataFrame:
        return score(spark, df, model, output_col)


class Registry:
    """The registered model ``name`` and its ``champion``/``challenger`` aliases."""

    def companion(self, fare: "ModelRef", kind: str) -> Optional["ModelRef"]:
        """The ``kind`` companion (``outliers``, ``drift``) trained with fare model version ``fare``; None for a
        version trained before that companion existed. A RegistryError naming both versions when the two do not
        belong together."""
        tag = COMPANIONS[kind]
        version = self.version_tags(fare.version).get(tag)
        if version is None:
            return None
        companion = Registry(companion_name(self.name, kind), self.client)
        detector = companion.by_version(int(version))
        belongs_to = companion.version_tags(detector.version).get(FARE_VERSION_TAG)
        if belongs_to != fare.version:
            raise RegistryError(f"model '{companion.name}' version {detector.version} belongs to '{self.name}' version "
                                f"{belongs_to}, not version {fare.version}: retrain, or repair the "
                                f"'{tag}' tag of '{self.name}' version {fare.version}")
        return detector

    def outlier_companion(self, fare: "ModelRef") -> Optional["ModelRef"]:
        return self.companion(fare, OUTLIERS)

    def link(self, fare_version: str, kind: str, companion_version: str) -> None:
        """Record that ``companion_version`` of the ``kind`` companion was trained with ``fare_version``."""
        self.set_version_tag(fare_version, COMPANIONS[kind], companion_version)
        Registry(companion_name(self.name, kind), self.client).set_version_tag(companion_version, FARE_VERSION_TAG,
                                                                               fare_version)

    def set_aliases(self, alias: str, fare: "ModelRef") -> None:
        """Point ``alias`` at ``fare`` and at its companions, all checked to belong together before any moves."""
        companions = [c for c in (self.companion(fare, kind) for kind in COMPANIONS) if c is not None]
        self.set_alias(alias, fare.version)
        for c in companions:
            Registry(c.name, self.client).set_alias(alias, c.version)

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
        """Move ``champion`` to ``fare`` and to its companions (a mismatched pair is refused first)."""
        self.set_aliases(CHAMPION, fare)

    def approve(self, version: int, approver: str, when: str) -> "ModelRef":
        """An operator's approval of a version promotion held (``approval.status`` PENDING): recorded on the
        version (who, when), then the version becomes champion. A RegistryError for anything not pending, and for
        a version judged against another champion than the current one (``JUDGED_AGAINST_TAG``): both named."""
        fare = self.by_version(version)
        tags = self.version_tags(fare.version)
        status = tags.get(APPROVAL_TAG)
        if status != PENDING:
            raise RegistryError(f"model '{self.name}' version {version} is not waiting for approval "
                                f"({APPROVAL_TAG}: {status or 'not set'})")
        judged_against, current = tags.get(JUDGED_AGAINST_TAG), self.aliases().get(CHAMPION) or NO_CHAMPION
        if judged_against != current:
            def shown(v: Optional[str]) -> str:
                return {None: "an unrecorded champion", NO_CHAMPION: "no champion"}.get(v, f"version {v}")
            raise RegistryError(f"model '{self.name}' version {version} was judged against {shown(judged_against)} "
                                f"but the champion now is {shown(current)}: re-validate it against the current "
                                f"champion (run the deployment job for version {version} again: `mlops run "
                                f"deployment --param model_version={version}`), or retrain")
        if HELD_BY_DEPLOYMENT_TAG not in tags:  # held by promotion after judging it a winner
            self.promote(fare)
        for key, value in ((APPROVAL_TAG, APPROVED), ("approval.by", approver), ("approval.at", when),
                           (APPROVAL_TASK, APPROVED_VALUE)):
            self.set_version_tag(fare.version, key, value)
        return fare

    def is_approved(self, version: str) -> bool:
        """Whether the version carries the deployment job's approval tag (``approval`` = ``approved``)."""
        return self.version_tags(version).get(APPROVAL_TASK) == APPROVED_VALUE

    def newest_version(self) -> int:
        """The highest version number of the model; a RegistryError when it has none."""
        versions = [int(v.version) for v in self.client.search_model_versions(f"name = '{self.name}'")]
        if not versions:
            raise RegistryError(f"model '{self.name}' has no version to deploy")
        return max(versions)

    def contenders(self, version: Optional[int] = None) -> tuple[ModelRef, Optional[ModelRef]]:
        """(challenger, champion or None): ``version`` when given (the version a deployment judges), else the
        '{CHALLENGER}' alias's; a RegistryError when there is no challenger to judge."""
        if version is not None:
            return self.by_version(version), self.by_alias(CHAMPION)
        challenger = self.by_alias(CHALLENGER)
        if challenger is None:
            raise RegistryError(f"model '{self.name}' has no '{CHALLENGER}' version: run the job with "
                                f"execute_training=true")
        return challenger, self.by_alias(CHAMPION)

    def set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    def set_version_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.set_version_tag(version, key, value)

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


def download_model(model: ModelRef, destination: Path) -> Path:
    """The registered version's MLflow model folder (MLmodel, the pickle, artifacts), copied to ``destination``,
    unchecked: what loads a model uses ``download_verified``."""
    destination.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.uri, dst_path=str(destination)))


# Provenance: each registered version carries the SHA-256 of every file of its model folder, recorded when it is
# registered, in one version tag (JSON: relative path -> hex digest; one tag, so the set is written at once).
# Whatever loads a version (batch scoring, monitoring, validation, promotion, the serving packager) downloads it,
# compares and refuses a file that differs, is missing or was added: a pickle swapped in the artifact store is
# never unpickled. The registry's tags are the reference: tampering needs write access to the registry itself,
# not only to the artifact storage. A version without the tag (registered before digests were recorded) is
# refused too, with the way out: retrain, or record its digests once its files are checked (``record_digests``).
ARTIFACT_DIGESTS_TAG = "artifact_sha256"
# Written by MLflow's client into a downloaded models:/ folder, not part of what was registered.
CLIENT_WRITTEN = frozenset({"registered_model_meta"})


class ArtifactDigestError(RegistryError):
    """A registered version's files differ from the digests recorded at registration, or it has none recorded.
    The message names the model, the version and the files."""


def artifact_digests(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file of a downloaded model folder (but what the client writes in it)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in CLIENT_WRITTEN}


def record_digests(model: ModelRef) -> dict[str, str]:
    """Download the version just registered and record its files' digests on it (``ARTIFACT_DIGESTS_TAG``).
    Called by ``log_model`` and ``log_drift_model``, so every version this package registers has them."""
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        digests = artifact_digests(download_model(model, Path(tmp)))
    Registry(model.name).set_version_tag(model.version, ARTIFACT_DIGESTS_TAG,
                                         json.dumps(digests, sort_keys=True, separators=(",", ":")))
    logger.info("model %s version %s: recorded the SHA-256 of %d files", model.name, model.version, len(digests))
    return digests


def recorded_digests(model: ModelRef) -> dict[str, str]:
    """The digests recorded on the version; an ArtifactDigestError when there are none or they are unreadable."""
    text = Registry(model.name).version_tags(model.version).get(ARTIFACT_DIGESTS_TAG)
    if text is None:
        raise ArtifactDigestError(
            f"model '{model.name}' version {model.version} has no recorded artifact digests (version tag "
            f"'{ARTIFACT_DIGESTS_TAG}'): it was registered before they were recorded, so its files cannot be "
            f"checked; retrain it (training records them), or check its files and record them with "
            f"taxi_fares_mlops.tracking.record_digests")
    try:
        digests = json.loads(text)
    except ValueError:
        digests = None
    if not isinstance(digests, dict) or not digests or not all(isinstance(v, str) for v in digests.values()):
        raise ArtifactDigestError(f"model '{model.name}' version {model.version}: its '{ARTIFACT_DIGESTS_TAG}' "
                                  f"tag is not a JSON object of file digests")
    return digests


def download_verified(model: ModelRef, destination: Path) -> Path:
    """``download_model``, then every file compared with the digests recorded at registration: an
    ArtifactDigestError naming the model, the version and each file that differs, is missing or was added."""
    recorded = recorded_digests(model)
    path = download_model(model, destination)
    found = artifact_digests(path)
    problems = [f"{name} differs" for name in sorted(recorded) if name in found and found[name] != recorded[name]]
    problems += [f"{name} is missing" for name in sorted(set(recorded) - set(found))]
    problems += [f"{name} was added" for name in sorted(set(found) - set(recorded))]
    if problems:
        raise ArtifactDigestError(f"model '{model.name}' version {model.version} is not what was registered: "
                                  f"{'; '.join(problems)} (SHA-256 against the '{ARTIFACT_DIGESTS_TAG}' tag); "
                                  f"refusing to load it")
    return path


def check_inputs(model: ModelRef) -> None:
    """A RegistryError when the version's input signature is not the fare model's features (a model registered
    under this name by something else, or by an incompatible version of the code)."""
    signature = mlflow.models.get_model_info(model.uri).signature
    inputs = signature.inputs.input_names() if signature is not None else None
    if inputs is None or sorted(inputs) != sorted(MODEL_FEATURES):
        missing = sorted(set(MODEL_FEATURES) - set(inputs or ()))
        extra = sorted(set(inputs or ()) - set(MODEL_FEATURES))
        why = ("it has no input signature" if inputs is None
               else f"missing {missing or 'none'}, unknown {extra or 'none'}")
        raise RegistryError(f"model '{model.name}' version {model.version} does not take the fare features ({why}): "
                            f"score with a version trained by this package's training job")


def score(spark: SparkSession, df: DataFrame, model: ModelRef, output_col: str = "prediction") -> DataFrame:
    """``df`` with the registered model's predictions, computed on the executors (``mlflow.pyfunc.spark_udf``).

    The model is loaded once per Python worker; rows travel in Arrow batches; nothing is collected. A version
    whose signature takes other inputs than the features is refused by ``check_inputs``; one whose files differ
    from the digests recorded at registration by ``download_verified``. The UDF is built from that verified copy
    (``spark_udf`` takes its own copy of the folder when it is built, so the temporary one can go).
    """
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        path = download_verified(model, Path(tmp))
        # Over Spark Connect the UDF loads the model later, on the server's workers, which cannot read this
        # process's folder: they fetch the registered version themselves, the version whose files were just
        # checked against the registry's digests.
        source = model.uri if _is_connect(spark) else str(path)
        predict = mlflow.pyfunc.spark_udf(spark, source, result_type="double", env_manager="local")
    return df.withColumn(output_col, predict(F.struct(*model_input_columns())))


def _is_connect(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")
