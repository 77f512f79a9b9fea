"""A real HTTP server on 127.0.0.1 that accepts Application Insights ingestion (``POST /v2.1/track``) and keeps
the envelopes, for tests that point a connection string's ``IngestionEndpoint`` at it. ``stall=True`` makes it
accept requests and never answer, like an ingestion endpoint that hangs."""
from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTRUMENTATION_KEY = "11111111-2222-3333-4444-555555555555"


class IngestionCapture:
    def __init__(self, stall: bool = False):
        self.envelopes: list[dict] = []
        self.stall = stall
        self._release = threading.Event()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                if capture.stall:
                    capture._release.wait(120)
                    return
                items = json.loads(raw) if raw else []
                capture.envelopes.extend(items)
                body = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def connection_string(self) -> str:
        port = self._server.server_address[1]
        return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{port}/"

    def of_type(self, base_type: str) -> list[dict]:
        return [e for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
