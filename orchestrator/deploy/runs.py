"""Operating deployed jobs: run (with progress and the notebook's summary), list runs, repair, schedule.

``run_now`` returns when the run ends whatever its outcome, so the result state is always checked here: only
SUCCESS is a success. A run ends in more ways than SUCCESS and FAILED: ``RUN_OUTCOMES`` names each way (read from
the run's termination code and its result state, whichever the workspace sends), with the exit code ``mlops``
gives it. A repaired run may still read as it ended before the repair for a moment: its watcher waits until the
run's repair history lists the repair before it believes an end.
"""
from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

from databricks.sdk import WorkspaceClient
from databricks.sdk.service.jobs import BaseRun, JobSettings, PauseStatus, RepairHistoryItem, Run

from orchestrator import environment
from orchestrator.deploy.client import DeployError, translate_errors
from orchestrator.errors import UsageError
from orchestrator.parameters import merge_parameters

TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}
# How a run that ended is read: its outcome -> (the exit code mlops gives it, what the operator is told after
# "run <id> "). docs/reference/exit-codes.md is generated from this table.
RUN_OUTCOMES = {
    "SUCCESS": (0, "succeeded"),
    "FAILED": (1, "did not succeed: {state}"),
    "SUCCESS_WITH_FAILURES": (1, "did not succeed: it ended SUCCESS_WITH_FAILURES, its last tasks succeeded but "
                                 "others failed ({state}); `mlops repair {run_id} --target {target}` reruns the "
                                 "failed tasks"),
    "TIMEDOUT": (4, "timed out: the workspace stopped it at the job's timeout ({state}); `mlops repair {run_id} "
                    "--target {target}` reruns the tasks that did not finish"),
    "CANCELED": (4, "was canceled before it finished ({state}); `mlops repair {run_id} --target {target}` reruns "
                    "the tasks that did not finish"),
    "SKIPPED": (5, "was skipped, nothing ran ({state}); start it again once the job's active run ends (`mlops runs "
                   "{job} --target {target}` lists its runs)"),
}
# termination codes (Run.status) and result states (the deprecated Run.state) -> outcome; any other is FAILED
_BY_CODE = {"SUCCESS": "SUCCESS", "SUCCESS_WITH_FAILURES": "SUCCESS_WITH_FAILURES", "USER_CANCELED": "CANCELED",
            "CANCELED": "CANCELED", "MAX_CONCURRENT_RUNS_EXCEEDED": "SKIPPED",
            "MAX_JOB_QUEUE_SIZE_EXCEEDED": "SKIPPED", "SKIPPED": "SKIPPED", "DISABLED": "SKIPPED"}
_BY_RESULT = {"SUCCESS": "SUCCESS", "SUCCESS_WITH_FAILURES": "SUCCESS_WITH_FAILURES", "TIMEDOUT": "TIMEDOUT",
              "CANCELED": "CANCELED", "UPSTREAM_CANCELED": "CANCELED", "MAXIMUM_CONCURRENT_RUNS_REACHED": "SKIPPED",
              "EXCLUDED": "SKIPPED", "DISABLED": "SKIPPED"}
# how long a repaired run may go on reading as it was before the repair before the watcher gives up
STALE_REPAIR_SECONDS = 300.0
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
    code: Optional[str]     # the termination code (Run.status), when the workspace sends it
    message: str
    result: Optional[str] = None  # the result state (the deprecated Run.state), when the workspace sends it

    @property
    def done(self) -> bool:
        return self.lifecycle in TERMINAL

    @property
    def outcome(self) -> Optional[str]:
        """How the run ended (a key of ``RUN_OUTCOMES``), None while it has not. A timeout is named by the result
        state (its termination code is the platform's CANCELED); anything not known is FAILED: fail closed."""
        if not self.done:
            return None
        if self.result == "TIMEDOUT":
            return "TIMEDOUT"
        by_code = _BY_CODE.get(self.code or "", "FAILED") if self.code else None
        by_result = _BY_RESULT.get(self.result or "", "FAILED") if self.result else None
        if self.lifecycle == "SKIPPED":
            return "SKIPPED"
        if self.lifecycle == "INTERNAL_ERROR":
            return "FAILED"
        found = {o for o in (by_code, by_result) if o is not None}
        if found == {"SUCCESS"}:
            return "SUCCESS"
        found.discard("SUCCESS")  # a success that the other field contradicts is not one
        return min(found, key=list(RUN_OUTCOMES).index) if found else "FAILED"

    @property
    def succeeded(self) -> bool:
        return self.outcome == "SUCCESS"

    def __str__(self) -> str:
        detail = self.code or self.result
        text = self.lifecycle + (f" {detail}" if detail else "")
        return text + (f": {self.message}" if self.message else "")


def run_state(run: Union[Run, BaseRun, RepairHistoryItem]) -> RunState:
    """The run's state from ``status`` (current API) and the deprecated ``state``, whichever it carries: the
    termination code says why it ended, the result state names a timeout; ``state``'s SKIPPED and INTERNAL_ERROR
    life cycles are kept (``status`` reads both as TERMINATED)."""
    state = run.state
    legacy = state.life_cycle_state.value if state and state.life_cycle_state else None
    result = state.result_state.value if state and state.result_state else None
    if run.status and run.status.state:
        details = run.status.termination_details
        code = details.code.value if details and details.code else None
        lifecycle = legacy if legacy in ("SKIPPED", "INTERNAL_ERROR") else run.status.state.value
        return RunState(lifecycle, code, (details.message or "") if details else "", result)
    return RunState(legacy or "UNKNOWN", None, (state.state_message or "") if state else "", result)


def outcome_line(run_id: int, state: RunState, target: str, job: Optional[str] = None) -> tuple[int, str]:
    """The exit code and the line ``mlops`` ends with for a run that ended in ``state``."""
    outcome = state.outcome or "FAILED"
    code, text = RUN_OUTCOMES[outcome]
    return code, f"run {run_id} " + text.format(state=state, run_id=run_id, target=target, job=job or "<job>")


def wait(w: WorkspaceClient, run_id: int, host: str, say: Callable[[str], None],
         timeout_s: float = 24 * 3600, repair_id: Optional[int] = None) -> tuple[Run, RunState]:
    """Poll the run until it ends, saying each state change with the elapsed time. After a repair (``repair_id``)
    a read whose repair history does not list that repair is from before it, whatever it says: its end is not
    the repaired run's (it is reported, and waited out for up to ``STALE_REPAIR_SECONDS``)."""
    poll = float(environment.POLL_SECONDS.get() or "10")
    started, last = time.monotonic(), None
    stale_since: Optional[float] = None
    while True:
        with translate_errors(host, f"get run {run_id}"):
            run = w.jobs.get_run(run_id, include_history=True) if repair_id is not None else w.jobs.get_run(run_id)
        state = run_state(run)
        if repair_id is not None:
            repair = next((item for item in run.repair_history or [] if item.id == repair_id), None)
            if repair is None:
                stale_since = stale_since if stale_since is not None else time.monotonic()
                if last is None:
                    say(f"[{time.monotonic() - started:6.0f}s] run {run_id}: still reads {state} from before repair "
                        f"{repair_id}; waiting for the workspace to show the repair")
                    last = "stale"
                if time.monotonic() - stale_since > STALE_REPAIR_SECONDS:
                    raise DeployError(f"run {run_id} still reads {state} {STALE_REPAIR_SECONDS:.0f}s after repair "
                                      f"{repair_id} was accepted: the workspace does not show the repair; look at "
                                      f"{run.run_page_url or 'the run page'}")
                time.sleep(poll)
                continue
            if repair.state is not None or repair.status is not None:
                state = run_state(repair)  # the repair's own end, when the workspace says it
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
           check: Optional[Callable[[int, JobSettings], None]] = None) -> int:
    """Rerun the run's failed tasks; returns the repair's id. A run still in progress cannot be repaired, a
    skipped run ran nothing to repair, and after a first repair the Jobs API needs the latest repair's id (from
    the run's repair history). ``check(job_id, settings)`` sees the run's job before the repair is sent
    (``mlops repair --param``: the checks ``run`` makes)."""
    with translate_errors(host, f"read run {run_id}"):
        run = w.jobs.get_run(run_id, include_history=True)
    state = run_state(run)
    if not state.done:
        raise UsageError(f"run {run_id} is still {state.lifecycle}: wait for it to end (mlops runs ...) "
                         f"and repair it then")
    if state.succeeded:
        raise UsageError(f"run {run_id} succeeded: it has no failed tasks to repair (start a new run instead)")
    if state.outcome == "SKIPPED":
        raise UsageError(f"run {run_id} was skipped ({state}): nothing ran, so there is nothing to repair; start a "
                         f"new run (mlops run ...)")
    if check is not None and params:
        with translate_errors(host, f"read job {run.job_id}"):
            settings = w.jobs.get(run.job_id).settings
        check(run.job_id, settings)
    repairs = [item.id for item in run.repair_history or []
               if item.type is not None and item.type.value == "REPAIR" and item.id is not None]
    with translate_errors(host, f"repair run {run_id}"):
        waiter = w.jobs.repair_run(run_id=run_id, rerun_all_failed_tasks=True, job_parameters=dict(params) or None,
                                   latest_repair_id=repairs[-1] if repairs else None)
    repair_id: int = waiter.response.repair_id  # type: ignore[attr-defined] # the SDK types response loosely
    return repair_id


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
        rows.append((run.run_id, state.lifecycle, state.outcome or "", started, duration))
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
