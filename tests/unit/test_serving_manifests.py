"""The serving container and its Kubernetes manifests, checked without a Docker engine or a cluster: both
overlays rendered by `kubectl kustomize` and validated against the Kubernetes schemas (strict: unknown fields are
errors), and what must agree between Dockerfile, manifests and the app (command, port, probe paths) compared."""
import json
import re
import shlex
import subprocess

import kubernetes_validate
import pytest
import yaml

from orchestrator.paths import REPO_ROOT
from orchestrator.service_commands import serve_command

SERVING = REPO_ROOT / "service_deployment"
KUBERNETES = "1.32.0"  # an AKS-supported minor; the schemas ship with kubernetes-validate
OVERLAYS = ("staging", "prod")


def render(overlay: str) -> dict:
    out = subprocess.run(["kubectl", "kustomize", str(SERVING / "k8s" / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out)}


def dockerfile() -> dict:
    """Instruction -> its last argument text (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (SERVING / "Dockerfile").read_text())
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            out.setdefault(instruction, []).append(rest.strip())
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_to_valid_kubernetes_objects(overlay):
    objects = render(overlay)
    assert set(objects) == {"Namespace", "NetworkPolicy", "ServiceAccount", "Deployment", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in objects.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == objects["Namespace"]["metadata"]["name"] == f"taxi-fares-{overlay}"


def test_the_validation_is_strict_enough_to_fail():
    deployment = render("staging")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_is_safe_and_matches_the_app_and_the_container(overlay):
    from taxi_fares_mlops.serving.app import Settings, create_app

    objects = render(overlay)
    deployment, service = objects["Deployment"], objects["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])

    docker = dockerfile()
    assert container["args"] == json.loads(docker["CMD"][-1])
    port = int(docker["EXPOSE"][-1])
    metrics_port = next(int(e["value"]) for e in container["env"] if e["name"] == "MLOPS_SERVING_METRICS_PORT")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port, "metrics": metrics_port}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb, hpa = objects["PodDisruptionBudget"], objects["HorizontalPodAutoscaler"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2

    routes = {route.path for route in create_app(Settings(bundle="unused")).routes}
    probes = {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]}
    assert probes == {"/health/ready", "/health/live"} and probes <= routes
    assert "/health/ready" in docker["HEALTHCHECK"][-1] and f":{port}/" in docker["HEALTHCHECK"][-1]


def test_the_container_runs_what_mlops_serve_runs_as_a_non_root_user():
    docker = dockerfile()
    command = json.loads(docker["CMD"][-1])
    local = serve_command(SERVING, None, "0.0.0.0", 8080)
    assert command[1:] == [*local[1:3], "--bundle", "/bundle", *local[5:]]
    assert command[0] == "python"
    user = docker["USER"][-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert docker["FROM"][-1].startswith("python:3.11") and "slim" in docker["FROM"][-1]
    assert any("--require-hashes -r /app/requirements.lock" in r for r in docker["RUN"])
    assert any(shlex.split(c)[0] == "service_deployment/requirements.lock" for c in docker["COPY"])
    assert any("--no-deps" in r for r in docker["RUN"])


# --- The controls of docs/security.md ("Kubernetes"): each asserted on both rendered overlays ---------------------
def _pod(overlay: str) -> tuple[dict, dict, dict]:
    objects = render(overlay)
    pod = objects["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return objects, pod, container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_enforces_pod_security_restricted_and_the_pod_meets_it(overlay):
    objects, pod, container = _pod(overlay)
    labels = objects["Namespace"]["metadata"]["labels"]
    assert {mode: labels.get(f"pod-security.kubernetes.io/{mode}") for mode in ("enforce", "audit", "warn")} == {
        "enforce": "restricted", "audit": "restricted", "warn": "restricted"}
    # what "restricted" asks of the pod (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
    context, own = pod["spec"]["securityContext"], container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert own["allowPrivilegeEscalation"] is False and own["capabilities"] == {"drop": ["ALL"]}
    assert own["readOnlyRootFilesystem"] is True and not own.get("privileged")
    assert not pod["spec"].get("hostNetwork") and not pod["spec"].get("hostPID")
    assert all("hostPath" not in v for v in pod["spec"]["volumes"])


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In") for e in selector.get("matchExpressions", []))


CALLER = {"taxi-fares/caller": "true"}
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}


def _admits(peers: list, namespace: dict, pod: dict) -> bool:
    """Whether a rule's peers admit a pod with these labels in a namespace with these labels (ipBlocks aside)."""
    return any(("namespaceSelector" in p or "podSelector" in p)
               and _matches(p.get("namespaceSelector", {}), namespace)
               and _matches(p.get("podSelector", {}), pod) for p in peers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_admits_only_callers_and_the_scraper_and_lets_out_only_dns_and_https(overlay):
    objects, pod, container = _pod(overlay)
    policy = objects["NetworkPolicy"]["spec"]
    assert _matches(policy["podSelector"], pod["metadata"]["labels"]) and policy["podSelector"]["matchLabels"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ingress = {(p["port"], p.get("protocol", "TCP")): rule["from"] for rule in policy["ingress"] for p in rule["ports"]}
    assert set(ingress) == {("http", "TCP"), ("metrics", "TCP")} and set(ports) == {"http", "metrics"}
    assert all(rule.get("from") and rule.get("ports") for rule in policy["ingress"])  # no open rule
    scraper = {"rsName": "ama-metrics"}
    app = {"app.kubernetes.io/name": "taxi-fares-serving", "app.kubernetes.io/part-of": "taxi-fares"}
    # the API port: a labelled caller pod anywhere, or any pod of a labelled namespace; nobody else
    assert _admits(ingress["http", "TCP"], {}, CALLER) and _admits(ingress["http", "TCP"], CALLER, {})
    assert not _admits(ingress["http", "TCP"], {}, {}) and not _admits(ingress["http", "TCP"], KUBE_SYSTEM, scraper)
    assert not _admits(ingress["http", "TCP"], {}, app)  # not even the service's own labels (kustomize adds those)
    # the metrics port: the scraper in kube-system only
    assert _admits(ingress["metrics", "TCP"], KUBE_SYSTEM, scraper)
    assert not _admits(ingress["metrics", "TCP"], {}, scraper) and not _admits(ingress["metrics", "TCP"], {}, CALLER)
    assert not any("ipBlock" in peer for peers in ingress.values() for peer in peers)
    egress = {(p["port"], p.get("protocol", "TCP")): rule["to"] for rule in policy["egress"] for p in rule["ports"]}
    assert set(egress) == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    assert all(rule.get("to") and rule.get("ports") for rule in policy["egress"])
    for dns in (egress[53, "UDP"], egress[53, "TCP"]):
        assert _admits(dns, KUBE_SYSTEM, {"k8s-app": "kube-dns"}) and not _admits(dns, {}, {"k8s-app": "kube-dns"})
        assert not any("ipBlock" in peer for peer in dns)
    # 443 to public addresses only (NetworkPolicy cannot name Azure Monitor's hosts): the private ranges, the
    # cluster's among them, and the metadata endpoint are excluded
    (https,) = egress[443, "TCP"]
    assert https["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(https["ipBlock"]["except"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_starts_before_liveness_counts_and_drains_before_it_stops(overlay):
    from taxi_fares_mlops.serving.app import Settings, create_app
    from taxi_fares_mlops.serving.limits import BODY_TIMEOUT_SECONDS

    _, pod, container = _pod(overlay)
    routes = {route.path for route in create_app(Settings(bundle="unused")).routes}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in routes and startup["httpGet"]["port"] == "http"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30  # a slow bundle check is not a restart
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe holds it back instead
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 3 <= pause <= 15  # endpoints drop the pod before SIGTERM reaches uvicorn
    # then uvicorn finishes the requests in flight, whose bodies may take up to their read timeout
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pause + BODY_TIMEOUT_SECONDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_reach_the_container_as_read_only_files_never_as_environment_variables(overlay):
    _, pod, container = _pod(overlay)
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in container["env"])
    assert not any("secretRef" in e for e in container.get("envFrom", []))
    assert not any(e["name"] == "APPLICATIONINSIGHTS_CONNECTION_STRING" for e in container["env"])
    secrets = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert secrets and set(secrets) <= set(mounts)
    for name, secret in secrets.items():
        assert mounts[name]["readOnly"] is True and secret["defaultMode"] & 0o007 == 0  # not world-readable
    path = next(e["value"] for e in container["env"] if e["name"] == "MLOPS_SERVING_CONNECTION_STRING_FILE")
    (telemetry,) = [n for n in secrets if path.startswith(mounts[n]["mountPath"].rstrip("/") + "/")]
    items = {i["path"]: i["key"] for i in secrets[telemetry]["items"]}
    assert items[path.rsplit("/", 1)[1]] == "applicationinsights-connection-string"


def test_the_service_reads_the_connection_string_from_the_mounted_file_and_refuses_a_missing_one(tmp_path, capsys):
    from taxi_fares_mlops.serving.__main__ import main, parse, read_connection_string

    mounted = tmp_path / "connection-string"
    mounted.write_text("InstrumentationKey=test;IngestionEndpoint=https://example.invalid/\n")
    assert read_connection_string(str(mounted)) == "InstrumentationKey=test;IngestionEndpoint=https://example.invalid/"
    assert parse(["--bundle", "b", "--connection-string-file", str(mounted)]).connection_string_file == str(mounted)
    assert main(["--bundle", str(tmp_path), "--connection-string-file", str(tmp_path / "absent")]) == 2
    assert "--connection-string-file" in capsys.readouterr().err


def test_the_bundle_in_the_image_belongs_to_root_and_cannot_be_written_by_the_service():
    docker = dockerfile()
    text = (SERVING / "Dockerfile").read_text()
    (bundle_copy,) = [c for c in docker["COPY"] if shlex.split(c)[-1] == "/bundle"]
    assert "--chown=root:root" in shlex.split(bundle_copy)
    lines = [line.strip() for line in re.sub(r"\\\n\s*", " ", text).splitlines()]
    copy_at = next(i for i, line in enumerate(lines) if line.startswith("COPY") and line.endswith("/bundle"))
    user_at = next(i for i, line in enumerate(lines) if line.startswith("USER"))
    chmod = " ".join(line for line in lines[copy_at:user_at] if line.startswith("RUN"))
    assert "find /bundle -type d -exec chmod 0555" in chmod and "find /bundle -type f -exec chmod 0444" in chmod
    assert copy_at < user_at and docker["USER"][-1].split(":")[0] not in ("0", "root")


def test_the_image_says_which_model_version_and_bundle_it_holds():
    docker = dockerfile()
    args = {a.split("=")[0] for a in docker["ARG"]}
    assert {"MODEL_VERSION", "BUNDLE_DIGEST"} <= args
    labels = " ".join(docker["LABEL"])
    assert 'io.taxi-fares.model-version="${MODEL_VERSION}"' in labels
    assert 'io.taxi-fares.bundle-digest="${BUNDLE_DIGEST}"' in labels


def _pins(path) -> dict:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return {line.split("==")[0].lower(): line.split("==")[1].split()[0] for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def test_the_image_installs_exactly_the_tested_pins_each_with_its_hashes():
    """The lock the Dockerfile installs holds every package of requirements.txt at the same version, each line
    pinned and hashed (pip's --require-hashes refuses anything else)."""
    lock = SERVING / "requirements.lock"
    text = re.sub(r"\\\n\s*", " ", lock.read_text())
    for line in (ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")):
        assert re.match(r"^[A-Za-z0-9_.\-\[\],]+==[^\s]+ ", line) and "--hash=sha256:" in line, line
    wanted, locked = _pins(SERVING / "requirements.txt"), _pins(lock)
    assert {name: locked.get(name) for name in wanted} == wanted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_run_as_the_workload_identity_the_feature_refresh_uses(overlay):
    """delta-rs refreshes the features as the pod's Azure workload identity (MLOPS_SERVING_FEATURE_IDENTITY): the
    webhook gives a pod that identity's token only if the pod asks (the label) and runs as a service account that
    names the identity."""
    objects, pod, container = _pod(overlay)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLOPS_SERVING_FEATURE_IDENTITY"] == "workload-identity"
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = objects["ServiceAccount"]
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == objects["Deployment"]["metadata"]["namespace"]
    assert re.fullmatch(r"[0-9a-f-]{36}", account["metadata"]["annotations"]["azure.workload.identity/client-id"])
    assert account["automountServiceAccountToken"] is False
