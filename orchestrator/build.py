"""Build the two wheels (the one implementation behind `make dist` and the local runner's rebuilds).

The MLOps wheel is stamped with the commit it was built from (``taxi_fares_mlops/_build_info.json``: the commit,
whether the tree was dirty, the build time) before ``SHA256SUMS`` is written, so the digest covers the stamp: a
job records the commit of the code it runs from the code itself (``taxi_fares_mlops.provenance``).
"""
from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.errors import UsageError
from orchestrator.paths import REPO_ROOT, project_version
from taxi_fares_mlops import outputs, provenance
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


def _is_dist(folder: Path) -> bool:
    """A folder holding only what ``build`` writes (wheels of these projects and ``SHA256SUMS``): an output of an
    earlier version of the tool, from before it marked its folders."""
    names = [p.name for p in folder.iterdir()]
    return all(n == "SHA256SUMS" or re.fullmatch(r"(taxi_fares|taxi_fares_mlops)-[^/]+-py3-none-any\.whl", n)
               for n in names)


def build(dist: Path) -> list[Path]:
    """Build exactly the two wheels and ``SHA256SUMS`` into ``dist``, replacing it as a whole once both are built.
    A ``dist`` that holds anything else is refused before anything is built (nothing is deleted)."""
    with build_lock():
        return _build(dist)


def _build(dist: Path) -> list[Path]:
    try:  # the path as given: a symbolic link there is refused, not followed
        outputs.check_replaceable(Path(dist), _is_dist, "the wheels")
    except outputs.ForeignOutputError as exc:
        raise UsageError(str(exc)) from None
    dist = Path(dist).resolve()
    dist.parent.mkdir(parents=True, exist_ok=True)
    building = outputs.building_folder(dist)
    try:
        for name, project in PROJECTS.items():
            logger.info("building %s wheel", name)
            shutil.rmtree(project / "build", ignore_errors=True)
            done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                                   str(building), str(project)], capture_output=True, text=True)
            if done.returncode != 0:  # the build's own output only when it fails
                raise UsageError(f"building the {name} wheel failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            shutil.rmtree(project / "build", ignore_errors=True)
        names = wheel_names(project_version())
        info = provenance.build_info(provenance.working_tree(REPO_ROOT),
                                     dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        stamp(building / names[list(PROJECTS).index("taxi_fares_mlops")], STAMPED, json.dumps(info, sort_keys=True))
        (building / "SHA256SUMS").write_text("".join(f"{sha256(building / n)}  {n}\n" for n in names))
        (building / outputs.MARKER).write_text("written by `mlops build`: replaced as a whole by the next build\n")
        outputs.swap_in(building, dist)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return [dist / name for name in wheel_names(project_version())]


STAMPED = f"taxi_fares_mlops/{provenance.BUILD_INFO}"


def stamp(wheel: Path, name: str, text: str) -> None:
    """Add the file ``name`` holding ``text`` to ``wheel``, listed in its RECORD with its digest and size (pip
    checks an installed wheel's files against it). A zip cannot replace an entry: the wheel is written anew."""
    data = text.encode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel) as original:
        entries = [(entry, original.read(entry)) for entry in original.infolist()]
    record = next(entry for entry, _ in entries if entry.filename.endswith(".dist-info/RECORD"))
    stamped = wheel.with_name(wheel.name + ".stamping")
    with zipfile.ZipFile(stamped, "w", zipfile.ZIP_DEFLATED) as out:
        for entry, content in entries:
            if entry is not record and entry.filename != name:
                out.writestr(entry, content)
        out.writestr(name, data)
        listed = dict(entries)[record].decode("utf-8")
        listed = "".join(line for line in listed.splitlines(keepends=True) if not line.startswith(f"{name},"))
        out.writestr(record, f"{listed}{name},sha256={digest},{len(data)}\n")  # RECORD last, as wheels have it
    stamped.replace(wheel)


def ensure_built(dist: Path) -> list[Path]:
    """The current wheels, rebuilt only if stale (checked again once another process's build is over)."""
    if is_stale(dist):
        with build_lock():
            if is_stale(dist):
                return _build(dist)
    return [dist / name for name in wheel_names(project_version())]
