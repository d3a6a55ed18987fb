"""MariaDB shard servers through PyMySQL: the shard set and the chunked catalog on it."""

from __future__ import annotations

import contextlib
import math
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pymysql
from pymysql.connections import Connection

from broker.config import Settings
from broker.domain.archive import BANDS, ArchiveBatch, ObjectUpdate, PlacedDetection, Seen
from broker.domain.sky import (
    Chunker,
    ChunkPlacement,
    ConeCover,
    angular_separation_deg,
    cone_cover,
)
from broker.exceptions import LannerError, ServiceUnavailableError
from broker.storage.archive import DETECTION_COLUMNS, OBJECT_COLUMNS, Row

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ShardSet:
    """The MariaDB servers holding the catalog chunks, addressed by shard index."""

    def __init__(self, *, addresses: list[tuple[str, int]], user: str, password: str,
                 database: str) -> None:
        if not addresses:
            msg = "at least one MariaDB shard is needed"
            raise ValueError(msg)
        if not _IDENTIFIER.match(database):
            msg = f"database name {database!r} is not a plain identifier"
            raise ValueError(msg)
        self.addresses = addresses
        self.user = user
        self._password = password
        self.database = database

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardSet:
        return cls(addresses=settings.shard_addresses, user=settings.mariadb_user,
                   password=settings.mariadb_password.get_secret_value(),
                   database=settings.mariadb_database)

    def __len__(self) -> int:
        return len(self.addresses)

    def connect(self, shard: int, *, database: bool = True,
                autocommit: bool = False) -> Connection:
        """A new connection to one shard (autocommit off unless asked, local infile on)."""
        host, port = self.addresses[shard]
        try:
            return pymysql.connect(
                host=host, port=port, user=self.user, password=self._password,
                database=self.database if database else None, autocommit=autocommit,
                local_infile=True, charset="utf8mb4", connect_timeout=5,
            )
        except pymysql.err.OperationalError as exc:
            msg = f"MariaDB shard {shard} at {host}:{port} does not answer: {exc.args[-1]}"
            raise ServiceUnavailableError(msg) from exc

    @contextmanager
    def connection(self, shard: int) -> Iterator[Connection]:
        """A connection to one shard, closed on exit."""
        connection = self.connect(shard)
        try:
            yield connection
        finally:
            connection.close()

    def drop_database(self) -> None:
        """Drop the database on every shard (tests and benchmarks clean up with it)."""
        for shard in range(len(self)):
            connection = self.connect(shard, database=False)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                connection.commit()
            finally:
                connection.close()

    def ensure_database(self) -> None:
        """Create the database on every shard if missing."""
        for shard in range(len(self)):
            connection = self.connect(shard, database=False)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                    )
                connection.commit()
            finally:
                connection.close()


# ---- the chunked catalog of objects and alert rows ----------------------------------------

_SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "sql" / "mariadb_chunks.sql"


def _band_columns_ddl() -> str:
    parts = []
    for band in BANDS:
        parts += [f"{band}_n INT NOT NULL DEFAULT 0", f"{band}_last_mjd DOUBLE NULL",
                  f"{band}_last_flux DOUBLE NULL", f"{band}_last_flux_err DOUBLE NULL"]
    return ",\n    ".join(parts)


def _quote(column: str) -> str:
    return f"`{column}`"


class ShardExecutor:
    """Runs work on the shards: a connection per shard per thread, a pool for parallel work.

    Connections are in autocommit mode and reused without a ping: a read (``write=False``) is
    one round trip per statement, with no transaction around it and no COMMIT after it, while
    a write runs inside an explicit BEGIN ... COMMIT. A cached connection that fails at once
    (the server restarted since) is replaced and the work tried once more before the shard is
    reported unavailable. A shard that does not answer is a `ServiceUnavailableError` naming
    it and its address.
    """

    def __init__(self, shards: ShardSet, *, name: str = "mariadb") -> None:
        self.shards = shards
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=max(2, len(shards)), thread_name_prefix=name)

    def connection(self, shard: int) -> Connection:
        """This thread's connection to a shard (opened on first use, autocommit on)."""
        cache: dict[int, Connection] | None = getattr(self._local, "connections", None)
        if cache is None:
            cache = {}
            self._local.connections = cache
        connection = cache.get(shard)
        if connection is None:
            connection = self.shards.connect(shard, autocommit=True)
            cache[shard] = connection
        return connection

    def drop(self, shard: int) -> None:
        """Close and forget this thread's connection to a shard."""
        connection = getattr(self._local, "connections", {}).pop(shard, None)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def unavailable(self, shard: int, exc: Exception) -> ServiceUnavailableError:
        host, port = self.shards.addresses[shard]
        return ServiceUnavailableError(f"MariaDB shard {shard} at {host}:{port} failed: {exc}")

    def run(self, shard: int, work: Callable[[Any], T], *, write: bool = True) -> T:
        """Run ``work(cursor)`` on a shard: in one committed transaction, or as a plain read."""
        for attempt in (1, 2):
            cached = shard in getattr(self._local, "connections", {})
            try:
                connection = self.connection(shard)
                if not write:
                    with connection.cursor() as cursor:
                        return work(cursor)
                connection.begin()
                try:
                    with connection.cursor() as cursor:
                        result = work(cursor)
                    connection.commit()
                    return result
                except BaseException:
                    with contextlib.suppress(Exception):
                        connection.rollback()
                    raise
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                self.drop(shard)
                if attempt == 1 and cached and _connection_lost(exc):
                    continue
                raise self.unavailable(shard, exc) from exc
        raise AssertionError("unreachable")

    def on_shards(self, work: Mapping[int, Callable[[Any], T]], *,
                  write: bool = True) -> dict[int, T]:
        """Run work on several shards in parallel; wait for all before raising the first error.

        The first shard's work runs on the calling thread and only the others go to the pool:
        a cone or an object lookup on one shard costs no thread hand-off at all, and one on two
        shards a single one (each hand-off is a wait for the GIL under load).
        """
        items = list(work.items())
        if not items:
            return {}
        futures = {shard: self.pool.submit(self.run, shard, fn, write=write)
                   for shard, fn in items[1:]}
        results: dict[int, T] = {}
        error: BaseException | None = None
        shard, fn = items[0]
        try:
            results[shard] = self.run(shard, fn, write=write)
        except BaseException as exc:
            error = exc
        for shard, future in futures.items():
            try:
                results[shard] = future.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error
        return results

    def all_shards(self, fn: Callable[[Any], T]) -> dict[int, T]:
        return self.on_shards(dict.fromkeys(range(len(self.shards)), fn))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for connection in getattr(self._local, "connections", {}).values():
            with contextlib.suppress(Exception):
                connection.close()


def cover_rows(executor: ShardExecutor, placement: ChunkPlacement, cover: ConeCover,
               table: str, columns: str) -> list[tuple]:
    """The rows of a chunked table (``chunk_id`` and ``hpx29`` columns under one index) inside
    a cone's cover: one read per shard holding a touched chunk, in parallel. ``table`` and
    ``columns`` are quoted SQL; the distance cut is the caller's."""
    ranges = " OR ".join(["(hpx29 >= %s AND hpx29 < %s)"] * len(cover.ranges))
    range_args = [v for pair in cover.ranges for v in pair]

    def on(chunks: list[int]) -> Callable[[Any], list[tuple]]:
        def work(cursor: Any) -> list[tuple]:
            marks = ",".join(["%s"] * len(chunks))
            cursor.execute(f"SELECT {columns} FROM {table} WHERE chunk_id IN ({marks}) "
                           f"AND ({ranges})", [*chunks, *range_args])
            return list(cursor.fetchall())
        return work

    found = executor.on_shards({s: on(chunks)
                                for s, chunks in placement.by_shard(cover.chunks).items()},
                               write=False)
    return [row for part in found.values() for row in part]


def _connection_lost(exc: Exception) -> bool:
    """True for the errors of a connection the server has closed (2006, 2013) or a dead socket."""
    code = exc.args[0] if exc.args else None
    return isinstance(exc, pymysql.err.InterfaceError) or code in (2006, 2013)


class LayoutMismatchError(LannerError):
    """The shards hold an archive laid out with other chunking or another shard count."""

    reason = "layout_mismatch"


class ShardedCatalog:
    """`ObjectCatalog` over MariaDB shard servers, chunk-placed, with a director index.

    Objects and their alert rows live on the shard of the object's chunk; director rows live on
    the shard given by a hash of the object id. Each batch costs one transaction per touched
    shard, run in parallel.
    """

    def __init__(self, *, shards: ShardSet, chunker: Chunker) -> None:
        self.shards = shards
        self.chunker = chunker
        self.placement = ChunkPlacement(len(shards))
        self._shards = ShardExecutor(shards)
        self._run = self._shards.run
        self._on_shards = self._shards.on_shards

    def director_shard(self, object_id: str) -> int:
        return zlib.crc32(object_id.encode()) % len(self.shards)

    # -- ObjectCatalog

    def setup(self) -> None:
        self.shards.ensure_database()
        ddl = _strip_comments(_SCHEMA_FILE.read_text()).replace("{band_columns}",
                                                                _band_columns_ddl())
        statements = [s.strip() for s in ddl.split(";") if s.strip()]

        layout = self.layout()

        def create(shard: int) -> Callable[[Any], str | None]:
            def work(cursor: Any) -> str | None:
                for statement in statements:
                    cursor.execute(statement)
                # The first setup records the layout on every shard; later ones must match it,
                # or rows would be looked for on the wrong shard or in the wrong chunk.
                wanted = {**layout, "shard": str(shard)}
                cursor.executemany("INSERT IGNORE INTO layout (name, value) VALUES (%s, %s)",
                                   list(wanted.items()))
                cursor.execute("SELECT name, value FROM layout")
                found = dict(cursor.fetchall())
                if found != wanted:
                    return (f"shard {shard} holds an archive laid out as {found}, but the "
                            f"settings give {wanted}")
                return None
            return work

        problems = self._on_shards({shard: create(shard) for shard in range(len(self.shards))})
        mismatch = next((p for p in problems.values() if p), None)
        if mismatch:
            raise LayoutMismatchError(mismatch)

    def layout(self) -> dict[str, str]:
        """What fixes where a row lives: the chunking and the shard count."""
        return {"chunk_stripes": str(self.chunker.num_stripes),
                "chunk_sub_stripes": str(self.chunker.num_sub_stripes),
                "shards": str(len(self.shards)), "placement": "chunk_id mod shards"}

    def seen(self, object_ids: Iterable[str]) -> dict[str, Seen]:
        by_shard: dict[int, list[str]] = {}
        for object_id in dict.fromkeys(object_ids):
            by_shard.setdefault(self.director_shard(object_id), []).append(object_id)

        def lookup(ids: list[str]) -> Callable[[Any], list[tuple]]:
            def work(cursor: Any) -> list[tuple]:
                marks = ",".join(["%s"] * len(ids))
                cursor.execute(
                    "SELECT object_id, chunk_id, last_detection_mjd, last_forced_mjd "
                    f"FROM director WHERE object_id IN ({marks})", ids)
                return list(cursor.fetchall())
            return work

        found = self._on_shards({shard: lookup(ids) for shard, ids in by_shard.items()})
        seen = {}
        for rows in found.values():
            for object_id, chunk_id, last_det, last_forced in rows:
                seen[object_id] = Seen(
                    last_detection_mjd=-math.inf if last_det is None else last_det,
                    last_forced_mjd=-math.inf if last_forced is None else last_forced,
                    chunk_id=int(chunk_id),
                )
        return seen

    def write(self, batch: ArchiveBatch) -> None:
        if not batch.objects:
            return
        forced_max: dict[str, float] = {}
        for measurement in batch.forced:
            forced_max[measurement.object_id] = max(
                forced_max.get(measurement.object_id, -math.inf), measurement.mjd)
        rows_by_shard: dict[int, list[PlacedDetection]] = {}
        for placed in batch.detections:
            rows_by_shard.setdefault(self.placement.shard_of(placed.chunk_id), []).append(placed)
        objects_by_shard: dict[int, list[ObjectUpdate]] = {}
        for update in batch.objects:
            objects_by_shard.setdefault(self.placement.shard_of(update.chunk_id),
                                        []).append(update)

        def chunk_work(shard: int) -> Callable[[Any], None]:
            def work(cursor: Any) -> None:
                rows = rows_by_shard.get(shard, [])
                if rows:
                    cursor.executemany(_INSERT_ALERT_ROW, [_alert_row(p) for p in rows])
                updates = objects_by_shard.get(shard, [])
                if updates:
                    cursor.executemany(_UPSERT_OBJECT,
                                       [_object_values(u, forced_max.get(u.object_id))
                                        for u in updates])
                    ids = [u.object_id for u in updates]
                    cursor.execute(_recount_sql(len(ids)), ids)
            return work

        self._on_shards({shard: chunk_work(shard) for shard in objects_by_shard})

        # The director is written last: until it is, a repeated batch rewrites the history,
        # which is harmless, whereas a director ahead of the rows would skip unwritten history.
        last_det: dict[str, float] = {}
        for placed in batch.detections:
            object_id = placed.detection.object_id
            last_det[object_id] = max(last_det.get(object_id, -math.inf), placed.detection.mjd)
        director_by_shard: dict[int, list[tuple]] = {}
        for update in batch.objects:
            director_by_shard.setdefault(self.director_shard(update.object_id), []).append((
                update.object_id, update.chunk_id,
                _finite_or_none(last_det.get(update.object_id)),
                _finite_or_none(forced_max.get(update.object_id)),
            ))

        def director_work(rows: list[tuple]) -> Callable[[Any], None]:
            def work(cursor: Any) -> None:
                cursor.executemany(_UPSERT_DIRECTOR, rows)
            return work

        self._on_shards({shard: director_work(rows) for shard, rows in director_by_shard.items()})

    def locate_object(self, object_id: str) -> int | None:
        """The chunk of an object, from the director index."""
        shard = self.director_shard(object_id)

        def work(cursor: Any) -> int | None:
            cursor.execute("SELECT chunk_id FROM director WHERE object_id = %s", [object_id])
            row = cursor.fetchone()
            return None if row is None else int(row[0])

        return self._run(shard, work, write=False)

    def get_object(self, object_id: str) -> Row | None:
        chunk_id = self.locate_object(object_id)
        if chunk_id is None:
            return None
        columns = ", ".join(_quote(c) for c in OBJECT_COLUMNS)

        def work(cursor: Any) -> Row | None:
            cursor.execute(f"SELECT {columns} FROM objects WHERE object_id = %s", [object_id])
            row = cursor.fetchone()
            return None if row is None else dict(zip(OBJECT_COLUMNS, row, strict=True))

        return self._run(self.placement.shard_of(chunk_id), work, write=False)

    def alert_rows(self, object_id: str) -> list[Row]:
        chunk_id = self.locate_object(object_id)
        if chunk_id is None:
            return []
        columns = ", ".join(_quote(c) for c in DETECTION_COLUMNS)

        def work(cursor: Any) -> list[Row]:
            cursor.execute(f"SELECT {columns} FROM alert_rows WHERE object_id = %s "
                           "ORDER BY mjd, source_id", [object_id])
            return [dict(zip(DETECTION_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

        return self._run(self.placement.shard_of(chunk_id), work, write=False)

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int) -> list[Row]:
        cover = cone_cover(self.chunker, ra, dec, radius_deg)
        found = cover_rows(self._shards, self.placement, cover, "objects",
                           ", ".join(_quote(c) for c in OBJECT_COLUMNS))
        rows = [dict(zip(OBJECT_COLUMNS, r, strict=True)) for r in found]
        return nearest_first(rows, ra, dec, radius_deg, limit)

    def counts(self) -> Mapping[str, int]:
        def work(cursor: Any) -> dict[str, int]:
            result = {}
            for table in ("objects", "alert_rows", "director"):
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                result[table] = int(cursor.fetchone()[0])
            return result

        totals: dict[str, int] = {}
        for part in self._on_shards(dict.fromkeys(range(len(self.shards)), work),
                                    write=False).values():
            for table, n in part.items():
                totals[table] = totals.get(table, 0) + n
        return totals

    def close(self) -> None:
        self._shards.close()


def nearest_first(rows: list[Row], ra: float, dec: float, radius_deg: float,
                  limit: int) -> list[Row]:
    """Rows within the radius (exact great-circle distance), nearest first, at most ``limit``."""
    if not rows:
        return []
    distance = angular_separation_deg(np.full(len(rows), ra), np.full(len(rows), dec),
                                      np.array([r["ra"] for r in rows]),
                                      np.array([r["dec"] for r in rows]))
    inside = [(d, r) for d, r in zip(distance.tolist(), rows, strict=True) if d <= radius_deg]
    inside.sort(key=lambda pair: (pair[0], str(pair[1].get("object_id"))))
    out = []
    for d, r in inside[:limit]:
        r["distance_arcsec"] = d * 3600.0
        out.append(r)
    return out


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


_ALERT_ROW_COLUMNS = ", ".join(_quote(c) for c in DETECTION_COLUMNS)
_INSERT_ALERT_ROW = (
    f"INSERT IGNORE INTO alert_rows ({_ALERT_ROW_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * len(DETECTION_COLUMNS))})"
)


def _alert_row(placed: PlacedDetection) -> tuple:
    d = placed.detection
    return (d.source_id, d.object_id, placed.survey, placed.chunk_id, placed.hpx29, d.mjd, d.ra,
            d.dec, d.band, d.psf_flux, d.psf_flux_err, d.science_flux, d.science_flux_err,
            d.snr, d.reliability)


_UPSERT_BASE = ("object_id", "survey", "chunk_id", "hpx29", "ra", "dec", "last_mjd",
                "last_forced_mjd")
_UPSERT_BANDS = tuple(f"{b}_{w}" for b in BANDS for w in ("last_mjd", "last_flux",
                                                          "last_flux_err"))


def _upsert_object_sql() -> str:
    columns = (*_UPSERT_BASE, *_UPSERT_BANDS)
    newer = "VALUES(last_mjd) >= COALESCE(last_mjd, -1e308)"
    sets = [
        # Position follows the newest packet; an older packet arriving late does not move it.
        f"ra = IF({newer}, VALUES(ra), ra)",
        f"`dec` = IF({newer}, VALUES(`dec`), `dec`)",
        f"hpx29 = IF({newer}, VALUES(hpx29), hpx29)",
        "last_forced_mjd = IF(VALUES(last_forced_mjd) IS NOT NULL AND (last_forced_mjd IS NULL "
        "OR VALUES(last_forced_mjd) > last_forced_mjd), VALUES(last_forced_mjd), last_forced_mjd)",
    ]
    for band in BANDS:
        newer_band = (f"VALUES({band}_last_mjd) IS NOT NULL AND ({band}_last_mjd IS NULL OR "
                      f"VALUES({band}_last_mjd) >= {band}_last_mjd)")
        # MariaDB applies these left to right with updated values: the mjd must come last.
        for what in ("last_flux", "last_flux_err", "last_mjd"):
            column = f"{band}_{what}"
            sets.append(f"{column} = IF({newer_band}, VALUES({column}), {column})")
    return (f"INSERT INTO objects ({', '.join(_quote(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON DUPLICATE KEY UPDATE {', '.join(sets)}")


_UPSERT_OBJECT = _upsert_object_sql()


def _object_values(update: ObjectUpdate, last_forced: float | None) -> tuple:
    newest = max((d.mjd for d in update.latest.values()), default=None)
    values: list[Any] = [update.object_id, update.survey, update.chunk_id, update.hpx29,
                         update.ra, update.dec, newest, _finite_or_none(last_forced)]
    for band in BANDS:
        latest = update.latest.get(band)
        if latest is None:
            values += [None, None, None]
        else:
            values += [latest.mjd, latest.psf_flux, latest.psf_flux_err]
    return tuple(values)


def _recount_sql(n: int) -> str:
    band_counts = ", ".join(f"SUM(band = '{band}') AS {band}_n" for band in BANDS)
    band_sets = ", ".join(f"o.{band}_n = a.{band}_n" for band in BANDS)
    marks = ",".join(["%s"] * n)
    return (
        "UPDATE objects o JOIN (SELECT object_id, COUNT(*) AS n, MIN(mjd) AS first_mjd, "
        f"MAX(mjd) AS last_mjd, {band_counts} FROM alert_rows WHERE object_id IN ({marks}) "
        "GROUP BY object_id) a USING (object_id) SET o.n_detections = a.n, "
        f"o.first_mjd = a.first_mjd, o.last_mjd = a.last_mjd, {band_sets}"
    )


_UPSERT_DIRECTOR = (
    "INSERT INTO director (object_id, chunk_id, last_detection_mjd, last_forced_mjd) "
    "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    "last_detection_mjd = IF(VALUES(last_detection_mjd) IS NOT NULL AND (last_detection_mjd "
    "IS NULL OR VALUES(last_detection_mjd) > last_detection_mjd), VALUES(last_detection_mjd), "
    "last_detection_mjd), "
    "last_forced_mjd = IF(VALUES(last_forced_mjd) IS NOT NULL AND (last_forced_mjd IS NULL "
    "OR VALUES(last_forced_mjd) > last_forced_mjd), VALUES(last_forced_mjd), last_forced_mjd)"
)
