"""Reads of the archive: objects, light curves, cutouts, cone searches, cross-matches, catalogs.

`ArchiveQueries` is the one place that knows what these reads mean (which catalog a name
designates, which alert a cutout comes from, what "unknown" is); the API's routers only
translate HTTP around it, and a stage can use it the same way over its `broker.factory.Factory`.
It reads through the store interfaces of `broker.storage.stores`, so it answers the same over
SQLite and over Cassandra + MariaDB. It raises `NotFoundError` for anything unknown and lets
the stores' `TransientError` through (the API answers 503, a stage retries).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from broker.exceptions import NotFoundError, UnknownCatalogError
from broker.storage.annotations import Annotation, AnnotationStore
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs, Row
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore

#: The archive's own catalog; reference catalogs (`lanner catalog load`) are read by name.
OBJECTS = "objects"

#: First two bytes of a gzip stream (ZTF ships its cutouts as gzip-compressed FITS).
GZIP_MAGIC = b"\x1f\x8b"


class CutoutKind(enum.StrEnum):
    """The three cutouts of an alert (the values of `broker.domain.alerts.CUTOUT_KINDS`)."""

    science = "science"
    template = "template"
    difference = "difference"


class Stores(Protocol):
    """Where the stores come from: a `broker.factory.Factory`, or the API's
    `api.dependencies.LazyStores`.

    Read per call, so that a query needing one store does not wait for another to connect.
    """

    @property
    def lightcurves(self) -> LightCurveArchive: ...

    @property
    def catalog(self) -> ObjectCatalog: ...

    @property
    def watchlists(self) -> WatchlistStore: ...

    @property
    def watchmaps(self) -> WatchmapStore: ...

    @property
    def annotations(self) -> AnnotationStore: ...

    @property
    def refcats(self) -> ReferenceCatalogs: ...


@dataclass(frozen=True, slots=True)
class Cutout:
    """The bytes of a cutout and how to send them."""

    data: bytes
    source_id: int
    media_type: str
    filename: str


@dataclass(frozen=True, slots=True)
class LightCurve:
    """Stored detections and forced measurements of an object, oldest first."""

    detections: list[Row]
    forced: list[Row]


def _safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a quoted Content-Disposition filename."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "object"


def _finite(rows: list[Row]) -> list[Row]:
    """``rows`` with every NaN or infinite float as None (a reference catalog's missing value;
    JSON has no NaN)."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in row.items()} for row in rows]


class ArchiveQueries:
    """Objects, light curves, cutouts, cone searches and cross-matches of the archive.

    Parameters
    ----------
    stores
        Gives the light-curve archive (detections, forced photometry, cutouts), the object
        catalog (objects, cone search) and the reference catalogs, each connected on first use.
    """

    def __init__(self, *, stores: Stores) -> None:
        self._stores = stores

    @property
    def lightcurves(self) -> LightCurveArchive:
        return self._stores.lightcurves

    @property
    def catalog(self) -> ObjectCatalog:
        return self._stores.catalog

    @property
    def refcats(self) -> ReferenceCatalogs:
        return self._stores.refcats

    def get_object(self, object_id: str) -> Row:
        """The stored row of an object.

        Raises
        ------
        NotFoundError
            If the catalog does not know the object.
        """
        row = self.catalog.get_object(object_id)
        if row is None:
            raise NotFoundError(f"object {object_id} not found")
        return row

    def enrichment(self, object_id: str) -> tuple[Row | None, list[Row], Row | None]:
        """The stored context of an object (None before the enrich stage saw it), its
        counterparts in the reference catalogs (by catalog, nearest first) and its feature
        columns (each None before enrich)."""
        return (self.catalog.context(object_id), self.catalog.matches(object_id),
                self.catalog.features(object_id))

    def memberships(self, object_id: str, caller: str | None
                    ) -> tuple[list[Row], list[Row]]:
        """The watchlist cones and the watchmaps an object was found in that ``caller`` may
        see (their own, and public ones; anonymous: public ones only)."""
        return (self._stores.watchlists.for_object(object_id, caller),
                self._stores.watchmaps.for_object(object_id, caller))

    def annotations(self, object_id: str) -> list[Annotation]:
        """Each annotator's newest annotation of an object, by annotator."""
        newest = self._stores.annotations.newest([object_id]).get(object_id, {})
        return [newest[name] for name in sorted(newest)]

    def lightcurve(self, object_id: str) -> LightCurve:
        """Detections and forced photometry of an object, oldest first.

        Raises
        ------
        NotFoundError
            If neither the light-curve archive nor the catalog knows the object.
        """
        detections = self.lightcurves.lightcurve(object_id)
        if not detections:
            # Every catalogued object has a detection; ask the catalog only to tell an unknown
            # object from one whose light curve is not written yet.
            self.get_object(object_id)
        return LightCurve(detections=detections,
                          forced=self.lightcurves.forced_photometry(object_id))

    def cutout(self, object_id: str, kind: CutoutKind, source_id: int | None = None) -> Cutout:
        """A cutout of one of the object's alerts, by default its latest one (largest MJD).

        Raises
        ------
        NotFoundError
            If the object is unknown, ``source_id`` is not one of its detections, or the alert
            has no cutout of that kind (history detections carry none).
        """
        self.get_object(object_id)
        detections = self.lightcurves.lightcurve(object_id)
        if source_id is None:
            if not detections:
                raise NotFoundError(f"object {object_id} has no stored detection")
            latest = max(detections, key=lambda row: (row["mjd"], row["source_id"]))
            source_id = int(latest["source_id"])
        elif not any(int(row["source_id"]) == source_id for row in detections):
            raise NotFoundError(f"source {source_id} is not a detection of object {object_id}")
        data = self.lightcurves.cutout(source_id, kind.value)
        if data is None:
            raise NotFoundError(f"no {kind.value} cutout stored for source {source_id} "
                                f"of object {object_id}")
        stem = f"{_safe_name(object_id)}_{source_id}_{kind.value}"
        if data[:2] == GZIP_MAGIC:
            return Cutout(data=data, source_id=source_id, media_type="application/gzip",
                          filename=f"{stem}.fits.gz")
        return Cutout(data=data, source_id=source_id, media_type="application/fits",
                      filename=f"{stem}.fits")

    def cone(self, *, ra: float, dec: float, radius_arcsec: float, catalog: str,
             limit: int) -> list[Row]:
        """Rows of a catalog within ``radius_arcsec`` of (ra, dec), nearest first.

        ``catalog`` is ``objects`` (the alert archive's objects) or a loaded reference catalog.
        The stores reject a bad centre, radius or limit with ValueError; the API checks them
        first, to answer which parameter is wrong.

        Raises
        ------
        NotFoundError
            If ``catalog`` is not one a cone search can read.
        """
        if catalog == OBJECTS:
            return self.catalog.cone(ra, dec, radius_arcsec / 3600.0, limit)
        try:
            rows = self.refcats.cone(catalog, ra, dec, radius_arcsec / 3600.0, limit)
        except (UnknownCatalogError, ValueError):
            self.describe_catalog(catalog)  # NotFoundError, naming the catalogs there are
            raise
        return _finite(rows)

    def crossmatches(self, object_id: str, *, radius_arcsec: float, catalogs: list[str],
                     limit: int) -> tuple[Row, list[tuple[str, list[Row]]]]:
        """The object's row, and for each reference catalog (all loaded ones when ``catalogs``
        is empty) its rows within ``radius_arcsec`` of the object's position, nearest first:
        at most ``limit + 1``, so that the caller can tell a cut list from a whole one.

        A cone search per catalog, at the object's current position (the mean of its
        detections, or Rubin's diaObject position): one query to one shard per catalog for a
        small radius.

        Raises
        ------
        NotFoundError
            If the object, or one of ``catalogs``, is unknown.
        """
        row = self.get_object(object_id)
        loaded = [entry["name"] for entry in self.refcats.list()]
        for name in catalogs:
            if name not in loaded:
                raise NotFoundError(f"unknown reference catalog {name} "
                                    f"(loaded: {', '.join(loaded) or 'none'})")
        wanted = list(dict.fromkeys(catalogs)) or loaded
        found = []
        for name in wanted:
            rows = self.refcats.cone(name, float(row["ra"]), float(row["dec"]),
                                     radius_arcsec / 3600.0, limit + 1)
            found.append((name, _finite(rows)))
        return row, found

    def catalogs(self) -> list[Row]:
        """Every catalog a cone search can read, the archive's objects first."""
        return [{"name": OBJECTS, "rows": self.catalog.counts().get("objects"),
                 "kind": "alert archive objects"},
                *(_catalog_entry(entry) for entry in self.refcats.list())]

    def check_catalog(self, catalog: str) -> None:
        """Raise NotFoundError unless a cone search can read ``catalog``."""
        if catalog != OBJECTS:
            self.describe_catalog(catalog)

    def describe_catalog(self, catalog: str) -> Row:
        """The registry entry of a reference catalog (columns, rows, version), cached by the
        store, so that checking a name costs no round trip per request.

        Raises
        ------
        NotFoundError
            If no reference catalog of that name is loaded (the message lists those that are).
        """
        try:
            return self.refcats.describe(catalog)
        except (UnknownCatalogError, ValueError):
            names = [entry["name"] for entry in self.refcats.list()]
            known = ", ".join([OBJECTS, *names])
            raise NotFoundError(f"unknown catalog {catalog} (known: {known})") from None

    def counts(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Rows per table of the catalog and of the light-curve archive."""
        return self.catalog.counts(), self.lightcurves.counts()


def _catalog_entry(entry: Row) -> Row:
    """A reference catalog's registry entry as `ArchiveQueries.catalogs` lists it: its shape and
    its proper motion apart (the registry keeps both in one ``shape`` document)."""
    profile = dict(entry.get("shape") or {})
    motion = profile.pop("motion", None)
    return {**entry, "kind": "reference catalog", "holds": entry.get("kind", "generic"),
            "shape": profile or None, "motion": motion,
            "overlap_arcmin": float(entry["overlap_deg"]) * 60.0}

