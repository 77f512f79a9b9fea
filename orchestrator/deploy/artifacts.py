"""Uploads that a deploy makes: wheels into a versioned folder, notebooks into the workspace.

Both are idempotent: a wheel folder carries a ``SHA256SUMS`` that a redeploy compares first (a released version is
never overwritten with other bytes, and each wheel is checked against it and repaired if it differs), and a notebook
is exported and compared before it is imported, so unchanged content is never uploaded again.
"""
from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service.workspace import ExportFormat, ImportFormat, Language

from orchestrator.deploy.client import is_missing
from orchestrator.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    source: Path
    destination: str


class FileStore:
    """Files in a Unity Catalog volume (``/Volumes/...``) or, as the legacy option, DBFS (``dbfs:/...``)."""

    def __init__(self, w: WorkspaceClient, base: str):
        self.w = w
        self.dbfs = base.startswith("dbfs:")
        if not (self.dbfs or base.startswith("/Volumes/")):
            raise ValueError(f"wheel_base_path '{base}' must be a volume path (/Volumes/...) or dbfs:/...")

    def read(self, path: str) -> Optional[bytes]:
        try:
            if self.dbfs:
                status = self.w.dbfs.get_status(_dbfs(path))
                return base64.b64decode(self.w.dbfs.read(_dbfs(path), length=status.file_size).data or "")
            return self.w.files.download(path).contents.read()
        except NotFound as exc:
            if is_missing(exc):
                return None
            raise

    def write(self, path: str, data: bytes) -> None:
        import io

        if self.dbfs:
            self.w.dbfs.upload(_dbfs(path), io.BytesIO(data), overwrite=True)
        else:
            self.w.files.upload(path, io.BytesIO(data), overwrite=True)


def _dbfs(path: str) -> str:
    return path[len("dbfs:"):] if path.startswith("dbfs:") else path


def wheel_uploads(wheels: list[Path], base: str, version: str) -> list[Upload]:
    folder = f"{base.rstrip('/')}/{version}"
    return [Upload(w, f"{folder}/{w.name}") for w in wheels]


def upload_wheels(w: WorkspaceClient, wheels: list[Path], sums: bytes, base: str, version: str,
                  say: Callable[[str], None] = logger.info) -> list[str]:
    """Upload the wheels and their SHA256SUMS; returns what was sent.

    A version folder with a SHA256SUMS is released: its wheels are never replaced by other bytes (refused: change
    VERSION). A redeploy of the same wheels downloads each one, checks it against SHA256SUMS and repairs (says and
    re-uploads) any that differ or are missing."""
    store = FileStore(w, base)
    folder = f"{base.rstrip('/')}/{version}"
    sums_path = f"{folder}/SHA256SUMS"
    released = store.read(sums_path)
    if released is not None and released != sums:
        raise UsageError(f"version {version} is already released at {folder} with other wheels (its SHA256SUMS "
                         f"differs from the one built here): a released version is never overwritten; change VERSION")
    uploads = wheel_uploads(wheels, base, version)
    if released is not None:
        lines = [line.split(None, 1) for line in sums.decode().splitlines() if line.strip()]
        expected = {name.strip(): digest for digest, name in lines}
        repaired = []
        for upload in uploads:
            current = store.read(upload.destination)
            if current is None or hashlib.sha256(current).hexdigest() != expected.get(upload.source.name):
                found = "missing" if current is None else f"sha256 {hashlib.sha256(current).hexdigest()}"
                say(f"wheel {upload.destination} differs from SHA256SUMS ({found}, expected "
                    f"{expected.get(upload.source.name)}): repairing it")
                store.write(upload.destination, upload.source.read_bytes())
                repaired.append(upload.destination)
        return repaired
    sent = []
    for upload in uploads:
        store.write(upload.destination, upload.source.read_bytes())
        sent.append(upload.destination)
    store.write(sums_path, sums)  # last: a folder with SHA256SUMS is complete
    return sent + [sums_path]


NOTEBOOK_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"


def notebook_cells(text: str) -> list[str]:
    """A source-format notebook's cells without the blank lines around them: what survives a workspace's
    import and export, which rewrites the header and the space around separators in its own canonical form."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[0].strip() == NOTEBOOK_HEADER:
        lines = lines[1:]
    cells: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip() == CELL_SEPARATOR:
            cells.append(current)
            current = []
        else:
            current.append(line.rstrip())
    return ["\n".join(cell).strip("\n") for cell in cells + [current]]


def import_notebook(w: WorkspaceClient, source: Path, destination: str) -> bool:
    """Import a source-format Python notebook unless the workspace copy has the same cells. True if imported."""
    content = source.read_bytes()
    try:
        current = w.workspace.export(destination, format=ExportFormat.SOURCE)
        exported = base64.b64decode(current.content or "").decode("utf-8")
        if notebook_cells(exported) == notebook_cells(content.decode("utf-8")):
            return False
    except NotFound as exc:
        if not is_missing(exc):
            raise
    w.workspace.mkdirs(destination.rsplit("/", 1)[0])
    w.workspace.import_(destination, content=base64.b64encode(content).decode(), format=ImportFormat.SOURCE,
                        language=Language.PYTHON, overwrite=True)
    return True
