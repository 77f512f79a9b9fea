"""Crash points for the fault tests: ``MLOPS_CRASH_AT=<name>`` makes the process kill itself with SIGKILL when it
reaches ``crash_point(<name>)``, as a lost node or an out-of-memory kill would end it: no ``finally``, no
``atexit``, no MLflow run ended. Off unless the variable names that point; the names are listed in ``POINTS``.
"""
from __future__ import annotations

import os
import signal

CRASH_ENV = "MLOPS_CRASH_AT"
POINTS = (
    "training.after_fare_model_registered",   # a fare-model version exists; its companions and aliases do not
)


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point '{name}' (known: {', '.join(POINTS)})")
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
