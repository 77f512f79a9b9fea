"""``mlops serving package``: the fare model behind an alias, its companions and the online feature rows, from the
registry and the lakehouse into a serving bundle (``taxi_fares_mlops.serving.bundle``).

The bundle is built in a sibling folder and renamed into place once its manifest is written: an interrupted
package leaves no half bundle where a service would look. A fare model without companions (trained before they
existed) cannot be served: the message says to retrain it.

Provenance: each model version is downloaded and compared with the SHA-256 digests recorded on it when it was
registered (``tracking.download_verified``); a file that differs is refused (``ArtifactDigestError``, naming the
model, the version and the file) before anything is written where a service looks. The manifest is then signed
with the given Ed25519 private key (``manifest.sig`` beside it): the service verifies that signature with the
public key it trusts before it reads anything else.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from taxi_fares.columns import TS, ZIP
from taxi_fares_mlops import outputs
from taxi_fares_mlops.errors import RegistryError
from taxi_fares_mlops.serving.bundle import (CHALLENGER, DRIFT, FARE, FEATURE_FILES, FORMAT, MANIFEST, OUTLIERS, PICKLE,
                                             PICKUP, REFERENCE_PROFILE, SIGNATURE, checksums)
from taxi_fares_mlops.signing import fingerprint, sign
from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES, Lakehouse
from taxi_fares_mlops.tracking import COMPANIONS, FARE_VERSION_TAG, Registry, download_verified

DEFAULT_LOOKBACK_HOURS = 24.0


def feature_rows(spark: SparkSession, lakehouse: Lakehouse, table: str, lookback_hours: float):
    """The rows an online lookup can take (see ``taxi_fares.online.latest_rows``), computed in Spark: the
    last ``lookback_hours`` before the newest row and each zip's latest row before those. Bounded by zips x
    slots of the lookback, however long the table's history."""
    features = lakehouse.read(spark, table)
    newest = features.agg(F.max(TS)).first()[0]
    if newest is None:
        raise RegistryError(f"table '{table}' has no rows: run feature engineering before packaging")
    since = newest - dt.timedelta(hours=lookback_hours)
    latest_before = (features.filter(F.col(TS) < F.lit(since))
                     .withColumn("_rank", F.row_number().over(Window.partitionBy(ZIP).orderBy(F.col(TS).desc())))
                     .filter("_rank = 1").drop("_rank"))
    return features.filter(F.col(TS) >= F.lit(since)).unionByName(latest_before).orderBy(ZIP, TS).toPandas(), since


def _is_bundle(folder: Path) -> bool:
    """A bundle the packager wrote, which it may replace: a manifest of this format and nothing beside what a bundle
    holds (a folder that also holds other files is not one, whatever its manifest says)."""
    own = {MANIFEST, SIGNATURE, "models", *(Path(f).parts[0] for f in FEATURE_FILES.values())}
    try:
        return {p.name for p in folder.iterdir()} <= own and \
            json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def package(spark: SparkSession, lakehouse: Lakehouse, destination: Path, model_name: str, alias: str = "champion",
            version: Optional[int] = None, lookback_hours: float = DEFAULT_LOOKBACK_HOURS, *,
            signing_key: Ed25519PrivateKey, challenger_alias: Optional[str] = None) -> dict:
    """Write the bundle for ``model_name`` (``version``, else the one behind ``alias``) to ``destination``,
    its manifest signed with ``signing_key``; returns the manifest. An existing bundle there is replaced only once
    the new one is complete; a ``destination`` holding anything but a bundle is refused before any work. With
    ``challenger_alias``, the fare model behind that alias travels beside it (verified the same way) for A/B and
    shadow tests; it must be another version than the one served."""
    outputs.check_replaceable(Path(destination), _is_bundle, "a serving bundle")  # as given: a link is refused
    destination = Path(destination).resolve()
    registry = Registry(model_name)
    fare = registry.resolve(alias, version)
    companions = {}
    for kind in COMPANIONS:
        ref = registry.companion(fare, kind)
        if ref is None:
            raise RegistryError(f"model '{model_name}' version {fare.version} has no {kind} model: it was trained "
                                f"before companions existed; retrain it to serve it")
        companions[kind] = ref
    pairs = [(FARE, fare), (OUTLIERS, companions["outliers"]), (DRIFT, companions["drift"])]
    if challenger_alias is not None:
        challenger = registry.resolve(challenger_alias, None)
        if str(challenger.version) == str(fare.version):
            raise RegistryError(f"model '{model_name}': alias '{challenger_alias}' is version {fare.version}, the "
                                f"version served: there is nothing to compare it with")
        pairs.append((CHALLENGER, challenger))
    building = outputs.building_folder(destination)
    try:
        models = {}
        for kind, ref in pairs:
            path = f"models/{kind}"
            download_verified(ref, building / path)  # refused unless its files are those registered
            models[kind] = {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "path": path}
            if kind in (OUTLIERS, DRIFT):
                belongs = Registry(ref.name).version_tags(ref.version).get(FARE_VERSION_TAG)
                models[kind]["fare_model_version"] = belongs
        for kind in (FARE, OUTLIERS, *((CHALLENGER,) if CHALLENGER in models else ())):
            if not (building / models[kind]["path"] / PICKLE).is_file():
                raise RegistryError(f"model '{models[kind]['name']}' version {models[kind]['version']} has no "
                                    f"{PICKLE}: it was not logged as a scikit-learn pickle")
        if not (building / models[DRIFT]["path"] / REFERENCE_PROFILE).is_file():
            raise RegistryError(f"model '{models[DRIFT]['name']}' version {models[DRIFT]['version']} has no "
                                f"{REFERENCE_PROFILE}")
        rows = {}
        since = None
        for kind, table in ((PICKUP, PICKUP_FEATURES), ("dropoff", DROPOFF_FEATURES)):
            frame, since = feature_rows(spark, lakehouse, table, lookback_hours)
            target = building / FEATURE_FILES[kind]
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(target, index=False)
            rows[kind] = len(frame)
        manifest = {
            "format": FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_name": model_name, "alias": alias if version is None else None, "models": models,
            "features": {"source": lakehouse.location(PICKUP_FEATURES).rsplit("/", 1)[0],
                         "snapshot_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "since": since.isoformat(), "lookback_hours": lookback_hours, "rows": rows},
            "files": checksums(building), "signing_key": fingerprint(signing_key)}
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        (building / MANIFEST).write_bytes(data)
        (building / SIGNATURE).write_bytes(sign(data, signing_key))  # over the exact bytes the service reads
        outputs.swap_in(building, destination)  # the previous bundle stays until the new one is whole
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest
