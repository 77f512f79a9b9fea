"""``mlops lineage --model NAME --version N``: what made a registered model version.

Read from the registry and the tracking store the version points at (the local sqlite store, or a target's
workspace): the code (``provenance.*`` tags of the version, else of its run), the data (the run's dataset inputs
of context ``training``: each Delta table and the version read), the MLflow run and the Databricks job and run,
and the run's metrics. What is not recorded is said so, never guessed.
"""
from __future__ import annotations

import argparse
import os

from orchestrator.errors import RemoteError, UsageError
from taxi_fares_mlops import provenance
from taxi_fares_mlops.tracking import Lineage

NOT_RECORDED = "not recorded"


def describe(lineage: Lineage) -> str:
    """The lineage as an operator reads it."""
    code = lineage.code

    def tag(key: str) -> str:
        return code.get(key, NOT_RECORDED)

    lines = [f"model {lineage.model} version {lineage.version}",
             f"  MLflow run     {lineage.run_id} (experiment {lineage.experiment_id}, {lineage.run_status})",
             f"  Databricks     job {tag(provenance.JOB_ID)}, run {tag(provenance.RUN_ID)}",
             "code"]
    if provenance.GIT_COMMIT not in code:
        lines.append(f"  {NOT_RECORDED}: the version was registered before provenance was recorded")
    else:
        lines += [f"  git commit     {tag(provenance.GIT_COMMIT)} (dirty: {tag(provenance.GIT_DIRTY)})",
                  f"  read from      {tag(provenance.CODE_SOURCE)}"]
        for name in provenance.DISTRIBUTIONS:
            lines.append(f"  wheel          {name} {tag(provenance.wheel_version_tag(name))}, "
                         f"sha256 {tag(provenance.wheel_sha256_tag(name))}")
    lines.append("data (Delta tables read by training)")
    if not lineage.tables:
        lines.append(f"  {NOT_RECORDED}: the run logged no training inputs")
    width = max((len(t.table) for t in lineage.tables), default=0)
    for read in lineage.tables:
        shown = NOT_RECORDED if read.version is None else read.version
        lines.append(f"  {read.table.ljust(width)}  version {shown}  {read.location}")
    if lineage.tables and len(lineage.table_versions) == len(lineage.tables):
        lines.append(f"  retrain on it: mlops run training ... --param execute_feature_engineering=false "
                     f"--param table_versions={provenance.format_tables(lineage.table_versions)}")
    lines.append("metrics")
    if not lineage.metrics:
        lines.append(f"  {NOT_RECORDED}")
    width = max((len(k) for k in lineage.metrics), default=0)
    lines += [f"  {name.ljust(width)}  {value!r}" for name, value in sorted(lineage.metrics.items())]
    return "\n".join(lines)


def cmd_lineage(args: argparse.Namespace, root: str) -> int:
    """Print what made a model version, from the local registry or a target's. A version that does not exist is a
    usage error (exit 2); a workspace that fails or refuses, a remote error (exit 3), and a local store that
    fails (locked, unreadable) a usage error."""
    from orchestrator.registry import use_registry
    from taxi_fares_mlops.errors import RegistryError, TrackingError
    from taxi_fares_mlops.tracking import read_lineage

    if args.target:
        from orchestrator.deploy.client import workspace_host
        from orchestrator.templates import target_settings

        # MLflow's databricks store reads DATABRICKS_HOST: the checked host, not whatever the shell holds
        os.environ["DATABRICKS_HOST"] = workspace_host(target_settings(args.target), args.host)
    elif not args.model:
        raise UsageError("--model is required with the local registry")
    variables = use_registry(root, args.target)
    model = args.model or variables["model_name"]
    try:
        lineage = read_lineage(model, args.version)
    except RegistryError as exc:
        raise UsageError(str(exc)) from exc
    except TrackingError as exc:
        raise (RemoteError if args.target else UsageError)(str(exc)) from exc
    print(describe(lineage))
    return 0
