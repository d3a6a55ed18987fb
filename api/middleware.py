"""Request timing and the last line of defence against unexpected errors.

`ObservedApp` is a plain ASGI middleware (no ``BaseHTTPMiddleware``: it neither buffers
responses nor copies the scope) that

- times every HTTP request into ``lanner_http_request_duration_seconds``, labelled by method, the
  route *template* (``/api/v1/objects/{object_id}``, not the raw path, so the number of series
  stays bounded; requests that match no route count as ``unmatched``) and status code;
- turns an exception nothing else handled into a 500 with a generic message, logging the
  traceback with structlog. Starlette's own last-resort handler would log it again and re-raise;
  catching it here keeps one log record per failure.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "lanner_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: What a client sees of an unexpected failure.
INTERNAL_ERROR = b'{"detail":"internal server error (logged on the server)"}'

logger = structlog.get_logger("api")


class ObservedApp:
    """Wraps an ASGI app with request metrics and a catch-all 500 (HTTP requests only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_observed(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            logger.exception("unhandled error", method=scope.get("method"),
                             path=scope.get("path"))
            status = 500
            if response_started:
                # Part of an answer is out: all that is left is to break the connection.
                raise
            await _send_internal_error(send)
        finally:
            REQUEST_SECONDS.labels(method=scope.get("method", ""), route=_route(scope),
                                   status=str(status)).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


async def _send_internal_error(send: Send) -> None:
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(INTERNAL_ERROR)).encode())]})
    await send({"type": "http.response.body", "body": INTERNAL_ERROR})
