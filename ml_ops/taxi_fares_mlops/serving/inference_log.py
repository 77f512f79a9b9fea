"""The inference table: every answered ``/v1/predict`` request as one row of a Delta table, written with delta-rs
in micro-batches on a thread of its own, never on the request's path.

The columns are those of Databricks' inference tables (the AI Gateway format; see docs/online-service.md), so a
team that moves to Model Serving keeps its queries and monitors: ``request_date``, ``request_time``,
``databricks_request_id`` (the service's request id), ``client_request_id`` (the caller's ``X-Client-Request-Id``,
at most 128 characters), ``status_code``, ``execution_duration_ms``, ``request`` and ``response`` (JSON text:
the validated trips as the service read them, written anew in one form, and the answer), ``served_entity_id``
(``<model>/<version>``), ``requester`` (who called, as telemetry names them: never a token or a key) and
``logging_error_codes``. ``taxi_fares_mlops.online_traffic`` reads it back with Spark.

Losing a row never costs a request: ``record`` only appends to a queue bounded in rows and in bytes
(``max_queued_rows``, ``max_queued_bytes``: a flood of large requests while the table is slow cannot exhaust the
pod's memory). When the queue is full, or a write keeps failing (a full disk, an unreachable table) after
``attempts`` tries, the rows are dropped, counted (``dropped``, the service's
``taxi_fares_inference_rows_dropped_total``) and logged (at most one line per ``LOG_EVERY_SECONDS`` for a full
queue); rows still queued when the service stops and cannot be written in time are counted and logged too.

Written once, even when a write is retried: each micro-batch is a Delta app transaction (``app_id`` the writer's
id, ``version`` the batch's number, as Spark's ``txnAppId``/``txnVersion``). A retry first asks the table which
version of the writer it holds (``transaction_version``): a batch whose commit landed but whose answer was lost is
not written again.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa

logger = logging.getLogger(__name__)

MAX_QUEUED_ROWS = 10_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
LOG_EVERY_SECONDS = 10.0
FLUSH_SECONDS = 2.0
BATCH_ROWS = 1_000
ATTEMPTS = 3
CLIENT_REQUEST_ID_CHARS = 128

SCHEMA = pa.schema([
    ("request_date", pa.date32()),
    ("request_time", pa.timestamp("us", tz="UTC")),
    ("databricks_request_id", pa.string()),
    ("client_request_id", pa.string()),
    ("status_code", pa.int32()),
    ("execution_duration_ms", pa.int64()),
    ("request", pa.string()),
    ("response", pa.string()),
    ("served_entity_id", pa.string()),
    ("requester", pa.string()),
    ("logging_error_codes", pa.list_(pa.string())),
])


@dataclass(frozen=True)
class InferenceRow:
    request_time: dt.datetime
    request_id: str
    client_request_id: Optional[str]
    status_code: int
    duration_ms: int
    request: str             # the request's JSON as received (it was parsed and validated)
    response: Optional[str]  # the answer's JSON as sent
    served_entity_id: str
    requester: Optional[str]

    @property
    def size(self) -> int:
        """About what the row holds in memory (its texts dominate)."""
        return 256 + len(self.request) + len(self.response or "") + len(self.client_request_id or "")

    def as_record(self) -> dict:
        when = self.request_time.astimezone(dt.timezone.utc)
        client = self.client_request_id[:CLIENT_REQUEST_ID_CHARS] if self.client_request_id else None
        return {"request_date": when.date(), "request_time": when, "databricks_request_id": self.request_id,
                "client_request_id": client, "status_code": self.status_code,
                "execution_duration_ms": self.duration_ms, "request": self.request, "response": self.response,
                "served_entity_id": self.served_entity_id, "requester": self.requester,
                "logging_error_codes": []}


class InferenceLog:
    """Rows queued by requests, appended to the Delta table at ``uri`` by a background thread."""

    def __init__(self, uri: str, storage_options: Callable[[], dict] = dict, max_queued_rows: int = MAX_QUEUED_ROWS,
                 flush_seconds: float = FLUSH_SECONDS, batch_rows: int = BATCH_ROWS, attempts: int = ATTEMPTS,
                 on_dropped: Callable[[int], None] = lambda n: None, retry_pause: float = 0.5,
                 max_queued_bytes: int = MAX_QUEUED_BYTES):
        if min(max_queued_rows, batch_rows, attempts, max_queued_bytes) < 1 or flush_seconds <= 0:
            raise ValueError("inference log: max_queued_rows, max_queued_bytes, batch_rows and attempts at least 1, "
                             "flush_seconds > 0")
        self.max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._unlogged_drops = 0
        self._in_flight = 0  # rows of the batch being written
        self._last_drop_logged = -float("inf")
        self.uri = uri
        self.storage_options = storage_options  # called per write: a rotated workload-identity token is read anew
        self.max_queued_rows = max_queued_rows
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self.attempts = attempts
        self.retry_pause = retry_pause
        self.on_dropped = on_dropped
        self.app_id = f"taxi_fares_serving-{uuid.uuid4().hex}"  # this writer; its batches are numbered from 1
        self.batches = 0
        self.written = 0
        self.dropped = 0
        self.last_failure: Optional[str] = None
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def record(self, row: InferenceRow) -> None:
        """Queue one row; never blocks, never raises: a full queue drops the row and counts it."""
        with self._lock:
            full = len(self._queue) >= self.max_queued_rows or self._queued_bytes + row.size > self.max_queued_bytes
            if not full:
                self._queue.append(row)
                self._queued_bytes += row.size
                self._idle.clear()
                if len(self._queue) >= self.batch_rows:
                    self._wake.set()
        if full:
            self._drop(1, "the queue is full (the table is slower than the requests, or unreachable)", quiet=True)

    def _drop(self, rows: int, why: str, quiet: bool = False) -> None:
        """Count dropped rows; log them (a full queue: one line per ``LOG_EVERY_SECONDS`` with the count since)."""
        with self._lock:
            self.dropped += rows
            self._unlogged_drops += rows
            now = time.monotonic()
            if quiet and now - self._last_drop_logged < LOG_EVERY_SECONDS:
                logged = 0
            else:
                logged, self._unlogged_drops, self._last_drop_logged = self._unlogged_drops, 0, now
        self.on_dropped(rows)
        if logged:
            logger.warning("inference table %s: dropped %d row(s): %s", self.uri, logged, why)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self.batch_rows, len(self._queue)))]
                self._queued_bytes -= sum(row.size for row in batch)
                if not batch:
                    self._idle.set()
                    return
            self.batches += 1
            self._in_flight = len(batch)
            try:
                self._write(batch, self.batches)
            except Exception as exc:  # noqa: BLE001 (the writer thread must live on: the rows are dropped)
                self._drop(len(batch), f"{type(exc).__name__}: {str(exc)[:300]}")
            finally:
                self._in_flight = 0

    def _write(self, batch: list, version: int) -> None:
        from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        table = pa.Table.from_pylist([row.as_record() for row in batch], schema=SCHEMA)
        for attempt in range(1, self.attempts + 1):
            try:
                options = self.storage_options()
                try:  # a retried batch whose commit landed is not written twice
                    landed = DeltaTable(self.uri, storage_options=options).transaction_version(self.app_id)
                except TableNotFoundError:  # no table yet: the first write creates it
                    landed = None
                if landed is not None and landed >= version:
                    self.written += len(batch)
                    return
                write_deltalake(self.uri, table, mode="append", storage_options=options,
                                commit_properties=CommitProperties(
                                    app_transactions=[Transaction(self.app_id, version)]))
                self.written += len(batch)
                self.last_failure = None
                return
            except Exception as exc:  # noqa: BLE001 (any failure: retried, then the rows are dropped)
                self.last_failure = f"{type(exc).__name__}: {str(exc)[:300]}"
                if attempt < self.attempts:
                    time.sleep(self.retry_pause * attempt)
        self._drop(len(batch), f"writing failed {self.attempts} times: {self.last_failure}")

    def flush(self, timeout: float = 30.0) -> bool:
        """Write what is queued now; True once the queue is empty and written (or dropped)."""
        self._wake.set()
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout``), then stop the thread; rows it could not write in time are
        counted as dropped and logged, never lost without a trace."""
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if left:
            self._drop(left, f"the service stopped before they were written (within {timeout:.0f} s)")
        if self._thread.is_alive() and self._in_flight:
            logger.warning("inference table %s: %d row(s) were being written when the service stopped: they may not "
                           "have landed", self.uri, self._in_flight)

    def status(self) -> dict:
        return {"table": self.uri, "written_rows": self.written, "dropped_rows": self.dropped,
                "queued_rows": len(self._queue), "queued_bytes": self._queued_bytes, "batches": self.batches,
                "last_failure": self.last_failure}
