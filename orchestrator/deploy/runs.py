"""Operating deployed jobs: run (with progress and the notebook's summary), list runs, repair, schedule.

``run_now`` returns when the run ends whatever its outcome, so the result state is always checked here: only
SUCCESS is a success.
"""
from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

from databricks.sdk import WorkspaceClient
from databricks.sdk.service.jobs import BaseRun, JobSettings, PauseStatus, Run

from orchestrator import environment
from orchestrator.deploy.client import DeployError, translate_errors
from orchestrator.errors import UsageError
from orchestrator.parameters import merge_parameters

TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}
POLL_SECONDS_ENV = environment.POLL_SECONDS.name


def find_job(w: WorkspaceClient, name: str, host: str, target: Optional[str] = None) -> int:
    """The job of that name; with ``target``, only one the deployer tagged for it (others are not ours to run)."""
    from orchestrator.deploy.deployer import owned_by

    with translate_errors(host, f"find job {name}"):
        found = list(w.jobs.list(name=name))
    ids = [j.job_id for j in found if target is None or owned_by(j.settings, target)]
    if not ids:
        others = f" ({len(found)} of that name not deployed by this tool to target '{target}')" if found else ""
        raise UsageError(f"no job named '{name}' at {host}{others}: deploy it first (mlops deploy --target ...)")
    if len(ids) > 1:
        raise UsageError(f"{len(ids)} jobs are named '{name}' at {host} ({ids}): redeploy to keep one")
    return ids[0]


def check_parameters(w: WorkspaceClient, job_id: int, params: Mapping[str, str], host: str,
                     job: Optional[str] = None, policy: Optional[str] = None,
                     settings: Optional[JobSettings] = None) -> None:
    """Names the workspace's job does not take, and (``job`` given) values its notebooks would refuse under the
    target ``policy``."""
    if settings is None:
        with translate_errors(host, f"read job {job_id}"):
            settings = w.jobs.get(job_id).settings
    merge_parameters({p.name: p.default for p in settings.parameters or []}, params, job, policy)


@dataclass(frozen=True)
class RunState:
    lifecycle: str
    result: Optional[str]
    message: str

    @property
    def done(self) -> bool:
        return self.lifecycle in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.result == "SUCCESS"

    def __str__(self) -> str:
        text = self.lifecycle + (f" {self.result}" if self.result else "")
        return text + (f": {self.message}" if self.message else "")


def run_state(run: Union[Run, BaseRun]) -> RunState:
    """The run's state from ``status`` (current API), falling back to the deprecated ``state``."""
    if run.status and run.status.state:
        details = run.status.termination_details
        code = details.code.value if details and details.code else None
        return RunState(run.status.state.value, code, (details.message or "") if details else "")
    state = run.state
    return RunState(state.life_cycle_state.value if state and state.life_cycle_state else "UNKNOWN",
                    state.result_state.value if state and state.result_state else None,
                    (state.state_message or "") if state else "")


def wait(w: WorkspaceClient, run_id: int, host: str, say: Callable[[str], None],
         timeout_s: float = 24 * 3600) -> tuple[Run, RunState]:
    """Poll the run until it ends, saying each state change with the elapsed time."""
    poll = float(environment.POLL_SECONDS.get() or "10")
    started, last = time.monotonic(), None
    while True:
        with translate_errors(host, f"get run {run_id}"):
            run = w.jobs.get_run(run_id)
        state = run_state(run)
        if str(state) != last:
            say(f"[{time.monotonic() - started:6.0f}s] run {run_id}: {state}")
            last = str(state)
        if state.done:
            return run, state
        if time.monotonic() - started > timeout_s:
            raise DeployError(f"run {run_id} did not finish within {timeout_s:.0f}s (it is still {state})")
        time.sleep(poll)


def outputs(w: WorkspaceClient, run: Run, host: str) -> list[tuple[str, Optional[str], Optional[str]]]:
    """(task key, notebook exit value, error) for each task of the run."""
    found = []
    for task in run.tasks or []:
        with translate_errors(host, f"get the output of run {task.run_id}"):
            output = w.jobs.get_run_output(task.run_id)
        result = output.notebook_output.result if output.notebook_output else None
        found.append((task.task_key, result, output.error))
    return found


def trigger(w: WorkspaceClient, job_id: int, params: Mapping[str, str], host: str) -> int:
    # the SDK sends a request again after a connection error or a timeout, even one the workspace had applied: the
    # token makes the resent run-now return the first run instead of starting a second
    token = uuid.uuid4().hex
    with translate_errors(host, f"start job {job_id}"):
        waiter = w.jobs.run_now(job_id=job_id, job_parameters=dict(params) or None, idempotency_token=token)
    run_id: int = waiter.response.run_id  # type: ignore[attr-defined] # the SDK types response loosely
    return run_id


def repair(w: WorkspaceClient, run_id: int, params: Mapping[str, str], host: str,
           check: Optional[Callable[[int, JobSettings], None]] = None) -> None:
    """Rerun the run's failed tasks. A run still in progress cannot be repaired, and after a first repair the
    Jobs API needs the latest repair's id (from the run's repair history). ``check(job_id, settings)`` sees the
    run's job before the repair is sent (``mlops repair --param``: the checks ``run`` makes)."""
    with translate_errors(host, f"read run {run_id}"):
        run = w.jobs.get_run(run_id, include_history=True)
    state = run_state(run)
    if not state.done:
        raise UsageError(f"run {run_id} is still {state.lifecycle}: wait for it to end (mlops runs ...) "
                         f"and repair it then")
    if state.succeeded:
        raise UsageError(f"run {run_id} succeeded: it has no failed tasks to repair (start a new run instead)")
    if check is not None and params:
        with translate_errors(host, f"read job {run.job_id}"):
            settings = w.jobs.get(run.job_id).settings
        check(run.job_id, settings)
    repairs = [item.id for item in run.repair_history or []
               if item.type is not None and item.type.value == "REPAIR" and item.id is not None]
    with translate_errors(host, f"repair run {run_id}"):
        w.jobs.repair_run(run_id=run_id, rerun_all_failed_tasks=True, job_parameters=dict(params) or None,
                          latest_repair_id=repairs[-1] if repairs else None)


RUNS_PAGE_LIMIT = 25  # the Jobs API's maximum page size for runs/list


def list_runs(w: WorkspaceClient, job_id: int, limit: int, host: str) -> list[tuple]:
    """The job's ``limit`` most recent runs. The SDK's iterator follows every page of the history, so it is
    cut here: at most ``ceil(limit / 25)`` pages are asked for."""
    with translate_errors(host, f"list the runs of job {job_id}"):
        pages = w.jobs.list_runs(job_id=job_id, limit=min(limit, RUNS_PAGE_LIMIT))
        runs = list(itertools.islice(pages, limit))
    rows = []
    for run in runs:
        state = run_state(run)
        started = dt.datetime.fromtimestamp(run.start_time / 1000, dt.timezone.utc) if run.start_time else None
        duration = ((run.end_time - run.start_time) / 1000) if run.end_time and run.start_time else None
        rows.append((run.run_id, state.lifecycle, state.result or "", started, duration))
    return rows


def set_schedule(w: WorkspaceClient, job_id: int, paused: bool, host: str) -> str:
    with translate_errors(host, f"read job {job_id}"):
        settings = w.jobs.get(job_id).settings
    if not settings.schedule:
        raise UsageError(f"job {settings.name} has no schedule")
    schedule = settings.schedule
    schedule.pause_status = PauseStatus.PAUSED if paused else PauseStatus.UNPAUSED
    with translate_errors(host, f"update the schedule of job {job_id}"):
        w.jobs.update(job_id, new_settings=JobSettings(schedule=schedule))
    return schedule.pause_status.value
