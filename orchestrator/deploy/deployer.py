"""``mlops deploy --target T``: wheels, notebooks, experiment and jobs, idempotently.

The plan is computed without touching the workspace (that is all ``--dry-run`` prints), and refuses a targets
file whose experiment path and ``workspace_root`` overlap (a workspace path holds one object: a folder of
notebooks cannot also be an experiment). Applying it uploads the wheels into ``<wheel_base_path>/<version>/`` and
imports the notebooks unless the workspace already holds the same cells, creates the MLflow experiment if it is
missing (restoring it if it is in the trash), and creates or resets each job by name so that exactly one job per
name remains. A reset keeps the schedule's pause status the workspace has (an operator may have unpaused it)
unless ``reset_schedule`` is set.

Each job runs as the target's service principal (``run_as``) and carries the target's access list: the operators
group may run it, the deploying principal owns it. ``jobs/create`` takes the list; ``jobs/reset`` does not, so a
reset job's permissions are set (replaced whole) through the Permissions API right after the reset: a grant made
by hand since the last deploy does not survive it.
"""
from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service.jobs import JobAccessControlRequest, JobSettings

from orchestrator import build, templates
from orchestrator.deploy.artifacts import Upload, import_notebook, upload_wheels, wheel_uploads
from orchestrator.deploy.client import is_missing, translate_errors, workspace_host
from orchestrator.errors import OperatorError, UsageError
from orchestrator.paths import DIST_DIR, REPO_ROOT, project_version

logger = logging.getLogger(__name__)

NOTEBOOK_SOURCES = ("orchestrator/notebooks", "tests/notebooks")


@dataclass
class Plan:
    target: dict
    host: str
    version: str
    wheels: list[Path]
    wheel_sums: bytes
    wheel_uploads: list[Upload]
    notebooks: list[Upload]
    experiment: str
    jobs: dict[str, dict] = field(default_factory=dict)
    # job name -> {task key -> name of the job that task starts}; those ids are known only once that job exists
    starts: dict[str, dict[str, str]] = field(default_factory=dict)
    # job name -> its access list (jobs/create's access_control_list; the Permissions API's after a reset)
    permissions: dict[str, list[dict]] = field(default_factory=dict)

    def describe(self) -> dict:
        """The plan as JSON-ready data (what --dry-run prints)."""
        return {
            "target": self.target["name"],
            "host": self.host,
            "version": self.version,
            "uploads": [{"source": str(u.source.relative_to(REPO_ROOT)) if u.source.is_relative_to(REPO_ROOT)
                         else str(u.source), "destination": u.destination}
                        for u in self.wheel_uploads + self.notebooks],
            "experiment": self.experiment,
            "jobs": self.jobs,
            "permissions": self.permissions,
        }


def _wheels(version: str, dist: Path, allow_build: bool) -> list[Path]:
    if version == project_version() and allow_build:
        return build.ensure_built(dist)
    wheels = [dist / name for name in build.wheel_names(version)]
    missing = [w.name for w in wheels if not w.exists()]
    if missing:
        raise UsageError(f"{dist} lacks {', '.join(missing)}: build version {version} first or give --dist")
    return wheels


def plan(target_name: str, version: Optional[str] = None, dist: Path = DIST_DIR, allow_build: bool = True,
         host: Optional[str] = None) -> Plan:
    """What deploying ``version`` to ``target_name`` means. Without ``allow_build`` the wheels must already be
    in ``dist`` (CD deploys exactly the wheels CI built). ``host`` is the operator's ``--host``."""
    target = templates.target_settings(target_name)
    if target_name == "local":
        raise UsageError("the local target is run with `mlops run --local`, not deployed")
    version = version or project_version()
    variables = templates.target_variables(target_name, version=version)
    check_workspace_paths(target_name, variables["workspace_root"], variables["mlflow_experiment"])
    wheels = _wheels(version, dist, allow_build)
    sums = "".join(f"{build.sha256(w)}  {w.name}\n" for w in wheels).encode()
    root = variables["workspace_root"].rstrip("/")
    notebooks = [Upload(src, f"{root}/{folder}/{src.stem}")
                 for folder in NOTEBOOK_SOURCES for src in sorted((REPO_ROOT / folder).glob("*.py"))]
    rendered = [templates.read_job(job, variables, target) for job in templates.JOBS]
    jobs = {r.name: with_ownership_tags(r.settings, target_name) for r in rendered}
    keys = {r.job: r.name for r in rendered}
    starts = {r.name: {task: keys[started] for task, started in r.started_jobs.items()} for r in rendered}
    permissions = {r.name: [dict(entry) for entry in r.access_control_list] for r in rendered}
    return Plan(target, workspace_host(target, host), version, wheels, sums,
                wheel_uploads(wheels, variables["wheel_base_path"], version), notebooks,
                variables["mlflow_experiment"], jobs, {name: s for name, s in starts.items() if s}, permissions)


PROJECT = "taxi_fares"
OWNERSHIP_TAGS = ("project", "target")  # what marks a job as this tool's, deployed to this target


def with_ownership_tags(settings: dict, target_name: str) -> dict:
    """``settings`` tagged with the project and the target: the deployer resets and deletes only jobs so tagged."""
    return {**settings, "tags": {**settings.get("tags", {}), "project": PROJECT, "target": target_name}}


def owned_by(settings, target_name: str) -> bool:
    """A deployed job's settings (SDK ``JobSettings``) carry this project's and this target's tags."""
    tags = (settings.tags if settings is not None else None) or {}
    return tags.get("project") == PROJECT and tags.get("target") == target_name


def workspace_path(path: str) -> str:
    """A workspace path in its short form: ``/Workspace/Shared/x`` and ``/Shared/x`` are the same object."""
    if path == "/Workspace" or path.startswith("/Workspace/"):
        path = path[len("/Workspace"):] or "/"
    return path.rstrip("/") or "/"


def check_workspace_paths(target_name: str, workspace_root: str, experiment: str) -> None:
    """Refuse an experiment path that is, contains or lies inside the notebooks' folder."""
    if not experiment.startswith("/"):
        raise UsageError(f"target '{target_name}': mlflow_experiment '{experiment}' must be an absolute "
                         f"workspace path such as /Shared/taxi_fares/experiments/{target_name}")
    root, exp = workspace_path(workspace_root), workspace_path(experiment)
    if root == exp or exp.startswith(root + "/") or root.startswith(exp + "/"):
        raise UsageError(f"target '{target_name}': mlflow_experiment '{experiment}' and workspace_root "
                         f"'{workspace_root}' overlap; a workspace path holds one object, so the experiment "
                         f"cannot be (or sit inside, or contain) the notebooks' folder. Use a path outside "
                         f"it, for example /Shared/taxi_fares/experiments/{target_name}")


def ensure_experiment(w: WorkspaceClient, name: str, say: Callable[[str], None]) -> str:
    """The experiment's id: found, restored from the trash, or created (with its parent folder)."""
    try:
        experiment = w.experiments.get_by_name(name).experiment
    except NotFound as exc:
        if not is_missing(exc):
            raise
        w.workspace.mkdirs(name.rsplit("/", 1)[0] or "/")
        experiment_id = w.experiments.create_experiment(name).experiment_id
        say(f"experiment {name}: created ({experiment_id})")
        return experiment_id
    if experiment.lifecycle_stage == "deleted":
        w.experiments.restore_experiment(experiment.experiment_id)
        say(f"experiment {name}: was in the trash, restored ({experiment.experiment_id})")
    else:
        say(f"experiment {name}: exists ({experiment.experiment_id})")
    return experiment.experiment_id


def _keep_pause_status(w: WorkspaceClient, job_id: int, settings: dict, say: Callable[[str], None]) -> dict:
    """``settings`` with the schedule's pause status the deployed job has now."""
    current = w.jobs.get(job_id).settings
    deployed = current.schedule.pause_status.value if current.schedule and current.schedule.pause_status else None
    wanted = (settings.get("schedule") or {}).get("pause_status")
    if deployed is None or wanted is None or deployed == wanted:
        return settings
    say(f"job {settings['name']}: keeping its schedule {deployed} (the template says {wanted}; "
        f"--reset-schedule applies the template's)")
    return {**settings, "schedule": {**settings["schedule"], "pause_status": deployed}}


def apply(plan: Plan, w: WorkspaceClient, say: Callable[[str], None], reset_schedule: bool = False) -> dict[str, int]:
    """Apply ``plan``; returns job name -> job id."""
    host = plan.host
    base = plan.wheel_uploads[0].destination.rsplit("/", 2)[0]
    with translate_errors(host, f"upload the wheels to {base}/{plan.version}"):
        sent = upload_wheels(w, plan.wheels, plan.wheel_sums, base, plan.version, say)
    uploaded = f"uploaded {len(sent)} file(s) to {base}/{plan.version}/" if sent else "unchanged, nothing uploaded"
    say(f"wheels {plan.version}: {uploaded}")
    imported = 0
    for notebook in plan.notebooks:
        with translate_errors(host, f"import notebook {notebook.destination}"):
            imported += import_notebook(w, notebook.source, notebook.destination)
    say(f"notebooks: {imported} imported, {len(plan.notebooks) - imported} unchanged")

    with translate_errors(host, f"find or create the MLflow experiment {plan.experiment}"):
        ensure_experiment(w, plan.experiment, say)

    with translate_errors(host, "read who this deploy signs in as (SCIM Me)"):
        # Jobs this tool deployed carry its tags and were created by the identity that deploys: only those are
        # reset or deleted (a job someone else tagged is reported and left alone).
        deployer = (w.current_user.me().user_name or "").strip()
    if not deployer:
        raise OperatorError(f"{host} did not say who this deploy signs in as (SCIM Me has no userName): the jobs "
                            f"it deployed cannot be told from others, so nothing is changed")
    job_ids: dict[str, int] = {}
    for name, settings in plan.jobs.items():
        settings = _with_started_job_ids(name, settings, plan.starts.get(name, {}), job_ids)
        acl = [JobAccessControlRequest.from_dict(entry) for entry in plan.permissions.get(name, [])]
        with translate_errors(host, f"create or reset job {name}"):
            # looked up (by name and tags) before any create: a jobs/create the SDK retried after it was applied
            # left a tagged job, which this finds instead of creating a second
            same_name = list(w.jobs.list(name=name))
            existing = [j.job_id for j in same_name if owned_by(j.settings, plan.target["name"])
                        and _same_identity(j.creator_user_name, deployer)]
            for other in same_name:
                if other.job_id in existing:
                    continue
                if owned_by(other.settings, plan.target["name"]):  # tags anyone may write are no proof
                    say(f"job {name}: left {other.job_id} alone (tagged project={PROJECT}, "
                        f"target={plan.target['name']}, but created by {other.creator_user_name or 'a deleted user'}"
                        f", not by {deployer}, who deploys: this tool did not create it)")
                else:
                    say(f"job {name}: left {other.job_id} alone (not tagged project={PROJECT}, "
                        f"target={plan.target['name']}: this tool did not deploy it)")
            if existing:
                job_id = existing[0]
                if not reset_schedule:
                    settings = _keep_pause_status(w, job_id, settings, say)
                w.jobs.reset(job_id, new_settings=JobSettings.from_dict(settings))
                if acl:  # jobs/reset takes no access list: the Permissions API replaces the job's direct grants
                    w.jobs.set_permissions(str(job_id), access_control_list=acl)
                for extra in existing[1:]:
                    w.jobs.delete(extra)
                    say(f"job {name}: deleted duplicate {extra}")
                action = "reset"
            else:
                job_id = w.jobs.create(**_create_arguments(w, settings), access_control_list=acl or None).job_id
                action = "created"
                # jobs/create takes no idempotency token: a create the SDK resent after a dropped answer left a
                # second tagged job, which goes now (this deploy made both)
                for job in w.jobs.list(name=name):
                    if job.job_id != job_id and owned_by(job.settings, plan.target["name"]) \
                            and _same_identity(job.creator_user_name, deployer):
                        w.jobs.delete(job.job_id)
                        say(f"job {name}: deleted duplicate {job.job_id} (a create sent twice)")
        job_ids[name] = job_id
        say(f"job {name}: {action} {job_id}  {host}/jobs/{job_id}")
        if acl:
            say(f"job {name}: runs as {_principal(settings.get('run_as', {}))}; "
                + ", ".join(f"{_principal(e)} {e['permission_level']}" for e in plan.permissions[name]))
    return job_ids


def _same_identity(creator: Optional[str], deployer: str) -> bool:
    """A job's creator is the deploying identity: user names and application ids compare without case; a job
    without a creator (its account deleted) is nobody's."""
    return bool(creator) and creator.strip().casefold() == deployer.casefold()


def _with_started_job_ids(name: str, settings: dict, starts: dict[str, str], job_ids: dict[str, int]) -> dict:
    """``settings`` with each run_job_task pointing at the job it starts, deployed before it (templates.JOBS
    lists a started job first)."""
    if not starts:
        return settings
    settings = copy.deepcopy(settings)
    for task in settings["tasks"]:
        if task["task_key"] in starts:
            started = starts[task["task_key"]]
            if started not in job_ids:
                raise UsageError(f"job {name}: task {task['task_key']} starts job {started}, which must be "
                                 f"deployed first")
            task["run_job_task"]["job_id"] = job_ids[started]
    return settings


def _principal(entry: dict) -> str:
    """How an access-list entry or ``run_as`` names its principal, for the operator."""
    for key, kind in (("service_principal_name", "service principal"), ("group_name", "group"),
                      ("user_name", "user")):
        if entry.get(key):
            return f"{kind} {entry[key]}"
    return "the deploying identity (no run_as)"


def _create_arguments(w: WorkspaceClient, settings: dict) -> dict:
    """``jobs.create`` takes the settings as keyword arguments of the SDK's own types."""
    typed = JobSettings.from_dict(settings)
    accepted = inspect.signature(w.jobs.create).parameters
    unknown = [k for k in settings if k not in accepted]
    if unknown:
        raise UsageError(f"jobs.create does not take {', '.join(unknown)}")
    return {k: getattr(typed, k) for k in settings}
