"""The operator tool's errors: one base, ``OperatorError``, carrying the exit code, caught once in ``mlops``'s
``main``. (The wheel's errors are another tree, rooted at ``taxi_fares_mlops.errors.MlopsError``: what a job
raises. The operator tool turns those into one of these where it runs a job.)

Exit codes (also in ``mlops --help`` and docs/reference/exit-codes.md):

    0  success
    1  the job (or a notebook test) ran and failed (on a workspace also SUCCESS_WITH_FAILURES: some tasks failed)
    2  usage or configuration error: bad arguments, parameters, targets file, missing wheels; nothing was started
    3  a remote service failed or refused: the workspace (authentication, permissions, API errors), the network
    4  a workspace run was stopped before it finished: it timed out or was canceled
    5  a workspace run was skipped, nothing ran: the job already had its maximum of active runs (or a full queue)

``orchestrator.deploy.runs.RUN_OUTCOMES`` maps each way a workspace run ends to one of these.
"""
from __future__ import annotations

EXIT_CODES = {
    0: "success",
    1: "the job (or a notebook test) ran and failed (on a workspace, also a run whose tasks partly failed)",
    2: "usage or configuration error (nothing was started)",
    3: "a remote service failed or refused (workspace, authentication, network)",
    4: "a workspace run was stopped before it finished: timed out or canceled",
    5: "a workspace run was skipped, nothing ran: the job already had its maximum of active runs (or a full queue)",
}


class OperatorError(Exception):
    """An error the operator can act on; its message is printed as one line, without a traceback."""

    exit_code = 2


class UsageError(OperatorError):
    """Bad arguments, parameters, targets or artifacts: found before anything was started."""

    exit_code = 2


class RemoteError(OperatorError):
    """A remote service (the Databricks workspace) failed or refused a request."""

    exit_code = 3


def exit_codes_help() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


class JobFailed(OperatorError):
    """A job the command ran did not succeed (the demo stops at the first)."""

    exit_code = 1
