"""The Azure DevOps pipelines: templates exist and get the parameters they declare, every make/mlops command
they call exists, no secret is inlined, and every pipeline validates against Microsoft's published schema."""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import build_parser
from orchestrator.paths import REPO_ROOT

PIPELINES_DIR = REPO_ROOT / ".azure-pipelines"
PIPELINES = sorted(PIPELINES_DIR.glob("*.yml"))
TEMPLATES = sorted((PIPELINES_DIR / "templates").glob("*.yml"))
SCHEMA_ENV = "AZURE_PIPELINES_SCHEMA"
# Task versions newer than the published schema's detailed entries (its own task-name list does know them).
SCHEMA_LAGS = {"PublishCodeCoverageResults@2": ["summaryFileLocation"]}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def walk(node):
    """Every mapping in a YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def template_references(path: Path):
    for node in walk(load(path)):
        if "template" in node:
            yield (path.parent / node["template"]).resolve(), node.get("parameters", {}) or {}


def test_there_are_ci_and_cd_pipelines():
    assert [p.name for p in PIPELINES] == ["cd.yml", "ci.yml"]
    assert TEMPLATES, "steps are shared through templates"


@pytest.mark.parametrize("path", PIPELINES + TEMPLATES, ids=lambda p: p.name)
def test_templates_exist_and_get_the_parameters_they_declare(path):
    for template, passed in template_references(path):
        assert template.exists(), f"{path.name} references missing {template}"
        declared = {p["name"]: p for p in load(template).get("parameters", [])}
        unknown = set(passed) - set(declared)
        assert not unknown, f"{path.name} passes {unknown} that {template.name} does not declare"
        required = {name for name, p in declared.items() if "default" not in p}
        assert required <= set(passed), f"{path.name} omits required {required - set(passed)} of {template.name}"


def _scripts(path: Path):
    for node in walk(load(path)):
        for key in ("script", "bash", "inlineScript"):
            if isinstance(node.get(key), str):
                yield node[key]


def _make_targets():
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))


def _mlops_commands():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


@pytest.mark.parametrize("path", PIPELINES + TEMPLATES, ids=lambda p: p.name)
def test_every_make_and_mlops_command_exists(path):
    targets, commands = _make_targets(), _mlops_commands()
    for script in _scripts(path):
        for target in re.findall(r"\bmake\s+([A-Za-z][\w-]*)", script):
            assert target in targets, f"{path.name}: make {target} is not a Makefile target"
        for command in re.findall(r"\bmlops\s+([a-z][\w-]*)", script):
            assert command in commands, f"{path.name}: mlops {command} is not a command"


SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|KEY|CONNECTION_STRING)", re.I)
SECRET_VALUE = re.compile(r"dapi[0-9a-f]{16,}|AccountKey=|InstrumentationKey=[0-9a-f-]{36}|-----BEGIN", re.I)


@pytest.mark.parametrize("path", PIPELINES + TEMPLATES, ids=lambda p: p.name)
def test_no_secret_is_inlined(path):
    text = path.read_text()
    assert not SECRET_VALUE.search(text)
    for node in walk(load(path)):
        for name, value in (node.get("env") or {}).items():
            if SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\([A-Za-z_][\w.]*\)", str(value)), f"{path.name}: {name} must map a variable"
        for name in (node.get("variables") or {}) if isinstance(node.get("variables"), dict) else []:
            assert not SECRET_NAME.search(name), f"{path.name}: {name} belongs in a variable group"


def test_secrets_reach_scripts_only_through_env():
    for path in PIPELINES + TEMPLATES:
        for script in _scripts(path):
            assert not re.search(r"\$\((\w*(SECRET|TOKEN)\w*)\)", script), f"{path.name}: secret expanded in a script"


def test_production_is_a_deployment_job_on_the_prod_environment():
    cd = load(PIPELINES_DIR / "cd.yml")
    prod = next(s for s in cd["stages"] if s["stage"] == "production")
    deployment = prod["jobs"][0]
    assert deployment["deployment"] and deployment["environment"] == "prod"
    steps = deployment["strategy"]["runOnce"]["deploy"]["steps"]
    assert steps[0]["template"] == "templates/deploy.yml"
    assert steps[0]["parameters"] == {"target": "prod", "unpauseSchedules": True}


def test_staging_runs_training_then_scoring_then_monitoring_after_the_notebook_tests():
    cd = load(PIPELINES_DIR / "cd.yml")
    staging = next(s for s in cd["stages"] if s["stage"] == "staging")
    verify = next(j for j in staging["jobs"] if j.get("job") == "verify_staging")
    runs = [(s["parameters"]["job"], s["parameters"]["jobParameters"]) for s in verify["steps"]
            if s.get("template") == "templates/run-job.yml"]
    assert [job for job, _ in runs] == ["training", "batch_scoring", "monitoring"]
    assert "--param retrain_on_drift=false" in runs[2][1]  # CD checks the job; it does not retrain staging
    scored, monitored = ([p for p in params if "_date=" in p] for _, params in runs[1:])
    assert scored == monitored  # monitoring judges exactly the range just scored


# --- Microsoft's published JSON Schema ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def validator():
    location = os.environ.get(SCHEMA_ENV)
    if not location:
        pytest.skip(f"{SCHEMA_ENV} is not set: schema validation skipped (.ci/run sets it)")
    import jsonschema

    schema = json.loads(Path(location).read_text())
    return jsonschema.Draft7Validator(schema), schema


def _known_task_names(schema) -> set[str]:
    return set(re.findall(r'"([A-Za-z][\w-]*@\d+)"', json.dumps(schema)))


def _replace_lagging_tasks(document, schema):
    """Steps using a task version the schema lists by name but not yet in detail are checked here (name known,
    required inputs present) and replaced by a plain script step for the schema validation."""
    known = _known_task_names(schema)
    for node in walk(document):
        for key in ("steps",):
            steps = node.get(key)
            if not isinstance(steps, list):
                continue
            for i, step in enumerate(steps):
                if isinstance(step, dict) and step.get("task") in SCHEMA_LAGS:
                    assert step["task"] in known, f"{step['task']} is unknown to the schema"
                    missing = [k for k in SCHEMA_LAGS[step["task"]] if k not in step.get("inputs", {})]
                    assert not missing, f"{step['task']} lacks inputs {missing}"
                    steps[i] = {"script": "echo checked separately", "displayName": step.get("displayName", "")}
    return document


def _errors(validator, document):
    from jsonschema.exceptions import best_match

    errors = list(validator.iter_errors(document))
    return [f"{list(best_match([e]).absolute_path)}: {best_match([e]).message[:300]}" for e in errors]


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipelines_validate_against_the_published_schema(validator, path):
    v, schema = validator
    assert _errors(v, _replace_lagging_tasks(load(path), schema)) == []


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_validate_when_wrapped_as_their_callers_use_them(validator, path):
    """A steps template is used as the steps of a job: validate it as such a pipeline."""
    v, schema = validator
    content = load(path)
    assert set(content) <= {"parameters", "steps"}, "templates here are steps templates"
    steps = [s for s in content["steps"] if not any(k.startswith("${{") for k in s)]
    conditional = [s for s in content["steps"] if any(k.startswith("${{") for k in s)]
    for block in conditional:  # ${{ if ... }}: keep the steps inside
        for value in block.values():
            steps.extend(value)
    pipeline = {"parameters": content.get("parameters", []), "steps": steps}
    assert _errors(v, _replace_lagging_tasks(pipeline, schema)) == []


def _jobs():
    cd = load(PIPELINES_DIR / "cd.yml")
    stages = {s["stage"]: s for s in cd["stages"]}
    serve_staging = next(j for j in stages["staging"]["jobs"] if j.get("job") == "serve_staging")
    serve_prod = next(j for j in stages["production"]["jobs"] if j.get("deployment") == "serve_prod")
    return serve_staging, serve_prod


def _steps(name: str) -> list:
    return load(PIPELINES_DIR / "templates" / name)["steps"]


def _text(step: dict) -> str:
    return step.get("script") or step.get("inputs", {}).get("inlineScript", "")


RELEASE = "serving-release"


def test_cd_builds_the_image_once_on_staging_and_ships_it_behind_the_prod_approval():
    serve_staging, serve_prod = _jobs()
    assert serve_staging["dependsOn"] == "verify_staging"
    assert serve_staging["steps"] == [
        {"template": "templates/serving-image.yml", "parameters": {"target": "staging"}},
        {"template": "templates/serve.yml",
         "parameters": {"target": "staging", "release": f"$(Build.ArtifactStagingDirectory)/{RELEASE}"}}]
    assert serve_prod["environment"] == "prod" and serve_prod["dependsOn"] == "deploy_prod"
    image = _steps("serving-image.yml")
    texts = [_text(s) for s in image]
    order = [next(i for i, text in enumerate(texts) if needle in text) for needle in
             ("mlops serving package --target", "docker image inspect")]
    docker = [(i, s["inputs"]["command"]) for i, s in enumerate(image) if s.get("task") == "Docker@2"]
    assert [c for _, c in docker] == ["build", "push"] and order[0] < docker[0][0] < docker[1][0] < order[1]
    build = image[docker[0][0]]
    assert build["inputs"]["Dockerfile"] == "service_deployment/Dockerfile"
    assert "BUNDLE=serving-bundle" in build["inputs"]["arguments"]
    serve = _steps("serve.yml")
    order = [next(i for i, text in enumerate(map(_text, serve)) if needle in text) for needle in
             ("kubectl apply -k release", "rollout status", "mlops serving smoke")]
    assert order == sorted(order)


def test_production_deploys_the_digest_staging_smoke_tested_and_never_builds():
    """Prod consumes staging's release record (this run's artifact) and has no build or push of its own."""
    serve_staging, serve_prod = _jobs()
    published = next(s for s in _steps("serving-image.yml") if s.get("task") == "PublishPipelineArtifact@1")
    parameters = load(PIPELINES_DIR / "templates" / "serving-image.yml")["parameters"]
    declared = {p["name"]: p.get("default") for p in parameters}
    assert published["inputs"]["artifact"] == "${{ parameters.releaseArtifact }}"
    assert declared["releaseArtifact"] == RELEASE
    steps = serve_prod["strategy"]["runOnce"]["deploy"]["steps"]
    download = next(s for s in steps if "download" in s)
    assert download == {"download": "current", "artifact": RELEASE, "displayName": download["displayName"]}
    (serve,) = [s for s in steps if s.get("template") == "templates/serve.yml"]
    assert serve["parameters"] == {"target": "prod", "release": f"$(Pipeline.Workspace)/{RELEASE}"}
    assert steps.index(download) < steps.index(serve)
    assert not any(s.get("template") == "templates/serving-image.yml" for s in steps)
    # serve.yml (what prod runs) builds, pushes and tags nothing
    serve_text = (PIPELINES_DIR / "templates" / "serve.yml").read_text()
    assert not any(s.get("task", "").startswith("Docker@") for s in _steps("serve.yml"))
    assert not re.search(r"\bdocker (build|push|tag)\b|\baz acr (build|import)\b", serve_text)


def test_the_record_says_which_model_version_and_bundle_the_image_holds():
    image = _steps("serving-image.yml")
    build = next(s for s in image if s.get("task") == "Docker@2")
    assert "MODEL_VERSION=$(modelVersion)" in build["inputs"]["arguments"]
    assert "BUNDLE_DIGEST=$(bundleDigest)" in build["inputs"]["arguments"]
    package = next(_text(s) for s in image if "mlops serving package" in _text(s))
    assert "sha256sum serving-bundle/manifest.json" in package  # the signed manifest's digest
    assert "variable=bundleDigest" in package and "variable=modelVersion" in package
    record = next(_text(s) for s in image if "release.json" in _text(s))
    assert "'image', 'model_version', 'bundle_digest'" in record and "@sha256:" in record


def _release_kustomization(script: str) -> str:
    return re.search(r"cat > release/kustomization.yaml <<EOF\n(.*?)\nEOF", script, re.S).group(1)


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_the_release_deploys_the_image_by_digest_with_its_record(overlay, tmp_path):
    """The kustomization serve.yml writes, rendered with kubectl as CD renders it: the pod's image is the record's
    digest (no tag), and the Deployment carries the model version and bundle digest."""
    import subprocess

    rollout = next(_text(s) for s in _steps("serve.yml") if "kubectl apply -k release" in _text(s))
    assert "*@sha256:*) ;;" in rollout  # a record naming anything but a digest stops the rollout
    digest = "sha256:" + "ab" * 32
    text = (_release_kustomization(rollout)
            .replace("../service_deployment", os.path.relpath(REPO_ROOT / "service_deployment", tmp_path))
            .replace("${{ parameters.target }}", overlay)
            .replace("${image%@*}", "acr.example/taxi-fares-serving").replace("${image#*@}", digest)
            .replace("$(field model_version)", "7").replace("$(field bundle_digest)", "sha256:" + "cd" * 32))
    (tmp_path / "kustomization.yaml").write_text(text)
    rendered = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
                              check=True, capture_output=True, text=True).stdout
    deployment = next(d for d in yaml.safe_load_all(rendered) if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"acr.example/taxi-fares-serving@{digest}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["taxi-fares/model-version"] == "7"
    assert annotations["taxi-fares/bundle-digest"] == "sha256:" + "cd" * 32
    for path in PIPELINES + TEMPLATES:  # no image is deployed by tag anywhere
        assert "newTag" not in path.read_text() and "set image" not in path.read_text()


def test_a_failed_rollout_or_smoke_test_rolls_back_by_itself():
    serve = _steps("serve.yml")
    texts = [_text(s) for s in serve]
    smoke = next(i for i, t in enumerate(texts) if "mlops serving smoke" in t)
    rollout = next(i for i, t in enumerate(texts) if "kubectl apply -k release" in t)
    (undo,) = [i for i, t in enumerate(texts) if "rollout undo deployment/taxi-fares-serving" in t]
    assert rollout < smoke < undo
    condition = serve[undo]["condition"].replace(" ", "")
    assert "failed()" in condition and "succeeded" not in condition and "always()" not in condition
    # only after this job changed the Deployment (an undo of an untouched one replaces a good release)
    assert "eq(variables['servingApplied'],'true')" in condition
    applied = texts[rollout]
    assert applied.index("kubectl apply -k release") < applied.index("variable=servingApplied]true")
    assert "--bearer-token-file" in texts[smoke] and "--expect-version" in texts[smoke]


# --- Pipeline credentials: workload identity federation, no client secret -------------------------------------
def _env_mappings():
    for path in PIPELINES + TEMPLATES:
        for node in walk(load(path)):
            if isinstance(node.get("env"), dict):
                yield path, node


def test_no_client_secret_or_token_is_mapped_from_a_variable_group():
    for path, step in _env_mappings():
        for name, value in step["env"].items():
            assert not re.search(r"SECRET", name, re.I), f"{path.name}: {name}"
            secret = re.search(r"\$\(\w*(SECRET|CLIENT_SECRET|_TOKEN)\w*\)", str(value), re.I)
            assert not secret, f"{path.name}: {value}"
    for path in PIPELINES + TEMPLATES:
        assert not re.search(r"client_secret|ARM_CLIENT_SECRET|NUTTER_DATABRICKS_TOKEN", path.read_text(), re.I)


def test_azure_and_databricks_are_reached_through_the_workload_identity_service_connection():
    """Every step that talks to Databricks or Azure runs in AzureCLI@2 on the target's service connection, and
    databricks-sdk takes its token from that sign-in (azure-cli), or, for nutter, a token az issues in the step."""
    seen = 0
    for path, step in _env_mappings():
        env = step["env"]
        if "DATABRICKS_HOST" in env or any(k.startswith(("AKS_", "SERVING_")) for k in env):
            seen += 1
            assert step.get("task") == "AzureCLI@2", f"{path.name}: {step.get('displayName')}"
            assert step["inputs"]["azureSubscription"] == "taxi-fares-${{ parameters.target }}"
            script = step["inputs"]["inlineScript"]
            assert env.get("DATABRICKS_AUTH_TYPE") == "azure-cli" or "DATABRICKS_HOST" not in env or (
                "az account get-access-token --resource 2ff814a6-3304-4ab8-85cb-cd0e6f879c1d" in script)
    assert seen >= 6
    for path in PIPELINES + TEMPLATES:
        for node in walk(load(path)):
            if node.get("task") == "AzureCLI@2":
                assert node["inputs"]["scriptType"] == "bash" and "azureSubscription" in node["inputs"]


# --- Installs from a lock with hashes ------------------------------------------------------------------------
def _requirement_lines(path: Path):
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _pins(path: Path) -> dict:
    pins = {}
    for line in _requirement_lines(path):
        if line.startswith("-r "):
            pins.update(_pins(path.parent / line.split()[1]))
        elif "==" in line:
            name, version = line.split("#")[0].split("==")
            pins[name.strip().lower().replace("_", "-")] = version.split()[0]
    return pins


def test_every_pip_install_in_the_pipelines_uses_a_hashed_lock():
    installs = [(path, line) for path in PIPELINES + TEMPLATES for script in _scripts(path)
                for line in script.splitlines() if re.search(r"\bpip\s+install\b", line)]
    assert installs, "the pipelines install their packages themselves (setup.yml)"
    for path, line in installs:
        if "--no-index" in line:  # the project's own packages, from the checkout: nothing fetched
            assert "--no-deps" in line and not re.search(r"\s-r\s", line), f"{path.name}: {line}"
            continue
        assert "--require-hashes" in line, f"{path.name}: {line}"
        lock = REPO_ROOT / re.search(r"\s-r\s+(\S+)", line).group(1)
        assert lock.is_file(), f"{path.name}: {lock} does not exist"
        lines = _requirement_lines(lock)
        assert lines
        for requirement in lines:
            assert re.match(r"^[A-Za-z0-9_.\-\[\],]+==\S+ ", requirement), requirement
            assert "--hash=sha256:" in requirement, requirement
    for path in PIPELINES + TEMPLATES:  # make install would install from the unhashed requirements/*.txt
        assert not any(re.search(r"\bmake\s+install\b", s) for s in _scripts(path)), path.name


def test_the_ci_lock_holds_the_versions_the_tests_run_with():
    locked, wanted = _pins(REPO_ROOT / "requirements" / "ci.lock"), _pins(REPO_ROOT / "requirements" / "dev.txt")
    assert {name: locked.get(name) for name in wanted} == wanted
    # the install it replaces is the one make checks for: the stamp setup.yml touches is the Makefile's
    stamp = re.search(r"^STAMP := \$\(VENV\)/(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1)
    setup = " ".join(_scripts(PIPELINES_DIR / "templates" / "setup.yml"))
    assert f"touch .venv/{stamp}" in setup
