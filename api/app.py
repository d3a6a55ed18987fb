"""The FastAPI application of Lanner.

``create_app()`` builds the app over one `Factory` (from the process settings unless one is
given); ``lanner serve`` runs it with uvicorn (``uvicorn --factory api.app:create_app``). The
factory's stores are connected on first use, so the app starts while a store is down and
answers 503 until it is back; the factory is closed when the app shuts down.

Routes (OpenAPI documentation at ``/docs``):

- ``GET /api/v1/objects/{object_id}``, ``/lightcurve``, ``/cutouts/{kind}[?source_id=]``
- ``GET /api/v1/cone?ra=&dec=&radius=ARCSEC[&catalog=objects][&limit=]``
- ``GET /api/v1/status``, ``GET /metrics``, ``GET /`` (a landing page)

Every error answer is ``{"detail": "<one line>"}`` (see `api.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from api import errors
from api.dependencies import LazyStores
from api.middleware import ObservedApp
from api.routers import cone, home, objects, scs, status
from broker import lanner_version
from broker.config import get_settings
from broker.factory import Factory

DESCRIPTION = """\
Objects, light curves, cutouts and cone search over Lanner's alert archive.

Positions are ICRS degrees, cone radii arcseconds, times MJD (TAI), fluxes difference-image PSF
fluxes in nanojansky, magnitudes AB (m = -2.5 log10(|f| / nJy) + 31.4). Errors answer
`{"detail": "<message>"}`: 404 for unknown things, 422 for bad parameters, 503 when a store of
the archive does not answer.
"""


def create_app(factory: Factory | None = None) -> FastAPI:
    """Build the HTTP API.

    Parameters
    ----------
    factory
        Gives the stores; built from `broker.config.get_settings` when omitted. Closed when the
        app shuts down.

    Returns
    -------
    FastAPI
        The application.
    """
    built = factory if factory is not None else Factory(get_settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        structlog.get_logger("api").info("api started", backend=built.settings.backend.value)
        try:
            yield
        finally:
            built.close()

    app = FastAPI(title="Lanner", summary="An alert-stream broker with a catalog archive.",
                  description=DESCRIPTION, version=lanner_version(), lifespan=lifespan)
    app.state.stores = LazyStores(built)
    errors.install(app)
    app.add_middleware(ObservedApp)
    for module in (objects, cone, scs, status, home):
        app.include_router(module.router)
    return app
