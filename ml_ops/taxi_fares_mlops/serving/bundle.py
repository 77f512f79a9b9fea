"""The serving bundle: a self-contained folder with what the online service needs, and the check it passes
before the service starts.

Layout (written by ``taxi_fares_mlops.serving.package``)::

    manifest.json                     what is in the bundle, with a SHA-256 per file
    models/fare/...                   the fare model version (an MLflow model folder; model.pkl is loaded)
    models/outliers/...               its outlier detector (idem)
    models/drift/...                  its drift model; artifacts/reference_profile.json is loaded
    features/pickup.parquet           the pickup feature rows an online lookup can take
    features/dropoff.parquet          the dropoff feature rows

The manifest names each model (name, version, run id, and for a companion the fare-model version it belongs to),
the feature snapshot (its time and the first window end kept) and every file's checksum. ``load_bundle`` refuses
a folder that is incomplete, altered, or whose companions belong to another fare-model version, naming the
problem. Reading a bundle needs neither Spark nor MLflow: the models are scikit-learn pickles.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cloudpickle
import pandas as pd

from taxi_fares.drift_detector import DriftDetector
from taxi_fares_mlops.checksums import sha256

FORMAT = 1
MANIFEST = "manifest.json"
FARE, OUTLIERS, DRIFT = "fare", "outliers", "drift"
MODELS = (FARE, OUTLIERS, DRIFT)
REFERENCE_PROFILE = "artifacts/reference_profile.json"
PICKLE = "model.pkl"
PICKUP, DROPOFF = "pickup", "dropoff"
FEATURE_FILES = {PICKUP: "features/pickup.parquet", DROPOFF: "features/dropoff.parquet"}


class BundleError(Exception):
    """The bundle folder cannot be served; the message names what is wrong."""


def checksums(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` but the manifest."""
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, loaded: the models, the drift detector and the feature rows."""

    root: Path
    manifest: Mapping[str, Any]
    fare_model: Any
    outlier_model: Any
    drift_detector: DriftDetector
    pickup: pd.DataFrame
    dropoff: pd.DataFrame

    @property
    def model_name(self) -> str:
        return self.manifest["models"][FARE]["name"]

    @property
    def model_version(self) -> str:
        return self.manifest["models"][FARE]["version"]


def verify(root: Path) -> dict:
    """The manifest of the bundle at ``root`` once every rule holds; a BundleError naming each broken one."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} is not a serving bundle: {MANIFEST} is missing (run `mlops serving package`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r} is not {FORMAT}")
    problems = []
    models = manifest.get("models", {})
    for kind in MODELS:
        if not {"name", "version", "run_id", "path"} <= set(models.get(kind, {})):
            problems.append(f"model '{kind}' is missing from the manifest")
    if not problems:
        fare = models[FARE]
        for kind in (OUTLIERS, DRIFT):
            belongs = str(models[kind].get("fare_model_version"))
            if belongs != str(fare["version"]):
                problems.append(f"model '{models[kind]['name']}' version {models[kind]['version']} belongs to "
                                f"'{fare['name']}' version {belongs}, not version {fare['version']}")
    files = manifest.get("files", {})
    required = [f"{models.get(k, {}).get('path', k)}/{PICKLE}" for k in (FARE, OUTLIERS)]
    required += [f"{models.get(DRIFT, {}).get('path', DRIFT)}/{REFERENCE_PROFILE}", *FEATURE_FILES.values()]
    for name in required:
        if name not in files:
            problems.append(f"{name} is not listed in the manifest")
    for name, expected in sorted(files.items()):
        file = root / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256(file) != expected:
            problems.append(f"{name} does not match its checksum")
    if problems:
        raise BundleError(f"cannot serve {root}: " + "; ".join(problems))
    return manifest


def load_bundle(root: Path) -> Bundle:
    root = Path(root)
    manifest = verify(root)
    models = manifest["models"]

    def unpickle(kind):
        with open(root / models[kind]["path"] / PICKLE, "rb") as f:
            return cloudpickle.load(f)

    reference = json.loads((root / models[DRIFT]["path"] / REFERENCE_PROFILE).read_text())
    return Bundle(root, manifest, unpickle(FARE), unpickle(OUTLIERS), DriftDetector(reference),
                  pd.read_parquet(root / FEATURE_FILES[PICKUP]), pd.read_parquet(root / FEATURE_FILES[DROPOFF]))
