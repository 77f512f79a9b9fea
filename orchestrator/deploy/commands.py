"""The ``mlops`` commands that talk to a workspace: deploy, run --target, runs, repair, schedule, and the
nutter run of the deployed notebook tests. Argument parsing stays in ``orchestrator.cli``."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional

from orchestrator.console import progress


def _target_client(args: argparse.Namespace):
    """The workspace client and host of ``args.target`` (``--host`` and ``DATABRICKS_HOST`` checked)."""
    from orchestrator.deploy.client import workspace_client, workspace_host
    from orchestrator.templates import target_settings

    target = target_settings(args.target)
    host = workspace_host(target, args.host)
    return workspace_client(target, host), host


def _job_name(job: str) -> str:
    from orchestrator.templates import load_template

    return load_template(job)["name"]


def _print_outputs(w, run, host: str, as_json: bool) -> None:
    from orchestrator.deploy import runs

    for task_key, result, error in runs.outputs(w, run, host):
        if as_json:
            if result:
                print(result)
            continue
        if result:
            print(f"task {task_key} exit summary:")
            print(_pretty(result))
        if error:
            print(f"task {task_key} error: {error}")


def _pretty(text: str) -> str:
    import json

    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


def checked_parameters(target: str, job: str, params: dict) -> str:
    """Check ``params`` exactly as a local run does, against the job as it deploys to ``target`` and the target's
    policy, before any request: a wheel parameter is unknown, a loosened gate or a lakehouse or registry outside
    the target is refused (UsageError, exit 2). Returns the target's policy (JSON)."""
    from orchestrator.parameters import merge_parameters
    from orchestrator.templates import read_job, target_settings, target_variables

    rendered = read_job(job, target_variables(target), target_settings(target))
    merge_parameters(rendered.parameters, params, job, rendered.policy)
    return rendered.policy


def run_remote(args: argparse.Namespace) -> int:
    from orchestrator.deploy import runs
    from orchestrator.parameters import parse_overrides

    params = parse_overrides(args.param)
    policy = checked_parameters(args.target, args.job, params)
    w, host = _target_client(args)
    job_id = runs.find_job(w, _job_name(args.job), host, args.target)
    runs.check_parameters(w, job_id, params, host, args.job, policy)
    run_id = runs.trigger(w, job_id, params, host)
    progress(f"started run {run_id} of job {job_id}: {host}/jobs/{job_id}/runs/{run_id}")
    if args.no_wait:
        print(run_id)
        return 0
    return _finish(w, run_id, host, args.json, args.target, args.job)


def _finish(w, run_id: int, host: str, as_json: bool, target: str, job: Optional[str],
            repair_id: Optional[int] = None) -> int:
    """Watch the run to its end (after ``repair_id``, its repaired end), print its tasks' summaries, end with the
    outcome's line and exit code (``runs.RUN_OUTCOMES``)."""
    from orchestrator.deploy import runs

    run, state = runs.wait(w, run_id, host, progress, repair_id=repair_id)
    if run.run_page_url:
        progress(f"run page: {run.run_page_url}")
    if state.outcome != "SKIPPED":  # a skipped run ran no task: it has no output
        _print_outputs(w, run, host, as_json)
    code, line = runs.outcome_line(run_id, state, target, job)
    if code:
        print(line, file=sys.stderr)
    else:
        progress(line)
    return code


def cmd_runs(args: argparse.Namespace) -> int:
    from orchestrator.deploy import runs

    w, host = _target_client(args)
    job_id = runs.find_job(w, _job_name(args.job), host, args.target)
    print(f"{'run id':>12}  {'state':<14} {'result':<21} {'started (UTC)':<20} {'duration':>9}")
    for run_id, lifecycle, result, started, duration in runs.list_runs(w, job_id, args.limit, host):
        when = started.strftime("%Y-%m-%d %H:%M:%S") if started else "-"
        took = f"{duration:.0f}s" if duration is not None else "-"
        print(f"{run_id:>12}  {lifecycle:<14} {result:<21} {when:<20} {took:>9}")
    return 0


def _repair_precheck(target: str, params: dict) -> None:
    """Before any request (the run's job is not known yet): ``params`` must pass ``run``'s checks for at least one
    job; once the run is read, they are checked again for its own job, before the repair is sent."""
    from orchestrator.errors import UsageError
    from orchestrator.templates import JOBS

    if not params:
        return
    refusals = []
    for job in JOBS:
        try:
            checked_parameters(target, job, params)
            return
        except UsageError as exc:
            refusals.append(str(exc))
    # the refusal of a job that takes every name says more than "unknown parameter"
    raise UsageError(next((r for r in refusals if not r.startswith("unknown parameter")), refusals[0]))


def cmd_repair(args: argparse.Namespace) -> int:
    from orchestrator.deploy import runs
    from orchestrator.errors import UsageError
    from orchestrator.parameters import parse_overrides
    from orchestrator.templates import JOBS

    params = parse_overrides(args.param)
    _repair_precheck(args.target, params)
    w, host = _target_client(args)

    repaired_job: list[str] = []

    def check(job_id: int, settings) -> None:  # the run's own job, as `run` checks it, before the repair request
        job = next((key for key in JOBS if _job_name(key) == settings.name), None)
        if job is None:
            raise UsageError(f"run {args.run_id} belongs to job '{settings.name}', not one of this project's; "
                             f"repair it from the workspace")
        policy = checked_parameters(args.target, job, params)
        runs.check_parameters(w, job_id, params, host, job, policy, settings)
        repaired_job.append(job)

    repair_id = runs.repair(w, args.run_id, params, host, check)
    progress(f"repairing run {args.run_id}: rerunning its failed tasks (repair {repair_id})")
    return _finish(w, args.run_id, host, args.json, args.target, next(iter(repaired_job), None), repair_id)


def cmd_schedule(args: argparse.Namespace) -> int:
    from orchestrator.deploy import runs

    w, host = _target_client(args)
    name = _job_name(args.job)
    job_id = runs.find_job(w, name, host, args.target)
    status = runs.set_schedule(w, job_id, paused=args.pause, host=host)
    print(f"job {name} ({job_id}): schedule {status}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    import json

    from orchestrator.deploy import deployer
    from orchestrator.deploy.client import workspace_client

    plan = deployer.plan(args.target, args.version, args.dist, allow_build=not args.no_build, host=args.host)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    progress(f"deploying version {plan.version} to target {args.target} ({plan.host})")
    deployer.apply(plan, workspace_client(plan.target, plan.host), progress, reset_schedule=args.reset_schedule)
    return 0


def nutter(args: argparse.Namespace) -> int:
    """The deployed notebook tests on a workspace, with nutter (it reads DATABRICKS_HOST and DATABRICKS_TOKEN)."""
    import json
    import shlex

    from orchestrator.deploy.client import workspace_host
    from orchestrator.errors import UsageError
    from orchestrator.parameters import workspace_test_parameters
    from orchestrator.templates import target_settings, target_variables

    variables = target_variables(args.target)
    host = workspace_host(target_settings(args.target), args.host)
    if not args.cluster_id:
        raise UsageError("give --cluster-id with --target (nutter runs on an existing cluster)")
    command = ["nutter", "run", f"{variables['workspace_root'].rstrip('/')}/tests/notebooks/{args.pattern}",
               args.cluster_id, "--recursive", "--junit_report", "--timeout", str(args.timeout),
               "--notebook_params", json.dumps(workspace_test_parameters(variables))]
    if args.dry_run:
        print(shlex.join(command))
        return 0
    args.junit.parent.mkdir(parents=True, exist_ok=True)
    # nutter reads DATABRICKS_HOST: give it the host checked above, not whatever the shell holds
    return subprocess.call(command, cwd=args.junit.parent, env={**os.environ, "DATABRICKS_HOST": host})
