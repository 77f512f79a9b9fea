"""Render the job templates for a deployment target, and validate the result with the SDK's own types.

Templates are JSON with ``${name}`` placeholders. A string that is exactly one placeholder takes the variable's
value with its type (a list, a dict, a number); a placeholder inside a longer string is replaced by text.
Rendering fails with every missing or unknown variable named. ``validate`` round-trips the settings through
``databricks.sdk.service.jobs.JobSettings``, which silently drops keys it does not know: any difference is an
error.

A template is a ``jobs/create`` request: the job settings plus ``access_control_list``, the one create field that
is not a setting (``jobs/reset`` takes none: the deployer sets a reset job's permissions through the Permissions
API). ``run_as`` and the access list come from the target's ``run_as_service_principal``, ``operators_group``
and ``deployer_service_principal``; every workspace target must state all three.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import yaml

from orchestrator import environment
from orchestrator.build import wheel_names
from orchestrator.errors import UsageError
from orchestrator.paths import REPO_ROOT, TEMPLATES_DIR, project_version

JOBS = {"training": "taxi_fares_training.json", "batch_scoring": "taxi_fares_batch_scoring.json",
        "monitoring": "taxi_fares_monitoring.json", "scoring_stream": "taxi_fares_scoring_stream.json"}
JOBS["deployment"] = "taxi_fares_deployment.json"  # after training: it judges the versions training registers
# The deployment job's model-update trigger (Jobs API trigger.model): a Unity Catalog feature, so rendered only for a
# target whose registry is databricks-uc (its securable is the three-level model name). A target on the workspace
# registry gets the job without a trigger: `mlops run deployment --target T --param model_version=N` runs it (the
# local runner runs it after each registration, as the trigger would).
UC_REGISTRY = "databricks-uc"
MODEL_TRIGGER_SECONDS = 60  # the Jobs API's least min_time_between_triggers / wait_after_last_change
# Jobs another job starts (run_job_task): the template names the started job's id ``${training_job_id}``; a plan
# renders it as 0 and the deployer puts the id of the job it just created or reset (the local runner, its name).
JOB_ID_VARIABLES = {"training_job_id": "training"}
TARGETS_FILE_ENV = environment.TARGETS_FILE.name  # another targets file (tests, forks)
VARIABLES = ("workspace_root", "wheel_base_path", "wheel_version", "mlflow_experiment", "mlflow_registry_uri",
             "model_name", "lakehouse_root", "table_schema", "new_cluster", "schedule_pause_status",
             "notification_emails", "secret_scope", *JOB_ID_VARIABLES,
             # the Unity Catalog name of raw_trips (<table_schema>.raw_trips): what a table_update trigger watches
             "raw_trips_table",
             # from the target's policy: the gates' defaults, and the policy itself (the target_policy base parameter)
             "require_approval", "model_validation", "target_policy",
             # from the target's identities: who the jobs run as, and who may run and manage them
             "run_as", "access_control_list",
             # the deployment job's trigger.model (empty for a target on the workspace registry)
             "model_trigger")
POLICY_VARIABLES = ("require_approval", "model_validation", "target_policy")
POLICY_KEYS = {"require_approval": bool, "allow_force_promote": bool, "min_model_validation": str}
# Optional bounds on the validation thresholds a run may tighten but not loosen (TargetPolicy's fields).
POLICY_BOUNDS = ("min_r2_at_least", "regression_margin_at_most", "holdout_fraction_at_least")
# Target settings that configure the tool, not the templates.
TARGET_SETTINGS = ("host", "existing_cluster_id", "compute", "serverless_environment_version")
ACCESS_VARIABLES = ("run_as", "access_control_list")
# Who the target's jobs run as and who may touch them: each an application id (a service principal's
# service_principal_name) or a workspace group's name. Per target, never under defaults: a target copied from
# another must not run as the other's principal.
ACCESS_KEYS = {
    "run_as_service_principal": "the application id of the service principal the target's jobs run as",
    "operators_group": "the workspace group whose members may run the jobs (CAN_MANAGE_RUN)",
    "deployer_service_principal": "the application id of the service principal that deploys and owns the jobs "
                                  "(IS_OWNER)",
}
OPERATORS_LEVEL, DEPLOYER_LEVEL = "CAN_MANAGE_RUN", "IS_OWNER"
_APPLICATION_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_GROUP_NAME = re.compile(r"\S(.*\S)?")
COMPUTE = ("job_cluster", "existing_cluster", "serverless")
SERVERLESS_ENVIRONMENT = "taxi_fares"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(UsageError, ValueError):
    """A template, target or targets file cannot be rendered as it is."""


def placeholders(node: Any) -> set[str]:
    """Every placeholder name in a template."""
    if isinstance(node, dict):
        return set().union(*(placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(placeholders(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(_PLACEHOLDER.findall(node))
    return set()


def render(template: Any, variables: Mapping[str, Any]) -> Any:
    unknown = sorted(set(variables) - set(VARIABLES))
    missing = sorted(placeholders(template) - set(variables))
    problems = [f"unknown variable '{name}'" for name in unknown]
    problems += [f"missing variable '{name}'" for name in missing]
    if problems:
        raise TemplateError("cannot render template: " + "; ".join(problems))
    return _substitute(copy.deepcopy(template), variables)


def _substitute(node: Any, variables: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, variables) for v in node]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return copy.deepcopy(variables[whole.group(1)])
        return _PLACEHOLDER.sub(lambda m: _as_text(m.group(1), variables[m.group(1)]), node)
    return node


def _as_text(name: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise TemplateError(f"variable '{name}' is a {type(value).__name__} but is used inside a string")
    return str(value)


def load_template(job: str) -> dict:
    if job not in JOBS:
        raise TemplateError(f"unknown job '{job}' (jobs: {', '.join(JOBS)})")
    return json.loads((TEMPLATES_DIR / JOBS[job]).read_text(encoding="utf-8"))


def targets_file() -> Path:
    return Path(environment.TARGETS_FILE.get() or TEMPLATES_DIR / "targets.yml")


LOCAL_TARGET = "local"  # the embedded default: its paths are local folders ({repo}, {lakehouse})
TARGET_KEYS = tuple(k for k in VARIABLES if k != "wheel_version" and k not in JOB_ID_VARIABLES
                    and k not in POLICY_VARIABLES and k not in ACCESS_VARIABLES) + ("policy",) + TARGET_SETTINGS \
    + tuple(ACCESS_KEYS)
# Where each path of a workspace target may point (a Unity Catalog volume, DBFS, the workspace tree, ADLS).
PATH_SHAPES = {
    "workspace_root": (re.compile(r"/(Workspace|Users|Shared|Repos)/\S+"), "/Workspace/..."),
    "wheel_base_path": (re.compile(r"(/Volumes/[^/\s]+/[^/\s]+/[^/\s]+(/\S*)?|dbfs:/\S+)"),
                        "/Volumes/<catalog>/<schema>/<volume>/... or dbfs:/..."),
    "lakehouse_root": (re.compile(r"(/Volumes/[^/\s]+/[^/\s]+/[^/\s]+(/\S*)?|dbfs:/\S+|abfss://\S+@\S+)"),
                       "/Volumes/<catalog>/<schema>/<volume>/..., dbfs:/... or abfss://<container>@<account>/..."),
}
# https, or plain http on this machine only (a workspace emulator or a local proxy: the token never leaves it)
_HOST = re.compile(r"(https://[A-Za-z0-9.-]+|http://(127\.0\.0\.1|localhost))(:\d+)?/?")


def load_targets(path: Path | None = None) -> dict[str, dict]:
    """The targets of the targets file, each with the defaults filled in. A TemplateError names the file and
    every problem: an unknown key (a typo would silently fall back to a default), a host that is not an https
    URL, a workspace path of the wrong shape."""
    path = path or targets_file()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError(f"cannot read targets file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"targets file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict) or not data["targets"]:
        raise TemplateError(f"targets file {path}: needs a 'targets' mapping of at least one target")
    problems = [f"unknown key '{key}' (keys: defaults, targets)" for key in data if key not in ("defaults", "targets")]
    defaults = data.get("defaults") or {}
    problems += [f"defaults: unknown key '{key}'" for key in defaults if key not in TARGET_KEYS]
    if "policy" in defaults:  # a target copied from another must not inherit gates it never stated
        problems.append("defaults: policy belongs to each target, never to the defaults (state it per target)")
    problems += [f"defaults: {key} belongs to each target, never to the defaults (state it per target)"
                 for key in ACCESS_KEYS if key in defaults]
    targets = {}
    for name, values in data["targets"].items():
        targets[name] = target = {**defaults, **(values or {})}
        problems += [f"target '{name}': unknown key '{key}'" for key in (values or {}) if key not in TARGET_KEYS]
        problems += _policy_problems(name, (values or {}).get("policy"))
        host = target.get("host")
        if host is not None and not (isinstance(host, str) and _HOST.fullmatch(host)):
            problems.append(f"target '{name}': host '{host}' is not a workspace URL (https://<instance>)")
        problems += _access_problems(name, values or {})
        if name == LOCAL_TARGET:
            continue
        for key, (shape, expected) in PATH_SHAPES.items():
            value = target.get(key)
            if value is None:
                problems.append(f"target '{name}': {key} missing (expected {expected})")
            elif not (isinstance(value, str) and shape.fullmatch(value)):
                problems.append(f"target '{name}': {key} '{value}' is not {expected}")
    if problems:
        raise TemplateError(f"targets file {path}: " + "; ".join(problems))
    return targets


def _access_problems(name: str, values: Mapping[str, Any]) -> list[str]:
    """Fail closed: a workspace target without its run-as principal, operators group or deploying principal is
    refused (the local target may leave them out); each must have its shape."""
    problems = []
    for key, expected in ACCESS_KEYS.items():
        value = values.get(key)
        if value is None:
            if name != LOCAL_TARGET:
                problems.append(f"target '{name}': {key} missing (expected {expected})")
            continue
        shape = _GROUP_NAME if key == "operators_group" else _APPLICATION_ID
        if not (isinstance(value, str) and shape.fullmatch(value)):
            what = "a group name" if key == "operators_group" else \
                "an application id (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            problems.append(f"target '{name}': {key} {value!r} is not {what}")
    return problems


def access_variables(values: Mapping[str, Any]) -> dict[str, Any]:
    """``run_as`` and ``access_control_list`` from a target's identities: the jobs run as the service principal,
    the operators group may run them (CAN_MANAGE_RUN), the deploying principal owns them (IS_OWNER). Workspace
    admins keep CAN_MANAGE, which no job ACL removes. Empty (pruned from the job) where the local target leaves
    them out."""
    run_as = values.get("run_as_service_principal")
    acl = []
    if values.get("operators_group"):
        acl.append({"group_name": values["operators_group"], "permission_level": OPERATORS_LEVEL})
    if values.get("deployer_service_principal"):
        acl.append({"service_principal_name": values["deployer_service_principal"],
                    "permission_level": DEPLOYER_LEVEL})
    return {"run_as": {"service_principal_name": run_as} if run_as else {}, "access_control_list": acl}


def _policy_problems(name: str, policy: Any) -> list[str]:
    """A target without a complete, well-typed policy is refused: the gates fail closed, never to a default."""
    from taxi_fares_mlops.config import VALIDATION_MODES

    expected = ", ".join(f"{k} ({t.__name__})" for k, t in POLICY_KEYS.items())
    if not isinstance(policy, dict):
        return [f"target '{name}': policy missing (expected a mapping of {expected})"]
    problems = [f"target '{name}': policy: unknown key '{k}'" for k in policy
                if k not in POLICY_KEYS and k not in POLICY_BOUNDS]
    for key in POLICY_BOUNDS:
        value = policy.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"target '{name}': policy: {key} must be a number (got {value!r})")
    for key, kind in POLICY_KEYS.items():
        if not isinstance(policy.get(key), kind):
            problems.append(f"target '{name}': policy: {key} must be a {kind.__name__} (got {policy.get(key)!r})")
    if isinstance(policy.get("min_model_validation"), str) and policy["min_model_validation"] not in VALIDATION_MODES:
        problems.append(f"target '{name}': policy: min_model_validation '{policy['min_model_validation']}' is not "
                        f"one of {', '.join(VALIDATION_MODES)}")
    return problems


def target_policy(target: str, variables: Mapping[str, Any]):
    """The target's ``TargetPolicy`` (the wheel's own type: the notebook enforces the same object)."""
    from taxi_fares_mlops.config import TargetPolicy

    policy = load_targets()[target]["policy"]
    return TargetPolicy(target=target, require_approval=policy["require_approval"],
                        allow_force_promote=policy["allow_force_promote"],
                        min_model_validation=policy["min_model_validation"],
                        lakehouse_root=variables["lakehouse_root"],
                        mlflow_registry_uri=variables["mlflow_registry_uri"],
                        table_schema=variables["table_schema"], model_name=variables["model_name"],
                        secret_scope=variables["secret_scope"],
                        wheel_base_path=cluster_readable(variables["wheel_base_path"]),
                        wheel_version=variables["wheel_version"],
                        **{k: policy[k] for k in POLICY_BOUNDS if policy.get(k) is not None})


def target_variables(target: str, version: str | None = None, lakehouse: str | None = None) -> dict[str, Any]:
    """The template variables of ``target`` (``{repo}`` and ``{lakehouse}`` filled in for the local target)."""
    targets = load_targets()
    if target not in targets:
        raise TemplateError(f"unknown target '{target}' (targets: {', '.join(targets)})")
    settings = {k: v for k, v in targets[target].items()
                if k not in TARGET_SETTINGS and k != "policy" and k not in ACCESS_KEYS}
    fill = {"repo": str(REPO_ROOT), "lakehouse": lakehouse or ""}
    variables = {k: v.format(**fill) if isinstance(v, str) else v for k, v in settings.items()}
    variables.update(access_variables(targets[target]))
    variables["wheel_version"] = version or project_version()
    policy = target_policy(target, variables)
    variables["require_approval"] = "true" if policy.require_approval else "false"
    variables["model_validation"] = policy.min_model_validation
    variables["target_policy"] = policy.to_json()
    variables["model_trigger"] = model_trigger(variables["model_name"], variables["mlflow_registry_uri"])
    variables.update({name: 0 for name in JOB_ID_VARIABLES})  # until the deployer knows the ids
    variables["raw_trips_table"] = f"{variables['table_schema']}.raw_trips" if variables.get("table_schema") else ""
    return variables


def model_trigger(model_name: str, registry_uri: str) -> dict[str, Any]:
    """The deployment job's ``trigger``: a new version of the target's Unity Catalog model that is READY starts it,
    at most once a minute and a minute after the last change (several versions registered within the window start
    one run, which judges the newest). {} for the workspace registry, where the Jobs API has no model trigger."""
    if registry_uri != UC_REGISTRY:
        return {}
    return {"pause_status": "UNPAUSED", "model": {
        "condition": "MODEL_VERSION_READY", "securable_name": model_name,
        "min_time_between_triggers_seconds": MODEL_TRIGGER_SECONDS,
        "wait_after_last_change_seconds": MODEL_TRIGGER_SECONDS}}


def cluster_readable(path: str) -> str:
    """Where a cluster's pip reads ``path``: DBFS only through its FUSE mount (``dbfs:/x`` -> ``/dbfs/x``);
    pip does not read ``dbfs:/`` URLs. Volume and workspace paths are read as they are."""
    return "/dbfs/" + path[len("dbfs:"):].lstrip("/") if path.startswith("dbfs:") else path


def compute_of(target: Mapping[str, Any]) -> str:
    """How a target's jobs run: the template's job cluster (default), an existing cluster, or serverless."""
    compute = target.get("compute") or ("existing_cluster" if target.get("existing_cluster_id") else "job_cluster")
    if compute not in COMPUTE:
        raise TemplateError(f"target '{target.get('name')}': compute '{compute}' is not one of {', '.join(COMPUTE)}")
    if compute == "existing_cluster" and not target.get("existing_cluster_id"):
        raise TemplateError(f"target '{target.get('name')}': compute existing_cluster needs existing_cluster_id")
    return compute


def render_job(job: str, variables: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> dict:
    """The job's settings (``JobSettings``) for these variables: ``render_request`` without the access list."""
    settings = render_request(job, variables, target)
    settings.pop("access_control_list", None)
    return settings


def render_request(job: str, variables: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> dict:
    """The job's ``jobs/create`` request for these variables (its settings and ``access_control_list``), without
    empty lists or objects (the Jobs API omits those).

    ``target`` (its tool settings) chooses the compute: the template's job cluster; ``existing_cluster_id``;
    or ``compute: serverless``, where the tasks run in a serverless environment that declares the two wheels as
    dependencies (Spark Connect: the stages use no JVM access). The jobs' ``wheel_base_path`` is where a
    cluster's ``%pip`` reads the wheels (``/dbfs/...`` for a ``dbfs:/`` upload).
    """
    variables = {**variables, "wheel_base_path": cluster_readable(variables["wheel_base_path"])}
    settings = _without_unnamed_table_trigger(_prune_empty(render(load_template(job), variables)))
    compute = compute_of(target or {})
    if compute == "job_cluster":
        return settings
    settings.pop("job_clusters", None)
    for task in settings["tasks"]:
        if "notebook_task" not in task:  # condition and run-job tasks run on no compute of the job's
            continue
        task.pop("job_cluster_key", None)
        if compute == "existing_cluster":
            task["existing_cluster_id"] = target["existing_cluster_id"]
        else:
            task["environment_key"] = SERVERLESS_ENVIRONMENT
    if compute == "serverless":
        version = variables["wheel_version"]
        folder = f"{variables['wheel_base_path'].rstrip('/')}/{version}"
        settings["environments"] = [{"environment_key": SERVERLESS_ENVIRONMENT, "spec": {
            "environment_version": str(target.get("serverless_environment_version") or "4"),
            "dependencies": [f"{folder}/{name}" for name in wheel_names(version)]}}]
    return settings


# What a table_update trigger becomes where there is no Unity Catalog table to watch: a periodic trigger, so that the
# incremental job still scores what arrived (each run takes every commit since the last, whatever the interval).
PERIODIC_FALLBACK = {"interval": 1, "unit": "HOURS"}


def _without_unnamed_table_trigger(settings: dict) -> dict:
    """``settings`` whose ``table_update`` trigger names no table (a target that keeps its tables as Delta folders,
    without ``table_schema``: the Jobs API watches Unity Catalog tables only, and refuses a trigger on none) with a
    periodic trigger (``PERIODIC_FALLBACK``) instead, its pause status kept."""
    trigger = settings.get("trigger", {})
    update = trigger.get("table_update")
    if update is not None and not any(update.get("table_names", [])):
        fallback = {k: v for k, v in trigger.items() if k != "table_update"}
        settings = {**settings, "trigger": {**fallback, "periodic": dict(PERIODIC_FALLBACK)}}
    return settings


def target_settings(target: str) -> dict[str, Any]:
    """The target's tool settings (host, compute, existing_cluster_id...), with its name."""
    targets = load_targets()
    if target not in targets:
        raise TemplateError(f"unknown target '{target}' (targets: {', '.join(targets)})")
    return {"name": target, **{k: v for k, v in targets[target].items() if k in TARGET_SETTINGS}}


def _prune_empty(node: Any) -> Any:
    if isinstance(node, dict):
        pruned = {k: _prune_empty(v) for k, v in node.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(node, list):
        return [_prune_empty(v) for v in node]
    return node


def validate(settings: dict):
    """The settings as ``JobSettings``; a TemplateError if the SDK's round trip loses or changes anything."""
    from databricks.sdk.service.jobs import JobSettings

    parsed = JobSettings.from_dict(settings)
    round_trip = parsed.as_dict()
    if round_trip != settings:
        raise TemplateError(f"job settings do not round-trip through JobSettings: {_diff(settings, round_trip)}")
    return parsed


def validate_access_control_list(job: str, entries: tuple[Mapping[str, str], ...]) -> None:
    """Each entry as the SDK's ``JobAccessControlRequest`` round-trips it, with exactly one principal and a job
    permission level (CAN_VIEW, CAN_MANAGE_RUN, CAN_MANAGE, IS_OWNER); at most one IS_OWNER, never a group."""
    from databricks.sdk.service.jobs import JobAccessControlRequest, JobPermissionLevel

    levels = [level.value for level in JobPermissionLevel]
    for i, entry in enumerate(entries):
        where = f"job '{job}': access_control_list[{i}]"
        if not isinstance(entry, dict):
            raise TemplateError(f"{where} is not an object")
        principals = [k for k in ("user_name", "group_name", "service_principal_name") if entry.get(k)]
        if len(principals) != 1:
            raise TemplateError(f"{where}: exactly one of user_name, group_name, service_principal_name expected, "
                                f"found {', '.join(principals) or 'none'}")
        if entry.get("permission_level") not in levels:
            raise TemplateError(f"{where}: permission_level {entry.get('permission_level')!r} is not one of "
                                f"{', '.join(levels)}")
        if entry["permission_level"] == "IS_OWNER" and principals == ["group_name"]:
            raise TemplateError(f"{where}: a group cannot own a job (IS_OWNER takes a user or service principal)")
        round_trip = JobAccessControlRequest.from_dict(entry).as_dict()
        if round_trip != entry:
            raise TemplateError(f"{where} does not round-trip through JobAccessControlRequest: "
                                f"{_diff(entry, round_trip)}")
    if sum(e["permission_level"] == "IS_OWNER" for e in entries) > 1:
        raise TemplateError(f"job '{job}': access_control_list names more than one IS_OWNER (a job has one owner)")


def _diff(expected: Any, actual: Any, path: str = "") -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                return f"'{path}{key}' was dropped"
            if key not in expected:
                return f"'{path}{key}' was added"
            if expected[key] != actual[key]:
                return _diff(expected[key], actual[key], f"{path}{key}.")
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (a, b) in enumerate(zip(expected, actual)):
            if a != b:
                return _diff(a, b, f"{path}{i}.")
    return f"'{path.rstrip('.')}' changed from {expected!r} to {actual!r}"


def started_jobs(job: str) -> dict[str, str]:
    """task key -> the job (a key of ``JOBS``) that the task's run_job_task starts, read from the template's
    ``${<job>_job_id}`` placeholder."""
    started = {}
    for task in load_template(job).get("tasks", []):
        if "run_job_task" in task:
            placeholder = _PLACEHOLDER.fullmatch(str(task["run_job_task"].get("job_id", "")))
            if placeholder is None or placeholder.group(1) not in JOB_ID_VARIABLES:
                raise TemplateError(f"job '{job}' task '{task['task_key']}': run_job_task.job_id must be one of "
                                    f"{', '.join('${' + v + '}' for v in JOB_ID_VARIABLES)}")
            started[task["task_key"]] = JOB_ID_VARIABLES[placeholder.group(1)]
    return started


@dataclass(frozen=True)
class Task:
    """One task of a rendered job, as the local runner and the deployer need it."""

    key: str
    depends_on: tuple[tuple[str, Optional[str]], ...]  # (task key, required outcome or None)
    notebook_path: Optional[str] = None                # notebook task: the workspace path, without .py
    condition: Optional[Mapping[str, str]] = None     # condition task: op, left, right
    starts: Optional[str] = None                      # run-job task: the job (a key of JOBS) it starts
    job_parameters: Mapping[str, str] = field(default_factory=dict)  # run-job task: what it passes
    base_parameters: Mapping[str, str] = field(default_factory=dict)  # notebook task: fixed at deploy time


@dataclass(frozen=True)
class RenderedJob:
    """A job template rendered for a target and validated by the SDK's round trip, read once into what its users
    need: the settings as the Jobs API takes them, the job parameters' defaults and the tasks."""

    job: str
    name: str
    settings: dict[str, Any]
    parameters: Mapping[str, str]
    tasks: tuple[Task, ...]
    # who may do what with the job (jobs/create's access_control_list; the Permissions API's on a reset job)
    access_control_list: tuple[Mapping[str, str], ...] = ()

    @property
    def notebook_paths(self) -> list[str]:
        return [t.notebook_path for t in self.tasks if t.notebook_path]

    @property
    def policy(self) -> str:
        """The target policy (JSON) its notebook tasks carry as the ``target_policy`` base parameter."""
        policies = {t.base_parameters.get("target_policy", "") for t in self.tasks if t.notebook_path}
        if len(policies) != 1 or "" in policies:
            raise TemplateError(f"job '{self.job}': every notebook task needs the same target_policy base parameter")
        return policies.pop()

    @property
    def started_jobs(self) -> dict[str, str]:
        """task key -> the job its run-job task starts."""
        return {t.key: t.starts for t in self.tasks if t.starts}


def read_job(job: str, variables: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> RenderedJob:
    """``job`` rendered with ``variables`` for ``target``, validated, and read into a ``RenderedJob``."""
    settings = render_request(job, variables, target)
    access_control_list = tuple(settings.pop("access_control_list", []))
    validate(settings)
    validate_access_control_list(job, access_control_list)
    starts = started_jobs(job)
    tasks = []
    for task in settings.get("tasks", []):
        kinds = [k for k in ("notebook_task", "condition_task", "run_job_task") if k in task]
        if len(kinds) != 1:
            raise TemplateError(f"job '{job}' task '{task.get('task_key')}': one notebook, condition or run-job "
                                f"task expected, found {', '.join(kinds) or 'none'}")
        tasks.append(Task(
            key=task["task_key"],
            depends_on=tuple((d["task_key"], d.get("outcome")) for d in task.get("depends_on", [])),
            notebook_path=task["notebook_task"]["notebook_path"] if "notebook_task" in task else None,
            condition=task.get("condition_task"),
            starts=starts.get(task["task_key"]),
            job_parameters=dict(task["run_job_task"].get("job_parameters", {})) if "run_job_task" in task else {},
            base_parameters=dict(task["notebook_task"].get("base_parameters", {})) if "notebook_task" in task else {}))
    if not any(t.notebook_path for t in tasks):
        raise TemplateError(f"job '{job}' has no notebook task")
    parameters = {p["name"]: p["default"] for p in settings.get("parameters", [])}
    return RenderedJob(job, settings["name"], settings, parameters, tuple(tasks), access_control_list)
