"""The two archive roles every backend fills, and the rows they answer with.

- `LightCurveArchive`: detections clustered by time per object, forced photometry, cutouts and
  the original packet bytes (Cassandra on the real stack, SQLite embedded).
- `ObjectCatalog`: the chunked objects table (one row per object) and alert rows (one per
  detection) with chunk id and order-29 HEALPix index on every row, and the director index
  object id → chunk (MariaDB shards on the real stack, SQLite embedded).

Both must make every write idempotent: writing the same `ArchiveBatch` twice leaves the same
rows. Both raise `TransientError` subclasses when their store does not answer, so a stage can
retry without committing.

Rows are plain dicts with the column names below, identical across backends, so the API and the
tests do not care which backend answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.domain.archive import BANDS, ArchiveBatch, Seen

#: Columns of a detection (alert row), in order.
DETECTION_COLUMNS = (
    "source_id", "object_id", "survey", "chunk_id", "hpx29", "mjd", "ra", "dec", "band",
    "psf_flux", "psf_flux_err", "science_flux", "science_flux_err", "snr", "reliability",
)

#: Columns of a forced measurement, in order.
FORCED_COLUMNS = (
    "forced_id", "object_id", "mjd", "band", "psf_flux", "psf_flux_err", "science_flux",
    "science_flux_err",
)

#: Columns of an object row, in order.
OBJECT_COLUMNS = (
    "object_id", "survey", "chunk_id", "hpx29", "ra", "dec", "first_mjd", "last_mjd",
    "n_detections", "last_forced_mjd",
    *(f"{band}_{what}" for band in BANDS
      for what in ("n", "last_mjd", "last_flux", "last_flux_err")),
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a packet was read from."""

    topic: str
    partition: int
    offset: int


Row = dict[str, Any]


class LightCurveArchive(Protocol):
    """Light curves, forced photometry, cutouts and packets."""

    def setup(self) -> None:
        """Create the tables if they do not exist."""

    def write(self, batch: ArchiveBatch, origins: Mapping[int, Origin]) -> None:
        """Write a batch idempotently (``origins`` maps alert ids to where they were read)."""

    def lightcurve(self, object_id: str) -> list[Row]:
        """Detections of an object, oldest first, with `DETECTION_COLUMNS` (chunk_id and
        hpx29 may be None where the backend does not store them)."""

    def forced_photometry(self, object_id: str) -> list[Row]:
        """Forced measurements of an object, oldest first."""

    def cutout(self, source_id: int, kind: str) -> bytes | None:
        """One cutout (science, template or difference) of an alert."""

    def packet(self, alert_id: int) -> bytes | None:
        """The original packet bytes of an alert."""

    def counts(self) -> Mapping[str, int]:
        """Rows per table (for tests and status pages; may be slow on big archives)."""

    def close(self) -> None:
        """Release connections."""


class ObjectCatalog(Protocol):
    """The chunked objects and alert-row tables."""

    def setup(self) -> None:
        """Create the tables if they do not exist."""

    def seen(self, object_ids: Iterable[str]) -> dict[str, Seen]:
        """What is already stored of each known object (unknown ones are left out)."""

    def write(self, batch: ArchiveBatch) -> None:
        """Insert new alert rows and upsert object rows, idempotently."""

    def get_object(self, object_id: str) -> Row | None:
        """One object row with `OBJECT_COLUMNS`."""

    def alert_rows(self, object_id: str) -> list[Row]:
        """Alert rows of an object, oldest first."""

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int) -> list[Row]:
        """Objects within ``radius_deg`` of (ra, dec), nearest first, each with
        ``distance_arcsec``."""

    def counts(self) -> Mapping[str, int]:
        """Rows per table."""

    def close(self) -> None:
        """Release connections."""
