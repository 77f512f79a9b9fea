"""A strict Databricks workspace emulator: a real local HTTP server that refuses what a workspace refuses.

It serves the Workspace, Files, DBFS, Jobs (2.2) and MLflow experiment endpoints that the ``mlops`` tool calls,
following the public REST documentation and the databricks-sdk 0.156 sources:

* every request needs ``Authorization: Bearer <token>`` (401 otherwise); a path that is not an API answers
  ``ENDPOINT_NOT_FOUND``; bodies and queries are decoded against the SDK's own signatures and dataclasses
  (``strict_decode``): unknown or misspelt fields, wrong JSON types, missing required fields and enum values
  that do not exist are refused; errors are ``{"error_code", "message"}`` with the real HTTP status;
* one namespace of workspace objects (folders, notebooks, files, MLflow experiments), where ``/Workspace/x``
  and ``/x`` are the same path and a path holds one object; notebooks are stored and exported in the canonical
  SOURCE form Databricks writes;
* Files API only under ``/Volumes/<catalog>/<schema>/<volume>/`` of volumes that exist; DBFS with its 1 MB
  read and block limits, and no ``/Volumes``;
* Jobs: paging with ``limit`` bounds and ``next_page_token``; ``reset`` replaces, ``update`` merges arrays by
  key and honours ``fields_to_remove``; runs go ``QUEUED -> PENDING -> RUNNING -> TERMINATED`` (or
  ``INTERNAL_ERROR``) one step per ``runs/get``, honouring ``max_concurrent_runs`` and the queue; repair needs
  ``latest_repair_id`` after the first repair and refuses a running run or nothing to rerun;
* job permissions: ``run_as`` and each ``access_control_list`` entry (on ``jobs/create`` and on the Permissions
  API's ``PUT/GET /api/2.0/permissions/jobs/{id}``) name exactly one of ``user_name``, ``group_name``,
  ``service_principal_name``; levels are the job levels (CAN_VIEW, CAN_MANAGE_RUN, CAN_MANAGE, IS_OWNER), a job
  has one owner, never a group; ``jobs/reset`` takes no access list. The caller (``identity``) owns a job it
  creates unless the list names another owner.

Runs end as a workspace ends them: ``next_run_script`` ends in ``TERMINATED:<result>`` for any result state
(SUCCESS, FAILED, SUCCESS_WITH_FAILURES, TIMEDOUT, CANCELED...), each answered with the termination code and type
the Jobs API gives it; a run over ``max_concurrent_runs`` without a queue is SKIPPED
(MAX_CONCURRENT_RUNS_EXCEEDED). The ways real workspaces have answered are knobs: ``runs_page_cap`` (runs/list
answers short pages with more to come), ``stale_reads_after_repair`` (a repaired run reads as before its repair
for that many runs/get), ``not_databricks`` (every request gets the HTML 404 of a host that is no workspace) and
``drop_after_apply``.

Tests control it with ``fail(...)`` (answer the next matching requests with an error), ``next_run_script``,
``next_run_output`` and ``next_run_error``, and read ``requests``.
"""
from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

from databricks.sdk.service.files import DbfsAPI
from databricks.sdk.service.iam import CurrentUserAPI
from databricks.sdk.service.jobs import JobsAPI
from databricks.sdk.service.ml import ExperimentsAPI
from databricks.sdk.service.workspace import WorkspaceAPI

from fakes.strict_decode import RequestRefused, decode_body, decode_query, invalid

ERROR_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_ALREADY_EXISTS", 429: "REQUEST_LIMIT_EXCEEDED",
               500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}
TEST_TOKEN = "dapi-very-secret-token-0123456789"  # the token the tests' emulators accept
ONE_MB = 1 << 20
NOTEBOOK_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"
TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")
# result state -> (termination code, type) of Run.status, as the Jobs API reports a run's end. A timeout is the
# platform cancelling the run (CANCELED: "for example, if the maximum run duration was exceeded"); a user's
# cancellation is USER_CANCELED.
TERMINATIONS = {"SUCCESS": ("SUCCESS", "SUCCESS"), "FAILED": ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
                "SUCCESS_WITH_FAILURES": ("SUCCESS_WITH_FAILURES", "SUCCESS"),
                "TIMEDOUT": ("CANCELED", "CLIENT_ERROR"), "CANCELED": ("USER_CANCELED", "SUCCESS")}
NOT_A_WORKSPACE = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1>"
                   b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
PRINCIPALS = ("user_name", "group_name", "service_principal_name")  # who a grant or run_as names: exactly one


def refuse(status: int, message: str, error_code: Optional[str] = None) -> RequestRefused:
    return RequestRefused(status, error_code or ERROR_CODES[status], message)


def canonical_source(text: str) -> str:
    """A Python notebook as Databricks exports it in SOURCE format: the header line, then the cells with
    surrounding blank lines removed, separated by a blank line, the separator and a blank line.

    Written apart from the tool's ``orchestrator.deploy.artifacts.notebook_cells`` on purpose: a stand-in that
    shared the code under test would agree with its bugs."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[0].strip() == NOTEBOOK_HEADER:
        lines = lines[1:]
    cells, current = [], []
    for line in lines:
        if line.strip() == CELL_SEPARATOR:
            cells.append(current)
            current = []
        else:
            current.append(line.rstrip())
    cells.append(current)
    bodies = ["\n".join(cell).strip("\n") for cell in cells]
    return NOTEBOOK_HEADER + "\n" + f"\n\n{CELL_SEPARATOR}\n\n".join(bodies) + "\n"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw bytes, or None

    def json(self) -> dict:
        return self.body if isinstance(self.body, dict) else {}


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    times: int
    message: str
    retry_after: Optional[int]
    error_code: Optional[str]


@dataclass
class WorkspaceObject:
    object_type: str            # DIRECTORY, NOTEBOOK, FILE, MLFLOW_EXPERIMENT
    object_id: int
    content: bytes = b""
    language: Optional[str] = None


@dataclass
class Experiment:
    experiment_id: str
    name: str
    lifecycle_stage: str = "active"


@dataclass
class EmulatedRun:
    run_id: int
    job_id: int
    task_keys: list[str]
    task_run_ids: list[int]
    script: list[str]           # e.g. ["PENDING", "RUNNING", "TERMINATED:SUCCESS"]
    output: Optional[str]
    error: Optional[str]
    parameters: dict[str, str]
    queued: bool = False
    step: int = 0
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    end_time: int = 0
    repairs: list[int] = field(default_factory=list)
    ended: dict[int, str] = field(default_factory=dict)  # ORIGINAL or repair id -> how it ended (a script step)
    stale: Optional[list] = None  # [reads left, the run's answer as it was before its latest repair]

    @property
    def state(self) -> tuple[str, Optional[str]]:
        if self.queued:
            return "QUEUED", None
        lifecycle, _, result = self.script[self.step].partition(":")
        return lifecycle, result or None

    @property
    def active(self) -> bool:
        return not self.queued and self.state[0] not in TERMINAL


# --- triggers: trigger.table_update (a Beta feature; the SDK 0.156 models it as TableUpdateTriggerConfiguration) -----
TABLE_TRIGGER_KINDS = ("periodic", "file_arrival", "table_update", "model")
TABLE_TRIGGER_TIMERS = ("min_time_between_triggers_seconds", "wait_after_last_change_seconds")
LEAST_TABLE_TRIGGER_SECONDS = 60


def check_table_update_trigger(settings: dict) -> None:
    """What the Jobs service checks of a table-update trigger beyond the schema (the decoder has refused an unknown
    condition or a mistyped field): one trigger type, and no schedule or continuous beside it; at least one table,
    each a Unity Catalog table (catalog.schema.table) named once; each timer at least 60 seconds. 400 naming the
    field."""
    trigger = settings.get("trigger")
    if not trigger or trigger.get("table_update") is None:
        return
    kinds = [k for k in TABLE_TRIGGER_KINDS if trigger.get(k) is not None]
    if len(kinds) > 1:
        raise invalid(f"trigger: at most one of {', '.join(TABLE_TRIGGER_KINDS)} may be set (got {', '.join(kinds)})")
    for other in ("schedule", "continuous"):
        if settings.get(other):
            raise invalid(f"{other}: a job has one of schedule, trigger and continuous (got {other} and trigger)")
    update = trigger["table_update"]
    names = update.get("table_names") or []
    if not names:
        raise invalid("trigger.table_update.table_names: at least one table is required")
    for i, name in enumerate(names):
        parts = str(name).split(".")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise invalid(f"trigger.table_update.table_names[{i}]: '{name}' is not a Unity Catalog table "
                          f"(catalog.schema.table)")
    if len({str(n).lower() for n in names}) != len(names):
        raise invalid(f"trigger.table_update.table_names: a table is named twice ({', '.join(names)})")
    for timer in TABLE_TRIGGER_TIMERS:
        if timer in update and update[timer] < LEAST_TABLE_TRIGGER_SECONDS:
            raise invalid(f"trigger.table_update.{timer}: must be at least {LEAST_TABLE_TRIGGER_SECONDS} "
                          f"(got {update[timer]})")


# --- triggers: trigger.model (a Beta feature; the SDK 0.156 models it as ModelTriggerConfiguration) ---------------
TRIGGER_TYPES = ("periodic", "file_arrival", "table_update", "model")  # one per job; sql_condition goes with any
MODEL_ALIAS_SET, MAX_TRIGGER_ALIASES, LEAST_TRIGGER_SECONDS = "MODEL_ALIAS_SET", 10, 60


def check_model_trigger(settings: dict) -> None:
    """What the Jobs service checks of a model trigger beyond the schema (the decoder has refused a missing or
    unknown condition): one trigger type per job and no schedule or continuous beside it, aliases only with
    MODEL_ALIAS_SET (which needs one at least) and at most 10 of them, each timer at least 60 seconds, and a
    securable that is a Unity Catalog model (catalog.schema.model), a schema (catalog.schema) or empty for the
    metastore. 400 naming the field."""
    trigger = settings.get("trigger")
    if not trigger or trigger.get("model") is None:
        return
    types = [t for t in TRIGGER_TYPES if trigger.get(t) is not None]
    if len(types) > 1:
        raise invalid(f"trigger: at most one of {', '.join(TRIGGER_TYPES)} may be set (got {', '.join(types)})")
    for other in ("schedule", "continuous"):
        if settings.get(other):
            raise invalid(f"{other}: a job has one of schedule, trigger and continuous (got {other} and trigger)")
    model = trigger["model"]
    aliases = model.get("aliases") or []
    if aliases and model["condition"] != MODEL_ALIAS_SET:
        raise invalid(f"trigger.model.aliases: only with condition {MODEL_ALIAS_SET} (got {model['condition']})")
    if model["condition"] == MODEL_ALIAS_SET and not aliases:
        raise invalid(f"trigger.model.aliases: condition {MODEL_ALIAS_SET} needs at least one alias")
    if len(aliases) > MAX_TRIGGER_ALIASES:
        raise invalid(f"trigger.model.aliases: at most {MAX_TRIGGER_ALIASES} aliases (got {len(aliases)})")
    for timer in ("min_time_between_triggers_seconds", "wait_after_last_change_seconds"):
        if timer in model and model[timer] < LEAST_TRIGGER_SECONDS:
            raise invalid(f"trigger.model.{timer}: must be at least {LEAST_TRIGGER_SECONDS} (got {model[timer]})")
    securable = model.get("securable_name") or ""
    parts = securable.split(".")
    if securable and (len(parts) not in (2, 3) or not all(p.strip() for p in parts)):
        raise invalid(f"trigger.model.securable_name: '{securable}' is not a Unity Catalog model "
                      f"(catalog.schema.model), schema (catalog.schema) or empty (the metastore)")


class WorkspaceEmulator:
    def __init__(self, token: str = "dapi-emulator-token", volumes: tuple[str, ...] = ()) -> None:
        self.token = token
        self.volumes = {v.rstrip("/") for v in volumes}
        self.requests: list[Request] = []
        self.objects: dict[str, WorkspaceObject] = {}
        self.experiments: dict[str, Experiment] = {}
        self.files: dict[str, bytes] = {}          # Files API (volumes)
        self.dbfs: dict[str, bytes] = {}
        self.dbfs_dirs: set[str] = {"/"}
        self.jobs: dict[int, dict] = {}
        self.creators: dict[int, str] = {}  # job id -> the userName of the identity that created it
        self.permissions: dict[int, list[dict]] = {}  # job id -> its direct grants (principal + permission_level)
        self.runs: dict[int, EmulatedRun] = {}
        self.faults: list[Fault] = []
        self.drops: list[list] = []                # [method, path prefix, times]: apply, then drop the connection
        self._idempotency: dict[str, int] = {}     # run-now idempotency_token -> the run it started
        self.runs_page_cap: Optional[int] = None   # runs/list answers at most this many per page, more to come
        self.stale_reads_after_repair = 0          # runs/get answers a repaired run as before, this many times
        self.not_databricks = False                # answer everything as a host that is not a workspace does
        self.targets_file: Optional[Any] = None   # a targets.yml naming this emulator (set by the tests' fixture)
        self.next_run_script = ["PENDING", "RUNNING", "TERMINATED:SUCCESS"]
        self.next_run_output: Optional[str] = json.dumps({"status": "SUCCESS"})
        self.next_run_error: Optional[str] = None
        # Who the token belongs to, as SCIM `Me` answers (a service principal's userName is its application id).
        self.identity = {"id": "4242424242424242", "userName": "operator@example.com",
                         "displayName": "Operator Example", "active": True,
                         "emails": [{"value": "operator@example.com", "type": "work", "primary": True}],
                         "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                                     "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"]}
        self._ids = itertools.count(101)
        self._open_handles: dict[int, tuple[str, bytearray]] = {}
        self._presigned: dict[str, str] = {}
        self._lock = threading.Lock()
        for folder in ("/", "/Shared", "/Users", "/Repos"):
            self.objects[folder] = WorkspaceObject("DIRECTORY", next(self._ids))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- control -------------------------------------------------------------------------------------------
    @property
    def next_run_script(self) -> list[str]:
        """The states the next run (or repair) goes through, one per runs/get: ``LIFECYCLE[:RESULT]``."""
        return self._next_run_script

    @next_run_script.setter
    def next_run_script(self, script: list[str]) -> None:
        """Refused when set (in the test, not in the server's thread): only what the Jobs API can say."""
        from databricks.sdk.service.jobs import RunLifeCycleState, RunResultState

        for step in script:
            lifecycle, _, result = step.partition(":")
            if lifecycle not in RunLifeCycleState.__members__ or (result and result not in RunResultState.__members__):
                raise ValueError(f"'{step}' is not a run state the Jobs API has (LIFECYCLE[:RESULT])")
        self._next_run_script = list(script)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "WorkspaceEmulator":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, method: str, path_prefix: str, status: int, times: int = 1, message: str = "injected",
             retry_after: Optional[int] = None, error_code: Optional[str] = None) -> None:
        self.faults.append(Fault(method, path_prefix, status, times, message, retry_after, error_code))

    def drop_after_apply(self, method: str, path_prefix: str, times: int = 1) -> None:
        """Apply the next matching requests, then close the connection without an answer (a proxy or load
        balancer timing out after the service acted): the SDK sees a connection error and sends the request again."""
        self.drops.append([method, path_prefix, times])

    def _take_drop(self, request: Request) -> bool:
        for drop in self.drops:
            if drop[2] > 0 and drop[0] == request.method and request.path.startswith(drop[1]):
                drop[2] -= 1
                return True
        return False

    def calls(self, method: Optional[str] = None, path_prefix: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def uploads(self) -> list[Request]:
        """Requests that send file or notebook content."""
        content_posts = ("/api/2.0/workspace/import", "/api/2.0/dbfs/add-block", "/api/2.0/dbfs/put")
        return [r for r in self.requests if (r.method == "PUT" and r.path.startswith("/api/2.0/fs/files/"))
                or (r.method == "POST" and r.path in content_posts)]

    def notebook(self, path: str) -> bytes:
        obj = self.objects[self._workspace_path(path)]
        assert obj.object_type == "NOTEBOOK", f"{path} is a {obj.object_type}"
        return obj.content

    def experiment_named(self, name: str) -> Optional[Experiment]:
        return next((e for e in self.experiments.values() if e.name == self._workspace_path(name)), None)

    def finish_active_runs(self, result: str = "SUCCESS") -> None:
        """End every active run (a test's way of letting time pass)."""
        for run in self.runs.values():
            if run.active:
                run.script, run.step = [f"TERMINATED:{result}"], 0
                run.end_time = run.start_time + 60_000
        self._dequeue()

    # --- HTTP plumbing -------------------------------------------------------------------------------------
    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    is_json = "json" in (self.headers.get("Content-Type") or "json")
                    try:
                        body = json.loads(raw) if is_json else raw
                    except ValueError:
                        body = raw
                request = Request(self.command, unquote(url.path),
                                  {k: v[0] for k, v in parse_qs(url.query).items()}, dict(self.headers), body)
                with emulator._lock:
                    emulator.requests.append(request)
                    try:
                        status, payload, headers = emulator._answer(request)
                    except RequestRefused as exc:
                        status, payload, headers = exc.status, {"error_code": exc.error_code,
                                                                "message": exc.message}, {}
                    dropped = emulator._take_drop(request)
                if dropped:  # applied, never answered
                    self.close_connection = True
                    return
                self.send_response(status)
                data = b""
                if isinstance(payload, bytes):
                    data = payload
                    headers.setdefault("Content-Type", "application/octet-stream")
                elif payload is not None:
                    data = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

        return Handler

    def _answer(self, r: Request):
        if self.not_databricks:  # a portal, a proxy, a typo: a web server's HTML 404 for every path
            return 404, NOT_A_WORKSPACE, {"Content-Type": "text/html"}
        if r.path.startswith("/presigned/"):   # a storage URL: signed, no bearer token
            return self._presigned_download(r)
        if r.path.startswith("/api/"):
            if not r.headers.get("Authorization"):
                raise refuse(401, "Credential was not sent or was of an unsupported type for this API.",
                             "UNAUTHENTICATED")
            if r.headers.get("Authorization") != f"Bearer {self.token}":
                # what a workspace answers a wrong or expired token: 403, not 401
                raise refuse(403, "Invalid access token.", "PERMISSION_DENIED")
        fault = self._take_fault(r)
        if fault:
            return fault
        return self._route(r)

    def _take_fault(self, request: Request):
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and request.path.startswith(fault.path_prefix):
                fault.times -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                code = fault.error_code or ERROR_CODES.get(fault.status, "UNKNOWN")
                return fault.status, {"error_code": code, "message": fault.message}, headers
        return None

    # --- routing -------------------------------------------------------------------------------------------
    def _route(self, r: Request):
        p = r.path
        if p.startswith("/api/2.0/fs/files/"):
            return self._files(r, p[len("/api/2.0/fs/files"):])
        if p.startswith("/api/2.0/fs/directories/"):
            return self._directories(r, p[len("/api/2.0/fs/directories"):])
        if p == "/api/2.0/fs/create-download-url" and r.method == "POST":
            return self._create_download_url(r)
        if p.startswith("/api/2.0/workspace/"):
            return self._workspace(r, p[len("/api/2.0/workspace/"):])
        if p.startswith("/api/2.0/dbfs/"):
            return self._dbfs(r, p[len("/api/2.0/dbfs/"):])
        if p.startswith("/api/2.0/mlflow/experiments/"):
            return self._experiments(r, p[len("/api/2.0/mlflow/experiments/"):])
        if p.startswith("/api/2.2/jobs/"):
            return self._jobs(r, p[len("/api/2.2/jobs/"):])
        if p.startswith("/api/2.0/permissions/jobs/"):
            return self._job_permissions(r, p[len("/api/2.0/permissions/jobs/"):])
        if p == "/api/2.0/preview/scim/v2/Me":
            self._expect(r, "GET")
            decode_query(CurrentUserAPI.me, r.query)
            return 200, dict(self.identity), {}
        raise self._no_endpoint(r)

    @staticmethod
    def _no_endpoint(r: Request) -> RequestRefused:
        return refuse(404, f"No API found for '{r.method} {r.path}'", "ENDPOINT_NOT_FOUND")

    def _expect(self, r: Request, method: str) -> None:
        if r.method != method:
            raise self._no_endpoint(r)

    # --- workspace objects -----------------------------------------------------------------------------------
    @staticmethod
    def _workspace_path(path: str) -> str:
        if not path.startswith("/"):
            raise invalid(f"Path ({path}) must be absolute")
        if path == "/Workspace" or path.startswith("/Workspace/"):
            path = path[len("/Workspace"):] or "/"
        return path.rstrip("/") or "/"

    def _parent_must_be_folder(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        obj = self.objects.get(parent)
        if obj is None:
            raise refuse(404, f"The parent folder ({parent}) does not exist.")
        if obj.object_type != "DIRECTORY":
            raise refuse(400, f"The parent path ({parent}) is not a directory: found '{obj.object_type}'",
                         "RESOURCE_ALREADY_EXISTS")

    def _workspace(self, r: Request, action: str):
        if action == "mkdirs":
            self._expect(r, "POST")
            path = self._workspace_path(decode_body(WorkspaceAPI.mkdirs, r.body)["path"])
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                prefix = "/" + "/".join(parts[:i])
                obj = self.objects.get(prefix)
                if obj is None:
                    self.objects[prefix] = WorkspaceObject("DIRECTORY", next(self._ids))
                elif obj.object_type != "DIRECTORY":
                    raise refuse(400, f"Cannot create directory {path}: {prefix} exists and is a "
                                      f"{obj.object_type}", "RESOURCE_ALREADY_EXISTS")
            return 200, {}, {}
        if action == "import":
            self._expect(r, "POST")
            return self._import(decode_body(WorkspaceAPI.import_, r.body))
        if action == "export":
            self._expect(r, "GET")
            q = decode_query(WorkspaceAPI.export, r.query)
            path = self._workspace_path(q["path"])
            obj = self.objects.get(path)
            if obj is None:
                raise refuse(404, f"Path ({q['path']}) doesn't exist.")
            fmt = q.get("format", "SOURCE")
            if obj.object_type == "DIRECTORY" and fmt != "DBC":
                raise invalid(f"Path ({q['path']}) is a directory: only DBC export is supported")
            if obj.object_type not in ("NOTEBOOK", "FILE", "DIRECTORY"):
                raise invalid(f"Path ({q['path']}) is a {obj.object_type} and cannot be exported")
            if fmt not in ("SOURCE", "AUTO", "RAW") or (obj.object_type == "DIRECTORY"):
                raise invalid(f"Export format {fmt} is not supported by this emulator")
            file_type = "py" if obj.object_type == "NOTEBOOK" else ""
            return 200, {"content": base64.b64encode(obj.content).decode(), "file_type": file_type}, {}
        if action == "get-status":
            self._expect(r, "GET")
            q = decode_query(WorkspaceAPI.get_status, r.query)
            path = self._workspace_path(q["path"])
            obj = self.objects.get(path)
            if obj is None:
                raise refuse(404, f"Path ({q['path']}) doesn't exist.")
            info = {"path": path, "object_type": obj.object_type, "object_id": obj.object_id}
            if obj.language:
                info["language"] = obj.language
            return 200, info, {}
        if action == "delete":
            self._expect(r, "POST")
            b = decode_body(WorkspaceAPI.delete, r.body)
            path = self._workspace_path(b["path"])
            if path not in self.objects:
                raise refuse(404, f"Path ({b['path']}) doesn't exist.")
            children = [p for p in self.objects if p.startswith(path + "/")]
            if children and not b.get("recursive"):
                raise refuse(400, f"Folder ({b['path']}) is not empty", "DIRECTORY_NOT_EMPTY")
            for p in [path, *children]:
                del self.objects[p]
            return 200, {}, {}
        raise self._no_endpoint(r)

    def _import(self, b: dict):
        path = self._workspace_path(b["path"])
        fmt = b.get("format", "SOURCE")
        if fmt not in ("SOURCE", "AUTO"):
            raise invalid(f"Import format {fmt} is not supported by this emulator")
        language = b.get("language")
        if fmt == "SOURCE" and not language:
            raise invalid("The language field is required when the format is SOURCE")
        try:
            content = base64.b64decode(b.get("content") or "", validate=True)
        except ValueError:
            raise invalid("content must be base64-encoded") from None
        self._parent_must_be_folder(path)
        existing = self.objects.get(path)
        if existing is not None:
            if existing.object_type != "NOTEBOOK" or not b.get("overwrite"):
                raise refuse(400, f"Path ({b['path']}) already exists.", "RESOURCE_ALREADY_EXISTS")
        text = content.decode("utf-8")
        self.objects[path] = WorkspaceObject("NOTEBOOK", existing.object_id if existing else next(self._ids),
                                             canonical_source(text).encode(), language or "PYTHON")
        return 200, {}, {}

    # --- MLflow experiments ----------------------------------------------------------------------------------
    def _experiment_json(self, e: Experiment) -> dict:
        return {"experiment_id": e.experiment_id, "name": e.name, "lifecycle_stage": e.lifecycle_stage,
                "artifact_location": f"dbfs:/databricks/mlflow-tracking/{e.experiment_id}"}

    def _experiments(self, r: Request, action: str):
        if action == "create":
            self._expect(r, "POST")
            b = decode_body(ExperimentsAPI.create_experiment, r.body)
            path = self._workspace_path(b["name"])
            if self.experiment_named(path) is not None:
                raise refuse(400, f"Experiment '{b['name']}' already exists.", "RESOURCE_ALREADY_EXISTS")
            if path in self.objects:
                raise refuse(400, f"Node named '{path.rsplit('/', 1)[1]}' already exists at {path}: found "
                                  f"'{self.objects[path].object_type}'", "RESOURCE_ALREADY_EXISTS")
            self._parent_must_be_folder(path)
            experiment = Experiment(str(next(self._ids)), path)
            self.experiments[experiment.experiment_id] = experiment
            self.objects[path] = WorkspaceObject("MLFLOW_EXPERIMENT", int(experiment.experiment_id))
            return 200, {"experiment_id": experiment.experiment_id}, {}
        if action == "get-by-name":
            self._expect(r, "GET")
            q = decode_query(ExperimentsAPI.get_by_name, r.query)
            experiment = self.experiment_named(q["experiment_name"])
            if experiment is None:
                raise refuse(404, f"Could not find experiment with name {q['experiment_name']}")
            return 200, {"experiment": self._experiment_json(experiment)}, {}
        if action == "get":
            self._expect(r, "GET")
            q = decode_query(ExperimentsAPI.get_experiment, r.query)
            return 200, {"experiment": self._experiment_json(self._experiment(q["experiment_id"]))}, {}
        if action in ("delete", "restore"):
            self._expect(r, "POST")
            method = ExperimentsAPI.delete_experiment if action == "delete" else ExperimentsAPI.restore_experiment
            experiment = self._experiment(decode_body(method, r.body)["experiment_id"])
            experiment.lifecycle_stage = "deleted" if action == "delete" else "active"
            return 200, {}, {}
        raise self._no_endpoint(r)

    def _experiment(self, experiment_id: str) -> Experiment:
        if experiment_id not in self.experiments:
            raise refuse(404, f"No Experiment with id={experiment_id} exists")
        return self.experiments[experiment_id]

    # --- Files API (Unity Catalog volumes) -------------------------------------------------------------------
    def _volume_path(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "Volumes":
            raise invalid(f"Invalid path {path}: the Files API accepts /Volumes/<catalog>/<schema>/<volume>/...")
        volume = "/" + "/".join(parts[:4])
        if volume not in self.volumes:
            raise refuse(404, f"Volume {volume[len('/Volumes/'):].replace('/', '.')} does not exist.", "NOT_FOUND")
        return "/" + "/".join(parts)

    def _files(self, r: Request, path: str):
        path = self._volume_path(path)
        if r.method == "PUT":
            overwrite = r.query.get("overwrite", "false")
            if overwrite not in ("true", "false"):
                raise invalid(f"overwrite must be true or false, got '{overwrite}'")
            if path in self.files and overwrite != "true":
                raise refuse(409, f"The file being created already exists: {path}", "ALREADY_EXISTS")
            if not isinstance(r.body, bytes):
                raise invalid("the file contents must be sent as application/octet-stream")
            self.files[path] = r.body
            return 204, None, {}
        if r.method in ("GET", "HEAD"):
            if path not in self.files:
                raise refuse(404, "The file being accessed is not found.", "NOT_FOUND")
            headers = {"Last-Modified": "Mon, 23 Nov 2026 10:00:00 GMT", "Content-Type": "application/octet-stream"}
            if r.method == "HEAD":
                headers["Content-Length"] = str(len(self.files[path]))
                return 200, None, headers
            return 200, self.files[path], headers
        if r.method == "DELETE":
            if self.files.pop(path, None) is None:
                raise refuse(404, "The file being accessed is not found.", "NOT_FOUND")
            return 204, None, {}
        raise self._no_endpoint(r)

    def _directories(self, r: Request, path: str):
        path = self._volume_path(path if len(path.strip("/").split("/")) > 4 else path + "/.")
        return 200 if r.method != "PUT" else 204, None, {}

    def _create_download_url(self, r: Request):
        path = self._volume_path(r.query.get("path", ""))
        if "expire_time" not in r.query:
            raise invalid("Missing required field: expire_time")
        token = secrets.token_hex(8)
        self._presigned[token] = path
        return 200, {"url": f"{self.url}/presigned/{token}", "headers": []}, {}

    def _presigned_download(self, r: Request):
        path = self._presigned.get(r.path[len("/presigned/"):])
        if path is None:
            return 403, b"signature does not match", {}
        if path not in self.files:
            return 404, b"BlobNotFound", {}
        return 200, self.files[path], {"Last-Modified": "Mon, 23 Nov 2026 10:00:00 GMT",
                                       "Content-Type": "application/octet-stream"}

    # --- DBFS -----------------------------------------------------------------------------------------------
    @staticmethod
    def _dbfs_path(path: str) -> str:
        if path.startswith("dbfs:"):
            path = path[len("dbfs:"):]
        if not path.startswith("/"):
            raise invalid(f"Path must be absolute: {path}")
        if path == "/Volumes" or path.startswith("/Volumes/"):
            raise invalid(f"The DBFS API does not support Unity Catalog volume paths ({path}): use the Files API")
        return path.rstrip("/") or "/"

    def _dbfs_parents(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            prefix = "/" + "/".join(parts[:i])
            if prefix in self.dbfs:
                raise refuse(400, f"A file exists at {prefix}, a parent of {path}", "RESOURCE_ALREADY_EXISTS")
            self.dbfs_dirs.add(prefix)

    def _dbfs(self, r: Request, action: str):
        methods = {"get-status": ("GET", DbfsAPI.get_status), "read": ("GET", DbfsAPI.read),
                   "mkdirs": ("POST", DbfsAPI.mkdirs), "create": ("POST", DbfsAPI.create),
                   "add-block": ("POST", DbfsAPI.add_block), "close": ("POST", DbfsAPI.close),
                   "put": ("POST", DbfsAPI.put), "delete": ("POST", DbfsAPI.delete)}
        if action not in methods:
            raise self._no_endpoint(r)
        verb, method = methods[action]
        self._expect(r, verb)
        args = decode_query(method, r.query) if verb == "GET" else decode_body(method, r.body)
        if action in ("get-status", "read"):
            path = self._dbfs_path(args["path"])
            if path in self.dbfs_dirs:
                if action == "read":
                    raise invalid(f"Cannot read {path}: it is a directory")
                return 200, {"path": path, "is_dir": True, "file_size": 0}, {}
            if path not in self.dbfs:
                raise refuse(404, f"No file or directory exists on path {path}.")
            if action == "get-status":
                return 200, {"path": path, "is_dir": False, "file_size": len(self.dbfs[path]),
                             "modification_time": 1}, {}
            length, offset = args.get("length", 0x80000), args.get("offset", 0)
            if length > ONE_MB:
                raise refuse(400, f"Cannot read more than 1MB at once (asked for {length} bytes)",
                             "MAX_READ_SIZE_EXCEEDED")
            if length < 0 or offset < 0:
                raise invalid("offset and length must not be negative")
            data = self.dbfs[path][offset:offset + length]
            return 200, {"bytes_read": len(data), "data": base64.b64encode(data).decode()}, {}
        if action == "mkdirs":
            path = self._dbfs_path(args["path"])
            if path in self.dbfs:
                raise refuse(400, f"A file exists at {path}", "RESOURCE_ALREADY_EXISTS")
            self._dbfs_parents(path + "/x")
            return 200, {}, {}
        if action in ("create", "put"):
            path = self._dbfs_path(args["path"])
            if path in self.dbfs_dirs:
                raise refuse(400, f"{path} is a directory", "RESOURCE_ALREADY_EXISTS")
            if path in self.dbfs and not args.get("overwrite"):
                raise refuse(400, f"A file or directory already exists at the input path {path}.",
                             "RESOURCE_ALREADY_EXISTS")
            self._dbfs_parents(path)
            if action == "put":
                data = self._block(args.get("contents") or "")
                self.dbfs[path] = data
                return 200, {}, {}
            handle = next(self._ids)
            self._open_handles[handle] = (path, bytearray())
            return 200, {"handle": handle}, {}
        if action == "add-block":
            if args["handle"] not in self._open_handles:
                raise refuse(404, f"No open stream with handle {args['handle']}")
            self._open_handles[args["handle"]][1].extend(self._block(args["data"]))
            return 200, {}, {}
        if action == "close":
            if args["handle"] not in self._open_handles:
                raise refuse(404, f"No open stream with handle {args['handle']}")
            path, data = self._open_handles.pop(args["handle"])
            self.dbfs[path] = bytes(data)
            return 200, {}, {}
        path = self._dbfs_path(args["path"])  # delete
        self.dbfs.pop(path, None)
        return 200, {}, {}

    @staticmethod
    def _block(data: str) -> bytes:
        try:
            decoded = base64.b64decode(data, validate=True)
        except ValueError:
            raise invalid("data must be base64-encoded") from None
        if len(decoded) > ONE_MB:
            raise refuse(400, f"The block of {len(decoded)} bytes exceeds the 1MB limit", "MAX_BLOCK_SIZE_EXCEEDED")
        return decoded

    # --- Jobs 2.2 ----------------------------------------------------------------------------------------------
    def _job(self, job_id: int) -> dict:
        job = {"job_id": job_id, "settings": self.jobs[job_id], "created_time": 1}
        if job_id in self.creators:  # the API leaves it out once the creator's account is deleted
            job["creator_user_name"] = self.creators[job_id]
        return job

    def _job_or_refuse(self, job_id: int) -> dict:
        if job_id not in self.jobs:
            raise invalid(f"Job {job_id} does not exist.")
        return self.jobs[job_id]

    def _check_settings(self, settings: dict) -> dict:
        """What the service checks beyond the schema: compute references, unique keys, jobs a task starts, one
        run-as principal."""
        known_jobs = set(self.jobs)
        if "run_as" in settings:
            named = [k for k in PRINCIPALS if settings["run_as"].get(k)]
            if len(named) != 1:
                raise invalid(f"run_as: exactly one of {', '.join(PRINCIPALS)} must be set (got "
                              f"{', '.join(named) or 'none'})")
        check_table_update_trigger(settings)
        check_model_trigger(settings)
        clusters = {c["job_cluster_key"] for c in settings.get("job_clusters", [])}
        environments = {e["environment_key"] for e in settings.get("environments", [])}
        keys = [t["task_key"] for t in settings.get("tasks", [])]
        if len(keys) != len(set(keys)):
            raise invalid(f"Task keys must be unique: {keys}")
        names = [p["name"] for p in settings.get("parameters", [])]
        if len(names) != len(set(names)):
            raise invalid(f"Job parameter names must be unique: {names}")
        for task in settings.get("tasks", []):
            compute = [k for k in ("job_cluster_key", "existing_cluster_id", "new_cluster", "environment_key")
                       if task.get(k)]
            if len(compute) > 1:
                raise invalid(f"Task {task['task_key']} names more than one compute: {', '.join(compute)}")
            if task.get("job_cluster_key") and task["job_cluster_key"] not in clusters:
                raise invalid(f"Task {task['task_key']} refers to job cluster {task['job_cluster_key']}, which "
                              f"is not defined in job_clusters")
            started = (task.get("run_job_task") or {}).get("job_id")
            if started is not None and started not in known_jobs:
                raise invalid(f"Task {task['task_key']} runs job {started}, which does not exist")
            if task.get("environment_key") and task["environment_key"] not in environments:
                raise invalid(f"Task {task['task_key']} refers to environment {task['environment_key']}, which "
                              f"is not defined in environments")
        return settings

    @staticmethod
    def _page(items: list, q: dict, default: int, maximum: int, what: str) -> tuple[list, dict]:
        limit = q.get("limit", default)
        if not 0 <= limit <= maximum:
            raise invalid(f"The limit for {what} must be between 1 and {maximum}, got {limit}")
        limit = limit or maximum
        try:
            start = int(q.get("page_token") or 0)
        except ValueError:
            raise invalid(f"Invalid page_token '{q['page_token']}'") from None
        page = items[start:start + limit]
        more = start + limit < len(items)
        extra = {"has_more": more}
        if more:
            extra["next_page_token"] = str(start + limit)
        if start:
            extra["prev_page_token"] = str(max(0, start - limit))
        return page, extra

    def _jobs(self, r: Request, action: str):
        if action == "list":
            self._expect(r, "GET")
            q = decode_query(JobsAPI.list, r.query)
            jobs = [self._job(i) for i, s in sorted(self.jobs.items())
                    if "name" not in q or s["name"].lower() == q["name"].lower()]
            page, extra = self._page(jobs, q, 20, 100, "jobs")
            return 200, ({"jobs": page} if page else {}) | extra, {}
        if action == "create":
            self._expect(r, "POST")
            b = dict(decode_body(JobsAPI.create, r.body))
            acl = self._check_acl(b.pop("access_control_list", None) or [])
            settings = self._check_settings(b)
            job_id = next(self._ids)
            self.jobs[job_id] = settings
            self.creators[job_id] = self.identity["userName"]
            owner = [] if any(e["permission_level"] == "IS_OWNER" for e in acl) else [
                {"user_name": self.identity["userName"], "permission_level": "IS_OWNER"}]
            self.permissions[job_id] = owner + acl
            return 200, {"job_id": job_id}, {}
        if action == "get":
            self._expect(r, "GET")
            q = decode_query(JobsAPI.get, r.query)
            self._job_or_refuse(q["job_id"])
            return 200, self._job(q["job_id"]), {}
        if action == "reset":
            self._expect(r, "POST")
            b = decode_body(JobsAPI.reset, r.body)
            self._job_or_refuse(b["job_id"])
            self.jobs[b["job_id"]] = self._check_settings(b["new_settings"])
            return 200, {}, {}
        if action == "update":
            self._expect(r, "POST")
            b = decode_body(JobsAPI.update, r.body)
            current = self._job_or_refuse(b["job_id"])
            self.jobs[b["job_id"]] = self._check_settings(
                self._merge(current, b.get("new_settings") or {}, b.get("fields_to_remove") or []))
            return 200, {}, {}
        if action == "delete":
            self._expect(r, "POST")
            b = decode_body(JobsAPI.delete, r.body)
            self._job_or_refuse(b["job_id"])
            del self.jobs[b["job_id"]]
            self.permissions.pop(b["job_id"], None)
            self.creators.pop(b["job_id"], None)
            return 200, {}, {}
        if action == "run-now":
            self._expect(r, "POST")
            return self._run_now(decode_body(JobsAPI.run_now, r.body))
        if action == "runs/get":
            self._expect(r, "GET")
            q = decode_query(JobsAPI.get_run, r.query)
            run = self._run(q["run_id"])
            if run.stale and run.stale[0] > 0:  # a read that does not show the latest repair yet
                run.stale[0] -= 1
                return 200, run.stale[1 + bool(q.get("include_history", False))], {}
            payload = self._run_json(run, include_history=q.get("include_history", False))
            self._advance(run)
            return 200, payload, {}
        if action == "runs/get-output":
            self._expect(r, "GET")
            return self._run_output(decode_query(JobsAPI.get_run_output, r.query)["run_id"])
        if action == "runs/list":
            self._expect(r, "GET")
            q = decode_query(JobsAPI.list_runs, r.query)
            runs = [self._run_json(run) for run in sorted(self.runs.values(), key=lambda x: -x.run_id)
                    if "job_id" not in q or run.job_id == q["job_id"]]
            page, extra = self._page(runs, q, 20, 25, "runs")
            if self.runs_page_cap is not None and len(page) > self.runs_page_cap:  # a short page, as seen for real
                start = int(q.get("page_token") or 0)
                page, extra = page[:self.runs_page_cap], {**extra, "has_more": True,
                                                          "next_page_token": str(start + self.runs_page_cap)}
            return 200, ({"runs": page} if page else {}) | extra, {}
        if action == "runs/repair":
            self._expect(r, "POST")
            return self._repair(decode_body(JobsAPI.repair_run, r.body))
        raise self._no_endpoint(r)

    @staticmethod
    def _check_acl(entries: list) -> list[dict]:
        """An access list as the Permissions service checks it (levels are already checked against the SDK's
        JobPermissionLevel by the decoder): one principal and a level per entry, one owner, never a group."""
        for i, entry in enumerate(entries):
            named = [k for k in PRINCIPALS if entry.get(k)]
            if len(named) != 1:
                raise invalid(f"access_control_list[{i}]: exactly one of {', '.join(PRINCIPALS)} must be set (got "
                              f"{', '.join(named) or 'none'})")
            if not entry.get("permission_level"):
                raise invalid(f"access_control_list[{i}]: permission_level is required")
            if entry["permission_level"] == "IS_OWNER" and named == ["group_name"]:
                raise invalid(f"access_control_list[{i}]: a group cannot own a job: IS_OWNER takes a user or a "
                              f"service principal")
        owners = sum(e["permission_level"] == "IS_OWNER" for e in entries)
        if owners > 1:
            raise invalid(f"A job has exactly one owner: access_control_list names {owners} with IS_OWNER")
        return [dict(e) for e in entries]

    def _job_permissions(self, r: Request, job: str):
        """``GET`` (jobs.get_permissions) and ``PUT`` (jobs.set_permissions: replaces every direct grant; without
        an IS_OWNER entry the owner stays) of ``/api/2.0/permissions/jobs/{job_id}``."""
        try:
            job_id = int(job)
        except ValueError:
            raise invalid(f"Invalid job id '{job}'") from None
        if job_id not in self.jobs:
            raise refuse(404, f"Job {job_id} does not exist.", "RESOURCE_DOES_NOT_EXIST")
        if r.method == "PUT":
            acl = self._check_acl(decode_body(JobsAPI.set_permissions, r.body, exclude=("job_id",)).get(
                "access_control_list") or [])
            owner = [] if any(e["permission_level"] == "IS_OWNER" for e in acl) else [
                e for e in self.permissions.get(job_id, []) if e["permission_level"] == "IS_OWNER"]
            self.permissions[job_id] = owner + acl
        elif r.method == "GET":
            decode_query(JobsAPI.get_permissions, r.query, exclude=("job_id",))
        else:
            raise self._no_endpoint(r)
        return 200, self._permissions_json(job_id), {}

    def _permissions_json(self, job_id: int) -> dict:
        direct = [{**{k: e[k] for k in PRINCIPALS if e.get(k)},
                   "all_permissions": [{"permission_level": e["permission_level"], "inherited": False}]}
                  for e in self.permissions.get(job_id, [])]
        admins = {"group_name": "admins", "all_permissions": [
            {"permission_level": "CAN_MANAGE", "inherited": True, "inherited_from_object": ["/jobs/"]}]}
        return {"object_id": f"/jobs/{job_id}", "object_type": "job", "access_control_list": direct + [admins]}

    @staticmethod
    def _merge(current: dict, new: dict, remove: list[str]) -> dict:
        """``jobs/update``: top-level fields replaced, ``tasks`` and ``job_clusters`` merged by key."""
        keyed = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}
        merged = json.loads(json.dumps(current))
        for name, value in new.items():
            if name in keyed:
                by_key = {item[keyed[name]]: item for item in merged.get(name, [])}
                by_key.update({item[keyed[name]]: item for item in value})
                merged[name] = list(by_key.values())
            else:
                merged[name] = value
        for spec in remove:
            name, _, key = spec.partition("/")
            if key and name in keyed:
                kept = [i for i in merged.get(name, []) if i[keyed[name]] != key]
                if len(kept) == len(merged.get(name, [])):
                    raise invalid(f"fields_to_remove: {spec} does not exist")
                merged[name] = kept
            elif name in merged:
                del merged[name]
            else:
                raise invalid(f"fields_to_remove: {spec} is not set")
        return merged

    def _run(self, run_id: int) -> EmulatedRun:
        if run_id in self.runs:
            return self.runs[run_id]
        raise invalid(f"Run {run_id} does not exist.")

    def _run_now(self, b: dict):
        settings = self._job_or_refuse(b["job_id"])
        token = b.get("idempotency_token")
        if token is not None and len(token) > 64:
            raise invalid(f"idempotency_token must be at most 64 characters, got {len(token)}")
        if token is not None and token in self._idempotency:  # the same request again: the first run
            return 200, {"run_id": self._idempotency[token], "number_in_job": self._idempotency[token]}, {}
        defined = {p["name"] for p in settings.get("parameters", [])}
        undefined = sorted(set(b.get("job_parameters") or {}) - defined)
        if undefined:
            raise invalid(f"Job parameters {', '.join(undefined)} are not defined in job {b['job_id']}")
        active = [x for x in self.runs.values() if x.job_id == b["job_id"] and (x.active or x.queued)]
        limit = settings.get("max_concurrent_runs", 1)
        queue = (settings.get("queue") or {}).get("enabled", False)
        run_id = next(self._ids)
        tasks = settings.get("tasks") or [{"task_key": "main"}]
        run = EmulatedRun(run_id, b["job_id"], [t["task_key"] for t in tasks],
                          [next(self._ids) for _ in tasks], list(self.next_run_script), self.next_run_output,
                          self.next_run_error, dict(b.get("job_parameters") or {}))
        if len(active) >= limit:
            if queue:
                run.queued = True
            else:
                run.script, run.step = ["SKIPPED"], 0
                run.error = (f"Skipping this run because the limit of {limit} maximum concurrent runs has been "
                             f"reached.")
        self.runs[run_id] = run
        if token is not None:
            self._idempotency[token] = run_id
        return 200, {"run_id": run_id, "number_in_job": run_id}, {}

    def _advance(self, run: EmulatedRun) -> None:
        if run.queued:
            return
        if run.step < len(run.script) - 1:
            run.step += 1
        if run.state[0] in TERMINAL and not run.end_time:
            run.end_time = run.start_time + 60_000
            self._dequeue()

    def _dequeue(self) -> None:
        for job_id, settings in self.jobs.items():
            limit = settings.get("max_concurrent_runs", 1)
            runs = sorted((x for x in self.runs.values() if x.job_id == job_id), key=lambda x: x.run_id)
            for run in runs:
                if run.queued and sum(x.active for x in runs) < limit:
                    run.queued = False

    def _status(self, run: EmulatedRun, step: Optional[str] = None) -> tuple[dict, dict]:
        lifecycle, _, result_text = (step or run.script[run.step]).partition(":")
        result = result_text or None
        if run.queued and step is None:
            lifecycle = "QUEUED"
        state = {"life_cycle_state": lifecycle, "state_message": (run.error or "") if lifecycle in TERMINAL else ""}
        status: dict = {"state": "TERMINATED" if lifecycle in TERMINAL else lifecycle}
        if lifecycle == "INTERNAL_ERROR":
            state["result_state"] = "FAILED"
            status["termination_details"] = {"code": "INTERNAL_ERROR", "type": "INTERNAL_ERROR",
                                             "message": run.error or "internal error"}
        elif lifecycle == "SKIPPED":  # over max_concurrent_runs without a queue
            state["result_state"] = "MAXIMUM_CONCURRENT_RUNS_REACHED"
            status["termination_details"] = {"code": "MAX_CONCURRENT_RUNS_EXCEEDED", "type": "CLIENT_ERROR",
                                             "message": run.error or ""}
        elif lifecycle == "TERMINATED":
            code, kind = TERMINATIONS.get(result or "", ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"))
            timeout = self.jobs.get(run.job_id, {}).get("timeout_seconds", 0)
            default = {"SUCCESS": "", "TIMEDOUT": f"Run timed out: it exceeded the job's timeout of {timeout} seconds",
                       "CANCELED": f"Run cancelled by {self.identity['userName']}",
                       "SUCCESS_WITH_FAILURES": "Some tasks failed; the run's leaf tasks succeeded"}
            state["result_state"] = result
            status["termination_details"] = {"code": code, "type": kind,
                                             "message": run.error or default.get(result or "", "Task failed")}
        if lifecycle == "QUEUED":
            status["queue_details"] = {"code": "ACTIVE_RUNS_LIMIT_REACHED",
                                       "message": "The job reached its maximum number of concurrent runs"}
        return state, status

    def _run_json(self, run: EmulatedRun, include_history: bool = False) -> dict:
        state, status = self._status(run)
        payload = {"run_id": run.run_id, "job_id": run.job_id,
                   "run_page_url": f"{self.url}/jobs/{run.job_id}/runs/{run.run_id}", "state": state,
                   "status": status, "start_time": run.start_time, "end_time": run.end_time,
                   "tasks": [{"run_id": task_run, "task_key": key, "state": state, "status": status}
                             for key, task_run in zip(run.task_keys, run.task_run_ids)],
                   "job_parameters": [{"name": k, "value": v} for k, v in run.parameters.items()]}
        if include_history:  # each attempt with how it ended (the latest: the run's state now)
            history = []
            for kind, item in [("ORIGINAL", run.run_id)] + [("REPAIR", repair_id) for repair_id in run.repairs]:
                item_state, item_status = (self._status(run, run.ended[item]) if item in run.ended
                                           else (state, status))
                history.append({"type": kind, "id": item, "state": item_state, "status": item_status})
            payload["repair_history"] = history
        return payload

    def _run_output(self, run_id: int):
        parent = next((x for x in self.runs.values() if run_id in x.task_run_ids), None)
        if parent is None:
            run = self._run(run_id)
            if len(run.task_run_ids) > 1:
                raise invalid("Retrieving the output of runs with multiple tasks is not supported. Please retrieve "
                              "the output of each individual task run instead.")
            parent = run
        payload: dict = {"metadata": self._run_json(parent)}
        lifecycle, result = parent.state
        if result == "SUCCESS" and parent.output:
            payload["notebook_output"] = {"result": parent.output, "truncated": False}
        elif lifecycle in TERMINAL and result != "SUCCESS":
            payload["error"] = parent.error or "Task failed"
        return 200, payload, {}

    def _repair(self, b: dict):
        run = self._run(b["run_id"])
        lifecycle, result = run.state
        if lifecycle not in TERMINAL:
            raise refuse(400, f"Run {run.run_id} is still {lifecycle}: only a finished run can be repaired",
                         "INVALID_STATE")
        if run.repairs and b.get("latest_repair_id") != run.repairs[-1]:
            raise invalid(f"latest_repair_id must be {run.repairs[-1]}, the run's latest repair: got "
                          f"{b.get('latest_repair_id')}")
        if not run.repairs and b.get("latest_repair_id") is not None:
            raise invalid(f"Run {run.run_id} has not been repaired: latest_repair_id must not be set")
        unknown = sorted(set(b.get("rerun_tasks") or []) - set(run.task_keys))
        if unknown:
            raise invalid(f"Tasks {', '.join(unknown)} are not part of run {run.run_id}")
        failed = result != "SUCCESS"
        if not b.get("rerun_tasks") and not (b.get("rerun_all_failed_tasks") and failed):
            raise invalid(f"Run {run.run_id} has no tasks to repair: give rerun_tasks, or rerun_all_failed_tasks "
                          f"for a run with failed tasks")
        settings = self.jobs.get(run.job_id, {})
        undefined = sorted(set(b.get("job_parameters") or {}) - {p["name"] for p in settings.get("parameters", [])})
        if undefined:
            raise invalid(f"Job parameters {', '.join(undefined)} are not defined in job {run.job_id}")
        before = (self._run_json(run), self._run_json(run, include_history=True))
        run.ended[run.repairs[-1] if run.repairs else run.run_id] = run.script[run.step]
        repair_id = next(self._ids)
        run.repairs.append(repair_id)
        if self.stale_reads_after_repair:
            run.stale = [self.stale_reads_after_repair, *before]
        run.script, run.step, run.end_time = list(self.next_run_script), 0, 0
        run.output, run.error = self.next_run_output, self.next_run_error
        run.parameters.update(b.get("job_parameters") or {})
        return 200, {"repair_id": repair_id}, {}
