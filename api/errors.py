"""How failures become HTTP answers: always ``{"detail": "<one line>"}``, never a traceback.

- `broker.exceptions.NotFoundError` (an unknown object, catalog, source or cutout) → 404.
- `broker.exceptions.ConflictError` (a name taken) → 409.
- A request that fails validation → 422, ``detail`` naming each bad parameter and ``errors``
  listing them as FastAPI reports them.
- `RefusedError` (content the route parsed and refused: a filter that does not compile, an
  upload with bad rows) → 422, ``detail`` and whatever locates the problem.
- `TransientError` (`ServiceUnavailableError`: a store does not answer) → 503 with the store's
  message and a ``Retry-After`` header.
- Anything else → 500 with a generic message; the traceback goes to the log (see
  `api.middleware`), not to the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.models import ErrorOut
from broker.exceptions import ConflictError, NotFoundError, TransientError

#: Seconds a client is asked to wait before retrying after a 503.
RETRY_AFTER_S = 5

#: Error answers of the routes, for the OpenAPI description.
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown object, source, cutout or catalog."}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "A parameter is missing or out of range."}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "A store of the archive does not answer."}}

logger = structlog.get_logger("api")


def _describe(errors: Sequence[Any]) -> str:
    """One line out of FastAPI's validation errors, e.g. ``dec: Input should be ≤ 90 (got 91)``."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path",
                                                                                "body")]
        where = ".".join(location) or "request"
        text = f"{where}: {error.get('msg', 'invalid value')}"
        if error.get("type") != "missing" and "input" in error:
            text += f" (got {error['input']!r})"
        parts.append(text)
    return "; ".join(parts) or "invalid request"


class RefusedError(Exception):
    """Content a route parsed and refused: answered 422 with ``detail`` and the fields of
    ``where`` (a filter's line and column, an upload's bad rows)."""

    def __init__(self, detail: str, **where: Any) -> None:
        super().__init__(detail)
        self.where = where


async def _refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RefusedError)
    return JSONResponse({"detail": str(exc), **exc.where}, status_code=422)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFoundError)
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConflictError)
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    # Drop ``ctx``/``url``: ctx may hold exception objects, url points at pydantic's docs.
    listed = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input")}
              for e in errors]
    return JSONResponse({"detail": _describe(errors), "errors": jsonable_encoder(listed)},
                        status_code=422)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("store unavailable", method=request.method, path=request.url.path,
                   error=str(exc))
    return JSONResponse({"detail": str(exc) or type(exc).__name__}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def install(app: FastAPI) -> None:
    """Register the handlers of this module on an app."""
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(RefusedError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(TransientError, _unavailable)
