"""Build the two wheels (the one implementation behind `make dist` and the local runner's rebuilds)."""
from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.errors import UsageError
from orchestrator.paths import REPO_ROOT, project_version
from taxi_fares_mlops.checksums import sha256  # noqa: F401  (build.sha256: what the tool's callers use)

logger = logging.getLogger(__name__)

PROJECTS = {"taxi_fares": REPO_ROOT / "ml_source", "taxi_fares_mlops": REPO_ROOT / "ml_ops"}
# Builds use each project's own build/ folder and the egg-info beside its sources, whatever the output folder: one
# build at a time per checkout, across processes (two `mlops run --local` started together in a fresh clone).
BUILD_LOCK = REPO_ROOT / ".build.lock"


@contextmanager
def build_lock() -> Iterator[None]:
    """Wait for any other process building this checkout's wheels, then hold the lock (the operating system
    releases it when the process ends, however it ends)."""
    with open(BUILD_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building the wheels")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wheel_names(version: str) -> list[str]:
    return [f"{name}-{version}-py3-none-any.whl" for name in PROJECTS]


def _sources_mtime() -> float:
    files = [REPO_ROOT / "VERSION"]
    for project in PROJECTS.values():
        files += [p for p in project.rglob("*") if p.is_file() and "build" not in p.parts
                  and ".egg-info" not in str(p) and "__pycache__" not in p.parts]
    return max(p.stat().st_mtime for p in files)


def is_stale(dist: Path) -> bool:
    """True when a wheel of the current version is missing or older than any source file."""
    wheels = [dist / name for name in wheel_names(project_version())]
    if not all(w.exists() for w in wheels):
        return True
    return min(w.stat().st_mtime for w in wheels) < _sources_mtime()


def build(dist: Path) -> list[Path]:
    """Build exactly the two wheels into ``dist`` (emptied first) and write ``SHA256SUMS``."""
    with build_lock():
        return _build(dist)


def _build(dist: Path) -> list[Path]:
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    for name, project in PROJECTS.items():
        logger.info("building %s wheel", name)
        shutil.rmtree(project / "build", ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                               str(project)], capture_output=True, text=True)
        if done.returncode != 0:  # the build's own output only when it fails
            raise UsageError(f"building the {name} wheel failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        shutil.rmtree(project / "build", ignore_errors=True)
    wheels = [dist / name for name in wheel_names(project_version())]
    sums = "".join(f"{sha256(w)}  {w.name}\n" for w in wheels)
    (dist / "SHA256SUMS").write_text(sums)
    return wheels


def ensure_built(dist: Path) -> list[Path]:
    """The current wheels, rebuilt only if stale (checked again once another process's build is over)."""
    if is_stale(dist):
        with build_lock():
            if is_stale(dist):
                return _build(dist)
    return [dist / name for name in wheel_names(project_version())]
