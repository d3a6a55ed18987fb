"""The FastAPI application of Lanner.

``create_app()`` builds the app over one `Factory` (from the process settings unless one is
given); ``lanner serve`` runs it with uvicorn (``uvicorn --factory api.app:create_app``). The
factory's stores are connected on first use, so the app starts while a store is down and
answers 503 until it is back; the factory is closed when the app shuts down.

Routes (OpenAPI documentation at ``/docs``):

- ``GET /api/v1/objects/{object_id}``, ``/lightcurve``, ``/cutouts/{kind}[?source_id=]``
- ``GET /api/v1/cone?ra=&dec=&radius=ARCSEC[&catalog=objects][&limit=]``
- ``GET /api/v1/status``, ``GET /metrics``, ``GET /`` (a landing page)
- ``GET /api/v1/me``, ``GET|POST /api/v1/users`` (admin), ``GET|POST /api/v1/tokens``,
  ``DELETE /api/v1/tokens/{token_id}`` (`api.routers.accounts`; tokens and tiers in `api.auth`)
- ``GET|POST /api/v1/watchlists``, ``GET|PUT|DELETE /api/v1/watchlists/{id}``,
  ``GET /api/v1/watchlists/{id}/hits`` (`api.routers.watchlists`), and the same for
  ``/api/v1/watchmaps`` (`api.routers.watchmaps`)

Every error answer is ``{"detail": "<one line>"}`` (see `api.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI

from api import errors
from api.auth import get_caller
from api.dependencies import LazyStores
from api.middleware import ObservedApp
from api.routers import (
    accounts,
    annotate,
    cone,
    filters,
    home,
    jobs,
    objects,
    registry,
    scs,
    status,
    tap,
    tap_async,
    watchlists,
    watchmaps,
)
from broker import lanner_version
from broker.config import get_settings
from broker.factory import Factory
from broker.jobs import runner as job_runner
from broker.tap.jobs import TapRunner, results_dir

DESCRIPTION = """\
Objects, light curves, cutouts and cone search over Lanner's alert archive.

Positions are ICRS degrees, cone radii arcseconds, times MJD (TAI), fluxes difference-image PSF
fluxes in nanojansky, magnitudes AB (m = -2.5 log10(|f| / nJy) + 31.4). Errors answer
`{"detail": "<message>"}`: 401 for a token that is not accepted, 404 for unknown things (and for
another user's private things), 409 for a name taken, 422 for bad parameters, 429 past the hourly
request limit of the caller's tier (with `Retry-After`), 503 when a store of the archive does not
answer.

Public reads need no token. Send one as `Authorization: Bearer <token>`.
"""


def tap_runner(stores: LazyStores) -> TapRunner | None:
    """The workers of asynchronous TAP jobs, started (None when ``tap_workers`` is 0)."""
    settings = stores.settings
    if settings.tap_workers == 0:
        return None
    runner = TapRunner(lambda: stores.tap_jobs, lambda: stores.tap,
                       results_dir(settings.state_dir),
                       workers=settings.tap_workers, per_owner=settings.tap_jobs_per_user)
    runner.start()
    return runner


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
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        structlog.get_logger("api").info("api started", backend=built.settings.backend.value)
        runner = None
        stores: LazyStores = app.state.stores
        if built.settings.api_jobs:
            runner = job_runner(stores)
            runner.start()
        tap = app.state.tap_runner = tap_runner(stores)
        try:
            yield
        finally:
            if tap is not None:  # this lifespan's own (a second server of the app has its own)
                tap.stop()
            if runner is not None:
                runner.stop()
            built.close()

    # Every route authenticates and counts its caller (api.auth): the tiers' limits apply to
    # every endpoint, anonymous callers included.
    app = FastAPI(title="Lanner", summary="An alert-stream broker with a catalog archive.",
                  description=DESCRIPTION, version=lanner_version(), lifespan=lifespan,
                  dependencies=[Depends(get_caller)])
    app.state.stores = LazyStores(built)
    errors.install(app)
    app.add_middleware(ObservedApp)
    for module in (objects, annotate, cone, scs, status, accounts, watchlists, watchmaps,
                   filters, jobs, registry, tap, tap_async, home):
        app.include_router(module.router)
    return app
