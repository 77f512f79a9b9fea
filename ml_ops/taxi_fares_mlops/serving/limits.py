"""What one caller, or many, can make the online service spend: the limits uvicorn and Starlette do not set.

``Limits`` is one pure-ASGI middleware around the whole app:

* **body size**: a ``Content-Length`` above ``max_body_bytes`` is a 413 before a byte of the body is read; a body
  without one (chunked) is counted while it streams and cut off with a 413 at the limit. uvicorn has no such
  limit: without it, a 29 MB body was read whole (1.6 s, 300 MiB) before the app refused it.
* **body read time**: the whole body must arrive within ``body_timeout`` seconds of the request's headers; a
  client that stalls mid-body gets a 408 and its connection closed. (uvicorn's keep-alive timeout covers idle
  connections only.)
* **requests in flight**: beyond ``max_in_flight`` requests inside the app, a 503 with ``Retry-After``. The probes
  (``/health/live``, ``/health/ready``) are not counted and never refused, so a saturated pod is not restarted
  for being busy. In-flight requests bound memory too: each holds at most ``max_body_bytes`` of body.

The limits wrap ``receive``: the app reads the body when it asks for it, after authentication (a route
dependency), so a caller without credentials never costs a body read. A breach raises inside the app's
``receive`` and is answered here; if the app swallowed the exception and answers itself, its answer is replaced.

Headers are uvicorn's side: ``H11WithHeaderTimeout`` closes a connection whose request headers are not complete
``header_timeout`` seconds after it opened (or after its previous response), and ``h11_max_incomplete_event_size``
(``server_options``) bounds their size.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
BODY_TIMEOUT_SECONDS = 30.0
HEADER_TIMEOUT_SECONDS = 10.0
MAX_HEADER_BYTES = 16 * 1024
MAX_IN_FLIGHT = 64
RETRY_AFTER_SECONDS = 1
KEEP_ALIVE_SECONDS = 5
UNCOUNTED_PATHS = frozenset({"/health/live", "/health/ready"})


class LimitExceeded(Exception):
    """Raised in the app's ``receive`` when its request breaks a limit; answered by ``Limits``."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


class Limits:
    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, body_timeout: float = BODY_TIMEOUT_SECONDS,
                 max_in_flight: int = MAX_IN_FLIGHT, retry_after: int = RETRY_AFTER_SECONDS):
        if max_body_bytes < 1 or body_timeout <= 0 or max_in_flight < 1:
            raise ValueError("limits: max_body_bytes and max_in_flight must be at least 1, body_timeout positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = scope["path"] not in UNCOUNTED_PATHS
        if counted and self.in_flight >= self.max_in_flight:
            await _answer(send, 503, f"the service is at capacity ({self.max_in_flight} requests in flight); retry "
                                     f"in {self.retry_after} s", {"retry-after": str(self.retry_after)})
            return
        declared = _content_length(scope)
        if declared is None:
            await _answer(send, 400, "the Content-Length header is not a single non-negative integer", close=True)
            return
        if declared > self.max_body_bytes:
            await _answer(send, 413, f"the body is {declared} bytes; at most {self.max_body_bytes} are accepted",
                          close=True)
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        state = {"bytes": 0, "done": False, "breach": None, "started": False}

        async def limited_receive():
            if state["done"]:  # the body is in: what follows is waiting for a disconnect, which is not limited
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                state["breach"] = LimitExceeded(408, f"the body did not arrive within {self.body_timeout:g} s")
                raise state["breach"] from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_body_bytes:
                    state["breach"] = LimitExceeded(413, f"the body is more than {self.max_body_bytes} bytes")
                    raise state["breach"]
                state["done"] = not message.get("more_body", False)
            else:
                state["done"] = True
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                if state["breach"] is not None:  # the app caught the breach and answered itself: ours stands
                    state["started"] = True
                    await _answer(send, state["breach"].status, state["breach"].detail, close=True)
                    return
                state["started"] = True
            elif state["breach"] is not None:
                return  # the body of an answer that was replaced
            await send(message)

        if counted:
            self.in_flight += 1
        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            breach = state["breach"]  # raised as is, or as whatever the app turned it into
            if breach is None or state["started"]:
                raise
            logger.info("%s %s refused: %s", scope["method"], scope["path"], breach.detail)
            await _answer(send, breach.status, breach.detail, close=True)
        finally:
            if counted:
                self.in_flight -= 1


def _content_length(scope) -> Optional[int]:
    """The declared body length (0 when none is declared), or None when the header is not one valid number."""
    values = [v for k, v in scope["headers"] if k == b"content-length"]
    if not values:
        return 0
    if len(values) > 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


async def _answer(send, status: int, detail: str, headers: Optional[dict] = None, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = dict(headers or {})
    if close:  # uvicorn closes the connection after this answer: the rest of the body is not read
        extra["connection"] = "close"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in extra.items())]})
    await send({"type": "http.response.body", "body": body})


class H11WithHeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers: ``header_timeout`` seconds after the connection
    opened or its previous response ended, a request whose headers are not complete has its connection closed.
    (uvicorn waits for headers forever: a client sending one header byte at a time held a connection open.)"""

    header_timeout = HEADER_TIMEOUT_SECONDS

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer: Optional[asyncio.TimerHandle] = None
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # the headers are in: the request is the app's, and the body has its own deadline
        if not self.transport.is_closing():
            logger.info("connection closed: request headers incomplete after %g s", self.header_timeout)
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type:
    """``H11WithHeaderTimeout`` with its deadline set (uvicorn takes a protocol class)."""
    return type("H11WithHeaderTimeout", (H11WithHeaderTimeout,), {"header_timeout": float(seconds)})


def server_options(header_timeout: float = HEADER_TIMEOUT_SECONDS, max_header_bytes: int = MAX_HEADER_BYTES,
                   keep_alive: float = KEEP_ALIVE_SECONDS) -> dict:
    """uvicorn's own limits, as ``uvicorn.Config`` keywords: the header deadline and size, the idle timeout."""
    return {"http": protocol_with_header_timeout(header_timeout), "h11_max_incomplete_event_size": max_header_bytes,
            "timeout_keep_alive": keep_alive}
