"""`mlops serving smoke` and `loadtest` against a service that authenticates, as CD meets it on AKS: the real
service process on a small signed bundle (tests/fakes/serving.py) with API keys from a key file, the real `mlops`
command, and a real local MLflow registry whose champion is the bundle's version. Without a credential the smoke test
fails on the service's 401 and says how to pass one; with the key file it passes; the credential never appears on
the command line."""
import os
import subprocess
import sys

import pytest

from fakes.serving import build_bundle, start_service, stop

KEYS = ["smoke-key-0123456789abcdef", "other-key-fedcba9876543210"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    bundle, trusted = build_bundle(root)
    keys = root / "api-keys"
    keys.write_text("# rotated monthly\n" + "\n".join(KEYS) + "\n")
    home = root / "mlops-home"
    home.mkdir()
    uri = f"sqlite:///{home}/mlflow.db"
    # The registry the smoke test compares with: taxi_fares version 1 is champion, as the bundle's manifest says.
    # In a process of its own, without the MLflow variables the pytest worker may carry (another module's registry).
    made = subprocess.run([sys.executable, "-c", (
        "import mlflow, sys; from mlflow import MlflowClient; mlflow.set_tracking_uri(sys.argv[1]); "
        "mlflow.set_registry_uri(sys.argv[1]); c = MlflowClient(); c.create_registered_model('taxi_fares'); "
        "v = c.create_model_version('taxi_fares', source=sys.argv[2]); "
        "c.set_registered_model_alias('taxi_fares', 'champion', v.version)"), uri, str(bundle)],
        capture_output=True, text=True, timeout=300, env=_without_mlflow_variables())
    assert made.returncode == 0, f"registering the bundle's version failed:\n{made.stderr[-3000:]}"
    process, url = start_service(bundle, trusted, "--auth", "api-key", "--api-keys-file", str(keys))
    try:
        yield {"url": url, "keys": keys, "home": str(home), "uri": uri, "root": root}
    finally:
        stop(process)


def _without_mlflow_variables():
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}


def mlops(service, *args):
    env = _without_mlflow_variables()
    env.update(MLOPS_HOME=service["home"], MLFLOW_TRACKING_URI=service["uri"])
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "serving", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_smoke_without_credentials_fails_on_the_services_401(service):
    smoke = mlops(service, "smoke", "--url", service["url"], "--local", "--wait", "10")
    assert smoke.returncode == 1, smoke.stderr
    assert "/v1/predict answers 401" in smoke.stderr and "--api-key-file" in smoke.stderr
    assert "Traceback" not in smoke.stderr


def test_smoke_with_the_api_key_file_passes(service):
    smoke = mlops(service, "smoke", "--url", service["url"], "--local", "--api-key-file", str(service["keys"]))
    assert smoke.returncode == 0, smoke.stderr
    assert "smoke test passed: ready, one prediction" in smoke.stderr and "version 1 = champion" in smoke.stderr
    assert not any(key in smoke.stdout + smoke.stderr for key in KEYS)


def test_smoke_with_a_token_file_sends_it_as_a_bearer_credential(service):
    token = service["root"] / "token"
    token.write_text(KEYS[1] + "\n")  # an API-key service takes any of its keys as `Bearer <key>`, as Entra tokens
    passed = mlops(service, "smoke", "--url", service["url"], "--local", "--bearer-token-file", str(token))
    assert passed.returncode == 0, passed.stderr
    token.write_text("not-one-of-the-service-keys-0000")
    refused = mlops(service, "smoke", "--url", service["url"], "--local", "--bearer-token-file", str(token))
    assert refused.returncode == 1 and "answers 401 (the credential sent was refused)" in refused.stderr
    token.write_text("\n")
    empty = mlops(service, "smoke", "--url", service["url"], "--local", "--bearer-token-file", str(token))
    assert empty.returncode == 2 and "is empty" in empty.stderr


def test_loadtest_authenticates_with_the_same_option(service):
    bare = mlops(service, "loadtest", "--url", service["url"], "--requests", "4", "--concurrency", "2", "--json")
    assert bare.returncode == 1
    keyed = mlops(service, "loadtest", "--url", service["url"], "--requests", "4", "--concurrency", "2", "--json",
                  "--api-key-file", str(service["keys"]))
    assert keyed.returncode == 0, keyed.stderr


def test_smoke_compares_with_the_release_records_version_without_a_registry(service):
    """Production's smoke test: the image was packaged from staging's registry, so the version to expect is the one
    CD's release record names."""
    keys = ("--api-key-file", str(service["keys"]))
    assert mlops(service, "smoke", "--url", service["url"], "--expect-version", "1", *keys).returncode == 0
    wrong = mlops(service, "smoke", "--url", service["url"], "--expect-version", "2", *keys)
    assert wrong.returncode == 1 and "answers with taxi_fares version 1; expected is version 2" in wrong.stderr
