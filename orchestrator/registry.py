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

    from taxi_fares_mlops.tracking import use_store

    if target:
        variables = target_variables(target)
        registry = variables.get("mlflow_registry_uri") or "databricks"
        os.environ.update({"MLFLOW_TRACKING_URI": "databricks", "MLFLOW_REGISTRY_URI": registry})
        use_store("databricks", registry)
        return variables
    if not local:
        raise UsageError("say where the registry is: --local or --target T")
    uri = tracking_uri(root)
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    use_store(uri, uri)
    return {}


def workspace_identity(target: str, host: Optional[str] = None) -> str:
    """Who the SDK authenticates as on the target's workspace (SCIM ``Me``: a user's name, a service principal's
    application id): what a remote approval records. Never an environment variable, which anyone can set; a
    workspace that cannot say who is calling refuses the approval (``DeployError``, exit 3) before the registry is
    touched."""
    from orchestrator.deploy.client import DeployError, translate_errors, workspace_client, workspace_host
    from orchestrator.templates import target_settings

    settings = target_settings(target)
    chosen = workspace_host(settings, host)
    client = workspace_client(settings, chosen)
    with translate_errors(chosen, "read the caller's identity"):
        me = client.current_user.me()
    if not me.user_name:
        raise DeployError(f"{chosen} did not name the identity this command authenticates as (SCIM Me has no "
                          f"userName): cannot record who approves; check the credentials the SDK uses")
    return me.user_name
