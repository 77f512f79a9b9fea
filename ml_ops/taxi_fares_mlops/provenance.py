"""What code made a run: the git commit, whether the tree was dirty, both wheels and their SHA-256, and the
Databricks job and run, as ``provenance.*`` tags for the run and the model versions it registers.

The commit comes from the wheel itself: ``mlops build`` writes ``taxi_fares_mlops/_build_info.json`` (commit,
dirty flag, build time) into the MLOps wheel before it lists the wheel's SHA-256 in ``SHA256SUMS``, so the commit
is part of the bytes that digest covers and that a released version folder never replaces. A job parameter or a
base parameter would say what the deployer or a run claimed, not what the installed code is. Run from the
sources (an editable install: the tests, a notebook on a checkout), the working tree's commit and dirty flag are
read with git instead.

Each wheel's SHA-256 is the one ``SHA256SUMS`` lists beside the file pip installed it from (pip records that file
and its digest in the installed distribution's ``direct_url.json``); anything else is said plainly in the value.

The data a run read is recorded by ``tracking.log_table_inputs`` (MLflow dataset inputs); its summary,
``provenance.tables``, is in the ``table=version`` form the training job's ``table_versions`` parameter takes.

Standard library only: ``mlops build`` uses it to stamp the wheel.
"""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

PREFIX = "provenance."
GIT_COMMIT = "provenance.git_commit"
GIT_DIRTY = "provenance.git_dirty"
CODE_SOURCE = "provenance.code_source"
JOB_ID = "provenance.databricks_job_id"
RUN_ID = "provenance.databricks_run_id"
TABLES = "provenance.tables"
# On each dataset input of a run: the table and its version (MLflow's Delta source leaves version 0 out).
INPUT_TABLE, INPUT_VERSION = "provenance.table", "provenance.delta_version"
TRAINING_CONTEXT = "training"

DISTRIBUTIONS = ("taxi_fares", "taxi_fares_mlops")
BUILD_INFO = "_build_info.json"  # inside the taxi_fares_mlops package, written by `mlops build`
LOCAL = "local"
EDITABLE = "unbuilt: editable install"
# Tags MLflow sets on a run started in a Databricks job, from the notebook's context (not from job parameters).
MLFLOW_JOB_ID, MLFLOW_JOB_RUN_ID = "mlflow.databricks.jobID", "mlflow.databricks.jobRunID"


def wheel_version_tag(distribution: str) -> str:
    return f"provenance.wheel.{distribution}"


def wheel_sha256_tag(distribution: str) -> str:
    return f"provenance.wheel.{distribution}.sha256"


@dataclass(frozen=True)
class Commit:
    """A git commit and whether the tree differed from it (None: unknown). ``commit`` says why when unknown."""

    commit: str
    dirty: Optional[bool]


def working_tree(path: Path) -> Commit:
    """The commit checked out at ``path``, and whether any file differs from it: a tracked file changed or an
    untracked one (not ignored) present, since either can end up in a wheel or a run without being in the commit."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=60)
        if head.returncode != 0:
            reason = (head.stderr.strip().splitlines() or ["git failed"])[0]
            return Commit(f"unknown: {path} is not a git checkout ({reason})", None)
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Commit(f"unknown: git did not answer ({exc})", None)
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return Commit(head.stdout.strip(), dirty)


def build_info(commit: Commit, built_at: str) -> dict:
    """What ``mlops build`` writes into the MLOps wheel as ``_build_info.json``."""
    return {"git_commit": commit.commit, "git_dirty": commit.dirty, "built_at": built_at}


def installed_build_info() -> Optional[dict]:
    """The installed MLOps wheel's build info; None when the package runs from its sources."""
    try:
        return json.loads(resources.files("taxi_fares_mlops").joinpath(BUILD_INFO).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _direct_url(distribution: str) -> Optional[dict]:
    """What pip recorded about where it installed ``distribution`` from (PEP 610), or None."""
    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _local_path(url: str) -> Optional[Path]:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def code_commit() -> tuple[Commit, str]:
    """(commit, where it was read): the wheel's build info, else the working tree of an editable install."""
    info = installed_build_info()
    if info is not None:
        return Commit(str(info.get("git_commit")), info.get("git_dirty")), f"wheel built {info.get('built_at')}"
    direct = _direct_url("taxi_fares_mlops") or {}
    source = _local_path(direct.get("url", "")) if (direct.get("dir_info") or {}).get("editable") else None
    if source is None:
        return Commit("unknown: the installed wheel carries no build info (built without `mlops build`)", None), \
            "wheel without build info"
    return working_tree(source), f"working tree {source.parent}"


def wheel_sha256(distribution: str) -> tuple[str, str]:
    """(version, SHA-256) of an installed wheel: the digest ``SHA256SUMS`` lists for the file pip installed, or a
    plain statement of why there is none (an editable install, no ``SHA256SUMS``, a file that differs)."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed", "not installed"
    direct = _direct_url(distribution)
    if direct is None:
        return version, "unknown: pip recorded no source for it (no direct_url.json)"
    if (direct.get("dir_info") or {}).get("editable"):
        return version, EDITABLE
    archive = direct.get("archive_info") or {}
    installed = (archive.get("hashes") or {}).get("sha256") or (archive.get("hash") or "").partition("sha256=")[2]
    path = _local_path(direct.get("url", ""))
    if path is None:
        return version, f"unlisted: installed from {direct.get('url')} (sha256 {installed or 'unknown'})"
    sums = path.parent / "SHA256SUMS"
    try:
        lines = [line.split(None, 1) for line in sums.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return version, f"unlisted: no SHA256SUMS beside {path} (installed sha256 {installed or 'unknown'})"
    listed = {name.strip(): digest for digest, name in (pair for pair in lines if len(pair) == 2)}
    digest = listed.get(path.name)
    if digest is None:
        return version, f"unlisted: {sums} does not list {path.name} (installed sha256 {installed or 'unknown'})"
    if installed and installed != digest:
        logger.warning("wheel %s: installed sha256 %s, but %s lists %s", path.name, installed, sums, digest)
        return version, f"MISMATCH: installed {installed}, SHA256SUMS lists {digest}"
    return version, digest


def code_tags(job_id: str, run_id: str) -> dict[str, str]:
    """The run's code provenance as tags. ``job_id``/``run_id``: the Databricks job and run ("" outside a job:
    recorded as 'local')."""
    commit, source = code_commit()
    tags = {GIT_COMMIT: commit.commit, GIT_DIRTY: {True: "true", False: "false"}.get(commit.dirty, "unknown"),
            CODE_SOURCE: source, JOB_ID: job_id or LOCAL, RUN_ID: run_id or LOCAL}
    for distribution in DISTRIBUTIONS:
        version, digest = wheel_sha256(distribution)
        tags[wheel_version_tag(distribution)] = version
        tags[wheel_sha256_tag(distribution)] = digest
    return tags


def job_ids(run_tags: Mapping[str, str], job_parameter: str, run_parameter: str) -> tuple[str, str]:
    """The Databricks job and run ids: those MLflow read from the notebook's context when the run started, which
    a run's parameters cannot change, else the job parameters (``{{job.id}}``, ``{{job.run_id}}``); "" outside a
    job."""
    return (run_tags.get(MLFLOW_JOB_ID) or job_parameter, run_tags.get(MLFLOW_JOB_RUN_ID) or run_parameter)


def format_tables(versions: Mapping[str, int]) -> str:
    """``table=version,...``: the form the training job's ``table_versions`` parameter takes."""
    return ",".join(f"{table}={version}" for table, version in versions.items())


def of(tags: Mapping[str, str]) -> dict[str, str]:
    """The provenance tags among ``tags``."""
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}
