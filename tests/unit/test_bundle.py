"""``mlops bundle``: every workspace target's bundle is valid against the Databricks CLI's published schema, its jobs
are the jobs ``mlops deploy`` creates for that target (but for the documented paths), its notebook and wheel paths
point where the bundle's sync puts them, and its output folder follows the rule for output folders."""
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from orchestrator import templates
from orchestrator.build import wheel_names
from orchestrator.cli import main
from orchestrator.deploy import bundle, deployer
from orchestrator.paths import TEMPLATES_DIR
from taxi_fares_mlops.outputs import MARKER

SCHEMA = Path(__file__).parents[1] / "schemas" / "databricks-bundle.schema.json"
VERSION, EARLIER = "9.9.9", "9.9.8"
SERVERLESS = "staging_serverless"  # staging's values on serverless compute (a targets file of the test's own)
TARGETS = bundle.workspace_targets() + [SERVERLESS]


@pytest.fixture(scope="module")
def validator():
    """The published schema, its Go regular-expression classes (``\\p{L}``, ``\\p{N}``) as ASCII ones for ``re``."""
    def python_patterns(node):
        if isinstance(node, dict):
            return {k: _ascii_classes(v) if k == "pattern" and isinstance(v, str) else python_patterns(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [python_patterns(v) for v in node]
        return node

    schema = python_patterns(json.loads(SCHEMA.read_text(encoding="utf-8")))
    assert "\\p{" not in json.dumps(schema)
    return Draft202012Validator(schema)


def _ascii_classes(pattern: str) -> str:
    return pattern.replace(r"[\p{L}\p{N}]", "[A-Za-z0-9]").replace(r"\p{L}", "[A-Za-z]").replace(r"\p{N}", "[0-9]")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """Two versions' wheels (their bytes do not matter here: the bundle copies them and lists their SHA-256)."""
    folder = tmp_path_factory.mktemp("dist")
    for version in (VERSION, EARLIER):
        for name in wheel_names(version):
            (folder / name).write_bytes(f"{name} bytes".encode())
    return folder


@pytest.fixture(params=TARGETS)
def target(request, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)  # deploy's plan checks it; the bundle never reads it
    if request.param == SERVERLESS:
        data = yaml.safe_load((TEMPLATES_DIR / "targets.yml").read_text(encoding="utf-8"))
        data["targets"][SERVERLESS] = {**data["targets"]["staging"], "compute": "serverless"}
        path = tmp_path / "targets.yml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        monkeypatch.setenv(templates.TARGETS_FILE_ENV, str(path))
    return request.param


def mlops_bundle(target, out, dist, version=VERSION):
    return main(["bundle", "--target", target, "--out", str(out), "--version", version, "--dist", str(dist),
                 "--no-build"])


def load_bundle(folder: Path) -> dict:
    """``databricks.yml`` with the files it includes merged in, as the CLI merges them (a key defined twice is an
    error there too)."""
    config = yaml.safe_load((folder / "databricks.yml").read_text(encoding="utf-8"))
    for pattern in config.get("include", []):
        included = sorted(folder.glob(pattern))
        assert included, f"include {pattern} matches no file"
        for path in included:
            _merge(config, yaml.safe_load(path.read_text(encoding="utf-8")), path.name)
    return config


def _merge(into: dict, other: dict, where: str) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, where)
        else:
            assert key not in into, f"{where}: '{key}' is defined twice"
            into[key] = value


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_every_targets_bundle_is_valid_against_the_published_schema(target, dist, tmp_path, validator):
    assert mlops_bundle(target, tmp_path / "bundle", dist) == 0
    config = load_bundle(tmp_path / "bundle")
    error = best_match(validator.iter_errors(config))
    assert error is None, f"{'/'.join(map(str, error.absolute_path))}: {error.message[:500]}"
    assert list(config["targets"]) == [target] and config["targets"][target]["mode"] == "production"
    assert set(config["resources"]) >= {"jobs", "experiments"}
    assert set(config["resources"]["jobs"]) == {templates.load_template(job)["name"] for job in templates.JOBS}
    # the deployment job, with its model trigger where the registry is Unity Catalog (validated with the rest)
    trigger = config["resources"]["jobs"]["taxi_fares_deployment"].get("trigger")
    uc = templates.target_variables(target)["mlflow_registry_uri"] == "databricks-uc"
    assert (trigger["model"]["condition"] if uc else trigger) == ("MODEL_VERSION_READY" if uc else None)
    # nothing of the templates' own syntax survives, and every interpolation names what the bundle declares
    text = "\n".join(_strings(config))
    assert "{repo}" not in text and "{lakehouse}" not in text
    for reference in re.findall(r"\$\{([^}]*)\}", text):
        kind, _, rest = reference.partition(".")
        if kind == "var":
            assert rest in config["variables"] and config["targets"][target]["variables"].get(rest), reference
        else:
            assert kind == "resources" and rest.split(".")[1] in config["resources"]["jobs"], reference


def test_the_schema_check_refuses_what_the_cli_refuses(dist, tmp_path, validator):
    assert mlops_bundle("prod", tmp_path / "bundle", dist) == 0
    good = load_bundle(tmp_path / "bundle")
    assert best_match(validator.iter_errors(good)) is None

    def broken(change):
        config = json.loads(json.dumps(good))
        change(config)
        return best_match(validator.iter_errors(config))

    jobs = "resources", "jobs", "taxi_fares_training"
    # a job ACL entry written as jobs/create spells it, not as a bundle does
    assert broken(lambda c: c[jobs[0]][jobs[1]][jobs[2]]["permissions"][0].update(permission_level="CAN_VIEW"))
    assert broken(lambda c: c["targets"]["prod"]["workspace"].update(hostname="https://x"))  # a misspelt key
    assert broken(lambda c: c[jobs[0]][jobs[1]][jobs[2]].update(max_concurrent_runs="one"))
    assert broken(lambda c: c["resources"]["registered_models"]["taxi_fares_model"]["grants"][0]
                  .update(privileges=["OWN"]))


def _as_deploy_renders(node, replacements: dict, variables: dict):
    """A bundle value in deploy's terms: the bundle's paths as deploy's, a variable as the target's value, and a
    job reference as the 0 a deploy plan holds until the deployer knows the started job's id."""
    if isinstance(node, dict):
        return {k: _as_deploy_renders(v, replacements, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_deploy_renders(v, replacements, variables) for v in node]
    if isinstance(node, str):
        if re.fullmatch(r"\$\{resources\.jobs\.[a-z_]+\.id\}", node):
            return 0
        node = re.sub(r"\$\{var\.([a-z_]+)\}", lambda m: variables[m.group(1)], node)
        for bundle_path, deploy_path in replacements.items():
            node = node.replace(bundle_path, deploy_path)
    return node


def test_the_bundles_jobs_are_what_deploy_creates_but_for_the_bundles_paths(target, dist, tmp_path):
    assert mlops_bundle(target, tmp_path / "bundle", dist) == 0
    config = load_bundle(tmp_path / "bundle")
    plan = deployer.plan(target, VERSION, dist, allow_build=False)
    deployed = templates.target_variables(target, version=VERSION)
    file_path = config["targets"][target]["workspace"]["file_path"]
    assert file_path == deployed["workspace_root"].rstrip("/") + "/files"
    # longest first: the wheels' folder lies inside the files' folder
    replacements = {f"{file_path}/wheels": templates.cluster_readable(deployed["wheel_base_path"]),
                    file_path: deployed["workspace_root"].rstrip("/")}
    values = config["targets"][target]["variables"]
    jobs = config["resources"]["jobs"]
    assert set(jobs) == set(plan.jobs)
    for name, resource in jobs.items():
        settings = {k: v for k, v in resource.items() if k != "permissions"}
        assert _as_deploy_renders(settings, replacements, values) == plan.jobs[name]
        # the permissions: the access list deploy sends with jobs/create (and sets after a reset)
        acl = [{("permission_level" if k == "level" else k): v for k, v in p.items()}
               for p in _as_deploy_renders(resource["permissions"], replacements, values)]
        assert acl == plan.permissions[name] and acl, "every workspace target names who may run and own its jobs"


def test_notebook_and_wheel_paths_point_where_the_bundle_syncs_its_files(target, dist, tmp_path):
    out = tmp_path / "bundle"
    assert mlops_bundle(target, out, dist) == 0
    config = load_bundle(out)
    file_path = config["targets"][target]["workspace"]["file_path"]
    assert config["targets"][target]["workspace"]["root_path"] + "/files" == file_path
    assert config["sync"]["include"] == ["wheels/**"]  # synced whatever a .gitignore around the folder says
    wheels = f"{file_path}/wheels/{VERSION}"
    for name, job in config["resources"]["jobs"].items():
        for task in job["tasks"]:
            if "notebook_task" not in task:
                continue
            path = task["notebook_task"]["notebook_path"]
            assert path.startswith(file_path + "/"), f"{name}: {path} is not under the synced files"
            notebook = out / f"{path[len(file_path) + 1:]}.py"  # the CLI syncs a source notebook without .py
            assert notebook.read_text().startswith("# Databricks notebook source\n"), notebook
            parameters = task["notebook_task"]["base_parameters"]
            assert f"{parameters['wheel_base_path']}/{parameters['wheel_version']}" == wheels
            assert json.loads(parameters["target_policy"])["wheel_base_path"] == parameters["wheel_base_path"]
        for environment in job.get("environments", []):
            assert environment["spec"]["dependencies"] == [f"{wheels}/{w}" for w in wheel_names(VERSION)]
        assert ("environments" in job) == (target == SERVERLESS)
    for wheel in wheel_names(VERSION):
        assert (out / "wheels" / VERSION / wheel).read_bytes() == (dist / wheel).read_bytes()
    assert (out / "wheels" / VERSION / "SHA256SUMS").read_text().count(".whl\n") == 2
    # the same notebooks deploy imports, at the same paths relative to the root
    for folder in deployer.NOTEBOOK_SOURCES:
        assert sorted(p.name for p in (out / folder).glob("*.py")) == \
            sorted(p.name for p in (TEMPLATES_DIR.parent / folder).glob("*.py"))


def test_an_unknown_target_is_refused_naming_the_known_ones(dist, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert mlops_bundle("qa", out, dist) == 2
    assert "unknown target 'qa' (targets: dev, staging, prod)" in capsys.readouterr().err
    assert mlops_bundle("local", out, dist) == 2
    assert "the local target runs with `mlops run --local`" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_holding_a_foreign_file_is_refused_and_left_intact(dist, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert mlops_bundle("staging", out, dist) == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and "notes.txt" in err and "nothing was deleted" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no building folder left beside it


def test_a_rerun_replaces_the_earlier_bundle_as_a_whole(dist, tmp_path):
    out = tmp_path / "bundle"
    assert mlops_bundle("dev", out, dist, version=EARLIER) == 0
    assert (out / MARKER).is_file() and (out / "wheels" / EARLIER).is_dir()
    assert mlops_bundle("prod", out, dist) == 0
    assert sorted(p.name for p in (out / "wheels").iterdir()) == [VERSION]  # the earlier version's wheels are gone
    config = load_bundle(out)
    assert list(config["targets"]) == ["prod"]
    assert {job["tags"]["wheel_version"] for job in config["resources"]["jobs"].values()} == {VERSION}
    assert "models" not in config["resources"]  # dev's workspace-registry model went with dev's bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no building or old folder left beside it
