"""The stores the domain, the stages and the API use: one typed interface each.

Every backend fills the same interfaces, so nothing outside ``broker/storage`` asks which one
answered:

- `LightCurveArchive`: detections clustered by time per object, forced photometry, cutouts and
  the original packet bytes (Cassandra on the real stack, SQLite embedded).
- `ObjectCatalog`: the chunked objects table (one row per object), alert rows (one per
  detection) and the director index object id → chunk (MariaDB shards on the real stack, SQLite
  files embedded: the same store over either shard set).
- `ReferenceCatalogs`: named, versioned reference catalogs in the chunked layout with overlap,
  bulk-loaded from files and changed row by row from ``dr.updates``.

Every write is idempotent (the same batch twice leaves the same rows); a store that does not
answer raises a `TransientError` subclass, so that a stage can retry without committing.

Rows are plain dicts with the column names of the felis schema (``schemas/felis/lanner.yaml``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from broker.domain.archive import ArchiveBatch, Seen
from broker.domain.catalogs import MotionSpec, ShapeSpec
from broker.domain.described import CatalogDescription
from broker.domain.enrichment import ObjectEnrichment
from broker.domain.sky import SkyCells

Row = dict[str, Any]

#: Ids and positions of the rows of each chunk and of its halo: ``chunk -> (ids, ra, dec)``.
ChunkRows = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]

#: Called with the number of input rows read so far during a bulk load.
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a packet was read from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load stored: rows, rows skipped for bad coordinates or ids, halo rows."""

    rows: int
    skipped: int
    overlap_rows: int
    seconds: float
    version: int


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What `apply` did: rows written, deletes applied, changes ignored (not newer than stored)."""

    upserted: int = 0
    deleted: int = 0
    ignored: int = 0
    created: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """Everything the light-curve archive holds of one object, as rows in no set order."""

    detections: list[Row]
    forced: list[Row]


class LightCurveArchive(Protocol):
    """Light curves, forced photometry, cutouts and packets."""

    def setup(self) -> None:
        """Create the tables if they do not exist."""

    def write(self, batch: ArchiveBatch, origins: Mapping[int, Origin]) -> None:
        """Write a batch idempotently (``origins`` maps alert ids to where they were read)."""

    def lightcurve(self, object_id: str) -> list[Row]:
        """Detections of an object, oldest first (chunk_id and hpx29 may be None where the
        backend does not store them)."""

    def forced_photometry(self, object_id: str) -> list[Row]:
        """Forced measurements of an object, oldest first."""

    def histories(self, object_ids: Iterable[str]) -> dict[str, History]:
        """The detections and forced measurements of each object (an unknown object has
        empty lists), read in as few round trips as the backend allows."""

    def cutout(self, source_id: int, kind: str) -> bytes | None:
        """One cutout (science, template or difference) of an alert."""

    def packet(self, alert_id: int) -> bytes | None:
        """The original packet bytes of an alert."""

    def counts(self) -> Mapping[str, int]:
        """Rows per table (for tests and status pages; may be slow on big archives)."""

    def close(self) -> None:
        """Release connections."""


class ObjectCatalog(Protocol):
    """The chunked objects and alert-row tables with their director index."""

    def setup(self) -> None:
        """Create the tables if they do not exist (and check the recorded layout)."""

    def seen(self, object_ids: Iterable[str]) -> dict[str, Seen]:
        """What is already stored of each known object (unknown ones are left out)."""

    def write(self, batch: ArchiveBatch) -> None:
        """Insert new alert rows and upsert object rows, idempotently."""

    def get_object(self, object_id: str) -> Row | None:
        """One object row."""

    def alert_rows(self, object_id: str) -> list[Row]:
        """Alert rows of an object, oldest first."""

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int) -> list[Row]:
        """Objects within ``radius_deg`` of (ra, dec), nearest first, each with
        ``distance_arcsec`` (ValueError for a bad centre, radius or limit)."""

    def write_enrichment(self, results: Iterable[ObjectEnrichment]) -> int:
        """Store objects' contexts and counterparts, keeping each object's newest alert's."""

    def context(self, object_id: str) -> Row | None:
        """The stored context of an object."""

    def positions(self, shard: int, after: str = "", limit: int = 100_000,
                  cells: SkyCells | None = None) -> list[tuple[str, float, float, int, float]]:
        """One page of a shard's objects by id: (id, ra, dec, position source id, its MJD);
        with ``cells``, only those in the cells."""

    def shard_count(self) -> int:
        """How many shards the objects are spread over."""

    def newest_alert_mjd(self) -> float | None:
        """The time of the newest archived alert (None for an empty archive)."""

    def newest_alerts(self, object_ids: Sequence[str], *, features: Sequence[str] = (),
                      matches: bool = False) -> list[Row]:
        """The newest archived alert of each object, shaped like enriched records."""

    def count_alerts_between(self, since_mjd: float, until_mjd: float) -> int:
        """How many archived alerts a time window holds."""

    def alerts_between(self, since_mjd: float, until_mjd: float, limit: int, *,
                       features: Sequence[str] = (), matches: bool = False,
                       after: tuple[float, int] | None = None) -> list[Row]:
        """Archived alerts in a time window, newest first (or, after a cursor, oldest first),
        shaped like enriched records."""

    def features(self, object_id: str) -> Row | None:
        """The stored feature columns of an object (each None until it is enriched), or None
        for an unknown object."""

    def matches(self, object_id: str) -> list[Row]:
        """The stored counterparts of an object, by catalog, nearest first."""

    def counts(self) -> Mapping[str, int]:
        """Rows per table."""

    def close(self) -> None:
        """Release connections."""


class ReferenceCatalogs(Protocol):
    """Named reference catalogs in the chunked layout (see `broker.storage.refcat`)."""

    def setup(self) -> None:
        """Create the registry if it does not exist."""

    def list(self) -> list[Row]:
        """Every loaded catalog: name, rows, version, loaded_at, columns, overlap_deg, kind,
        shape."""

    def versions(self) -> dict[str, tuple[int, str]]:
        """Every loaded catalog's current version and when it was made current, read afresh."""

    def describe(self, name: str) -> Row:
        """The registry entry of one catalog (`UnknownCatalogError` if there is none)."""

    def load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
             dec_col: str, progress: Progress | None = None, *, kind: str = "generic",
             shape: ShapeSpec | None = None, motion: MotionSpec | None = None,
             overlap_deg: float | None = None,
             description: CatalogDescription | None = None) -> LoadReport:
        """Load a catalog of a kind (star, galaxy, qso, generic; a galaxy catalog with its
        shape columns; optionally proper-motion columns and their epoch), with its own overlap
        radius or the store's, and the units, UCDs and descriptions of its columns, replacing
        any loaded version atomically."""

    def apply(self, name: str, upserts: pa.Table, deletes: Iterable[tuple[Any, int]] = (), *,
              id_col: str, ra_col: str, dec_col: str,
              version_col: str = "version") -> ApplyReport:
        """Upsert and delete single rows, each guarded by its version."""

    def drop(self, name: str) -> None:
        """Remove a catalog and its tables."""

    def purge_tombstones(self, name: str, older_than_s: float) -> int:
        """Delete tombstones older than ``older_than_s``; how many were deleted."""

    def cone(self, name: str, ra: float, dec: float, radius_deg: float,
             limit: int = 1000) -> builtins.list[Row]:
        """Rows within ``radius_deg`` of (ra, dec), nearest first, with ``distance_arcsec``."""

    def chunk_rows(self, name: str, chunk_ids: Iterable[int], *,
                   version: int | None = None) -> ChunkRows:
        """Ids and positions of the rows of each chunk and of its halo, from the current
        version or from ``version`` exactly (`CatalogReloadedError` once it is gone)."""

    def rows(self, name: str, ids: Iterable[Any], *,
             version: int | None = None) -> dict[Any, Row]:
        """Rows by id, many at once (unknown ids left out)."""

    def get(self, name: str, object_id: Any) -> Row | None:
        """One row by id."""

    def tables(self) -> builtins.list[str]:
        """Every table of every catalog version on any shard."""

    def close(self) -> None:
        """Release connections."""
