"""Which MLflow registry a command talks to: the local sqlite store (``--local``, the default for commands that
only make sense locally) or a deployment target's workspace registry (``--target T``: MLflow's ``databricks``
URIs, authenticated like databricks-sdk, and the target's ``mlflow_registry_uri``, e.g. Unity Catalog)."""
from __future__ import annotations

import os
from typing import Optional

from orchestrator.errors import UsageError


def use_registry(root: str, target: Optional[str], local: bool = True) -> dict:
    """Point MLflow at the chosen registry; returns the target's template variables ({} for the local one)."""
    from orchestrator.local.runner import tracking_uri
    from orchestrator.templates import target_variables

    if target:
        variables = target_variables(target)
        os.environ.update({"MLFLOW_TRACKING_URI": "databricks",
                           "MLFLOW_REGISTRY_URI": variables.get("mlflow_registry_uri") or "databricks"})
        return variables
    if not local:
        raise UsageError("say where the registry is: --local or --target T")
    uri = tracking_uri(root)
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    return {}
