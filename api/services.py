"""What the routes do, over the two archive roles; the routers only translate HTTP.

`ArchiveService` reads through `LightCurveArchive` and `ObjectCatalog` (the protocols of
`broker.storage.archive`), so it answers the same over SQLite and over Cassandra + MariaDB. It
raises `NotFoundError` for anything unknown and lets the stores' `TransientError` through (the
app answers 503).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from api.errors import NotFoundError
from broker.exceptions import UnknownCatalogError
from broker.storage.stores import LightCurveArchive, ObjectCatalog, Row

#: The archive's own catalog; reference catalogs (`lanner catalog load`) are read by name.
OBJECTS = "objects"

#: First two bytes of a gzip stream (ZTF ships its cutouts as gzip-compressed FITS).
GZIP_MAGIC = b"\x1f\x8b"


class CutoutKind(enum.StrEnum):
    """The three cutouts of an alert (`broker.domain.alerts.CUTOUT_KINDS`)."""

    science = "science"
    template = "template"
    difference = "difference"


def lanner_version() -> str:
    """The installed version of Lanner ("unknown" when run from a source tree)."""
    try:
        return metadata.version("lanner")
    except metadata.PackageNotFoundError:
        return "unknown"


class Stores(Protocol):
    """Where the archive roles come from (a `Factory`, or `api.dependencies.LazyStores`).

    Read per call, so that a route needing one store does not wait for the other to connect.
    """

    @property
    def lightcurves(self) -> LightCurveArchive: ...

    @property
    def catalog(self) -> ObjectCatalog: ...

    @property
    def refcats(self) -> Any: ...


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


class ArchiveService:
    """Objects, light curves, cutouts and cone searches of the archive.

    Parameters
    ----------
    stores
        Gives the light-curve archive (detections, forced photometry, cutouts) and the object
        catalog (objects, cone search), each connected on first use.
    """

    def __init__(self, *, stores: Stores) -> None:
        self._stores = stores

    @property
    def lightcurves(self) -> LightCurveArchive:
        return self._stores.lightcurves

    @property
    def catalog(self) -> ObjectCatalog:
        return self._stores.catalog

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

    def cutout(self, object_id: str, kind: str, source_id: int | None = None) -> Cutout:
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
        data = self.lightcurves.cutout(source_id, kind)
        if data is None:
            raise NotFoundError(f"no {kind} cutout stored for source {source_id} "
                                f"of object {object_id}")
        stem = f"{_safe_name(object_id)}_{source_id}_{kind}"
        if data[:2] == GZIP_MAGIC:
            return Cutout(data=data, source_id=source_id, media_type="application/gzip",
                          filename=f"{stem}.fits.gz")
        return Cutout(data=data, source_id=source_id, media_type="application/fits",
                      filename=f"{stem}.fits")

    def cone(self, *, ra: float, dec: float, radius_arcsec: float, catalog: str,
             limit: int) -> list[Row]:
        """Rows of a catalog within ``radius_arcsec`` of (ra, dec), nearest first.

        ``catalog`` is ``objects`` (the alert archive's objects) or a loaded reference catalog.
        The parameters are validated by the route (finite, in range).

        Raises
        ------
        NotFoundError
            If ``catalog`` is not one a cone search can read.
        """
        if catalog == OBJECTS:
            return self.catalog.cone(ra, dec, radius_arcsec / 3600.0, limit)
        try:
            rows = self._stores.refcats.cone(catalog, ra, dec, radius_arcsec / 3600.0, limit)
        except (UnknownCatalogError, ValueError):
            self.describe_catalog(catalog)  # NotFoundError, naming the catalogs there are
            raise
        # JSON has no NaN: a missing float of a reference catalog is null.
        return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()} for row in rows]

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
        loaded = [entry["name"] for entry in self._stores.refcats.list()]
        for name in catalogs:
            if name not in loaded:
                raise NotFoundError(f"unknown reference catalog {name} "
                                    f"(loaded: {', '.join(loaded) or 'none'})")
        wanted = list(dict.fromkeys(catalogs)) or loaded
        found = []
        for name in wanted:
            rows = self._stores.refcats.cone(name, float(row["ra"]), float(row["dec"]),
                                             radius_arcsec / 3600.0, limit + 1)
            found.append((name, [{k: (None if isinstance(v, float) and not math.isfinite(v)
                                      else v) for k, v in r.items()} for r in rows]))
        return row, found

    def catalogs(self) -> list[dict[str, Any]]:
        """Every catalog a cone search can read, the archive's objects first."""
        return [{"name": OBJECTS, "rows": self.catalog.counts().get("objects"),
                 "kind": "alert archive objects"},
                *({**entry, "kind": "reference catalog"} for entry in self._stores.refcats.list())]

    def check_catalog(self, catalog: str) -> None:
        """Raise NotFoundError unless a cone search can read ``catalog``."""
        if catalog != OBJECTS:
            self.describe_catalog(catalog)

    def describe_catalog(self, catalog: str) -> dict[str, Any]:
        """The registry entry of a reference catalog (columns, rows, version), cached by the
        store, so that checking a name costs no round trip per request.

        Raises
        ------
        NotFoundError
            If no reference catalog of that name is loaded (the message lists those that are).
        """
        try:
            return self._stores.refcats.describe(catalog)
        except (UnknownCatalogError, ValueError):
            names = [entry["name"] for entry in self._stores.refcats.list()]
            known = ", ".join([OBJECTS, *names])
            raise NotFoundError(f"unknown catalog {catalog} (known: {known})") from None

    def counts(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Rows per table of the catalog and of the light-curve archive."""
        return self.catalog.counts(), self.lightcurves.counts()
