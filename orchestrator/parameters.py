"""Job parameters as the operator gives them, shared by local runs (``orchestrator.local``) and runs on a
workspace (``orchestrator.deploy``): ``--param name=value`` pairs, and the parameters of the notebook tests."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from orchestrator.errors import ConfigurationError
from orchestrator.paths import NOTEBOOKS_DIR
from orchestrator.templates import cluster_readable


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``name=value`` pairs as a mapping; a pair without ``=`` or without a name is a usage error."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--param '{pair}' is not of the form name=value")
        overrides[name.strip()] = value
    return overrides


def merge_parameters(defaults: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The job's parameters with the overrides; a name the job does not take is a usage error."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigurationError(f"unknown parameter(s) {', '.join(unknown)}; this job takes: {', '.join(defaults)}")
    return {**defaults, **overrides}


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
