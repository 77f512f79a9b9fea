"""Crash points for the fault tests: ``MLOPS_CRASH_AT=<name>`` makes the process kill itself with SIGKILL at that
point, as a lost node or an out-of-memory kill would end it: no ``finally``, no ``atexit``, no MLflow run ended.
Off unless the variable names the point; the names are listed in ``POINTS``. It ships in the wheel on purpose, as a
documented no-op: the fault tests must kill the real job process inside the real stage code, and unset each point
costs one environment lookup.

``crash_point`` kills where it is called. ``crash_during`` kills in the middle of work the JVM or the executors do
(a Delta MERGE, Parquet uploads): a watcher thread polls a condition, such as "a data file of the MERGE exists",
and kills the process the moment it holds, before the work can finish.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from taxi_fares_mlops import environment

CRASH_ENV = environment.CRASH_AT.name
POINTS = (
    "feature_engineering.during_merge",       # a MERGE's data files are being written; its commit is not
    "training.after_fare_model_registered",   # a fare-model version exists; its companions and aliases do not
    "batch_scoring.after_predictions_commit",  # the range's predictions are committed; nothing is published
    "batch_scoring.during_part_uploads",      # a first Parquet part is in Blob storage; the manifest is not
    "streaming_scoring.after_predictions_append",  # a micro-batch's predictions appended, its checkpoint commit not
)
POLL_SECONDS = 0.002


def _armed(name: str) -> bool:
    if name not in POINTS:
        raise ValueError(f"unknown crash point '{name}' (known: {', '.join(POINTS)})")
    return environment.CRASH_AT.get() == name


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    if _armed(name):
        _kill()


@contextmanager
def crash_during(name: str, reached: Callable[[], bool]) -> Iterator[None]:
    """Run the block; if ``name`` is armed, kill the process as soon as ``reached()`` is true during it."""
    if not _armed(name):
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if reached():
                _kill()
            done.wait(POLL_SECONDS)

    threading.Thread(target=watch, name=f"crash {name}", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def new_files(folder: str, suffix: str = ".parquet") -> Callable[[], bool]:
    """A condition for ``crash_during``: a file ending in ``suffix`` appeared under ``folder`` since the first
    check (made by the watcher as the block starts, so nothing is listed unless the point is armed)."""
    before: list[set[Path]] = []

    def files() -> set[Path]:
        root = Path(folder)
        return set(root.rglob(f"*{suffix}")) if root.is_dir() else set()

    def reached() -> bool:
        if not before:
            before.append(files())
            return False
        return bool(files() - before[0])

    return reached
