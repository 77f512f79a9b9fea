"""``mlops bundle --target T --out DIR``: a target's jobs, MLflow experiment and registered model as a Databricks
Asset Bundle, for teams that deploy with ``databricks bundle deploy`` instead of ``mlops deploy``.

One source feeds both. The jobs are rendered by ``templates.read_job`` from the templates and ``targets.yml`` that
``mlops deploy`` renders, and tagged as the deployer tags them (``project``, ``target``); the bundle holds the same
notebooks and wheels. What differs follows from where a bundle deployment puts files: the CLI syncs the bundle
folder to ``workspace.file_path``, which is ``<workspace_root>/files``:

* notebooks run from ``<workspace_root>/files/orchestrator/notebooks/...`` (deploy imports them to
  ``<workspace_root>/orchestrator/notebooks/...``);
* the wheels are workspace files synced with the notebooks, ``<workspace_root>/files/wheels/<version>/`` (deploy
  uploads them to the target's ``wheel_base_path``, a volume or DBFS), so the notebooks' ``%pip``, a serverless
  environment's dependencies and the ``target_policy`` base parameter name that folder;
* the monitoring job's run-job task names the training job as ``${resources.jobs.taxi_fares_training.id}``, which
  the CLI resolves (the deployer writes the id of the training job it has just created or reset);
* who the jobs run as and who may touch them are bundle variables (``${var.run_as_service_principal}``, ...)
  whose values for the target are the ones in ``targets.yml``.

A bundle describes one target: its jobs carry that target's policy and compute. The target runs in ``production``
mode, the only mode that keeps the shared workspace paths of ``targets.yml`` (development mode requires the
deploying user's name in the root path, and renames and pauses the jobs).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from orchestrator import build, templates
from orchestrator.deploy import deployer
from orchestrator.errors import UsageError
from orchestrator.paths import DIST_DIR, REPO_ROOT, project_version
from taxi_fares_mlops import outputs


CONFIG = "databricks.yml"
JOBS_FILE = "resources/jobs.yml"
MLFLOW_FILE = "resources/mlflow.yml"
FILES = "files"    # workspace.file_path under the target's workspace_root: where the CLI syncs the bundle folder
WHEELS = "wheels"  # the bundle folder's wheels, <version>/ under it, synced with the notebooks
MODE = "production"
EXPERIMENT_KEY, MODEL_KEY = f"{deployer.PROJECT}_experiment", f"{deployer.PROJECT}_model"  # resource keys
UC_REGISTRY = "databricks-uc"


def workspace_targets() -> list[str]:
    """The targets a bundle can describe: every target of the targets file but the embedded local one."""
    return [name for name in templates.load_targets() if name != templates.LOCAL_TARGET]


def _var(name: str) -> str:
    return "${var." + name + "}"


def render(target_name: str, version: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """The bundle's configuration files (path in the bundle -> content) for ``target_name``."""
    known = workspace_targets()
    if target_name == templates.LOCAL_TARGET:
        raise UsageError(f"the local target runs with `mlops run --local` and has no workspace to bundle for "
                         f"(targets: {', '.join(known)})")
    if target_name not in known:
        raise UsageError(f"unknown target '{target_name}' (targets: {', '.join(known)})")
    version = version or project_version()
    values = templates.load_targets()[target_name]
    target = templates.target_settings(target_name)
    variables = templates.target_variables(target_name, version=version)
    root = variables["workspace_root"].rstrip("/")
    deployer.check_workspace_paths(target_name, root, variables["mlflow_experiment"])
    file_path = f"{root}/{FILES}"
    variables.update(workspace_root=file_path, wheel_base_path=f"{file_path}/{WHEELS}")
    variables.update(templates.access_variables({key: _var(key) for key in templates.ACCESS_KEYS}))
    variables["target_policy"] = templates.target_policy(target_name, variables).to_json()  # names the wheels

    jobs = {}
    names = {job: templates.load_template(job)["name"] for job in templates.JOBS}
    references = {name: "${resources.jobs." + name + ".id}" for name in names.values()}
    for job in templates.JOBS:
        rendered = templates.read_job(job, variables, target)
        # where the deployer writes the id of the job a run-job task starts, the CLI's reference to it
        starts = {task: names[started] for task, started in rendered.started_jobs.items()}
        settings = deployer._with_started_job_ids(rendered.name, rendered.settings, starts, references)
        resource = deployer.with_ownership_tags(settings, target_name)
        permissions = [_permission(entry) for entry in rendered.access_control_list]
        jobs[rendered.name] = {**resource, "permissions": permissions} if permissions else resource

    workspace = {"host": target["host"]} if target.get("host") else {}
    config = {
        "bundle": {"name": deployer.PROJECT},
        "include": ["resources/*.yml"],
        "variables": {key: {"description": f"{description}; targets.yml's {key} gives the target's"}
                      for key, description in templates.ACCESS_KEYS.items()},
        # the wheels travel with the notebooks whatever a .gitignore around the folder says; the marker stays here
        "sync": {"include": [f"{WHEELS}/**"], "exclude": [outputs.MARKER]},
        "targets": {target_name: {
            "default": True,
            "mode": MODE,
            "workspace": {**workspace, "root_path": root, "file_path": file_path},
            "variables": {key: values[key] for key in templates.ACCESS_KEYS if values.get(key)},
        }},
    }
    mlflow = {"experiments": {EXPERIMENT_KEY: {
        "name": variables["mlflow_experiment"],
        "permissions": [
            {"level": "CAN_MANAGE", "service_principal_name": _var("deployer_service_principal")},
            {"level": "CAN_EDIT", "service_principal_name": _var("run_as_service_principal")},  # logs the runs
            {"level": "CAN_READ", "group_name": _var("operators_group")},
        ]}}}
    mlflow.update(_model(target_name, variables["model_name"], variables["mlflow_registry_uri"]))
    return {CONFIG: config, JOBS_FILE: {"resources": {"jobs": jobs}}, MLFLOW_FILE: {"resources": mlflow}}


def _permission(entry: Mapping[str, str]) -> dict[str, str]:
    """A jobs/create access-control entry as a bundle permission (``level`` for ``permission_level``)."""
    return {"level": entry["permission_level"], **{k: v for k, v in entry.items() if k != "permission_level"}}


def _model(target_name: str, model_name: str, registry: str) -> dict[str, Any]:
    """The registered model: in Unity Catalog with its grants, or in the workspace registry with its permissions.
    The jobs' principal owns it, as when its first registration creates it under ``mlops deploy``: in Unity Catalog
    only the owner registers versions and sets the champion and challenger aliases."""
    description = f"The taxi-fare model of target {target_name}: the training job registers its versions"
    if registry != UC_REGISTRY:
        return {"models": {MODEL_KEY: {"name": model_name, "description": description, "permissions": [
            {"level": "CAN_MANAGE", "service_principal_name": _var("deployer_service_principal")},
            {"level": "CAN_MANAGE", "service_principal_name": _var("run_as_service_principal")},
            {"level": "CAN_READ", "group_name": _var("operators_group")},
        ]}}}
    parts = model_name.split(".")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"target '{target_name}': model_name '{model_name}' is not <catalog>.<schema>.<model>, "
                         f"which the Unity Catalog registry ({UC_REGISTRY}) needs")
    catalog, schema, name = parts
    return {"registered_models": {MODEL_KEY: {
        "catalog_name": catalog, "schema_name": schema, "name": name, "comment": description,
        "owner": _var("run_as_service_principal"),
        "grants": [
            {"principal": _var("deployer_service_principal"), "privileges": ["MANAGE"]},  # its grants, redeployed
            {"principal": _var("operators_group"), "privileges": ["EXECUTE"]},  # load and score the versions
        ]}}}


def _never(folder: Path) -> bool:
    return False  # an earlier bundle carries outputs.MARKER; nothing else in a folder is ours


def write_bundle(target_name: str, out: Path, version: Optional[str] = None, dist: Path = DIST_DIR,
                 allow_build: bool = True) -> list[str]:
    """Write the bundle for ``target_name`` into ``out``, replacing an earlier bundle there as a whole; a folder
    holding anything else is refused before anything is built or written (nothing is deleted). Returns the
    bundle's files, relative to ``out``."""
    version = version or project_version()
    documents = render(target_name, version)
    try:  # the path as given: a symbolic link there is refused, not followed
        outputs.check_replaceable(Path(out), _never, "a Databricks Asset Bundle")
    except outputs.ForeignOutputError as exc:
        raise UsageError(str(exc)) from None
    wheels = deployer._wheels(version, dist, allow_build)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    building = outputs.building_folder(out)
    try:
        header = (f"# Databricks Asset Bundle of target '{target_name}', version {version}: rendered by `mlops bundle "
                  f"--target {target_name}` from job_templates/.\n# Do not edit: render it again. Deploy with "
                  f"`databricks bundle deploy -t {target_name}`.\n")
        for relative, document in documents.items():
            path = building / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
        for folder in deployer.NOTEBOOK_SOURCES:  # the notebooks deploy imports, at the same relative paths
            (building / folder).mkdir(parents=True)
            for source in sorted((REPO_ROOT / folder).glob("*.py")):
                shutil.copyfile(source, building / folder / source.name)
        wheel_folder = building / WHEELS / version
        wheel_folder.mkdir(parents=True)
        for wheel in wheels:
            shutil.copyfile(wheel, wheel_folder / wheel.name)
        (wheel_folder / "SHA256SUMS").write_text("".join(f"{build.sha256(w)}  {w.name}\n" for w in wheels))
        written = sorted(str(p.relative_to(building)) for p in building.rglob("*") if p.is_file())
        (building / outputs.MARKER).write_text("written by `mlops bundle`: replaced as a whole by the next one\n")
        outputs.swap_in(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return written
