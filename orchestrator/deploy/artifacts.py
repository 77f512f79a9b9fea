"""Uploads that a deploy makes: wheels into a versioned folder, notebooks into the workspace.

Both are idempotent: a wheel folder carries a ``SHA256SUMS`` that a redeploy compares first, and a notebook is
exported and compared before it is imported, so unchanged content is never uploaded again.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service.workspace import ExportFormat, ImportFormat, Language

from orchestrator.deploy.client import is_missing

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


def upload_wheels(w: WorkspaceClient, wheels: list[Path], sums: bytes, base: str, version: str) -> list[str]:
    """Upload the wheels and their SHA256SUMS unless the folder already holds exactly these. Returns what was sent."""
    store = FileStore(w, base)
    sums_path = f"{base.rstrip('/')}/{version}/SHA256SUMS"
    if store.read(sums_path) == sums:
        return []
    sent = []
    for upload in wheel_uploads(wheels, base, version):
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
