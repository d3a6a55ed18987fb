"""Per-request collaborators of the routes, built from the app's one `Factory`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from broker.config import Settings
from broker.exceptions import LannerError
from broker.factory import Factory
from broker.queries import ArchiveQueries
from broker.retro import JobStore
from broker.storage.accounts import AccountStore
from broker.storage.annotations import AnnotationStore
from broker.storage.filters import FilterStore
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore
from broker.streaming.queue import Publisher

if TYPE_CHECKING:
    from broker.tap.execute import Engine
    from broker.tap.jobs import TapJobStore
    from broker.tap.refcats import TapSource


class LazyStores:
    """The factory's stores, each connected on first use, once, whatever the thread.

    Sync routes run in a thread pool and `Factory` builds its stores in ``cached_property``s,
    which do not lock: two first requests at once could open two connections and leak one. A
    store that fails to connect raises `ServiceUnavailableError` (answered 503) and is tried
    again by the next request.
    """

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self._lightcurves_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._refcats_lock = threading.Lock()
        self._accounts_lock = threading.Lock()
        self._watchlists_lock = threading.Lock()
        self._watchmaps_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._filters_lock = threading.Lock()
        self._publisher_lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._annotations_lock = threading.Lock()
        self._tap_lock = threading.Lock()
        self._tap: TapSource | None = None

    @property
    def lightcurves(self) -> LightCurveArchive:
        with self._lightcurves_lock:
            return self.factory.lightcurves

    @property
    def catalog(self) -> ObjectCatalog:
        with self._catalog_lock:
            return self.factory.catalog

    @property
    def refcats(self) -> ReferenceCatalogs:
        with self._refcats_lock:
            return self.factory.refcats

    @property
    def accounts(self) -> AccountStore:
        with self._accounts_lock:
            return self.factory.accounts

    @property
    def watchlists(self) -> WatchlistStore:
        with self._watchlists_lock:
            return self.factory.watchlists

    @property
    def watchmaps(self) -> WatchmapStore:
        with self._watchmaps_lock:
            return self.factory.watchmaps

    @property
    def jobs(self) -> JobStore:
        with self._jobs_lock:
            return self.factory.jobs

    @property
    def tap_jobs(self) -> TapJobStore:
        with self._jobs_lock:
            return self.factory.tap_jobs

    @property
    def filters(self) -> FilterStore:
        with self._filters_lock:
            return self.factory.filters

    @property
    def annotations(self) -> AnnotationStore:
        with self._annotations_lock:
            return self.factory.annotations

    @property
    def settings(self) -> Settings:
        return self.factory.settings

    @property
    def tap(self) -> Engine:
        """The TAP engine: TAP_SCHEMA made by felis in a file of this process (in the
        state folder, removed when the process exits), over the archive's shards and the
        reference catalogs on them. TAP_SCHEMA is made again when the catalogs' registry
        changed since (checked on each call: `broker.tap.refcats.TapSource`); a request
        keeps the engine it got."""
        with self._tap_lock:
            if self._tap is None:
                from broker.storage.catalog import ChunkedCatalog  # noqa: PLC0415
                from broker.tap.refcats import TapSource  # noqa: PLC0415

                catalog = self.catalog
                if not isinstance(catalog, ChunkedCatalog):
                    raise LannerError("TAP reads the chunked catalog")
                self._tap = TapSource(folder=self.settings.state_dir / "tap", catalog=catalog,
                                      refcats=self.refcats)
            source = self._tap
        return source.engine()

    def publisher(self) -> Publisher:
        """The API process's one producer (made on first use, closed with the factory;
        producers are thread-safe): annotations and backfills publish through it."""
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = self.factory.publisher()
            return self._publisher


async def get_stores(request: Request) -> LazyStores:
    """The app's stores.

    The dependencies are ``async``, though they do no I/O: FastAPI runs a plain ``def``
    dependency in the thread pool, one hand-off per dependency per request (measured: the two
    of a cone search cost about 0.26 ms of its 2.4 ms through HTTP, one client).
    """
    stores: LazyStores = request.app.state.stores
    return stores


async def get_archive(stores: Annotated[LazyStores, Depends(get_stores)]) -> ArchiveQueries:
    """The archive's queries over the app's stores."""
    return ArchiveQueries(stores=stores)


async def get_backend_name(stores: Annotated[LazyStores, Depends(get_stores)]) -> str:
    """Name of the backend the app reads ('embedded' or 'services')."""
    return str(stores.factory.settings.backend.value)


Archive = Annotated[ArchiveQueries, Depends(get_archive)]
BackendName = Annotated[str, Depends(get_backend_name)]
