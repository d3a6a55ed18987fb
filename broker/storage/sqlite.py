"""The embedded archive: both archive roles over one SQLite file (stdlib ``sqlite3``).

In embedded mode there is no Cassandra and no MariaDB: `SQLiteArchive` keeps light curves,
forced photometry, cutouts, packets, objects, alert rows and the director index in one database
file, with the same chunked layout as the MariaDB shards (every positional row carries
``chunk_id`` and ``hpx29`` under a B-tree index on ``(chunk_id, hpx29)``).

The two roles share method names with different signatures (``write``, ``counts``), so the
archive exposes them as two views over the same connections::

    archive = SQLiteArchive(path=Path("lanner.db"), chunker=Chunker(85, 12))
    archive.setup()
    archive.lightcurves.write(batch, origins)   # a LightCurveArchive
    archive.catalog.write(batch)                # an ObjectCatalog

Tables
------
``detections``
    One row per detection (``DETECTION_COLUMNS``), keyed by ``source_id``. On the real stack the
    light curve (Cassandra) and the alert rows (MariaDB chunks) are two copies of the same
    detections; embedded they are this one table, which both views write (``INSERT OR IGNORE``,
    so whichever writes first wins and the other changes nothing) and both read.
``forced_photometry``
    ``FORCED_COLUMNS``, keyed by ``forced_id`` (not positional: no chunk columns).
``cutouts``, ``packets``
    Keyed by ``(source_id, kind)`` and ``alert_id``; rewritten (``INSERT OR REPLACE``) by a
    repeated alert, harmlessly since the bytes are the same.
``objects``
    ``OBJECT_COLUMNS`` plus ``position_mjd`` and ``position_source_id``, the detection whose
    packet gave the stored position (not returned by `SQLiteCatalog.get_object`).
``director``
    Object id → chunk id. Inserted ``OR IGNORE``: the first placement wins for ever, and the
    object row and its alert rows take their chunk from it.

Idempotency of the object upsert
--------------------------------
Each `catalog.write <SQLiteCatalog.write>` is one transaction. The position (``ra``, ``dec``,
``hpx29``) is replaced only when the batch's newest detection of the object is newer than or as
new as, by ``(mjd, source_id)``, the one that gave the stored position; counts and times
(``first_mjd``, ``last_mjd``, ``n_detections``, ``{band}_n``, ``last_forced_mjd``) and the per-band
latest values (``{band}_last_mjd``, ``_last_flux``, ``_last_flux_err``: the newest stored
detection of the band by ``(mjd, source_id)``) are recomputed from the stored rows of the touched
objects. Recomputing the per-band values gives what the rule "replace only if the batch's newest
detection of the band is at least as new" gives, and cannot drift from the rows. So a batch
written twice, batches written in any order, or an older packet after a newer one leave
identical rows.

Write order: `SQLiteLightCurves.write` refreshes ``last_forced_mjd`` of existing objects as well,
so the two views may be written in either order; the stages write the light-curve view first and
the catalog last, as on the real stack, so that ``seen()`` never claims more than is stored.

Threads: writes go through one connection under a lock, one transaction per ``write``; reads use
one connection per reading thread (``check_same_thread=False``) and, thanks to WAL, see the last
committed state without waiting for a writer.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from broker.domain.archive import BANDS, ArchiveBatch, ObjectUpdate, PlacedDetection, Seen
from broker.domain.sky import Chunker, angular_separation_deg, cone_cover
from broker.exceptions import ServiceUnavailableError
from broker.storage.archive import (
    DETECTION_COLUMNS,
    FORCED_COLUMNS,
    OBJECT_COLUMNS,
    Origin,
    Row,
)

#: Version of the table layout, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

#: Seconds a connection waits for a lock held by another connection before giving up.
BUSY_TIMEOUT_S = 30.0

#: Smallest radius handed to `cone_cover` (1 mas).
MIN_COVER_RADIUS_DEG = 1e-3 / 3600.0

#: Ids per ``IN (...)`` list (well below SQLite's limit on bound parameters).
_ID_BATCH = 500

_DETECTION_TYPES = {
    "source_id": "INTEGER PRIMARY KEY", "object_id": "TEXT NOT NULL", "survey": "TEXT NOT NULL",
    "chunk_id": "INTEGER NOT NULL", "hpx29": "INTEGER NOT NULL", "mjd": "REAL NOT NULL",
    "ra": "REAL NOT NULL", "dec": "REAL NOT NULL", "band": "TEXT NOT NULL",
}
_FORCED_TYPES = {
    "forced_id": "INTEGER PRIMARY KEY", "object_id": "TEXT NOT NULL", "mjd": "REAL NOT NULL",
    "band": "TEXT NOT NULL",
}
_OBJECT_TYPES = {
    "object_id": "TEXT PRIMARY KEY", "survey": "TEXT NOT NULL", "chunk_id": "INTEGER NOT NULL",
    "hpx29": "INTEGER NOT NULL", "ra": "REAL NOT NULL", "dec": "REAL NOT NULL",
    "n_detections": "INTEGER NOT NULL DEFAULT 0",
    **{f"{band}_n": "INTEGER NOT NULL DEFAULT 0" for band in BANDS},
}


def _columns(names: Sequence[str], types: Mapping[str, str]) -> str:
    return ",\n  ".join(f'"{name}" {types.get(name, "REAL")}' for name in names)


def _ddl() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS detections (\n  "
        f"{_columns(DETECTION_COLUMNS, _DETECTION_TYPES)}\n)",
        "CREATE INDEX IF NOT EXISTS detections_object_mjd ON detections (object_id, mjd)",
        "CREATE INDEX IF NOT EXISTS detections_chunk_hpx29 ON detections (chunk_id, hpx29)",
        f"CREATE TABLE IF NOT EXISTS forced_photometry (\n  "
        f"{_columns(FORCED_COLUMNS, _FORCED_TYPES)}\n)",
        "CREATE INDEX IF NOT EXISTS forced_object_mjd ON forced_photometry (object_id, mjd)",
        "CREATE TABLE IF NOT EXISTS cutouts (\n  source_id INTEGER NOT NULL,\n"
        "  kind TEXT NOT NULL,\n  data BLOB NOT NULL,\n  PRIMARY KEY (source_id, kind)\n)",
        "CREATE TABLE IF NOT EXISTS packets (\n  alert_id INTEGER PRIMARY KEY,\n"
        "  object_id TEXT NOT NULL,\n  survey TEXT NOT NULL,\n  schema TEXT NOT NULL,\n"
        '  topic TEXT,\n  "partition" INTEGER,\n  "offset" INTEGER,\n  data BLOB NOT NULL\n)',
        f"CREATE TABLE IF NOT EXISTS objects (\n  {_columns(OBJECT_COLUMNS, _OBJECT_TYPES)},\n"
        "  position_mjd REAL NOT NULL,\n  position_source_id INTEGER NOT NULL\n)",
        "CREATE INDEX IF NOT EXISTS objects_chunk_hpx29 ON objects (chunk_id, hpx29)",
        "CREATE TABLE IF NOT EXISTS director (\n  object_id TEXT PRIMARY KEY,\n"
        "  chunk_id INTEGER NOT NULL\n) WITHOUT ROWID",
    ]


def _select(columns: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in columns)


def _insert(table: str, columns: Sequence[str], verb: str) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT OR {verb} INTO {table} ({_select(columns)}) VALUES ({marks})"


_INSERT_DETECTION = _insert("detections", DETECTION_COLUMNS, "IGNORE")
_INSERT_FORCED = _insert("forced_photometry", FORCED_COLUMNS, "IGNORE")
_INSERT_CUTOUT = _insert("cutouts", ("source_id", "kind", "data"), "REPLACE")
_INSERT_PACKET = _insert("packets", ("alert_id", "object_id", "survey", "schema", "topic",
                                     "partition", "offset", "data"), "REPLACE")
_INSERT_DIRECTOR = _insert("director", ("object_id", "chunk_id"), "IGNORE")

# The chunk comes from the director (first placement wins); the position only moves forward.
_UPSERT_POSITION = """
INSERT INTO objects (object_id, survey, chunk_id, hpx29, ra, dec, position_mjd, position_source_id)
VALUES (?, ?, (SELECT chunk_id FROM director WHERE object_id = ?), ?, ?, ?, ?, ?)
ON CONFLICT (object_id) DO UPDATE SET
  hpx29 = excluded.hpx29, ra = excluded.ra, dec = excluded.dec,
  position_mjd = excluded.position_mjd, position_source_id = excluded.position_source_id
WHERE (excluded.position_mjd, excluded.position_source_id)
      >= (objects.position_mjd, objects.position_source_id)
"""

#: Per-connection scratch table of the object ids a write touches.
_TOUCHED = "temp.lanner_touched"

_REFRESH_FORCED = f"""
UPDATE objects SET last_forced_mjd =
  (SELECT MAX(f.mjd) FROM forced_photometry f WHERE f.object_id = objects.object_id)
WHERE object_id IN (SELECT object_id FROM {_TOUCHED})
"""


def _refresh_objects_sql() -> str:
    counts = ", ".join(f"{band}_n" for band in BANDS)
    sums = ", ".join(f"COALESCE(SUM(d.band = '{band}'), 0)" for band in BANDS)
    latest = ",\n  ".join(
        f"({band}_last_mjd, {band}_last_flux, {band}_last_flux_err) = "
        "(SELECT d.mjd, d.psf_flux, d.psf_flux_err FROM detections d "
        f"WHERE d.object_id = objects.object_id AND d.band = '{band}' "
        "ORDER BY d.mjd DESC, d.source_id DESC LIMIT 1)"
        for band in BANDS
    )
    return f"""
UPDATE objects SET
  (first_mjd, last_mjd, n_detections, {counts}) =
    (SELECT MIN(d.mjd), MAX(d.mjd), COUNT(*), {sums}
     FROM detections d WHERE d.object_id = objects.object_id),
  last_forced_mjd =
    (SELECT MAX(f.mjd) FROM forced_photometry f WHERE f.object_id = objects.object_id),
  {latest}
WHERE object_id IN (SELECT object_id FROM {_TOUCHED})
"""


_REFRESH_OBJECTS = _refresh_objects_sql()


def _detection_row(placed: PlacedDetection, chunk_id: int) -> tuple[Any, ...]:
    d = placed.detection
    return (d.source_id, d.object_id, placed.survey, chunk_id, placed.hpx29, d.mjd, d.ra,
            d.dec, d.band, d.psf_flux, d.psf_flux_err, d.science_flux, d.science_flux_err, d.snr,
            d.reliability)


def _position_epoch(update: ObjectUpdate) -> tuple[float, int]:
    """``(mjd, source_id)`` of the newest detection of the batch: the packet the position is
    the mean of (plan() places an object at its newest alert)."""
    if not update.latest:
        return -math.inf, 0
    newest = max(update.latest.values(), key=lambda d: (d.mjd, d.source_id))
    return newest.mjd, newest.source_id


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _ID_BATCH):
        yield ids[start:start + _ID_BATCH]


def _check_cone(ra: float, dec: float, radius_deg: float, limit: int) -> None:
    if not (math.isfinite(ra) and math.isfinite(dec)):
        msg = f"cone centre ({ra}, {dec}) is not finite"
        raise ValueError(msg)
    if not -90.0 <= dec <= 90.0:
        msg = f"cone centre dec = {dec} is outside [-90, 90]"
        raise ValueError(msg)
    if not (math.isfinite(radius_deg) and 0.0 <= radius_deg <= 180.0):
        msg = f"cone radius {radius_deg} deg is not within [0, 180]"
        raise ValueError(msg)
    if limit < 0:
        msg = f"limit must not be negative, not {limit}"
        raise ValueError(msg)


class SQLiteArchive:
    """Light curves and the object catalog in one SQLite file (embedded mode).

    Parameters
    ----------
    path
        The database file (created with its folder if missing).
    chunker
        The sky chunking of the catalog (used by cone searches; chunk ids of written rows come
        from the batch, planned with the same chunker).
    """

    def __init__(self, *, path: Path, chunker: Chunker) -> None:
        self.path = Path(path)
        self.chunker = chunker
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self._open_views = 2
        self.lightcurves = SQLiteLightCurves(self)
        self.catalog = SQLiteCatalog(self)

    # ---- connections ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = f"the archive at {self.path} is closed"
            raise RuntimeError(msg)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.OperationalError as exc:
            msg = f"SQLite archive at {self.path} cannot be opened: {exc}"
            raise ServiceUnavailableError(msg) from exc
        return connection

    def _write_connection(self) -> sqlite3.Connection:
        # Called with the lock held.
        self._check_open()
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def _read_connection(self) -> sqlite3.Connection:
        self._check_open()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.row_factory = sqlite3.Row
            with self._lock:
                if self._closed:  # closed by another thread meanwhile
                    connection.close()
                    self._check_open()
                self._readers.append(connection)
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error)."""
        with self._lock, _translated(self.path):
            connection = self._write_connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with _translated(self.path):
            return self._read_connection().execute(sql, params).fetchall()

    def _count(self, table: str) -> int:
        return int(self._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])

    # ---- life cycle ------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables and indexes if they do not exist (safe to call again)."""
        with self._transaction() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                msg = (f"SQLite archive at {self.path} has layout version {version}, "
                       f"this code writes version {SCHEMA_VERSION}")
                raise RuntimeError(msg)
            for statement in _ddl():
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close every connection (idempotent); the views are closed with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
            self._writer = None
        for connection in connections:
            connection.close()

    def _view_closed(self) -> None:
        with self._lock:
            self._open_views -= 1
            last = self._open_views <= 0
        if last:
            self.close()

    # ---- helpers shared by the views ----------------------------------------------------

    @staticmethod
    def _mark_touched(connection: sqlite3.Connection, object_ids: Iterable[str]) -> None:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {_TOUCHED} (object_id TEXT PRIMARY KEY)")
        connection.execute(f"DELETE FROM {_TOUCHED}")
        connection.executemany(f"INSERT OR IGNORE INTO {_TOUCHED} (object_id) VALUES (?)",
                               ((object_id,) for object_id in object_ids))

    def _insert_detections(self, connection: sqlite3.Connection,
                           detections: Sequence[PlacedDetection]) -> None:
        """Insert new detection rows in their object's chunk: the director's once it has one
        (whoever planned the batch), else the planned one."""
        if not detections:
            return
        self._mark_touched(connection, (p.detection.object_id for p in detections))
        placed = dict(connection.execute(
            f"SELECT object_id, chunk_id FROM director WHERE object_id IN "
            f"(SELECT object_id FROM {_TOUCHED})").fetchall())
        connection.executemany(_INSERT_DETECTION, (
            _detection_row(p, placed.get(p.detection.object_id, p.chunk_id)) for p in detections))

    def _detections_of(self, object_id: str) -> list[Row]:
        rows = self._query(
            f"SELECT {_select(DETECTION_COLUMNS)} FROM detections WHERE object_id = ? "
            "ORDER BY mjd, source_id", (object_id,))
        return [dict(row) for row in rows]


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """SQLite's operational failures (locked, I/O, full disk) as transient errors."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = f"SQLite archive at {path}: {exc}"
        raise ServiceUnavailableError(msg) from exc


class SQLiteLightCurves:
    """The `LightCurveArchive` view of a `SQLiteArchive`."""

    def __init__(self, archive: SQLiteArchive) -> None:
        self._archive = archive
        self._closed = False

    def setup(self) -> None:
        self._archive.setup()

    def write(self, batch: ArchiveBatch, origins: Mapping[int, Origin]) -> None:
        """Write detections, forced photometry, cutouts and packets in one transaction."""
        forced_objects = {f.object_id for f in batch.forced}
        with self._archive._transaction() as connection:
            self._archive._insert_detections(connection, batch.detections)
            connection.executemany(_INSERT_FORCED, (
                (f.forced_id, f.object_id, f.mjd, f.band, f.psf_flux, f.psf_flux_err,
                 f.science_flux, f.science_flux_err) for f in batch.forced))
            connection.executemany(_INSERT_CUTOUT, (
                (alert.alert_id, kind, data)
                for alert in batch.alerts for kind, data in alert.cutouts.items()))
            packets = []
            for alert in batch.alerts:
                origin = origins.get(alert.alert_id)
                packets.append((
                    alert.alert_id, alert.object_id, alert.survey.value, alert.schema,
                    origin.topic if origin else None, origin.partition if origin else None,
                    origin.offset if origin else None, alert.packet,
                ))
            connection.executemany(_INSERT_PACKET, packets)
            if forced_objects:
                # Embedded, forced photometry and objects share a file: keep the object's
                # last_forced_mjd exact whichever view is written first.
                self._archive._mark_touched(connection, forced_objects)
                connection.execute(_REFRESH_FORCED)

    def lightcurve(self, object_id: str) -> list[Row]:
        """Detections of an object, oldest first (``DETECTION_COLUMNS``)."""
        return self._archive._detections_of(object_id)

    def forced_photometry(self, object_id: str) -> list[Row]:
        rows = self._archive._query(
            f"SELECT {_select(FORCED_COLUMNS)} FROM forced_photometry WHERE object_id = ? "
            "ORDER BY mjd, forced_id", (object_id,))
        return [dict(row) for row in rows]

    def cutout(self, source_id: int, kind: str) -> bytes | None:
        rows = self._archive._query(
            "SELECT data FROM cutouts WHERE source_id = ? AND kind = ?", (source_id, kind))
        return bytes(rows[0]["data"]) if rows else None

    def packet(self, alert_id: int) -> bytes | None:
        """The packet bytes, or None when the alert is unknown or was stored without them."""
        rows = self._archive._query("SELECT data FROM packets WHERE alert_id = ?", (alert_id,))
        return bytes(rows[0]["data"]) if rows and rows[0]["data"] else None

    def origin(self, alert_id: int) -> Origin | None:
        """Where the stored packet of an alert was read from, when known."""
        rows = self._archive._query(
            'SELECT topic, "partition", "offset" FROM packets WHERE alert_id = ?', (alert_id,))
        if not rows or rows[0]["topic"] is None:
            return None
        row = rows[0]
        return Origin(topic=row["topic"], partition=row["partition"], offset=row["offset"])

    def counts(self) -> dict[str, int]:
        """Rows in ``detections``, ``forced_photometry``, ``cutouts`` and ``packets``."""
        return {table: self._archive._count(table)
                for table in ("detections", "forced_photometry", "cutouts", "packets")}

    def close(self) -> None:
        """Close this view; the connections close with the last open view."""
        if not self._closed:
            self._closed = True
            self._archive._view_closed()


class SQLiteCatalog:
    """The `ObjectCatalog` view of a `SQLiteArchive`."""

    def __init__(self, archive: SQLiteArchive) -> None:
        self._archive = archive
        self._closed = False

    def setup(self) -> None:
        self._archive.setup()

    def seen(self, object_ids: Iterable[str]) -> dict[str, Seen]:
        """Newest stored detection and forced times, and the chunk, of each known object."""
        ids = list(dict.fromkeys(object_ids))
        seen: dict[str, Seen] = {}
        for part in _chunks(ids):
            marks = ", ".join("?" for _ in part)
            rows = self._archive._query(
                "SELECT d.object_id, d.chunk_id, o.last_mjd, o.last_forced_mjd "
                "FROM director d LEFT JOIN objects o ON o.object_id = d.object_id "
                f"WHERE d.object_id IN ({marks})", part)
            for row in rows:
                seen[row["object_id"]] = Seen(
                    last_detection_mjd=(row["last_mjd"] if row["last_mjd"] is not None
                                        else -math.inf),
                    last_forced_mjd=(row["last_forced_mjd"] if row["last_forced_mjd"] is not None
                                     else -math.inf),
                    chunk_id=int(row["chunk_id"]),
                )
        return seen

    def write(self, batch: ArchiveBatch) -> None:
        """Insert new alert rows and upsert object rows in one transaction (idempotent)."""
        if not batch.objects and not batch.detections:
            return
        with self._archive._transaction() as connection:
            connection.executemany(_INSERT_DIRECTOR,
                                   ((o.object_id, o.chunk_id) for o in batch.objects))
            self._archive._insert_detections(connection, batch.detections)
            positions = []
            for update in batch.objects:
                mjd, source_id = _position_epoch(update)
                positions.append((update.object_id, update.survey, update.object_id,
                                  update.hpx29, update.ra, update.dec, mjd, source_id))
            connection.executemany(_UPSERT_POSITION, positions)
            self._archive._mark_touched(connection, batch.object_ids)
            connection.execute(_REFRESH_OBJECTS)

    def get_object(self, object_id: str) -> Row | None:
        rows = self._archive._query(
            f"SELECT {_select(OBJECT_COLUMNS)} FROM objects WHERE object_id = ?", (object_id,))
        return dict(rows[0]) if rows else None

    def alert_rows(self, object_id: str) -> list[Row]:
        """Alert rows of an object, oldest first (embedded: the detections table)."""
        return self._archive._detections_of(object_id)

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int) -> list[Row]:
        """Objects within ``radius_deg`` of (ra, dec), nearest first, at most ``limit``.

        The chunks and merged order-29 ranges of `cone_cover` select candidates through the
        ``(chunk_id, hpx29)`` index; the exact angular distance decides.

        Raises
        ------
        ValueError
            For a non-finite centre, dec outside [-90, 90], a radius outside [0, 180] deg or a
            negative limit.
        """
        _check_cone(ra, dec, radius_deg, limit)
        if limit == 0:
            return []
        # cone_cover cannot cover radii below a fraction of a milliarcsecond (cdshealpix panics
        # past order 29); a wider cover only adds candidates that the exact distance drops.
        cover = cone_cover(self._archive.chunker, ra, dec, max(radius_deg, MIN_COVER_RADIUS_DEG))
        if not cover.chunks or not cover.ranges:
            return []
        # Chunk ids and range bounds are integers computed here, so they go into the text
        # (a wide cone has more of them than SQLite accepts as bound parameters).
        chunks = ", ".join(str(int(c)) for c in cover.chunks)
        ranges = " OR ".join(f"(hpx29 >= {int(lo)} AND hpx29 < {int(hi)})"
                             for lo, hi in cover.ranges)
        rows = self._archive._query(
            f"SELECT {_select(OBJECT_COLUMNS)} FROM objects "
            f"WHERE chunk_id IN ({chunks}) AND ({ranges})")
        if not rows:
            return []
        distances = angular_separation_deg(
            np.full(len(rows), ra), np.full(len(rows), dec),
            np.array([row["ra"] for row in rows]), np.array([row["dec"] for row in rows]),
        )
        inside = [(float(d), row) for d, row in zip(distances.tolist(), rows, strict=True)
                  if d <= radius_deg]
        inside.sort(key=lambda pair: (pair[0], pair[1]["object_id"]))
        return [{**dict(row), "distance_arcsec": d * 3600.0} for d, row in inside[:limit]]

    def counts(self) -> dict[str, int]:
        """Rows per table, named as on the MariaDB shards: ``objects``, ``alert_rows`` (embedded,
        the ``detections`` table) and ``director``."""
        return {name: self._archive._count(table) for name, table in
                (("objects", "objects"), ("alert_rows", "detections"), ("director", "director"))}

    def close(self) -> None:
        """Close this view; the connections close with the last open view."""
        if not self._closed:
            self._closed = True
            self._archive._view_closed()
