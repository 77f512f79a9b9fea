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
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in objects.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        assert doc["metadata"]["namespace"] == f"taxi-fares-{overlay}"


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
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
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
    secret = next(e for e in container["env"] if e["name"] == "APPLICATIONINSIGHTS_CONNECTION_STRING")
    assert set(secret["valueFrom"]) == {"secretKeyRef"}


def test_the_container_runs_what_mlops_serve_runs_as_a_non_root_user():
    docker = dockerfile()
    command = json.loads(docker["CMD"][-1])
    local = serve_command(SERVING, None, "0.0.0.0", 8080)
    assert command[1:] == [*local[1:3], "--bundle", "/bundle", *local[5:]]
    assert command[0] == "python"
    user = docker["USER"][-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert docker["FROM"][-1].startswith("python:3.11") and "slim" in docker["FROM"][-1]
    assert any("-r /app/requirements.txt" in r for r in docker["RUN"])
    assert any(shlex.split(c)[0] == "service_deployment/requirements.txt" for c in docker["COPY"])
    assert any("--no-deps" in r for r in docker["RUN"])
