"""The workspace client for a target, and the one place SDK errors become operator messages.

Authentication is whatever databricks-sdk resolves (environment variables, a CLI profile, a service principal,
Azure CLI). ``DATABRICKS_HOST`` overrides the target's host. No token ever reaches a message: errors name the
host and the operation only.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError, NotFound, PermissionDenied, Unauthenticated

from orchestrator.errors import UsageError, RemoteError


class DeployError(RemoteError):
    """A workspace operation failed or was refused; the message says which and where (exit code 3)."""


# A path that is not an API answers 404 with this code: a wrong host or API version, not a missing object.
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"


def is_missing(exc: Exception) -> bool:
    """True when ``exc`` says the object asked for does not exist (decided on the error code, not the text)."""
    return isinstance(exc, NotFound) and getattr(exc, "error_code", None) != ENDPOINT_NOT_FOUND


def workspace_host(target: dict) -> str:
    host = os.environ.get("DATABRICKS_HOST") or target.get("host")
    if not host:
        raise UsageError(f"target '{target.get('name')}' has no host (set it in targets.yml or "
                         f"DATABRICKS_HOST)")
    return host.rstrip("/")


def workspace_client(target: dict) -> WorkspaceClient:
    host = workspace_host(target)
    with translate_errors(host, "authenticate"):
        return WorkspaceClient(host=host)


@contextmanager
def translate_errors(host: str, operation: str) -> Iterator[None]:
    try:
        yield
    except Unauthenticated as exc:
        raise DeployError(f"authentication failed at {host} while trying to {operation} (401): check "
                          f"DATABRICKS_TOKEN, your CLI profile or the service principal's credentials") from exc
    except PermissionDenied as exc:
        raise DeployError(f"permission denied at {host} while trying to {operation} (403): {_message(exc)}") from exc
    except NotFound as exc:
        if not is_missing(exc):
            raise DeployError(f"{host} does not serve the API needed to {operation} ({ENDPOINT_NOT_FOUND}): check "
                              f"that the target's host is the workspace URL") from exc
        raise DeployError(f"not found at {host} while trying to {operation}: {_message(exc)}") from exc
    except DatabricksError as exc:
        raise DeployError(f"{operation} failed at {host}: {_message(exc)}") from exc
    except OSError as exc:  # ConnectionError included
        raise DeployError(f"cannot reach {host} to {operation}: {exc}") from exc
    except ValueError as exc:  # the SDK's config resolution (no credentials at all) raises ValueError
        if "auth" in str(exc).lower() or "credential" in str(exc).lower():
            raise UsageError(f"no credentials for {host}: {_first_line(exc)}") from exc
        raise


def _message(exc: Exception) -> str:
    return _first_line(exc) or type(exc).__name__


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""
