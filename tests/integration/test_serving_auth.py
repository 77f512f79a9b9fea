"""Who the online service lets in, with real credentials: RSA keys made here, a real JWKS endpoint on 127.0.0.1
(the tenant's key set), tokens signed by its key and by a stranger's, API keys from a real key file; and the
service's refusal to start unauthenticated on an address others can reach, as the real process.

One test per refusal. Most go through the app in process (ASGI, no server: the same route dependency, faster);
those about the process (the fail-closed start, telemetry) run `python -m taxi_fares_mlops.serving` itself."""
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fakes.serving import (BLOCK_SPARK_AND_MLFLOW, build_bundle, call_asgi, free_port, http, loaded_app,
                           sample_trips, start_service, stop)
from taxi_fares_mlops.serving.app import Settings
from taxi_fares_mlops.serving.auth import API_KEY, ENTRA, AuthSettings

TENANT = "11111111-2222-3333-4444-555555555555"
AUDIENCE = "api://taxi-fares-serving"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
APP_ID = "aaaaaaaa-0000-0000-0000-000000000001"
OID = "bbbbbbbb-0000-0000-0000-000000000002"
ROLE = "Fares.Predict"
KEYS = ["key-one-0123456789abcdef", "key-two-fedcba9876543210"]


class KeySet:
    """The tenant's JSON Web Key Set, served over real HTTP; counts fetches, and publishes keys on request."""

    def __init__(self):
        self.keys: list[dict] = []
        self.fetches = 0
        keyset = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                keyset.fetches += 1
                body = json.dumps({"keys": keyset.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/discovery/v2.0/keys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, private_key, kid: str) -> None:
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


TENANT_KEY, STRANGER_KEY, ROTATED_KEY = rsa_key(), rsa_key(), rsa_key()


def token(key=TENANT_KEY, kid="tenant-1", algorithm="RS256", **changes) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now - 10, "nbf": now - 10, "exp": now + 3600, "azp": APP_ID,
              "oid": OID, "roles": [ROLE], "ver": "2.0"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def unsigned(**changes) -> str:
    """A token with ``alg: none``: header and claims, and an empty signature."""
    import base64

    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600, "oid": OID, "roles": [ROLE], **changes}
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'tenant-1'})}.{part(claims)}."


@pytest.fixture(scope="module")
def keyset():
    keys = KeySet()
    keys.publish(TENANT_KEY, "tenant-1")
    yield keys
    keys.server.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("auth"))


def entra_app(bundle, keyset, **auth):
    settings = dict(mode=ENTRA, tenant=TENANT, audiences=(AUDIENCE,), issuers=(ISSUER,), jwks_url=keyset.url,
                    required_role=ROLE)
    settings.update(auth)
    return loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), auth=AuthSettings(**settings)))


@pytest.fixture(scope="module")
def entra(bundle, keyset):
    return entra_app(bundle, keyset)


def predict(app, authorization=None, trips=1):
    headers = {} if authorization is None else {"Authorization": authorization}
    return call_asgi(app, "POST", "/v1/predict", {"trips": sample_trips(trips)}, headers)


def assert_refused(answer, description):
    status, body, headers = answer
    assert status == 401, body
    assert headers["www-authenticate"].startswith('Bearer realm="taxi_fares"')
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert f'error_description="{description}"' in headers["www-authenticate"]
    assert "predictions" not in body


def test_a_valid_token_of_the_tenant_is_served(entra):
    status, body, _ = predict(entra, f"Bearer {token()}")
    assert status == 200 and len(body["predictions"]) == 1
    assert call_asgi(entra, "GET", "/v1/metadata", headers={"Authorization": f"Bearer {token()}"})[0] == 200


def test_a_v1_token_is_served_when_its_issuer_is_trusted(bundle, keyset):
    both = entra_app(bundle, keyset, issuers=())  # the default: the tenant's v1 and v2 issuers
    v1 = token(iss=f"https://sts.windows.net/{TENANT}/", azp=None, appid=APP_ID, ver="1.0")
    assert predict(both, f"Bearer {v1}")[0] == 200
    assert predict(both, f"Bearer {token()}")[0] == 200


def test_an_expired_token_is_refused(entra):
    past = int(time.time()) - 3600
    assert_refused(predict(entra, f"Bearer {token(iat=past - 3600, nbf=past - 3600, exp=past)}"),
                   "the token has expired")


def test_expiry_has_a_leeway_of_a_minute_and_no_more(entra):
    now = int(time.time())
    assert predict(entra, f"Bearer {token(exp=now - 30)}")[0] == 200
    assert predict(entra, f"Bearer {token(exp=now - 90)}")[0] == 401


def test_a_token_not_yet_valid_is_refused(entra):
    future = int(time.time()) + 600
    assert_refused(predict(entra, f"Bearer {token(nbf=future)}"), "the token is not valid yet")  # issued now


def test_a_token_for_another_audience_is_refused(entra):
    assert_refused(predict(entra, f"Bearer {token(aud='api://another-service')}"), "the token is not for this service")


def test_a_token_of_another_issuer_is_refused(entra):
    other = "https://login.microsoftonline.com/99999999-0000-0000-0000-000000000000/v2.0"
    assert_refused(predict(entra, f"Bearer {token(iss=other)}"), "the token's issuer is not trusted")


def test_a_token_signed_by_a_strangers_key_is_refused(entra):
    # under the tenant key's own kid: the signature does not verify
    assert_refused(predict(entra, f"Bearer {token(key=STRANGER_KEY)}"), "the token's signature does not verify")
    # under a kid the tenant never published: no key to verify with
    assert_refused(predict(entra, f"Bearer {token(key=STRANGER_KEY, kid='stranger')}"),
                   "the token is not signed by a key of the tenant")


def test_an_unsigned_token_alg_none_is_refused(entra):
    assert_refused(predict(entra, f"Bearer {unsigned()}"), "the token is not signed with RS256")


def test_a_token_signed_hs256_with_the_public_key_is_refused(entra):
    """The algorithm-confusion forgery: HS256 with the tenant's public key (which anyone can fetch) as secret."""
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    public = TENANT_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600, "oid": OID, "roles": [ROLE]}
    signing_input = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'tenant-1'}).encode())}." \
                    f"{part(json.dumps(claims).encode())}"
    forged = f"{signing_input}.{part(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"
    assert_refused(predict(entra, f"Bearer {forged}"), "the token is not signed with RS256")


def test_a_missing_authorization_header_is_refused_with_a_bare_challenge(entra):
    status, body, headers = predict(entra, None)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="taxi_fares"'
    assert call_asgi(entra, "GET", "/v1/metadata")[0] == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "garbage", "Bearer a b",
                                    "Bearer not.a.token", "Bearer \u00ff\u00fe"])
def test_a_malformed_authorization_header_is_refused(entra, header):
    status, body, headers = predict(entra, header)
    assert status == 401, body
    assert headers["www-authenticate"].startswith('Bearer realm="taxi_fares", error="invalid_')
    assert "predictions" not in body


def test_a_token_without_the_required_role_is_forbidden(entra):
    status, body, headers = predict(entra, f"Bearer {token(roles=['Fares.Read'])}")
    assert status == 403 and body["detail"] == f"forbidden: the caller lacks the app role '{ROLE}'"
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert predict(entra, f"Bearer {token(roles=None)}")[0] == 403


def test_a_rotated_key_is_fetched_once_it_signs_and_made_up_kids_do_not_flood_the_key_set(bundle, keyset):
    rotating = entra_app(bundle, keyset, jwks_cooldown_seconds=0)
    assert predict(rotating, f"Bearer {token()}")[0] == 200
    new = token(key=ROTATED_KEY, kid="tenant-2")
    assert predict(rotating, f"Bearer {new}")[0] == 401  # not published yet
    keyset.publish(ROTATED_KEY, "tenant-2")
    assert predict(rotating, f"Bearer {new}")[0] == 200  # the unknown kid made it fetch the key set again

    guarded = entra_app(bundle, keyset)  # the default cooldown: one forced fetch per 30 s at most
    assert predict(guarded, f"Bearer {token()}")[0] == 200
    before = keyset.fetches
    for i in range(20):
        assert predict(guarded, f"Bearer {token(key=STRANGER_KEY, kid=f'made-up-{i}')}")[0] == 401
    assert keyset.fetches - before <= 1


def api_key_app(bundle, tmp_path, keys):
    path = tmp_path / "api-keys"
    path.write_text("# rotated monthly\n" + "\n".join(keys) + "\n\n")
    return loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]),
                               auth=AuthSettings(mode=API_KEY, api_keys_file=str(path))))


def test_an_api_key_of_the_file_is_served_and_any_other_refused(bundle, tmp_path):
    app = api_key_app(bundle, tmp_path, KEYS[:1])
    assert predict(app, f"Bearer {KEYS[0]}")[0] == 200
    assert_refused(predict(app, f"Bearer {KEYS[0][:-1]}X"), "the API key is not valid")
    assert_refused(predict(app, f"Bearer {KEYS[1]}"), "the API key is not valid")
    assert predict(app, None)[0] == 401


def test_two_keys_at_once_let_callers_move_to_a_new_key(bundle, tmp_path):
    app = api_key_app(bundle, tmp_path, KEYS)
    assert predict(app, f"Bearer {KEYS[0]}")[0] == 200
    assert predict(app, f"Bearer {KEYS[1]}")[0] == 200
    retired = api_key_app(bundle, tmp_path, KEYS[1:])
    assert predict(retired, f"Bearer {KEYS[0]}")[0] == 401
    assert predict(retired, f"Bearer {KEYS[1]}")[0] == 200


def test_a_key_file_without_a_usable_key_is_refused(bundle, tmp_path):
    with pytest.raises(ValueError, match="holds no key"):
        api_key_app(bundle, tmp_path, ["# nothing here"])
    with pytest.raises(ValueError, match="shorter than 16 characters"):
        api_key_app(bundle, tmp_path, ["short"])


def test_the_probes_stay_open_and_the_docs_are_off(entra, bundle, keyset):
    assert call_asgi(entra, "GET", "/health/live")[:2] == (200, {"status": "live"})
    assert call_asgi(entra, "GET", "/health/ready")[0] == 200
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        assert call_asgi(entra, "GET", path)[0] == 404, path
    with_docs = loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), docs=True))
    assert call_asgi(with_docs, "GET", "/openapi.json")[0] == 200


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_service_refuses_to_start_unauthenticated_on_a_reachable_address(bundle):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BLOCK_SPARK_AND_MLFLOW, "--bundle", str(bundle[0]),
                                "--trusted-key", str(bundle[1]), "--host", "0.0.0.0", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened = False
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:  # watch the port while the process lives
        opened = opened or _port_open(port)
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert not opened and not _port_open(port)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: refusing to serve on 0.0.0.0 without authentication: pass --auth entra")
    assert "--auth api-key --api-keys-file FILE" in line and "Traceback" not in err


def test_allow_unauthenticated_lets_it_start_and_loopback_needs_no_flag(bundle):
    process, url = start_service(*bundle, "--allow-unauthenticated", host="0.0.0.0")
    try:
        assert http(url + "/v1/predict", {"trips": sample_trips(1)})[0] == 200
    finally:
        stop(process)
    process, url = start_service(*bundle, ready_path="/health/live")  # 127.0.0.1
    try:
        assert http(url + "/health/live")[0] == 200
    finally:
        stop(process)


def test_the_predict_span_names_the_caller_and_never_holds_the_token(bundle, keyset, tmp_path):
    telemetry = tmp_path / "telemetry.jsonl"
    metrics_port = free_port()
    process, url = start_service(*bundle, "--auth", "entra", "--entra-tenant", TENANT, "--entra-audience", AUDIENCE,
                                 "--entra-issuer", ISSUER, "--jwks-url", keyset.url, "--required-role", ROLE,
                                 "--telemetry-file", str(telemetry), "--metrics-port", str(metrics_port))
    try:
        secret = token()
        status, body, _ = http(url + "/v1/predict", {"trips": sample_trips(2)}, {"Authorization": f"Bearer {secret}"})
        assert status == 200
        assert http(url + "/v1/predict", {"trips": sample_trips(1)})[0] == 401
        assert http(url + "/metrics")[0] == 404  # not on the callers' port: on its own
        assert "taxi_fares_requests_total" in http(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        deadline = time.monotonic() + 15
        mine = []
        while time.monotonic() < deadline and not mine:
            rows = [json.loads(line) for line in telemetry.read_text().splitlines()] if telemetry.exists() else []
            mine = [r for r in rows if r["type"] == "span" and r["attributes"].get("request_id") == body["request_id"]]
            time.sleep(0.3)
    finally:
        stop(process)
    (span,) = mine
    assert span["attributes"]["caller.app_id"] == APP_ID and span["attributes"]["caller.oid"] == OID
    assert span["attributes"]["caller.kind"] == "entra"
    everything = telemetry.read_text()
    assert secret not in everything and secret.split(".")[2] not in everything


def test_an_api_key_caller_is_recorded_by_fingerprint_never_by_key(bundle, tmp_path):
    import hashlib

    from taxi_fares_mlops.serving.auth import ApiKeys

    caller = ApiKeys(KEYS).match(KEYS[1])
    assert caller.key_index == 1 and caller.key_fingerprint == hashlib.sha256(KEYS[1].encode()).hexdigest()[:12]
    assert KEYS[1] not in json.dumps(caller.attributes())


def test_settings_that_cannot_authenticate_are_refused_before_the_port_opens(bundle, tmp_path):
    cases = [(["--auth", "entra"], "--auth entra needs --entra-audience"),
             (["--auth", "entra", "--entra-tenant", TENANT, "--entra-audience", AUDIENCE],
              "--auth entra needs --required-role"),
             (["--auth", "entra", "--entra-tenant", TENANT, "--entra-audience", AUDIENCE, "--required-role", " "],
              "--auth entra needs --required-role"),
             (["--auth", "api-key"], "--auth api-key needs --api-keys-file"),
             (["--auth", "api-key", "--api-keys-file", str(tmp_path / "absent")], "cannot be read")]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-c", BLOCK_SPARK_AND_MLFLOW, "--bundle", str(bundle[0]),
                               "--trusted-key", str(bundle[1]), "--host", "0.0.0.0", "--port", str(free_port()),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_mlops_serve_local_says_first_that_it_is_unauthenticated(bundle, tmp_path):
    import os

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYSPARK_"))}
    env["MLOPS_HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--local", "--bundle", str(bundle[0]),
               "--trusted-key", str(bundle[1]), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
    finally:
        stop(process)
    assert first.startswith("[mlops] UNAUTHENTICATED: no credentials are asked for"), first
    refused = subprocess.run([*command[:-2], "--port", str(port), "--host", "0.0.0.0"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "is not a loopback address" in refused.stderr


@pytest.mark.parametrize("value", ["off", "n", "disabled", "maybe"])
def test_a_switch_that_is_not_a_plain_yes_or_no_stops_the_service(monkeypatch, value):
    """MLOPS_SERVING_ALLOW_UNAUTHENTICATED=off must not open the service: only true/yes/1 and false/no/0 are read,
    anything else stops it before it starts."""
    from taxi_fares_mlops.serving.__main__ import build_parser

    monkeypatch.setenv("MLOPS_SERVING_ALLOW_UNAUTHENTICATED", value)
    with pytest.raises(SystemExit, match=f"MLOPS_SERVING_ALLOW_UNAUTHENTICATED='{value}' is neither"):
        build_parser()
    monkeypatch.setenv("MLOPS_SERVING_ALLOW_UNAUTHENTICATED", "no")
    assert build_parser().parse_args(["--bundle", "b"]).allow_unauthenticated is False
    monkeypatch.setenv("MLOPS_SERVING_ALLOW_UNAUTHENTICATED", "true")
    assert build_parser().parse_args(["--bundle", "b"]).allow_unauthenticated is True
