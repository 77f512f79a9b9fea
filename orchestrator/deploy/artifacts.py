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
from databricks.sdk.errors import NotFound, ResourceDoesNotExist
from databricks.sdk.service.workspace import ExportFormat, ImportFormat, Language

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
        except (NotFound, ResourceDoesNotExist):
            return None

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


def import_notebook(w: WorkspaceClient, source: Path, destination: str) -> bool:
    """Import a source-format Python notebook unless the workspace copy is identical. True if imported."""
    content = source.read_bytes()
    try:
        current = w.workspace.export(destination, format=ExportFormat.SOURCE)
        if current.content and base64.b64decode(current.content).strip() == content.strip():
            return False
    except (NotFound, ResourceDoesNotExist):
        pass
    w.workspace.mkdirs(destination.rsplit("/", 1)[0])
    w.workspace.import_(destination, content=base64.b64encode(content).decode(), format=ImportFormat.SOURCE,
                        language=Language.PYTHON, overwrite=True)
    return True
