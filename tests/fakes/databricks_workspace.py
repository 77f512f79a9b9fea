"""A small, real HTTP server that plays the part of a Databricks workspace for the deploy and run tests.

It implements the subset of the Workspace, Files, DBFS, Jobs (2.2) and MLflow experiment endpoints that the
`mlops` tool calls, keeps state (files, notebooks, jobs by id, runs with scripted state changes), records every
request, and can be told to answer the next matching requests with an error (429, 503, 401, 403...).
Payload shapes follow the public REST API.
"""
from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

ERROR_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "RESOURCE_DOES_NOT_EXIST", 429: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}


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


@dataclass
class FakeRun:
    run_id: int
    job_id: int
    script: list[str]           # e.g. ["PENDING", "RUNNING", "TERMINATED:SUCCESS"]
    output: Optional[str]
    error: Optional[str]
    parameters: dict[str, str]
    step: int = 0
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    end_time: int = 0

    def advance(self) -> None:
        if self.step < len(self.script) - 1:
            self.step += 1
        if self.state[0] == "TERMINATED" and not self.end_time:
            self.end_time = self.start_time + 60_000

    @property
    def state(self) -> tuple[str, Optional[str]]:
        lifecycle, _, result = self.script[self.step].partition(":")
        return lifecycle, result or None


class FakeWorkspace:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.files: dict[str, bytes] = {}
        self.notebooks: dict[str, bytes] = {}
        self.directories: set[str] = set()
        self.experiments: dict[str, str] = {}
        self.jobs: dict[int, dict] = {}
        self.runs: dict[int, FakeRun] = {}
        self.faults: list[Fault] = []
        self.next_run_script = ["PENDING", "RUNNING", "TERMINATED:SUCCESS"]
        self.next_run_output: Optional[str] = json.dumps({"status": "SUCCESS"})
        self.next_run_error: Optional[str] = None
        self._ids = itertools.count(101)
        self._handles = itertools.count(1)
        self._open_handles: dict[int, tuple[str, bytearray]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- control -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeWorkspace":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, method: str, path_prefix: str, status: int, times: int = 1, message: str = "injected",
             retry_after: Optional[int] = None) -> None:
        self.faults.append(Fault(method, path_prefix, status, times, message, retry_after))

    def calls(self, method: Optional[str] = None, path_prefix: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def uploads(self) -> list[Request]:
        """Requests that send file or notebook content."""
        content_posts = ("/api/2.0/workspace/import", "/api/2.0/dbfs/add-block", "/api/2.0/dbfs/put")
        return [r for r in self.requests if (r.method == "PUT" and r.path.startswith("/api/2.0/fs/files/"))
                or (r.method == "POST" and r.path in content_posts)]

    # --- HTTP plumbing -------------------------------------------------------------------------------------
    def _handler(self):
        workspace = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw
                request = Request(self.command, unquote(url.path),
                                  {k: v[0] for k, v in parse_qs(url.query).items()}, dict(self.headers), body)
                with workspace._lock:
                    workspace.requests.append(request)
                    fault = workspace._take_fault(request)
                    if fault:
                        status, payload, headers = fault
                    else:
                        status, payload, headers = workspace._route(request)
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

    def _take_fault(self, request: Request):
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and request.path.startswith(fault.path_prefix):
                fault.times -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return fault.status, {"error_code": ERROR_CODES.get(fault.status, "ERROR"),
                                      "message": fault.message}, headers
        return None

    @staticmethod
    def _error(status: int, message: str):
        return status, {"error_code": ERROR_CODES[status], "message": message}, {}

    # --- API -------------------------------------------------------------------------------------------------
    def _route(self, r: Request):
        p, q, b = r.path, r.query, r.json()
        ok = (200, {}, {})
        if p.startswith("/api/2.0/fs/files/"):
            return self._files(r, p[len("/api/2.0/fs/files"):])
        if p.startswith("/api/2.0/fs/directories/"):
            self.directories.add(p[len("/api/2.0/fs/directories"):])
            return ok
        if p == "/api/2.0/workspace/mkdirs":
            self.directories.add(b["path"])
            return ok
        if p == "/api/2.0/workspace/import":
            if b["path"] in self.notebooks and not b.get("overwrite"):
                return self._error(400, f"{b['path']} already exists")
            self.notebooks[b["path"]] = base64.b64decode(b["content"])
            return ok
        if p == "/api/2.0/workspace/export":
            if q["path"] not in self.notebooks:
                return self._error(404, f"Path ({q['path']}) doesn't exist.")
            return 200, {"content": base64.b64encode(self.notebooks[q["path"]]).decode(), "file_type": "py"}, {}
        if p.startswith("/api/2.0/dbfs/"):
            return self._dbfs(p.rsplit("/", 1)[1], q, b)
        if p == "/api/2.0/mlflow/experiments/get-by-name":
            name = q["experiment_name"]
            if name not in self.experiments:
                return self._error(404, f"Could not find experiment with name {name}")
            return 200, {"experiment": {"experiment_id": self.experiments[name], "name": name}}, {}
        if p == "/api/2.0/mlflow/experiments/create":
            self.experiments[b["name"]] = str(next(self._ids))
            return 200, {"experiment_id": self.experiments[b["name"]]}, {}
        if p.startswith("/api/2.2/jobs/"):
            return self._jobs(p[len("/api/2.2/jobs/"):], q, b)
        return self._error(404, f"no such endpoint {r.method} {p}")

    def _files(self, r: Request, path: str):
        if r.method == "PUT":
            if path in self.files and r.query.get("overwrite") != "true":
                return self._error(400, f"{path} already exists")
            self.files[path] = r.body if isinstance(r.body, bytes) else json.dumps(r.body).encode()
            return 204, None, {}
        if path not in self.files:
            return self._error(404, f"The file {path} does not exist")
        headers = {"Last-Modified": "Mon, 23 Nov 2026 10:00:00 GMT", "Content-Type": "application/octet-stream"}
        return 200, self.files[path], headers

    def _dbfs(self, action: str, q: dict, b: dict):
        if action == "get-status":
            if q["path"] not in self.files:
                return self._error(404, f"No file or directory exists on path {q['path']}.")
            return 200, {"path": q["path"], "is_dir": False, "file_size": len(self.files[q["path"]])}, {}
        if action == "read":
            if q["path"] not in self.files:
                return self._error(404, f"No file or directory exists on path {q['path']}.")
            data = self.files[q["path"]][int(q.get("offset", 0)):][:int(q.get("length", 1 << 20))]
            return 200, {"bytes_read": len(data), "data": base64.b64encode(data).decode()}, {}
        if action == "mkdirs":
            self.directories.add(b["path"])
            return 200, {}, {}
        if action == "create":
            handle = next(self._handles)
            self._open_handles[handle] = (b["path"], bytearray())
            return 200, {"handle": handle}, {}
        if action == "add-block":
            self._open_handles[b["handle"]][1].extend(base64.b64decode(b["data"]))
            return 200, {}, {}
        if action == "close":
            path, data = self._open_handles.pop(b["handle"])
            self.files[path] = bytes(data)
            return 200, {}, {}
        if action == "put":
            self.files[b["path"]] = base64.b64decode(b.get("contents", ""))
            return 200, {}, {}
        return self._error(404, f"no such DBFS action {action}")

    def _job(self, job_id: int) -> dict:
        return {"job_id": job_id, "settings": self.jobs[job_id], "created_time": 1}

    def _run_json(self, run: FakeRun) -> dict:
        lifecycle, result = run.state
        status = {"state": lifecycle}
        if lifecycle == "TERMINATED":  # the current API reports a termination code; FAILED is a legacy result
            failed = result != "SUCCESS"
            status["termination_details"] = {"code": "RUN_EXECUTION_ERROR" if failed else "SUCCESS",
                                             "type": "CLIENT_ERROR" if failed else "SUCCESS",
                                             "message": (run.error or "Task failed") if failed else ""}
        state = {"life_cycle_state": lifecycle, "state_message": ""}
        if result:
            state["result_state"] = result
        return {"run_id": run.run_id, "job_id": run.job_id, "run_page_url": f"{self.url}/jobs/{run.job_id}/runs/"
                f"{run.run_id}", "state": state, "status": status, "start_time": run.start_time,
                "end_time": run.end_time, "tasks": [{"run_id": run.run_id * 10 + 1, "task_key": "main"}],
                "job_parameters": [{"name": k, "value": v} for k, v in run.parameters.items()]}

    def _jobs(self, action: str, q: dict, b: dict):
        if action == "list":
            jobs = [self._job(i) for i, s in sorted(self.jobs.items())
                    if "name" not in q or s["name"].lower() == q["name"].lower()]
            return 200, {"jobs": jobs, "has_more": False}, {}
        if action == "create":
            job_id = next(self._ids)
            self.jobs[job_id] = b
            return 200, {"job_id": job_id}, {}
        if action in ("get", "reset", "update", "delete", "run-now"):
            job_id = int(q.get("job_id") or b.get("job_id"))
            if job_id not in self.jobs:
                return self._error(400, f"Job {job_id} does not exist.")
            if action == "get":
                return 200, self._job(job_id), {}
            if action == "reset":
                self.jobs[job_id] = b["new_settings"]
            elif action == "update":
                self.jobs[job_id] = {**self.jobs[job_id], **b.get("new_settings", {})}
            elif action == "delete":
                del self.jobs[job_id]
            else:
                run_id = next(self._ids)
                self.runs[run_id] = FakeRun(run_id, job_id, list(self.next_run_script), self.next_run_output,
                                            self.next_run_error, dict(b.get("job_parameters") or {}))
                return 200, {"run_id": run_id, "number_in_job": run_id}, {}
            return 200, {}, {}
        if action == "runs/get":
            run = self.runs.get(int(q["run_id"]))
            if run is None:
                return self._error(400, f"Run {q['run_id']} does not exist.")
            payload = self._run_json(run)
            run.advance()
            return 200, payload, {}
        if action == "runs/get-output":
            run = self.runs[int(q["run_id"]) // 10]
            payload: dict = {"metadata": self._run_json(run)}
            if run.state[1] == "SUCCESS" and run.output:
                payload["notebook_output"] = {"result": run.output, "truncated": False}
            if run.state[1] not in (None, "SUCCESS"):
                payload["error"] = run.error or "Task failed"
            return 200, payload, {}
        if action == "runs/list":
            runs = [self._run_json(r) for r in sorted(self.runs.values(), key=lambda r: -r.run_id)
                    if r.job_id == int(q["job_id"])][:int(q.get("limit", 25))]
            return 200, {"runs": runs, "has_more": False}, {}
        if action == "runs/repair":
            run = self.runs[int(b["run_id"])]
            run.script, run.step, run.end_time = list(self.next_run_script), 0, 0
            run.output, run.error = self.next_run_output, self.next_run_error
            run.parameters.update(b.get("job_parameters") or {})
            return 200, {"repair_id": next(self._ids)}, {}
        return self._error(404, f"no such jobs action {action}")
