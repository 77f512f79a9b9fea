"""Telemetry, in one place: OpenTelemetry traces and logs, exported to Azure Monitor or to a local file.

OpenCensus, which the reference sample used, was retired on 2024-09-30; its supported successor is
OpenTelemetry with ``azure-monitor-opentelemetry-exporter``. With a connection string (from the secret scope or
``APPLICATIONINSIGHTS_CONNECTION_STRING``) spans and log records go to Application Insights: the job span as a
``requests`` row, stage and step spans as ``dependencies``, log records from the project's loggers as ``traces``,
exceptions as ``exceptions``, attributes as ``customDimensions`` (``mlflow_run_id``, ``mlflow_experiment_id``,
``databricks_job_id``, ``databricks_run_id``, ``stage``, row counts), and ``cloud_RoleName`` = ``taxi_fares.<job>``.
Without one, the same spans and logs are written as JSON lines into the run's folder
(``<lakehouse>/runs/<mlflow_run_id>/telemetry.jsonl``); ``mlops trace <run id>`` prints them as a tree.

Telemetry never breaks or hangs a job: exporters run in background threads with a short network timeout and no
offline storage, and shutdown waits at most ``SHUTDOWN_SECONDS`` before giving up with one warning. Microsoft's
own SDK self-telemetry (statsbeat, control plane) is switched off.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from taxi_fares_mlops import redaction

logger = logging.getLogger(__name__)

CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
CONNECTION_STRING_SECRET = "appinsights-connection-string"
SHUTDOWN_SECONDS = 5.0
EXPORT_TIMEOUT_SECONDS = 3.0
PROJECT_LOGGERS = ("taxi_fares", "taxi_fares_mlops")
_SELF_TELEMETRY_OFF = ("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED",
                       "APPLICATIONINSIGHTS_SDKSTATS_DISABLED")


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass


_current: Optional["Telemetry"] = None


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span under the current one (a no-op when no telemetry is running)."""
    if _current is None:
        yield _NoSpan()
        return
    with _current.span(name, **attributes) as current:
        yield current


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if isinstance(v, (str, bool, int, float)) and v != ""}


class JsonLinesExporter:
    """Spans and log records as JSON lines in one file (the local default)."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _write(self, rows: Sequence[dict]) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")

    # SpanExporter protocol
    def export(self, items) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        rows = []
        for item in items:
            if hasattr(item, "log_record"):  # a log record (LogExporter protocol shares this method name)
                return self._export_logs(items)
            ctx = item.get_span_context()
            rows.append({
                "type": "span", "name": item.name, "kind": item.kind.name,
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{item.parent.span_id:016x}" if item.parent else None,
                "start_ns": item.start_time, "end_ns": item.end_time,
                "duration_ms": round((item.end_time - item.start_time) / 1e6, 1),
                "status": item.status.status_code.name, "status_message": item.status.description,
                "attributes": dict(item.attributes or {}),
                "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in item.events],
            })
        self._write(rows)
        return SpanExportResult.SUCCESS

    def _export_logs(self, batch) -> Any:
        from opentelemetry.sdk._logs.export import LogExportResult

        rows = []
        for data in batch:
            record = data.log_record
            rows.append({
                "type": "log", "time_ns": record.timestamp, "severity": record.severity_text, "body": str(record.body),
                "trace_id": f"{record.trace_id:032x}" if record.trace_id else None,
                "span_id": f"{record.span_id:016x}" if record.span_id else None,
                "attributes": dict(record.attributes or {}),
            })
        self._write(rows)
        return LogExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _AttributesFilter(logging.Filter):
    """Puts the run's custom dimensions on every project log record (they become log attributes)."""

    def __init__(self, attributes: Mapping[str, Any]):
        super().__init__()
        self.attributes = dict(attributes)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.attributes.items():
            setattr(record, key, value)
        return True


class Telemetry:
    """Tracer and logger providers for one job run; ``start`` makes it current, ``shutdown`` ends it."""

    def __init__(self, job: str, attributes: Mapping[str, Any], connection_string: Optional[str],
                 local_file: Optional[Path]):
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        for name in _SELF_TELEMETRY_OFF:
            os.environ.setdefault(name, "true")
        self.attributes = _clean(attributes)
        self._levels: dict[str, int] = {}
        resource = Resource.create({"service.namespace": "taxi_fares", "service.name": job})
        self.destination = "Azure Monitor" if connection_string else str(local_file)
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        span_exporter, log_exporter = self._exporters(connection_string, local_file, self.tracer_provider)
        batch: dict[str, Any] = {"schedule_delay_millis": 500,
                                 "export_timeout_millis": int(EXPORT_TIMEOUT_SECONDS * 1000)}
        self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, **batch))
        self.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter, **batch))
        self.tracer = self.tracer_provider.get_tracer("taxi_fares_mlops")
        with warnings.catch_warnings():  # the SDK's handler is deprecated in favour of an extra package
            warnings.simplefilter("ignore", DeprecationWarning)
            self.handler = LoggingHandler(level=logging.INFO, logger_provider=self.logger_provider)
        self.handler.addFilter(_AttributesFilter(self.attributes))
        redaction.protect(self.handler)  # what reaches Azure Monitor is redacted as the console is

    @staticmethod
    def _exporters(connection_string: Optional[str], local_file: Optional[Path], tracer_provider):
        if connection_string:
            from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter

            options = {"connection_string": connection_string, "disable_offline_storage": True,
                       "timeout": EXPORT_TIMEOUT_SECONDS, "read_timeout": EXPORT_TIMEOUT_SECONDS,
                       "retry_total": 0}
            return (AzureMonitorTraceExporter(tracer_provider=tracer_provider, **options),
                    AzureMonitorLogExporter(**options))
        if local_file is None:
            raise ValueError("telemetry needs a connection string or a local file")
        exporter = JsonLinesExporter(local_file)
        return exporter, exporter

    @classmethod
    def start(cls, job: str, attributes: Mapping[str, Any], connection_string: Optional[str],
              local_file: Optional[Path]) -> Optional["Telemetry"]:
        """Start telemetry for a run; on any failure, one warning and None (the job goes on without it)."""
        global _current
        try:
            telemetry = cls(job, attributes, connection_string, local_file)
        except Exception as exc:  # telemetry must never fail a job
            logger.warning("telemetry is off for this run: %s", type(exc).__name__)
            return None
        for name in PROJECT_LOGGERS:
            project_logger = logging.getLogger(name)
            project_logger.addHandler(telemetry.handler)
            if project_logger.getEffectiveLevel() > logging.INFO:  # INFO lines are what an operator queries
                telemetry._levels[name] = project_logger.level
                project_logger.setLevel(logging.INFO)
        _current = telemetry
        logger.info("telemetry to %s", telemetry.destination)
        return telemetry

    @contextmanager
    def span(self, name: str, kind: str = "INTERNAL", record_exception: bool = True, **attributes: Any):
        from opentelemetry.trace import SpanKind, Status, StatusCode

        with self.tracer.start_as_current_span(
                name, kind=SpanKind[kind], attributes={**self.attributes, **_clean(attributes)},
                record_exception=False, set_status_on_exception=False) as current:
            try:
                yield current
            except BaseException as exc:
                if record_exception:
                    current.record_exception(exc)
                current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1000]))
                raise

    def shutdown(self, timeout_s: float = SHUTDOWN_SECONDS) -> bool:
        """Flush and stop, waiting at most ``timeout_s``. Returns False (after one warning) if it gave up."""
        global _current
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if _current is self:
            _current = None

        def stop():
            try:
                self.tracer_provider.shutdown()
                self.logger_provider.shutdown()
            except Exception:  # an exporter failing at shutdown is not the job's problem
                pass

        worker = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            logger.warning("telemetry did not finish sending within %.0fs; continuing without it", timeout_s)
            return False
        return True


def read_local(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def format_tree(rows: Sequence[dict]) -> str:
    """Spans as an indented tree with durations; log lines under the span they were written in."""
    spans = [r for r in rows if r["type"] == "span"]
    logs = [r for r in rows if r["type"] == "log"]
    children: dict[Optional[str], list[dict]] = {}
    ids = {s["span_id"] for s in spans}
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    logs_by_span: dict[Optional[str], list[dict]] = {}
    for entry in sorted(logs, key=lambda r: r["time_ns"] or 0):
        logs_by_span.setdefault(entry["span_id"], []).append(entry)

    lines: list[str] = []

    def visit(node: dict, depth: int) -> None:
        keep = ("stage", "rows", "table", "model_version", "decision")
        details = ", ".join(f"{k}={node['attributes'][k]}" for k in keep if k in node["attributes"])
        status = "" if node["status"] != "ERROR" else f"  ERROR {node.get('status_message') or ''}"
        lines.append(f"{'  ' * depth}{node['name']}  {node['duration_ms'] / 1000:.2f}s"
                     + (f"  [{details}]" if details else "") + status)
        for entry in logs_by_span.get(node["span_id"], []):
            lines.append(f"{'  ' * (depth + 1)}· {entry['severity']} {entry['body']}")
        for child in children.get(node["span_id"], []):
            visit(child, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    return "\n".join(lines)
