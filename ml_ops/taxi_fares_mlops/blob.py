"""Publishing predictions to Azure Blob storage: Parquet part files plus a manifest, written last.

Each Spark partition writes and uploads its own part on the executor (nothing is collected to the driver but one
small row per part: its path, row count, SHA-256 and size). Only when every part is confirmed does the driver
write ``_manifest.json``, so a reader that sees a manifest can trust it and a failed publish leaves none. Then,
last, the range folder's ``_current.json`` names this run's folder: each range has one current set of results
(``current``); the sets of earlier runs stay readable, no longer current.

Credentials (a connection string, or one holding a SAS) come from the secret scope (``storage-connection-string``)
or ``AZURE_STORAGE_CONNECTION_STRING``. Transient errors are retried with backoff by the SDK; a permanent error
raises a ``StorageError`` naming the account, container and path, never the secret.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from pyspark.sql import DataFrame

from taxi_fares_mlops.errors import StorageError, first_line

logger = logging.getLogger(__name__)

STORAGE_SECRET = "storage-connection-string"
STORAGE_ENV = "AZURE_STORAGE_CONNECTION_STRING"
MANIFEST = "_manifest.json"
# Per range folder, written after a run's manifest: names the run folder that is the range's current results.
CURRENT = "_current.json"
PART_SCHEMA = "path string, rows long, sha256 string, bytes long"
_ERROR_MARK = "BLOB_PUBLISH_ERROR:"
# Retries: 3 with exponential backoff from 0.5 s; short connection timeout so a dead endpoint fails fast.
CLIENT_OPTIONS = {"retry_total": 3, "initial_backoff": 0.5, "increment_base": 2, "connection_timeout": 5,
                  "read_timeout": 60}


@dataclass(frozen=True)
class BlobTarget:
    connection_string: str = field(repr=False)
    container: str

    @property
    def account(self) -> str:
        found = re.search(r"AccountName=([^;]+)", self.connection_string)
        if found:
            return found.group(1)
        endpoint = re.search(r"BlobEndpoint=https?://([^/;]+)", self.connection_string)
        return endpoint.group(1) if endpoint else "<unknown account>"

    def where(self, path: str = "") -> str:
        return f"account '{self.account}', container '{self.container}'" + (f", path '{path}'" if path else "")


def scrub(text: str, connection_string: str) -> str:
    """Text with the connection string's secrets (account key, SAS signature, query strings) removed."""
    for secret in re.findall(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", connection_string):
        text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?***", text)


def _service(connection_string: str):
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    options: dict[str, Any] = dict(CLIENT_OPTIONS)
    retry = ExponentialRetry(initial_backoff=options.pop("initial_backoff"),
                             increment_base=options.pop("increment_base"), retry_total=options.pop("retry_total"))
    return BlobServiceClient.from_connection_string(connection_string, retry_policy=retry, **options)


EXECUTOR_SAS_HOURS = 6  # longer than any publish; a task retried late still holds a valid credential


def executor_connection_string(target: BlobTarget) -> str:
    """What the executors get to upload parts with: never the account key. A connection string holding a key is
    turned, on the driver, into one holding a SAS for this container alone (create and write, no read, list or
    delete), valid for ``EXECUTOR_SAS_HOURS``; one that holds a SAS already is passed as it is."""
    fields = dict(part.split("=", 1) for part in target.connection_string.split(";") if "=" in part)
    if "AccountKey" not in fields:
        return target.connection_string
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    service = _service(target.connection_string)
    sas = generate_container_sas(
        account_name=service.account_name, container_name=target.container, account_key=fields["AccountKey"],
        permission=ContainerSasPermissions(create=True, write=True),
        start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=EXECUTOR_SAS_HOURS))
    return f"BlobEndpoint={service.url.rstrip('/')};SharedAccessSignature={sas}"


def range_prefix(model: str, start: dt.date, end: dt.date, shadow_version: Optional[str] = None) -> str:
    """The folder of a range's published results: the champion's, or (``shadow_version``) another version's,
    which never share the champion's folder or its current pointer."""
    if shadow_version is None:
        return f"predictions/{model}/{start}_{end}"
    return f"shadow_predictions/{model}/version={shadow_version}/{start}_{end}"


def prefix(model: str, start: dt.date, end: dt.date, run_id: str, shadow_version: Optional[str] = None) -> str:
    """One run's folder inside its range's folder."""
    return f"{range_prefix(model, start, end, shadow_version)}/run={run_id}"


def current(target: BlobTarget, range_folder: str) -> Optional[dict]:
    """The manifest of the range's current results (the run ``CURRENT`` names), or None when nothing was
    published for the range. Older runs' folders stay readable; only this one is current."""
    from azure.core.exceptions import ResourceNotFoundError

    container = _service(target.connection_string).get_container_client(target.container)
    try:
        pointer = json.loads(container.get_blob_client(f"{range_folder}/{CURRENT}").download_blob().readall())
    except ResourceNotFoundError:
        return None
    return json.loads(container.get_blob_client(pointer["manifest"]).download_blob().readall())


def _partition_uploader(connection_string: str, container: str, folder: str):
    """The function each partition runs on its executor: Arrow batches -> one Parquet blob -> one summary row."""

    def upload(batches: Iterator) -> Iterator:
        import hashlib
        import io
        import uuid

        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        received = list(batches)
        if not received or sum(b.num_rows for b in received) == 0:
            return
        table = pa.Table.from_batches(received)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        name = f"{folder}/part-{TaskContext.get().partitionId():05d}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            _service(connection_string).get_blob_client(container, name).upload_blob(data, overwrite=True)
        except Exception as exc:  # report one clean line to the driver, without the secret
            detail = scrub(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", connection_string)
            raise RuntimeError(f"{_ERROR_MARK} uploading {name} failed: {detail}") from None
        yield pa.RecordBatch.from_pydict({"path": [name], "rows": [table.num_rows],
                                          "sha256": [hashlib.sha256(data).hexdigest()], "bytes": [len(data)]})

    return upload


def has_parts(target: BlobTarget, folder: str) -> bool:
    """True when a Parquet part exists under ``folder`` (the crash tests' condition)."""
    container = _service(target.connection_string).get_container_client(target.container)
    return any(True for _ in container.list_blobs(name_starts_with=f"{folder}/part-"))


def ensure_container(target: BlobTarget) -> None:
    from azure.core.exceptions import ResourceExistsError

    try:
        _service(target.connection_string).create_container(target.container)
        logger.info("created blob container %s", target.container)
    except ResourceExistsError:
        pass
    except Exception as exc:
        raise StorageError(f"could not create or open {target.where()}: "
                           f"{scrub(first_line(exc, with_type=True), target.connection_string)}") from None


def as_parts(df: DataFrame, rows: int, rows_per_part: int) -> DataFrame:
    """``df`` in one partition per part of about ``rows_per_part`` rows. One part (a day's scoring) takes the rows
    as they are read, merged without a shuffle; more are balanced by one."""
    parts = max(1, -(-rows // rows_per_part))
    return df.coalesce(1) if parts == 1 else df.repartition(parts)


def publish(df: DataFrame, target: BlobTarget, folder: str, metadata: dict, rows_per_part: int = 1_000_000,
            rows: Optional[int] = None) -> dict:
    """Upload ``df`` as Parquet parts of about ``rows_per_part`` rows under ``folder``, then the manifest.

    Returns the manifest. Costs one pass to write the parts, and a count of ``df`` first (to size the parts)
    unless the caller knows its ``rows``. The container must exist (``ensure_container``, which the scoring stage
    calls before it writes anything).
    """
    df = as_parts(df, df.count() if rows is None else rows, rows_per_part)
    # The closure travels to every executor (pickled into each task): it carries a container SAS, not the key.
    uploader = _partition_uploader(executor_connection_string(target), target.container, folder)
    try:
        parts = [row.asDict() for row in df.mapInArrow(uploader, PART_SCHEMA).collect()]
    except Exception as exc:
        raise StorageError(f"could not publish predictions to {target.where(folder + '/')}: "
                           f"{_upload_error(exc, target)}") from None
    parts.sort(key=lambda p: p["path"])
    manifest = {
        **metadata,
        "container": target.container,
        "prefix": folder,
        "rows": sum(p["rows"] for p in parts),
        "files": parts,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    path = f"{folder}/{MANIFEST}"
    _upload_json(target, path, manifest, f"could not write the manifest to {target.where(path)}")
    _mark_current(target, folder, manifest)
    logger.info("published %d rows in %d part(s) to %s", manifest["rows"], len(parts), target.where(folder + "/"))
    return manifest


def _mark_current(target: BlobTarget, folder: str, manifest: dict) -> None:
    """Point the range folder (``folder``'s parent) at ``folder``: written last, after the parts and the manifest,
    so a reader that follows the pointer finds a complete set; the sets it replaces stay as they were."""
    path = f"{folder.rsplit('/', 1)[0]}/{CURRENT}"
    pointer = {"prefix": folder, "manifest": f"{folder}/{MANIFEST}", "rows": manifest["rows"],
               **{k: manifest[k] for k in ("model_name", "model_version", "mlflow_run_id") if k in manifest},
               "marked_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    _upload_json(target, path, pointer, f"could not mark {folder} current at {target.where(path)}")


def _upload_json(target: BlobTarget, path: str, document: dict, failure: str) -> None:
    """``document`` as JSON at ``path``, replacing it; a ``StorageError`` starting with ``failure``, secret-free."""
    try:
        _service(target.connection_string).get_blob_client(target.container, path).upload_blob(
            json.dumps(document, indent=2).encode(), overwrite=True)
    except Exception as exc:
        raise StorageError(f"{failure}: {scrub(first_line(exc, with_type=True), target.connection_string)}") from None


def _upload_error(exc: Exception, target: BlobTarget) -> str:
    text = str(exc)
    found = re.search(re.escape(_ERROR_MARK) + r"\s*(.+)", text)
    return scrub(found.group(1).strip() if found else first_line(exc, with_type=True), target.connection_string)
