"""The workspace client for a target, and the one place SDK errors become operator messages.

Authentication is whatever databricks-sdk resolves (environment variables, a CLI profile, a service principal,
Azure CLI). The host is the target's (``targets.yml``) unless the operator says ``--host``; a ``DATABRICKS_HOST``
left in the environment that names another workspace is refused, so that a dev deploy never lands in prod because
of a shell's leftover variable. No token ever reaches a message: errors name the host and the operation only.

A host that is not a Databricks workspace (a typo, a portal, a proxy) answers an HTML 404, which the SDK reads as
``NOT_FOUND``, the code of a missing object: such a 404 is checked once against SCIM ``Me``, which every workspace
serves to any caller, and named for what it is.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator, Optional

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError, NotFound, PermissionDenied, Unauthenticated

from orchestrator.errors import UsageError, RemoteError


class DeployError(RemoteError):
    """A workspace operation failed or was refused; the message says which and where (exit code 3)."""


# A path that is not an API answers 404 with this code: a wrong host or API version, not a missing object.
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
# What the SDK makes of a 404 that is not a workspace's JSON error (an HTML page): the status' reason, or nothing.
# Databricks' own codes for a missing object are RESOURCE_DOES_NOT_EXIST and, on the Files API, NOT_FOUND.
UNCODED_NOT_FOUND = ("NOT_FOUND", None)
# What --host takes: the shape targets.yml takes (https, or plain http to this machine: an emulator, a proxy).
_HOST = re.compile(r"(https://[A-Za-z0-9.-]+|http://(127\.0\.0\.1|localhost))(:\d+)?/?")


def is_missing(exc: Exception) -> bool:
    """True when ``exc`` says the object asked for does not exist (decided on the error code, not the text)."""
    return isinstance(exc, NotFound) and getattr(exc, "error_code", None) != ENDPOINT_NOT_FOUND


def same_host(a: str, b: str) -> bool:
    """Two workspace URLs name the same workspace (scheme and host compared without case or a trailing slash)."""
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def workspace_host(target: dict, host: Optional[str] = None) -> str:
    """Where the target's commands go: ``host`` (``--host``), else the target's host, else ``DATABRICKS_HOST``.

    Fails closed: a ``DATABRICKS_HOST`` that names another workspace than the one chosen is refused (the SDK,
    nutter and MLflow would otherwise read it), unless ``--host`` names that same workspace."""
    name = target.get("name")
    configured = (target.get("host") or "").rstrip("/")
    environment = (os.environ.get("DATABRICKS_HOST") or "").rstrip("/")
    if host is not None and not _HOST.fullmatch(host):
        raise UsageError(f"--host '{host}' is not a workspace URL: give https://<instance> (e.g. "
                         f"https://adb-<id>.<n>.azuredatabricks.net)")
    chosen = (host or configured or environment).rstrip("/")
    if not chosen:
        raise UsageError(f"target '{name}' has no host (set it in targets.yml or DATABRICKS_HOST)")
    if environment and not same_host(environment, chosen):
        if host:
            raise UsageError(f"--host {chosen} and DATABRICKS_HOST {environment} disagree: unset DATABRICKS_HOST "
                             f"or give the same host to both")
        raise UsageError(f"DATABRICKS_HOST is {environment} but target '{name}' is {configured}: unset "
                         f"DATABRICKS_HOST, or pass --host {environment} if that workspace is meant")
    return chosen


def workspace_client(target: dict, host: Optional[str] = None) -> WorkspaceClient:
    host = workspace_host(target, host)
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
        if "invalid access token" in str(exc).lower():  # how a workspace refuses a wrong or expired token
            raise DeployError(f"the token was refused at {host} while trying to {operation} (403 Invalid access "
                              f"token: wrong or expired): renew DATABRICKS_TOKEN or check your CLI profile or the "
                              f"service principal's credentials") from exc
        raise DeployError(f"permission denied at {host} while trying to {operation} (403): {_message(exc)}") from exc
    except NotFound as exc:
        if not is_missing(exc):
            raise DeployError(f"{host} does not serve the API needed to {operation} ({ENDPOINT_NOT_FOUND}): check "
                              f"that the target's host is the workspace URL") from exc
        if getattr(exc, "error_code", None) in UNCODED_NOT_FOUND and not answers_as_workspace(host):
            raise DeployError(f"{host} does not answer as a Databricks workspace (it answered '{_message(exc)}' "
                              f"when asked to {operation}, and so did the API every workspace serves): check "
                              f"--host, DATABRICKS_HOST or the target's host in targets.yml") from exc
        raise DeployError(f"not found at {host} while trying to {operation}: {_message(exc)}") from exc
    except DatabricksError as exc:
        raise DeployError(f"{operation} failed at {host}: {_message(exc)}") from exc
    except OSError as exc:  # ConnectionError included
        raise DeployError(f"cannot reach {host} to {operation}: {exc}") from exc
    except ValueError as exc:  # the SDK's config resolution (no credentials at all) raises ValueError
        if "auth" in str(exc).lower() or "credential" in str(exc).lower():
            raise UsageError(f"no credentials for {host}: {_first_line(exc)}") from exc
        raise


def answers_as_workspace(host: str) -> bool:
    """Whether ``host`` answers SCIM ``Me`` as a workspace does: with the caller, or with a Databricks error (a
    refused token is still a workspace). Only a 404 the SDK could not read as a workspace's says it is not one."""
    try:
        WorkspaceClient(host=host).current_user.me()
    except NotFound as exc:
        return getattr(exc, "error_code", None) not in UNCODED_NOT_FOUND
    except Exception:  # anything else (a refusal, the network) is no evidence against the host
        return True
    return True


def _message(exc: Exception) -> str:
    return _first_line(exc) or type(exc).__name__


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""
