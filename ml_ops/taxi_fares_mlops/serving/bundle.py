"""The serving bundle: a self-contained folder with what the online service needs, and the checks it passes
before the service unpickles anything.

Layout (written by ``taxi_fares_mlops.serving.package``)::

    manifest.json                     what is in the bundle, with a SHA-256 per file
    manifest.sig                      the Ed25519 signature of manifest.json's exact bytes (base64, one line)
    models/fare/...                   the fare model version (an MLflow model folder; model.pkl is loaded)
    models/outliers/...               its outlier detector (idem)
    models/drift/...                  its drift model; artifacts/reference_profile.json is loaded
    features/pickup.parquet           the pickup feature rows an online lookup can take
    features/dropoff.parquet          the dropoff feature rows

The manifest names each model (name, version, run id, and for a companion the fare-model version it belongs to),
the feature snapshot (its time and the first window end kept) and every file's checksum.

``verify`` refuses, each with its own error type and a message naming the problem, in this order: no manifest;
an empty manifest; no signature (``UnsignedBundleError``); a signature that the trusted public key does not
verify (``BundleSignatureError``: another key signed it, or the manifest changed after signing); a manifest that
is not a JSON object of the expected shape (``ManifestError``); a listed path that is absolute, has a ``..`` part
or resolves outside the bundle through a symlink (``BundlePathError``); a file in the folder the manifest does not
list (``UnlistedFileError``: the packager writes none, so one is refused rather than ignored); a listed file that
is missing or whose SHA-256 differs (``BundleFileError``); then incomplete models or companions of another fare
version. ``load_bundle`` reads each file it loads once into memory, checks those bytes' digest again and loads
from them, so a file swapped after ``verify`` is not what gets unpickled. Reading a bundle needs neither Spark
nor MLflow: the models are scikit-learn pickles.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional, Union

import cloudpickle
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from taxi_fares.drift_detector import DriftDetector
from taxi_fares_mlops.checksums import sha256
from taxi_fares_mlops.errors import MlopsError
from taxi_fares_mlops.signing import (TRUSTED_KEY_ENV, KeyFileError, fingerprint, load_public_key,
                                      signature_valid)

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FARE, OUTLIERS, DRIFT = "fare", "outliers", "drift"
MODELS = (FARE, OUTLIERS, DRIFT)
# Optional: the challenger's fare model beside the champion, for A/B and shadow tests (features, outlier scores and
# the drift window stay the champion's: they describe the traffic, not the model answering it).
CHALLENGER = "challenger"
REFERENCE_PROFILE = "artifacts/reference_profile.json"
PICKLE = "model.pkl"
PICKUP, DROPOFF = "pickup", "dropoff"
FEATURE_FILES = {PICKUP: "features/pickup.parquet", DROPOFF: "features/dropoff.parquet"}
_SHA256 = re.compile(r"[0-9a-f]{64}")

TrustedKey = Union[Ed25519PublicKey, str, Path, None]


class BundleError(MlopsError):
    """The bundle folder cannot be served; the message names what is wrong."""


class UnsignedBundleError(BundleError):
    """The bundle has no signature file."""


class BundleSignatureError(BundleError):
    """The manifest's signature does not verify with the trusted key."""


class ManifestError(BundleError):
    """The manifest is empty, not JSON, or not of the expected shape."""


class BundlePathError(BundleError):
    """A path of the manifest points outside the bundle."""


class UnlistedFileError(BundleError):
    """A file in the bundle folder that the manifest does not list."""


class BundleFileError(BundleError):
    """A listed file is missing or differs from its digest in the manifest."""


def checksums(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` but the manifest and its signature."""
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, SIGNATURE)}


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
    challenger_model: Any = None

    @property
    def challenger_version(self) -> Optional[str]:
        challenger = self.manifest["models"].get(CHALLENGER)
        return None if challenger is None else str(challenger["version"])

    @property
    def model_name(self) -> str:
        return self.manifest["models"][FARE]["name"]

    @property
    def model_version(self) -> str:
        return self.manifest["models"][FARE]["version"]


def trusted_key(key: TrustedKey) -> Ed25519PublicKey:
    """The public key bundles must be signed with: given, or read from a PEM file. None is refused: a service
    without a trusted key serves nothing (there is no unsigned mode)."""
    if key is None:
        raise BundleError(f"no trusted key to verify the bundle's signature: pass --trusted-key FILE or set "
                          f"{TRUSTED_KEY_ENV} to the public key CD signs with (`mlops serve --local` trusts the "
                          f"development key of `mlops serving package --local`)")
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return load_public_key(key)
    except KeyFileError as exc:
        raise BundleError(str(exc)) from None


def verify(root: Path, key: TrustedKey) -> dict:
    """The manifest of the bundle at ``root`` once its signature verifies with ``key`` and every rule holds; a
    ``BundleError`` subclass naming the first broken rule (see the module's docstring for the order)."""
    public_key = trusted_key(key)
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root} is not a serving bundle: no such folder (run `mlops serving package`)")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} is not a serving bundle: {MANIFEST} is missing (run `mlops serving package`)")
    data = path.read_bytes()
    if not data.strip():
        raise ManifestError(f"{path} is empty")
    signature = root / SIGNATURE
    if not signature.is_file():
        raise UnsignedBundleError(f"{root} is not signed: {SIGNATURE} is missing (package it with a signing key: "
                                  f"`mlops serving package --signing-key FILE`)")
    if not signature_valid(data, signature.read_bytes(), public_key):
        raise BundleSignatureError(f"{root}: the signature of {MANIFEST} does not verify with the trusted key "
                                   f"{fingerprint(public_key)}: it was signed by another key, or the manifest was "
                                   f"changed after signing")
    manifest = _parsed(path, data)
    real_root = root.resolve()
    files = manifest["files"]
    for name in files:
        _inside(real_root, name)
    unlisted = sorted(set(_present(real_root)) - set(files) - {MANIFEST, SIGNATURE})
    if unlisted:
        raise UnlistedFileError(f"cannot serve {root}: {', '.join(unlisted[:5])}"
                                f"{f' and {len(unlisted) - 5} more' if len(unlisted) > 5 else ''} "
                                f"{'is' if len(unlisted) == 1 else 'are'} not listed in the manifest")
    for name, expected in sorted(files.items()):
        file = real_root / name
        if not file.is_file():
            raise BundleFileError(f"cannot serve {root}: {name} is listed in the manifest but missing")
        if sha256(file) != expected:
            raise BundleFileError(f"cannot serve {root}: {name} does not match its SHA-256 in the manifest")
    problems = []
    models = manifest["models"]
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
    if CHALLENGER in models:
        challenger = models[CHALLENGER]
        if not {"name", "version", "run_id", "path"} <= set(challenger):
            problems.append(f"model '{CHALLENGER}' lacks its name, version, run_id or path")
        elif FARE in models and (challenger["name"] != models[FARE].get("name")
                                 or str(challenger["version"]) == str(models[FARE].get("version"))):
            problems.append(f"the challenger must be another version of '{models[FARE].get('name')}', got "
                            f"'{challenger['name']}' version {challenger['version']}")
    required = [f"{models.get(k, {}).get('path', k)}/{PICKLE}" for k in (FARE, OUTLIERS)
                + ((CHALLENGER,) if CHALLENGER in models else ())]
    required += [f"{models.get(DRIFT, {}).get('path', DRIFT)}/{REFERENCE_PROFILE}", *FEATURE_FILES.values()]
    for name in required:
        if name not in files:
            problems.append(f"{name} is not listed in the manifest")
    if problems:
        raise BundleError(f"cannot serve {root}: " + "; ".join(problems))
    return manifest


def _parsed(path: Path, data: bytes) -> dict:
    """The manifest as data, once its shape is what the checks below read: files as path -> SHA-256 hex."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: bundle format {manifest.get('format')!r} is not {FORMAT}")
    files, models = manifest.get("files"), manifest.get("models")
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{path} lists no files")
    bad = [name for name, digest in files.items() if not isinstance(digest, str) or not _SHA256.fullmatch(digest)]
    if bad:
        raise ManifestError(f"{path}: the digest of {bad[0]} is not a SHA-256 in hex")
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise ManifestError(f"{path}: 'models' is not an object of model objects")
    return manifest


def _inside(real_root: Path, name: str) -> Path:
    """``name``'s file in the bundle; a BundlePathError when it is absolute, climbs out (``..``), or resolves
    outside the bundle through a symlink."""
    parts = PurePosixPath(name).parts
    if (not name or "\\" in name or "\0" in name or PurePosixPath(name).is_absolute() or re.match(r"[A-Za-z]:", name)
            or any(part in ("", ".", "..") for part in parts) or name != PurePosixPath(name).as_posix()):
        raise BundlePathError(f"the manifest lists {name!r}: not a plain relative path inside the bundle")
    resolved = (real_root / name).resolve()
    if not resolved.is_relative_to(real_root):
        raise BundlePathError(f"the manifest lists {name!r}, which resolves to {resolved}, outside the bundle")
    return resolved


def _present(real_root: Path) -> list[str]:
    """Every file (and symlink that is not to a folder) under the bundle, as relative posix paths; symlinked
    folders are not entered (their listed files are checked by ``_inside``)."""
    found = []
    for folder, _, names in os.walk(real_root):
        for name in names:
            found.append((Path(folder) / name).relative_to(real_root).as_posix())
    return found


def _verified_bytes(root: Path, manifest: Mapping[str, Any], name: str) -> bytes:
    """The bytes of listed file ``name``, read once and checked against the signed manifest: what is loaded is
    what was verified, even if the file is replaced after ``verify``."""
    data = _inside(root.resolve(), name).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"].get(name):
        raise BundleFileError(f"cannot serve {root}: {name} does not match its SHA-256 in the manifest")
    return data


def load_bundle(root: Path, key: TrustedKey) -> Bundle:
    """The bundle at ``root``, verified with the trusted public ``key`` (see ``verify``) before anything in it is
    unpickled."""
    root = Path(root)
    manifest = verify(root, key)
    models = manifest["models"]

    def read(name):
        return _verified_bytes(root, manifest, name)

    fare, outliers = (cloudpickle.loads(read(f"{models[kind]['path']}/{PICKLE}")) for kind in (FARE, OUTLIERS))
    reference = json.loads(read(f"{models[DRIFT]['path']}/{REFERENCE_PROFILE}"))
    pickup, dropoff = (pd.read_parquet(io.BytesIO(read(FEATURE_FILES[kind]))) for kind in (PICKUP, DROPOFF))
    challenger = cloudpickle.loads(read(f"{models[CHALLENGER]['path']}/{PICKLE}")) if CHALLENGER in models else None
    return Bundle(root, manifest, fare, outliers, DriftDetector(reference), pickup, dropoff, challenger)
