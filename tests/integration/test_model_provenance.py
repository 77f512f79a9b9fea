"""Model provenance, end to end, on real components: a sqlite MLflow registry with small real scikit-learn models
(fare, outlier detector, drift detector) registered by the package's own ``log_model``, a bundle packaged by
``mlops serving package --local`` (signed with the development key it makes under MLOPS_HOME), real Ed25519 keys.

Each control has its own test: the registry's digests refused by the packager, batch scoring and monitoring when a
file changed after registration; the bundle refused by the service's loader when it is unsigned, signed by another
key, swapped with a recomputed manifest (the reported attack), altered, holding an unlisted file, listing a path
outside itself, or carrying an empty or malformed manifest. Refusals happen before anything is unpickled: the
swapped pickle would leave a file behind if it ever were."""
import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.tracking import MlflowClient

from orchestrator.cli import main as mlops_main
from taxi_fares_mlops.serving.bundle import (MANIFEST, SIGNATURE, BundleError, BundleFileError, BundlePathError,
                                             BundleSignatureError, ManifestError, UnlistedFileError,
                                             UnsignedBundleError, load_bundle, verify)
from taxi_fares_mlops.signing import DEVELOPMENT_KEY, development_public_key, load_private_key, sign
from taxi_fares_mlops.tracking import (ARTIFACT_DIGESTS_TAG, ArtifactDigestError, ModelRef, artifact_digests,
                                       download_model)

MODEL = "taxi_fares"
START, END = "2016-01-04", "2016-01-18"
FARE_PICKLE = "models/fare/model.pkl"


# --- the registry and the bundle, made once for the module ------------------------------------------------------

def _frame(rows=300, seed=3) -> pd.DataFrame:
    from taxi_fares.features import MODEL_FEATURES

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.integers(1, 20, rows).astype(float) for c in MODEL_FEATURES})
    frame["trip_distance"] = rng.uniform(0.5, 10, rows)
    return frame


def _register(spark) -> dict:
    """The fare model, its outlier and drift companions, registered as training does (``log_model``, linked,
    'champion' on all three); returns name -> version."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    from taxi_fares import drift
    from taxi_fares.features import MODEL_FEATURES
    from taxi_fares.outliers import fit_outlier_detector
    from taxi_fares_mlops.config import CHAMPION
    from taxi_fares_mlops.tracking import (DRIFT, OUTLIERS, Registry, companion_name, log_drift_model, log_model,
                                           setup_experiment)

    frame = _frame()
    fare = LinearRegression().fit(frame[list(MODEL_FEATURES)], 2.5 + 2.0 * frame["trip_distance"])
    profiled = frame.assign(prediction=fare.predict(frame[list(MODEL_FEATURES)]))
    reference = drift.profile(spark.createDataFrame(profiled))
    setup_experiment("provenance")
    with mlflow.start_run() as run:
        example = frame[list(MODEL_FEATURES)].head(5)
        version = log_model(fare, example, MODEL)
        outliers = log_model(fit_outlier_detector(frame, 1), example, companion_name(MODEL, OUTLIERS),
                             artifact=OUTLIERS)
        drift_version = log_drift_model(reference, profiled[[*drift.NUMERIC, *drift.CATEGORICAL]].head(5),
                                        companion_name(MODEL, DRIFT))
    registry = Registry(MODEL)
    registry.link(version, OUTLIERS, outliers)
    registry.link(version, DRIFT, drift_version)
    registry.set_aliases(CHAMPION, ModelRef(MODEL, version, run.info.run_id))
    return {MODEL: version, companion_name(MODEL, OUTLIERS): outliers, companion_name(MODEL, DRIFT): drift_version}


def _feature_tables(spark, lakehouse):
    from taxi_fares_mlops.storage import DROPOFF_FEATURES, PICKUP_FEATURES

    times = [dt.datetime(2016, 1, 17, h) for h in range(24)]
    rows = pd.DataFrame([(z, t, float(z + t.hour)) for z in (10001, 10002, 10003) for t in times],
                        columns=["zip", "ts", "value"])
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        lakehouse.write(spark.createDataFrame(rows), table)


@pytest.fixture(scope="module")
def provenance(spark, tmp_path_factory, empty_mlflow_db):
    """A registry with a champion and its companions, feature tables, and the bundle `mlops serving package --local`
    made from them; the module's tests share them (a test that alters a registered file puts it back)."""
    import mlflow

    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, Lakehouse

    root = tmp_path_factory.mktemp("provenance")
    home = root / "home"
    home.mkdir()
    shutil.copyfile(empty_mlflow_db, home / "mlflow.db")
    uri = f"sqlite:///{home}/mlflow.db"
    env = {MLOPS_HOME_ENV: str(home), "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        versions = _register(spark)
        lakehouse = Lakehouse(str(home))
        _feature_tables(spark, lakehouse)
        assert mlops_main(["serving", "package", "--local", "--out", str(root / "bundle")]) == 0
    return {"root": root, "home": home, "env": env, "uri": uri, "versions": versions, "bundle": root / "bundle",
            "lakehouse": lakehouse, "trusted": development_public_key(home)}


@pytest.fixture
def store(provenance, monkeypatch):
    """The module's registry, for this test (the environment is restored after each test)."""
    import mlflow

    for name, value in provenance["env"].items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(provenance["uri"])
    mlflow.set_registry_uri(provenance["uri"])
    return provenance


@pytest.fixture
def bundle(provenance, tmp_path):
    """A copy of the packaged bundle this test may alter."""
    return Path(shutil.copytree(provenance["bundle"], tmp_path / "bundle", symlinks=True))


def _stored_file(name: str, version: str, relative: str) -> Path:
    """The file ``relative`` of a registered version, where the artifact store keeps it (a local folder here)."""
    import mlflow

    source = MlflowClient().get_model_version(name, version).source
    location = mlflow.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location if source.startswith(
        "models:/") else source
    path = Path(location.removeprefix("file://")) / relative
    assert path.is_file(), path
    return path


class _Tampered:
    """A registered file altered in the artifact store for one test, then put back."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = path, data

    def __enter__(self):
        self.original = self.path.read_bytes()
        self.path.write_bytes(self.data)

    def __exit__(self, *exc):
        self.path.write_bytes(self.original)


def _canary_pickle(canary: Path) -> bytes:
    """A pickle that, if it is ever unpickled, writes ``canary`` (what an attacker's model would do instead)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (canary, "unpickled"))

    return pickle.dumps(Payload())


def _resign(bundle: Path, manifest: dict, key_path: Path) -> None:
    """Write ``manifest`` and sign it with the key at ``key_path`` (the trusted one: the control under test is
    then the only thing that can refuse it)."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (bundle / MANIFEST).write_bytes(data)
    (bundle / SIGNATURE).write_bytes(sign(data, load_private_key(key_path)))


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_bytes())


# --- the registry's digests --------------------------------------------------------------------------------------

def test_registration_records_the_sha256_of_every_model_file(store, tmp_path):
    for name, version in store["versions"].items():
        recorded = json.loads(MlflowClient().get_model_version(name, version).tags[ARTIFACT_DIGESTS_TAG])
        downloaded = artifact_digests(download_model(ModelRef(name, version, ""), tmp_path / name))
        assert recorded == downloaded and "MLmodel" in recorded, name
        assert any(f.endswith(".pkl") for f in recorded), recorded  # the pickles are what must not change


def test_a_model_file_tampered_after_registration_is_refused_by_the_packager(store, mlops, tmp_path):
    version = store["versions"][MODEL]
    out = tmp_path / "bundle"
    with _Tampered(_stored_file(MODEL, version, "model.pkl"), _canary_pickle(tmp_path / "canary")):
        code, _, err = mlops("serving", "package", "--local", "--out", str(out))
    assert code == 2
    assert err.strip().splitlines() == [
        f"mlops serving: model '{MODEL}' version {version} is not what was registered: model.pkl differs (SHA-256 "
        f"against the '{ARTIFACT_DIGESTS_TAG}' tag); refusing to load it"]
    assert not out.exists() and not (tmp_path / "canary").exists()


def _scoring_config(store, **changes):
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig

    values = {p.name: p.default for p in SCORING_PARAMETERS}
    values.update(start_date=START, end_date=END, lakehouse_root=str(store["home"]), mlflow_experiment="scoring",
                  execute_feature_engineering="false", **changes)
    return ScoringConfig.from_mapping(values)


def test_a_model_file_tampered_after_registration_is_refused_by_batch_scoring(spark, store, tmp_path):
    from taxi_fares_mlops.errors import StageError
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.storage import PREDICTIONS

    version = store["versions"][MODEL]
    with _Tampered(_stored_file(MODEL, version, "model.pkl"), _canary_pickle(tmp_path / "canary")):
        with pytest.raises(StageError) as refused:
            run_job(_scoring_config(store), spark)
    assert str(refused.value) == (
        f"stage 'batch_scoring' failed: ArtifactDigestError: model '{MODEL}' version {version} is not what was "
        f"registered: model.pkl differs (SHA-256 against the '{ARTIFACT_DIGESTS_TAG}' tag); refusing to load it")
    assert not store["lakehouse"].exists(spark, PREDICTIONS) and not (tmp_path / "canary").exists()


def test_a_drift_model_tampered_after_registration_is_refused_by_monitoring(spark, store, tmp_path):
    from taxi_fares_mlops.config import MONITORING_PARAMETERS, MonitoringConfig
    from taxi_fares_mlops.errors import StageError
    from taxi_fares_mlops.jobs import run_job

    name = f"{MODEL}_drift"
    version = store["versions"][name]
    values = {p.name: p.default for p in MONITORING_PARAMETERS}
    values.update(start_date=START, end_date=END, lakehouse_root=str(store["home"]), mlflow_experiment="monitoring")
    with _Tampered(_stored_file(name, version, "python_model.pkl"), _canary_pickle(tmp_path / "canary")):
        with pytest.raises(StageError) as refused:
            run_job(MonitoringConfig.from_mapping(values), spark)
    assert str(refused.value) == (
        f"stage 'monitoring' failed: ArtifactDigestError: model '{name}' version {version} is not what was "
        f"registered: python_model.pkl differs (SHA-256 against the '{ARTIFACT_DIGESTS_TAG}' tag); refusing to "
        f"load it")
    assert not (tmp_path / "canary").exists()


def test_a_file_added_to_a_registered_version_is_refused(store, tmp_path):
    from taxi_fares_mlops.tracking import Tracking

    name, version = f"{MODEL}_outliers", store["versions"][f"{MODEL}_outliers"]
    extra = _stored_file(name, version, "MLmodel").with_name("extra.pkl")
    extra.write_bytes(b"not registered")
    try:
        with pytest.raises(ArtifactDigestError, match=rf"version {version} is not what was registered: extra.pkl "
                                                      r"was added"):
            Tracking("", "").check_artifacts(ModelRef(name, version, ""))
    finally:
        extra.unlink()


def test_a_version_without_recorded_digests_is_refused_with_the_way_out(store):
    from taxi_fares_mlops.tracking import Tracking

    version = store["versions"][MODEL]
    client = MlflowClient()
    saved = client.get_model_version(MODEL, version).tags[ARTIFACT_DIGESTS_TAG]
    client.delete_model_version_tag(MODEL, version, ARTIFACT_DIGESTS_TAG)
    try:
        with pytest.raises(ArtifactDigestError) as refused:
            Tracking("", "").check_artifacts(ModelRef(MODEL, version, ""))
    finally:
        client.set_model_version_tag(MODEL, version, ARTIFACT_DIGESTS_TAG, saved)
    assert f"model '{MODEL}' version {version} has no recorded artifact digests" in str(refused.value)
    assert "retrain it" in str(refused.value) and "record_digests" in str(refused.value)


# --- signing: the development key, CD's key -----------------------------------------------------------------------

def test_local_packaging_signs_with_a_development_key_only_its_owner_reads(provenance):
    key = provenance["home"] / DEVELOPMENT_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    bundle = load_bundle(provenance["bundle"], provenance["trusted"])  # the service's loader accepts it
    assert bundle.model_version == provenance["versions"][MODEL]
    assert len(bundle.fare_model.predict(_frame(3)[list(bundle.fare_model.feature_names_in_)])) == 3
    assert (provenance["bundle"] / SIGNATURE).is_file()


def test_a_development_key_others_can_read_is_refused(tmp_path, mlops, monkeypatch):
    from taxi_fares_mlops.signing import KeyFileError, development_key

    key = development_key(tmp_path)
    key.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        development_key(tmp_path)


def test_packaging_for_a_target_without_a_signing_key_is_refused(mlops, monkeypatch):
    from taxi_fares_mlops.signing import SIGNING_KEY_ENV

    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.setenv("MLOPS_SPARK_REMOTE", "sc://127.0.0.1:1")
    # a target the targets file does not hold: without the key's check the command fails at once on that instead
    # (a real target would go on to wait for its Spark Connect server)
    code, _, err = mlops("serving", "package", "--target", "nowhere")
    assert code == 2
    assert err.strip().splitlines() == [
        "mlops serving: packaging from target 'nowhere' needs the bundle-signing key: pass --signing-key FILE or "
        f"set {SIGNING_KEY_ENV} (CD: the signing key's secure file)"]


def test_mlops_serve_local_trusts_the_development_key(provenance, monkeypatch):
    from orchestrator import service_commands as serving

    monkeypatch.setenv("MLOPS_HOME", str(provenance["home"]))
    monkeypatch.delenv("MLOPS_TRUSTED_KEY_FILE", raising=False)
    started = []
    monkeypatch.setattr(serving.os, "execv", lambda path, argv: started.append(argv))
    assert mlops_main(["serve", "--local", "--bundle", str(provenance["bundle"])]) is None
    command = started[0]
    assert command[command.index("--trusted-key") + 1] == str(provenance["trusted"])


# --- the service's loader refuses, by name, before it unpickles anything ------------------------------------------

def test_a_swapped_model_with_a_recomputed_manifest_is_refused(bundle, provenance, tmp_path):
    """The reported attack: a model file replaced and the manifest's checksum recomputed to match."""
    canary = tmp_path / "canary"
    swapped = _canary_pickle(canary)
    (bundle / FARE_PICKLE).write_bytes(swapped)
    manifest = _manifest(bundle)
    manifest["files"][FARE_PICKLE] = hashlib.sha256(swapped).hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleSignatureError, match="does not verify with the trusted key"):
        load_bundle(bundle, provenance["trusted"])
    assert not canary.exists()


def test_an_unsigned_bundle_is_refused(bundle, provenance):
    (bundle / SIGNATURE).unlink()
    with pytest.raises(UnsignedBundleError, match=f"is not signed: {SIGNATURE} is missing"):
        load_bundle(bundle, provenance["trusted"])


def test_a_bundle_signed_by_another_key_is_refused(bundle, provenance, tmp_path):
    from taxi_fares_mlops.signing import private_pem

    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    _resign(bundle, _manifest(bundle), stranger)
    with pytest.raises(BundleSignatureError, match="signed by another key"):
        load_bundle(bundle, provenance["trusted"])


def test_no_trusted_key_serves_nothing(bundle):
    with pytest.raises(BundleError, match="no trusted key"):
        load_bundle(bundle, None)


@pytest.mark.parametrize("change", ["altered", "missing"])
def test_a_file_that_differs_from_the_manifest_is_refused(bundle, provenance, change):
    target = bundle / "features/pickup.parquet"
    if change == "altered":
        target.write_bytes(target.read_bytes()[:-1] + b"\0")
        expected = "features/pickup.parquet does not match its SHA-256 in the manifest"
    else:
        target.unlink()
        expected = "features/pickup.parquet is listed in the manifest but missing"
    with pytest.raises(BundleFileError, match=expected):
        load_bundle(bundle, provenance["trusted"])


def test_a_file_the_manifest_does_not_list_is_refused(bundle, provenance):
    (bundle / "models/fare/sitecustomize.py").write_text("print('hello')\n")
    with pytest.raises(UnlistedFileError, match="models/fare/sitecustomize.py is not listed in the manifest"):
        load_bundle(bundle, provenance["trusted"])


@pytest.mark.parametrize("escape", ["dot-dot", "absolute", "symlink"])
def test_a_manifest_path_outside_the_bundle_is_refused(bundle, provenance, tmp_path, escape):
    outside = tmp_path / "outside.pkl"
    outside.write_bytes((bundle / FARE_PICKLE).read_bytes())  # same bytes: only the path can be refused
    manifest = _manifest(bundle)
    digest = manifest["files"][FARE_PICKLE]
    if escape == "dot-dot":
        manifest["files"]["../outside.pkl"] = digest
        expected = "'../outside.pkl': not a plain relative path inside the bundle"
    elif escape == "absolute":
        manifest["files"][str(outside)] = digest
        expected = f"'{outside}': not a plain relative path inside the bundle"
    else:
        (bundle / FARE_PICKLE).unlink()
        (bundle / FARE_PICKLE).symlink_to(outside)
        expected = f"'{FARE_PICKLE}', which resolves to {outside}, outside the bundle"
    _resign(bundle, manifest, provenance["home"] / DEVELOPMENT_KEY)
    with pytest.raises(BundlePathError) as refused:
        load_bundle(bundle, provenance["trusted"])
    assert expected in str(refused.value)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (b"{\"format\": 1, ", "is not valid JSON"),
    (b"[1, 2]", "is not a JSON object"),
    (b"{\"format\": 1, \"models\": {}, \"files\": {}}", "lists no files"),
    (b"{\"format\": 1, \"models\": {}, \"files\": {\"a\": \"not-a-digest\"}}", "the digest of a is not a SHA-256"),
    (b"{\"format\": 1, \"models\": [], \"files\": {\"a\": \"" + b"0" * 64 + b"\"}}", "'models' is not an object"),
], ids=["empty", "blank", "truncated", "array", "no-files", "bad-digest", "models-list"])
def test_an_empty_or_malformed_manifest_is_refused(bundle, provenance, content, expected):
    (bundle / MANIFEST).write_bytes(content)  # signed with the trusted key: only the manifest's checks refuse it
    (bundle / SIGNATURE).write_bytes(sign(content, load_private_key(provenance["home"] / DEVELOPMENT_KEY)))
    with pytest.raises(ManifestError, match=expected):
        verify(bundle, provenance["trusted"])


def test_the_service_refuses_a_bundle_by_name_with_exit_2_and_no_traceback(bundle, provenance):
    """The service's own command, in its own process: one line, exit 2, before its port opens."""
    (bundle / SIGNATURE).unlink()
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_TRUSTED_KEY_FILE"}
    for extra, message in ((["--trusted-key", str(provenance["trusted"])], "is not signed"), ([], "no trusted key")):
        done = subprocess.run([sys.executable, "-m", "taxi_fares_mlops.serving", "--bundle", str(bundle), *extra],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
        assert "Traceback" not in done.stderr
