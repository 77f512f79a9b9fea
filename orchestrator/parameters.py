"""Job parameters as the operator gives them, shared by local runs (``orchestrator.local``) and runs on a
workspace (``orchestrator.deploy``): ``--param name=value`` pairs, and the parameters of the notebook tests."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from orchestrator.errors import UsageError
from orchestrator.paths import NOTEBOOKS_DIR
from orchestrator.templates import cluster_readable


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``name=value`` pairs as a mapping; a pair without ``=`` or without a name is a usage error."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param '{pair}' is not of the form name=value")
        overrides[name.strip()] = value
    return overrides


def merge_parameters(defaults: Mapping[str, str], overrides: Mapping[str, str],
                     job: Optional[str] = None, policy: Optional[str] = None) -> dict[str, str]:
    """The job's parameters with the overrides; a name the job does not take is a usage error (the wheel location
    and the target policy are deploy-time base parameters, never job parameters: naming them is such a name), and
    so is a value its notebook would refuse: checked with the job's own config class and, given ``policy`` (the
    target's ``target_policy`` JSON), against the target's gates, lakehouse and registry, before any run starts.
    ``mlops run --local``, ``run --target`` and ``repair --param`` all come through here."""
    from taxi_fares_mlops.config import DEPLOY_PARAMETERS

    fixed = sorted(set(overrides) & set(DEPLOY_PARAMETERS))
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        why = (f" ({', '.join(fixed)} fixed at deploy time: deploy another version or target instead)"
               if fixed else "")
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)}{why}; this job takes: {', '.join(defaults)}")
    params = {**defaults, **overrides}
    if job is not None:
        check_values(job, params, policy)
    return params


def check_values(job: str, params: Mapping[str, str], policy: Optional[str] = None) -> None:
    """Raise UsageError listing every value of ``params`` the notebooks of ``job`` would refuse (under the target
    ``policy``, the notebook task's ``target_policy``, when given)."""
    from taxi_fares_mlops.config import CONFIGS, DEPLOY_PARAMETERS, TARGET_POLICY
    from taxi_fares_mlops.errors import ConfigError

    config = CONFIGS.get(job)
    if config is None:
        return
    # what the notebook reads: its widgets' declared defaults (parameters the job does not define, such as a task's
    # step), under the job parameters
    values = {**config.defaults(), **{k: v for k, v in params.items() if k not in DEPLOY_PARAMETERS}}
    if policy:
        values[TARGET_POLICY] = policy
    try:
        config.from_mapping(values)
    except ConfigError as exc:
        raise UsageError(f"{job}: {exc}") from None


def local_test_parameters(lakehouse: Path, variables: dict) -> dict[str, str]:
    """Notebook tests run locally: this repository's orchestrator notebooks, a fresh lakehouse per notebook."""
    return {
        "orchestrator_path": str(NOTEBOOKS_DIR),
        "wheel_base_path": variables["wheel_base_path"],
        "wheel_version": variables["wheel_version"],
        "lakehouse_root": str(lakehouse),
        "mlflow_experiment": "notebook_tests",
        "model_name": "taxi_fares_notebook_tests",
    }


def workspace_test_parameters(variables: dict) -> dict[str, str]:
    """Notebook tests on a workspace (nutter): the deployed notebooks and wheels, a lakehouse apart from the jobs'."""
    model = variables["model_name"]
    return {
        "orchestrator_path": f"{variables['workspace_root'].rstrip('/')}/orchestrator/notebooks",
        "wheel_base_path": cluster_readable(variables["wheel_base_path"]),
        "wheel_version": variables["wheel_version"],
        "lakehouse_root": f"{variables['lakehouse_root'].rstrip('/')}/notebook_tests",
        "mlflow_experiment": f"{variables['mlflow_experiment']}_notebook_tests",
        "model_name": f"{model}_notebook_tests",
    }
