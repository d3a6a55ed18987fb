"""Reference catalogs in the chunked layout: MariaDB shards (`ShardedRefCatalogs`) and SQLite.

Versioned tables make a reload atomic. Version ``k`` of catalog ``name`` is the tables
``rc_<name>_v<k>`` (the rows, on the shard of their chunk), ``rc_<name>_v<k>_overlap`` (the halo
of each chunk: rows of neighbouring chunks within the overlap radius, on the halo chunk's shard)
and ``rc_<name>_v<k>_director`` (id → chunk, on shard ``crc32(str(id)) % shards``). The registry
table ``refcat_registry`` on shard 0 names the current version. A load writes version ``k+1`` in
full, flips the registry row in one statement, then drops version ``k``. Readers resolve the
version first and query only that version's tables, so they see the old catalog or the new one,
never a mix; a reader that resolved ``k`` just before its tables were dropped gets "no such
table" and resolves again. A failed load drops what it wrote and leaves ``k`` current.

Bulk load (MariaDB): each batch is split per shard and written as tab-separated text by pyarrow
(strings quoted, quotes doubled, NULL unquoted) to a temporary file that ``LOAD DATA LOCAL
INFILE`` reads; the shards load in parallel threads while the next batch is prepared. The data
tables are MyISAM with non-unique keys disabled during the load and rebuilt by sort at the end.

Row-level changes (`apply`, used by the dr-updates stage): upserts and deletes of single rows,
each with a version, on top of either a loaded catalog or one that `apply` creates on first use.
A per-version state table ``rc_<name>_v<k>_state`` (id, version, tombstone flag; on the shards
also the stored and pending positions, on the director shard of the id) makes them idempotent
and order-free; a move deletes the old main, halo and director rows wherever they are and
writes the new ones on the new chunk's shards. See the section "row-level changes" below.
The tombstones that deletes leave in the state table are removed by `purge_tombstones` once
they are older than a grace period that must exceed the retention of the change topic.

One writer per catalog: a load, `apply`, `drop` and `purge_tombstones` of a catalog hold its
lock (`catalog_lock_name`: a MariaDB named lock on shard 0; for SQLite a thread lock and an
``flock`` on a file next to the database). Without it two loads of one catalog would both write
version ``k+1`` and drop each other's tables, and a change applied during a load would go into
version ``k``, dropped at the end of the load. A load does not wait (`CatalogBusyError` at
once); the short operations wait up to ``lock_wait_s`` seconds. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pymysql
from pymysql.connections import Connection

from broker.domain.catalogs import (
    DEFAULT_OVERLAP_DEG,
    CatalogColumns,
    PreparedBatch,
    director_shards,
    halo_pairs,
    nearest_rows,
    plan_columns,
    prepare_batch,
    validate_name,
)
from broker.domain.sky import Chunker, ChunkPlacement, cone_cover
from broker.exceptions import LannerError, TransientError
from broker.storage.mariadb import ShardExecutor, ShardSet, cover_rows

T = TypeVar("T")

Row = dict[str, Any]
#: Types in the signatures of methods of classes that define ``list`` (which hides the builtin
#: there).
Rows = list[Row]
Names = list[str]
Keys = list[Any]
ChunkRows = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
Progress = Callable[[int], None]

_SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "sql" / "mariadb_refcat.sql"
_MYSQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "text": "TEXT", "bool": "TINYINT"}
_SQLITE_TYPES = {"int64": "INTEGER", "float64": "REAL", "text": "TEXT", "bool": "INTEGER"}
_NO_SUCH_TABLE = 1146
_RETRIES = 5
_REGISTRY_TTL_S = 2.0  # how long a reader trusts the catalog version it last read
#: How long `apply`, `drop` and `purge_tombstones` wait for a catalog's lock (a load never waits).
LOCK_WAIT_S = 10.0
_LOCK_NAME_MAX = 64  # MariaDB's limit on the length of a GET_LOCK name
#: wait_timeout of the session holding a catalog's lock: the longest MariaDB allows, so that a
#: load of many hours is not left without its lock when the server closes an idle session.
_LOCK_SESSION_TIMEOUT_S = 31_536_000
_PURGE_BATCH = 10_000  # tombstones deleted per statement (a short transaction each)


class RefCatalogError(LannerError):
    """A reference catalog cannot be loaded or read as asked."""

    reason = "refcat"


class UnknownCatalogError(RefCatalogError):
    """No catalog of that name is loaded."""

    reason = "unknown_catalog"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no reference catalog named {name!r} is loaded")


class CatalogBusyError(RefCatalogError, TransientError):
    """Another process (or thread) is loading or changing the catalog: try again later.

    A `TransientError`, so the stages retry the step with back-off and commit nothing, as for
    an unavailable store, rather than treat the batch as bad.
    """

    reason = "catalog_busy"

    def __init__(self, name: str, holder: str | None = None) -> None:
        self.name = name
        self.holder = holder
        by = f" ({holder})" if holder else ""
        super().__init__(f"catalog {name} is being loaded or changed by another process{by}")


def catalog_lock_name(database: str, name: str) -> str:
    """The MariaDB lock name of a catalog: named locks are server-wide, so the database is part
    of it; a name longer than MariaDB's 64 characters is hashed."""
    lock = f"lanner_refcat.{database}.{validate_name(name)}"
    if len(lock) <= _LOCK_NAME_MAX:
        return lock
    return f"lanner_refcat.{hashlib.sha256(f'{database}.{name}'.encode()).hexdigest()[:48]}"


def _utc_now() -> datetime:
    """Now in UTC, naive (how DATETIME columns and SQLite text store it)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_time(moment: datetime) -> str:
    """A fixed-width ISO time, so that SQLite compares the text in time order."""
    return moment.isoformat(sep=" ", timespec="microseconds")


def _cutoff(older_than_s: float) -> datetime:
    """The ``changed_at`` before which a tombstone is old enough to purge."""
    if not (isinstance(older_than_s, int | float) and 0 <= older_than_s < float("inf")):
        msg = f"older_than_s must be a number of seconds >= 0, not {older_than_s!r}"
        raise ValueError(msg)
    try:
        return _utc_now() - timedelta(seconds=float(older_than_s))
    except OverflowError:
        return datetime(1, 1, 1)  # older than anything stored: nothing is purged


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load stored: rows, rows skipped for bad coordinates or ids, halo rows."""

    rows: int
    skipped: int
    overlap_rows: int
    seconds: float
    version: int


def table_names(name: str, version: int) -> tuple[str, str, str]:
    """The main, overlap and director tables of one version of a catalog."""
    base = f"rc_{validate_name(name)}_v{int(version)}"
    return base, f"{base}_overlap", f"{base}_director"


def state_table(name: str, version: int) -> str:
    """The row-level state table (version and tombstone per id) of one version of a catalog."""
    return f"{table_names(name, version)[0]}_state"


def _all_tables(name: str, version: int) -> tuple[str, str, str, str]:
    """Main, overlap, director and state tables of one version (SQLite has no director)."""
    main, overlap, director = table_names(name, version)
    return main, overlap, director, state_table(name, version)


def _sqlite_tables(name: str, version: int) -> tuple[str, str, str]:
    main, overlap, _, state = _all_tables(name, version)
    return main, overlap, state


def _columns_of(prepared_columns: CatalogColumns) -> list[list[str]]:
    return [[n, k] for n, k in prepared_columns.stored]


def _plan_input(name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
                dec_col: str) -> tuple[pa.RecordBatch, Iterator[pa.RecordBatch], CatalogColumns]:
    """The first batch of a load's input, the rest, and the catalog's columns planned from the
    first batch's schema (`RefCatalogError` for an input with no batch)."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        msg = f"the input of catalog {name!r} holds no rows"
        raise RefCatalogError(msg)
    return first, iterator, plan_columns(first.schema, id_col, ra_col, dec_col)


def _q(identifier: str) -> str:
    return f"`{identifier}`"


def _sections() -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in _SCHEMA_FILE.read_text().splitlines():
        marker = re.match(r"^-- @(\w+)\s*$", line)
        if marker:
            current = marker.group(1)
            sections[current] = []
        elif current and not line.lstrip().startswith("--"):
            sections[current].append(line)
    return {k: "\n".join(v).strip().rstrip(";") for k, v in sections.items()}


_DDL = _sections()

_LOAD_SQL = ("LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4 "
             "FIELDS TERMINATED BY '\\t' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
             "LINES TERMINATED BY '\\n' ({columns})")
_TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="needed",
                          null_string="NULL", batch_size=65536)


#: The row-level state table of a catalog version (MariaDB). ``changed_at`` is when the row got
#: its final value; the index finds the tombstones old enough to purge without a scan.
_STATE_DDL = ("CREATE TABLE IF NOT EXISTS {table} (id {id_type} NOT NULL PRIMARY KEY, "
              "version BIGINT NULL, deleted TINYINT NOT NULL, ra DOUBLE NULL, `dec` DOUBLE NULL, "
              "pending TEXT NULL, changed_at DATETIME(6) NULL, "
              "KEY tombstones (deleted, changed_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


def _upgrade_state(cursor: Any, state: str, now: datetime) -> None:
    """Bring a state table made before ``changed_at`` existed up to date (no-ops afterwards).

    Its tombstones get the time of the upgrade: they are at least that old, so the grace of
    `purge_tombstones` counts from there and none goes early. Rows with pending positions are
    left alone (the apply that wrote them will finish and set the time).
    """
    cursor.execute(f"ALTER TABLE {state} ADD COLUMN IF NOT EXISTS changed_at DATETIME(6) NULL, "
                   "ADD INDEX IF NOT EXISTS tombstones (deleted, changed_at)")
    cursor.execute(f"UPDATE {state} SET changed_at = %s "
                   "WHERE deleted = 1 AND changed_at IS NULL AND pending IS NULL", [now])


def _tsv_dir() -> str:
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private folder in it
    if shm.is_dir() and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(prefix="lanner-refcat-", dir=shm)
    return tempfile.mkdtemp(prefix="lanner-refcat-")


@dataclass(slots=True)
class _ShardParts:
    main: pa.Table
    overlap: pa.Table
    director: pa.Table


def _split(prepared: PreparedBatch, shards: int) -> dict[int, _ShardParts]:
    table = prepared.table
    main_shard = prepared.chunk_id % shards
    halo = pa.Table.from_arrays(
        [pa.array(prepared.overlap_chunk, pa.int64()),
         table.column("id").take(pa.array(prepared.overlap_index)),
         pa.array(prepared.hpx29[prepared.overlap_index], pa.int64()),
         pa.array(prepared.ra[prepared.overlap_index], pa.float64()),
         pa.array(prepared.dec[prepared.overlap_index], pa.float64())],
        names=["chunk_id", "id", "hpx29", "ra", "dec"])
    halo_shard = prepared.overlap_chunk % shards
    director = table.select(["id", "chunk_id"])
    director_shard = director_shards(prepared.ids, shards)
    parts = {}
    for shard in range(shards):
        parts[shard] = _ShardParts(
            main=table.take(pa.array(np.nonzero(main_shard == shard)[0])),
            overlap=halo.take(pa.array(np.nonzero(halo_shard == shard)[0])),
            director=director.take(pa.array(np.nonzero(director_shard == shard)[0])),
        )
    return parts


class ShardedRefCatalogs:
    """Reference catalogs on the MariaDB shards, chunk-placed with overlap and a director."""

    #: Seconds `apply`, `drop` and `purge_tombstones` wait for the catalog's lock.
    lock_wait_s = LOCK_WAIT_S

    def __init__(self, shards: ShardSet, chunker: Chunker,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> None:
        self.shards = shards
        self.chunker = chunker
        self.overlap_deg = float(overlap_deg)
        self.placement = ChunkPlacement(len(shards))
        self._shards = ShardExecutor(shards, name="refcat")
        self._pool = self._shards.pool
        self._run = self._shards.run
        self._on_shards = self._shards.on_shards
        self._all_shards = self._shards.all_shards
        self._conn = self._shards.connection
        self._unavailable = self._shards.unavailable
        self._ready = False
        self._states: set[str] = set()
        self._registry_cache: dict[str, tuple[float, dict[str, Any]]] = {}


    # -- setup and registry

    def setup(self) -> None:
        """Create the database on every shard and the registry on shard 0 (idempotent)."""
        if self._ready:
            return
        self.shards.ensure_database()
        self._run(0, lambda cursor: cursor.execute(_DDL["registry"]))
        self._ready = True

    @contextlib.contextmanager
    def _exclusive(self, name: str, wait_s: float) -> Iterator[None]:
        """Hold the catalog's named lock on shard 0 for the block (`CatalogBusyError` if another
        session holds it after ``wait_s`` seconds; 0 fails at once).

        A dedicated connection takes it, so the lock belongs to that session: RELEASE_LOCK frees
        it at the end, and the server frees it when the process dies and its socket closes.
        """
        lock = catalog_lock_name(self.shards.database, name)
        connection = self.shards.connect(0)
        try:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SET SESSION wait_timeout = %s", [_LOCK_SESSION_TIMEOUT_S])
                    cursor.execute("SELECT GET_LOCK(%s, %s)", [lock, wait_s])
                    taken = cursor.fetchone()[0]
                    if taken != 1:
                        cursor.execute("SELECT IS_USED_LOCK(%s)", [lock])
                        holder = cursor.fetchone()[0]
                        raise CatalogBusyError(
                            name, None if holder is None else f"MariaDB connection id {holder}")
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                raise self._unavailable(0, exc) from exc
            try:
                yield
            finally:
                with contextlib.suppress(pymysql.err.Error), connection.cursor() as cursor:
                    cursor.execute("SELECT RELEASE_LOCK(%s)", [lock])
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def _registry(self, name: str) -> dict[str, Any] | None:
        def work(cursor: Any) -> tuple | None:
            cursor.execute("SELECT version, `rows`, `columns`, overlap_deg, loaded_at "
                           "FROM refcat_registry WHERE name = %s AND status = 'ready'", [name])
            return cursor.fetchone()

        try:
            row = self._run(0, work, write=False)
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] == _NO_SUCH_TABLE:
                return None
            raise
        if row is None:
            return None
        return {"version": int(row[0]), "rows": int(row[1]), "columns": json.loads(row[2]),
                "overlap_deg": float(row[3]), "loaded_at": row[4]}

    def _current(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        """The registry entry of a catalog, cached for `_REGISTRY_TTL_S` unless ``fresh``."""
        self.setup()
        validate_name(name)
        now = time.monotonic()
        cached = self._registry_cache.get(name)
        if not fresh and cached is not None and now - cached[0] < _REGISTRY_TTL_S:
            return cached[1]
        entry = self._registry(name)
        if entry is None:
            self._registry_cache.pop(name, None)
            raise UnknownCatalogError(name)
        self._registry_cache[name] = (now, entry)
        return entry

    def _read(self, name: str, query: Callable[[dict[str, Any]], T]) -> T:
        """Run a read against the current version, resolving again if it was just replaced.

        The version comes from a short-lived cache (one round trip to shard 0 saved per read).
        A reload drops the old version's tables right after the registry flip, so a reader
        holding the old version finds a table gone, reads the registry afresh and starts over:
        every answer still comes wholly from one version.
        """
        for attempt in range(_RETRIES):
            entry = self._current(name, fresh=attempt > 0)
            try:
                return query(entry)
            except pymysql.err.ProgrammingError as exc:
                if exc.args[0] != _NO_SUCH_TABLE or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def list(self) -> list[dict[str, Any]]:
        """Every loaded catalog: name, rows, version, loaded_at, columns."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT name, `rows`, version, loaded_at, `columns`, overlap_deg "
                           "FROM refcat_registry WHERE status = 'ready' ORDER BY name")
            return list(cursor.fetchall())

        self.setup()
        rows = self._run(0, work, write=False)
        return [{"name": r[0], "rows": int(r[1]), "version": int(r[2]), "loaded_at": r[3],
                 "columns": json.loads(r[4]), "overlap_deg": float(r[5])} for r in rows]

    def describe(self, name: str) -> dict[str, Any]:
        """The registry entry of one catalog (version, rows, columns, ...), from the same
        short-lived cache as the reads: no round trip on most calls.

        Raises `UnknownCatalogError` (and ValueError for a name that cannot be a catalog's).
        """
        return dict(self._current(name))

    # -- load

    def _drop_tables(self, tables: Iterable[str]) -> None:
        names = ", ".join(_q(t) for t in tables)
        self._all_shards(lambda cursor: cursor.execute(f"DROP TABLE IF EXISTS {names}"))

    def load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
             dec_col: str, progress: Progress | None = None) -> LoadReport:
        """Load a catalog from record batches, replacing any loaded version atomically.

        The catalog's lock is held throughout; if another process holds it (a load, or a
        change being applied), `CatalogBusyError` is raised at once and nothing is written.
        """
        validate_name(name)
        self.setup()
        with self._exclusive(name, 0):
            return self._load(name, batches, id_col, ra_col, dec_col, progress)

    def _load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
              dec_col: str, progress: Progress | None) -> LoadReport:
        started = time.perf_counter()
        first, rest, columns = _plan_input(name, batches, id_col, ra_col, dec_col)
        current = self._registry(name)
        version = (current["version"] if current else 0) + 1
        tables = table_names(name, version)
        # Left over by a load that died without cleaning up (and row-level state of that version).
        self._states.discard(state_table(name, version))
        self._drop_tables((*tables, state_table(name, version)))
        try:
            self._create(tables, columns)
            rows, skipped, overlap = self._stream(tables, columns, first, rest, progress)
            self._all_shards(lambda cursor: [cursor.execute(f"ALTER TABLE {_q(t)} ENABLE KEYS")
                                             for t in tables])
            self._flip(name, version, rows, columns)
        except BaseException:
            with contextlib.suppress(Exception):
                self._drop_tables(tables)
            raise
        if current is not None:
            self._states.discard(state_table(name, current["version"]))
            with contextlib.suppress(LannerError, pymysql.err.Error):
                self._drop_tables(_all_tables(name, current["version"]))
        return LoadReport(rows=rows, skipped=skipped, overlap_rows=overlap,
                          seconds=time.perf_counter() - started, version=version)

    def _create(self, tables: tuple[str, str, str], columns: CatalogColumns) -> None:
        id_type = "BIGINT" if columns.id.kind == "int64" else "VARCHAR(191)"
        data = "".join(f",\n    {_q(c.name)} {_MYSQL_TYPES[c.kind]} NULL" for c in columns.data)
        statements = [
            _DDL["main"].format(table=_q(tables[0]), id_type=id_type, data_columns=data),
            _DDL["overlap"].format(table=_q(tables[1]), id_type=id_type),
            _DDL["director"].format(table=_q(tables[2]), id_type=id_type),
            *(f"ALTER TABLE {_q(t)} DISABLE KEYS" for t in tables),
        ]
        self._all_shards(lambda cursor: [cursor.execute(s) for s in statements])

    def _stream(self, tables: tuple[str, str, str], columns: CatalogColumns,
                first: pa.RecordBatch, rest: Iterable[pa.RecordBatch],
                progress: Progress | None) -> tuple[int, int, int]:
        n = len(self.shards)
        folder = _tsv_dir()
        connections: dict[int, Connection] = {}
        rows = skipped = overlap = 0
        pending: list[Future] = []
        try:
            for shard in range(n):
                connections[shard] = self.shards.connect(shard)

            def wait() -> None:
                error = None
                for future in pending:
                    try:
                        future.result()
                    except BaseException as exc:
                        error = error or exc
                pending.clear()
                if error is not None:
                    raise error

            batch: pa.RecordBatch | None = first
            iterator = iter(rest)
            while batch is not None:
                if batch.schema.names != first.schema.names:
                    msg = "the input's columns changed between batches"
                    raise RefCatalogError(msg)
                prepared = prepare_batch(batch, columns, self.chunker, self.overlap_deg)
                parts = _split(prepared, n)
                wait()  # the previous batch is stored before this one is sent
                pending.extend(self._pool.submit(self._send, connections[s], s, folder, tables, p)
                               for s, p in parts.items())
                rows += prepared.rows
                skipped += prepared.skipped
                overlap += len(prepared.overlap_index)
                if progress is not None:
                    progress(batch.num_rows)
                batch = next(iterator, None)
            wait()
        finally:
            for future in pending:
                with contextlib.suppress(BaseException):
                    future.result()
            for connection in connections.values():
                with contextlib.suppress(Exception):
                    connection.close()
            shutil.rmtree(folder, ignore_errors=True)
        return rows, skipped, overlap

    def _send(self, connection: Connection, shard: int, folder: str,
              tables: tuple[str, str, str], parts: _ShardParts) -> None:
        """Bulk-load one batch's rows of one shard: a TSV file per table, then LOAD DATA."""
        try:
            with connection.cursor() as cursor:
                for kind, table, part in (("main", tables[0], parts.main),
                                          ("overlap", tables[1], parts.overlap),
                                          ("director", tables[2], parts.director)):
                    if part.num_rows == 0:
                        continue
                    path = f"{folder}/{shard}-{kind}.tsv"
                    pacsv.write_csv(part, path, write_options=_TSV)
                    names = ", ".join(_q(c) for c in part.column_names)
                    loaded = cursor.execute(_LOAD_SQL.format(table=_q(table), columns=names),
                                            [path])
                    if loaded != part.num_rows:
                        msg = (f"{part.num_rows - loaded} rows of a batch were not stored in "
                               f"{table} on shard {shard}: does the input repeat ids?")
                        raise RefCatalogError(msg)
            connection.commit()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
            raise self._unavailable(shard, exc) from exc

    def _flip(self, name: str, version: int, rows: int, columns: CatalogColumns) -> None:
        def work(cursor: Any) -> None:
            cursor.execute(
                "INSERT INTO refcat_registry (name, version, `rows`, `columns`, overlap_deg, "
                "loaded_at, status) VALUES (%s, %s, %s, %s, %s, %s, 'ready') "
                "ON DUPLICATE KEY UPDATE version = VALUES(version), `rows` = VALUES(`rows`), "
                "`columns` = VALUES(`columns`), overlap_deg = VALUES(overlap_deg), "
                "loaded_at = VALUES(loaded_at), status = VALUES(status)",
                [name, version, rows, json.dumps(_columns_of(columns)), self.overlap_deg,
                 datetime.now(UTC).replace(tzinfo=None)])

        self._run(0, work)

    def drop(self, name: str) -> None:
        """Forget a catalog and drop its tables (waits for the catalog's lock)."""
        validate_name(name)
        self.setup()
        with self._exclusive(name, self.lock_wait_s):
            entry = self._current(name, fresh=True)
            self._registry_cache.pop(name, None)
            self._run(0, lambda cursor: cursor.execute(
                "DELETE FROM refcat_registry WHERE name = %s", [name]))
            self._states.discard(state_table(name, entry["version"]))
            self._drop_tables(_all_tables(name, entry["version"]))

    # -- reads

    def cone(self, name: str, ra: float, dec: float, radius_deg: float,
             limit: int = 1000) -> Rows:
        """Rows within ``radius_deg`` of (ra, dec), nearest first, with ``distance_arcsec``."""
        cover = cone_cover(self.chunker, ra, dec, radius_deg)

        def query(entry: dict[str, Any]) -> list[Row]:
            names = [c[0] for c in entry["columns"]]
            found = cover_rows(self._shards, self.placement, cover,
                               _q(table_names(name, entry["version"])[0]),
                               ", ".join(_q(c) for c in names))
            return [dict(zip(names, r, strict=True)) for r in found]

        rows = self._read(name, query)
        return nearest_rows(rows, ra, dec, radius_deg, limit)

    def chunk_rows(self, name: str, chunk_ids: Iterable[int]) -> ChunkRows:
        """Ids and positions of the rows of each chunk and of its halo (one query per shard)."""
        wanted = sorted({int(c) for c in chunk_ids})
        by_shard = self.placement.by_shard(wanted)

        def query(entry: dict[str, Any]) -> list[tuple]:
            main, halo, _ = (_q(t) for t in table_names(name, entry["version"]))

            def on(chunks: list[int]) -> Callable[[Any], list[tuple]]:
                def work(cursor: Any) -> list[tuple]:
                    marks = ",".join(["%s"] * len(chunks))
                    cursor.execute(
                        f"SELECT chunk_id, id, ra, `dec` FROM {main} WHERE chunk_id IN ({marks}) "
                        f"UNION ALL SELECT chunk_id, id, ra, `dec` FROM {halo} "
                        f"WHERE chunk_id IN ({marks})", [*chunks, *chunks])
                    return list(cursor.fetchall())
                return work

            found = self._on_shards({s: on(chunks) for s, chunks in by_shard.items()},
                                    write=False)
            return [r for part in found.values() for r in part]

        rows = self._read(name, query)
        return _group_chunk_rows(wanted, rows)

    def get(self, name: str, object_id: Any) -> Row | None:
        """One row by id: the director gives its chunk, so one shard is read."""
        def query(entry: dict[str, Any]) -> Row | None:
            key = _id_value(entry, object_id)
            if key is None:
                return None
            main, _, director = table_names(name, entry["version"])
            shard = zlib.crc32(str(key).encode()) % len(self.shards)

            def locate(cursor: Any) -> int | None:
                cursor.execute(f"SELECT chunk_id FROM {_q(director)} WHERE id = %s", [key])
                row = cursor.fetchone()
                return None if row is None else int(row[0])

            chunk = self._run(shard, locate, write=False)
            if chunk is None:
                return None
            names = [c[0] for c in entry["columns"]]
            select = ", ".join(_q(c) for c in names)

            def fetch(cursor: Any) -> tuple | None:
                cursor.execute(f"SELECT {select} FROM {_q(main)} WHERE id = %s", [key])
                return cursor.fetchone()

            row = self._run(self.placement.shard_of(chunk), fetch, write=False)
            return None if row is None else dict(zip(names, row, strict=True))

        return self._read(name, query)

    # -- row-level changes

    def apply(self, name: str, upserts: pa.Table, deletes: Iterable[tuple[Any, int]] = (), *,
              id_col: str, ra_col: str, dec_col: str,
              version_col: str = "version") -> ApplyReport:
        """Upsert and delete single rows, each guarded by its version (see the section above).

        ``upserts`` has the catalog's input columns (as a load would read them) and
        ``version_col``; ``deletes`` are ``(id, version)``. Every id at most once. The catalog is
        created (version 1, no rows) on first use with the columns of ``upserts``.

        The shards cannot share a transaction (and the data tables are MyISAM), so the writes
        are ordered to make a repeat of the same call, after a failure at any point, finish the
        job: (0) the position each upsert is going to is added to its state row's ``pending``
        list; (1) on every data shard in parallel, the object's main and halo rows are deleted
        wherever its stored or pending positions put them, and the new rows are written;
        (2) on the director shards, the director row and the state row (version, position,
        tombstone, ``changed_at``; pending cleared) are written. Until (2) is done the stored
        version is the old one, so a repeat applies the change again and cleans every place a row
        may have gone.

        The catalog's lock is held throughout, waiting up to ``lock_wait_s`` for a load or
        another change to finish (then `CatalogBusyError`, a transient error).
        """
        validate_name(name)
        self.setup()
        columns = _change_columns(upserts.schema, id_col, ra_col, dec_col, version_col)
        with self._exclusive(name, self.lock_wait_s):
            return self._apply(name, columns, upserts, deletes, version_col)

    def _apply(self, name: str, columns: CatalogColumns, upserts: pa.Table,
               deletes: Iterable[tuple[Any, int]], version_col: str) -> ApplyReport:
        entry, created = self._ensure_catalog(name, columns)
        overlap_deg = entry["overlap_deg"]
        changes = _prepare_changes(upserts, deletes, columns, version_col, self.chunker,
                                   overlap_deg)
        if not changes.by_id:
            return ApplyReport(created=created)
        main, halo, director = (_q(t) for t in table_names(name, entry["version"]))
        state = _q(state_table(name, entry["version"]))
        n = len(self.shards)
        by_home: dict[int, list] = {}
        for key in changes.by_id:
            by_home.setdefault(zlib.crc32(str(key).encode()) % n, []).append(key)

        stored = self._stored(main, state, director, by_home)
        applicable = {key: change for key, change in changes.by_id.items()
                      if (old := stored.get(key)) is None or old.version is None
                      or change[0] > old.version}
        ignored = len(changes.by_id) - len(applicable)
        if not applicable:
            return ApplyReport(ignored=ignored, created=created)
        prepared = changes.prepared

        # (0) Where each upsert is going, before anything is written there.
        intents: dict[int, list[tuple]] = {}
        for key, (_, row) in applicable.items():
            if row is None:
                continue
            old = stored.get(key) or _Stored(None, live=False)
            pending = [*(old.pending or []), (float(prepared.ra[row]), float(prepared.dec[row]))]
            position = old.position or (None, None)
            intents.setdefault(zlib.crc32(str(key).encode()) % n, []).append(
                (key, old.version, 0 if old.live else 1, *position, json.dumps(pending)))
        if intents:
            self._on_shards({shard: _intent_writer(state, rows)
                             for shard, rows in intents.items()})

        # (1) The data shards: clean every place the rows may be, then write the new ones.
        writes = self._writes(changes, applicable, stored, overlap_deg)
        names = ", ".join(_q(c) for c in prepared.table.column_names)
        if writes:
            self._on_shards({shard: _data_writer(main, halo, names, part)
                             for shard, part in writes.items()})

        # (2) The director shards: director rows and state rows (versions and tombstones).
        finals: dict[int, tuple[list, list, list]] = {}
        now = _utc_now()
        for key, (version, row) in applicable.items():
            keys, directors, states = finals.setdefault(zlib.crc32(str(key).encode()) % n,
                                                        ([], [], []))
            keys.append(key)
            if row is None:
                states.append((key, version, 1, None, None, None, now))
            else:
                directors.append((key, int(prepared.chunk_id[row])))
                states.append((key, version, 0, float(prepared.ra[row]),
                               float(prepared.dec[row]), None, now))
        self._on_shards({shard: _director_writer(director, state, *parts)
                         for shard, parts in finals.items()})
        self._recount(name, entry["version"], main)
        upserted = sum(1 for _, row in applicable.values() if row is not None)
        return ApplyReport(upserted=upserted, deleted=len(applicable) - upserted,
                           ignored=ignored, created=created)

    def _writes(self, changes: _Changes, applicable: dict[Any, tuple[int, int | None]],
                stored: dict[Any, _Stored], overlap_deg: float) -> dict[int, _ShardWrites]:
        """Per data shard: the main and halo rows to delete, and those to write."""
        prepared = changes.prepared
        writes: dict[int, _ShardWrites] = {}
        cleanup = [(key, p) for key in applicable
                   for p in (stored[key].positions() if key in stored else [])]
        halos = _halos(self.chunker, [p for _, p in cleanup], overlap_deg)
        for (key, (ra, dec)), halo_chunks in zip(cleanup, halos, strict=True):
            chunk = self.chunker.locate_one(ra, dec)
            writes.setdefault(self.placement.shard_of(chunk), _ShardWrites()).main_delete.add(key)
            for hc in halo_chunks:
                part = writes.setdefault(self.placement.shard_of(hc), _ShardWrites())
                part.halo_delete.setdefault(hc, set()).add(key)
        for key, (_, row) in applicable.items():
            if row is None:
                continue
            chunk = int(prepared.chunk_id[row])
            writes.setdefault(self.placement.shard_of(chunk),
                              _ShardWrites()).main_insert.append(changes.rows[row])
            for hc in changes.halo_of(row):
                writes.setdefault(self.placement.shard_of(hc), _ShardWrites()).halo_insert.append(
                    (hc, key, int(prepared.hpx29[row]), float(prepared.ra[row]),
                     float(prepared.dec[row])))
        return writes

    def _ensure_catalog(self, name: str, columns: CatalogColumns) -> tuple[dict[str, Any], bool]:
        """The registry entry of a catalog, creating it empty (version 1) if there is none."""
        entry = self._registry(name)
        created = False
        if entry is None:
            id_type = "BIGINT" if columns.id.kind == "int64" else "VARCHAR(191)"
            data = "".join(f",\n    {_q(c.name)} {_MYSQL_TYPES[c.kind]} NULL"
                           for c in columns.data)
            tables = table_names(name, 1)
            statements = [
                _DDL["main"].format(table=_q(tables[0]), id_type=id_type, data_columns=data),
                _DDL["overlap"].format(table=_q(tables[1]), id_type=id_type),
                _DDL["director"].format(table=_q(tables[2]), id_type=id_type),
            ]
            statements = [s.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
                          for s in statements]
            self._all_shards(lambda cursor: [cursor.execute(s) for s in statements])
            self._run(0, lambda cursor: cursor.execute(
                "INSERT IGNORE INTO refcat_registry (name, version, `rows`, `columns`, "
                "overlap_deg, loaded_at, status) VALUES (%s, 1, 0, %s, %s, %s, 'ready')",
                [name, json.dumps(_columns_of(columns)), self.overlap_deg,
                 datetime.now(UTC).replace(tzinfo=None)]))
            entry = self._current(name, fresh=True)
            created = True
        if entry["columns"] != _columns_of(columns):
            msg = (f"catalog {name!r} has the columns {entry['columns']}, the changes "
                   f"{_columns_of(columns)}")
            raise RefCatalogError(msg)
        state = state_table(name, entry["version"])
        if state not in self._states:
            id_type = "BIGINT" if columns.id.kind == "int64" else "VARCHAR(191)"
            ddl = _STATE_DDL.format(table=_q(state), id_type=id_type)
            now = _utc_now()

            def create(cursor: Any) -> None:
                cursor.execute(ddl)
                _upgrade_state(cursor, _q(state), now)  # a table made by an earlier release

            self._all_shards(create)
            self._states.add(state)
        return entry, created

    def purge_tombstones(self, name: str, older_than_s: float) -> int:
        """Delete the tombstones whose delete was applied more than ``older_than_s`` ago, on
        every shard; the number deleted.

        A tombstone (a state row with ``deleted = 1``) exists only to make an older change of
        its id, delivered late, lose to the delete. Like Kafka's ``delete.retention.ms`` for a
        compacted topic, it must outlive every older message about its id that could still be
        delivered: ``older_than_s`` must exceed the retention of the change topic
        (``dr.updates``) plus its segment roll time (``segment.ms``), for a segment is deleted
        only whole, once its newest message is past the retention. After a purge, a replay
        from an offset older than ``older_than_s`` can bring a deleted row back (its insert
        applies again; the delete, if still in the topic, removes it once more).

        What readers see does not change: main, halo and director rows are not touched, nor
        live state rows, nor tombstones of a change still being applied (pending positions).
        A catalog that only bulk loads wrote has no state table: 0. Unknown catalog:
        `UnknownCatalogError`. Waits for the catalog's lock like `apply`.
        """
        validate_name(name)
        cutoff = _cutoff(older_than_s)
        self.setup()
        with self._exclusive(name, self.lock_wait_s):
            entry = self._current(name, fresh=True)
            state = state_table(name, entry["version"])
            upgrade = state not in self._states
            now = _utc_now()

            def purge(cursor: Any) -> int | None:
                removed = 0
                try:
                    if upgrade:
                        _upgrade_state(cursor, _q(state), now)
                    while True:
                        done = cursor.execute(
                            f"DELETE FROM {_q(state)} WHERE deleted = 1 AND changed_at < %s "
                            "AND pending IS NULL LIMIT %s", [cutoff, _PURGE_BATCH])
                        cursor.connection.commit()  # one short transaction per batch
                        removed += done
                        if done < _PURGE_BATCH:
                            return removed
                except pymysql.err.ProgrammingError as exc:
                    if exc.args[0] == _NO_SUCH_TABLE:
                        return None  # no change was ever applied to this version
                    raise

            found = self._all_shards(purge)
        if upgrade and all(n is not None for n in found.values()):
            self._states.add(state)
        return sum(n or 0 for n in found.values())

    def _stored(self, main: str, state: str, director: str,
                by_home: dict[int, Keys]) -> dict[Any, _Stored]:
        """What the shards hold of each id: state rows, or (bulk-loaded rows) director + main."""
        def read(keys: list) -> Callable[[Any], tuple[list, list]]:
            def work(cursor: Any) -> tuple[list, list]:
                states, directors = [], []
                for part in _batches(keys):
                    marks = ",".join(["%s"] * len(part))
                    cursor.execute(f"SELECT id, version, deleted, ra, `dec`, pending FROM {state} "
                                   f"WHERE id IN ({marks})", part)
                    states.extend(cursor.fetchall())
                    cursor.execute(f"SELECT id, chunk_id FROM {director} WHERE id IN ({marks})",
                                   part)
                    directors.extend(cursor.fetchall())
                return states, directors
            return work

        found = self._on_shards({shard: read(keys) for shard, keys in by_home.items()})
        stored: dict[Any, _Stored] = {}
        unversioned: dict[int, list] = {}
        for states, directors in found.values():
            for key, version, deleted, ra, dec, pending in states:
                stored[key] = _Stored(
                    None if version is None else int(version), live=not deleted,
                    position=None if ra is None else (float(ra), float(dec)),
                    pending=[tuple(p) for p in json.loads(pending)] if pending else None)
            for key, chunk in directors:
                if key not in stored:
                    unversioned.setdefault(self.placement.shard_of(chunk), []).append(key)
        if unversioned:
            def locate(keys: list) -> Callable[[Any], list]:
                def work(cursor: Any) -> list:
                    rows = []
                    for part in _batches(keys):
                        marks = ",".join(["%s"] * len(part))
                        cursor.execute(f"SELECT id, ra, `dec` FROM {main} WHERE id IN ({marks})",
                                       part)
                        rows.extend(cursor.fetchall())
                    return rows
                return work

            for rows in self._on_shards({s: locate(k) for s, k in unversioned.items()}).values():
                for key, ra, dec in rows:
                    stored[key] = _Stored(None, live=True, position=(float(ra), float(dec)))
        return stored

    def _recount(self, name: str, version: int, main: str) -> None:
        """Set the registry's row count from the main tables (MyISAM counts are free)."""
        def count(cursor: Any) -> int:
            cursor.execute(f"SELECT COUNT(*) FROM {main}")
            return int(cursor.fetchone()[0])

        total = sum(self._all_shards(count).values())
        self._run(0, lambda cursor: cursor.execute(
            "UPDATE refcat_registry SET `rows` = %s WHERE name = %s AND version = %s",
            [total, name, version]))

    def tables(self) -> Names:
        """Every ``rc_*`` table on any shard (tests check that old versions are dropped)."""
        def work(cursor: Any) -> list[str]:
            cursor.execute("SHOW TABLES LIKE 'rc\\_%%'")
            return [r[0] for r in cursor.fetchall()]

        return sorted({t for part in self._shards.on_shards(
            dict.fromkeys(range(len(self.shards)), work), write=False).values() for t in part})

    def close(self) -> None:
        self._shards.close()


# ---- row-level changes (the dr-updates stage) ------------------------------------------------
#
# `apply` upserts and deletes single rows of a catalog, guarded by a version per id. Each version
# of a catalog gets a state table ``rc_<name>_v<k>_state`` (id, version, deleted, and on the
# shards the stored position and the positions being written): a change applies only if its
# version is newer than the stored one, and a delete leaves its row there with ``deleted = 1``,
# a tombstone, so an older insert delivered late cannot bring the object back. Rows that a bulk
# load wrote have no state row: any change applies to them. Each state row keeps when it got its
# final value (``changed_at``, UTC); `purge_tombstones` deletes the tombstones older than a grace
# period that must exceed the change topic's retention (the rule is in its docstring).


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What `apply` did: rows written, deletes applied, changes ignored (not newer than stored)."""

    upserted: int = 0
    deleted: int = 0
    ignored: int = 0
    created: bool = False


@dataclass(slots=True)
class _Changes:
    prepared: PreparedBatch
    #: id -> (version, row of ``prepared.table``, or None for a delete)
    by_id: dict[Any, tuple[int, int | None]]
    rows: list[tuple]
    halos: dict[int, list[int]]

    def halo_of(self, row: int) -> list[int]:
        return self.halos.get(row, [])


@dataclass(slots=True)
class _Stored:
    version: int | None
    live: bool
    position: tuple[float, float] | None = None
    pending: list[tuple[float, float]] | None = None

    def positions(self) -> list[tuple[float, float]]:
        """Every place the object's rows may be: where it is, and where a write was going."""
        out = [self.position] if self.position is not None else []
        return out + [p for p in self.pending or () if p not in out]


def _change_columns(schema: pa.Schema, id_col: str, ra_col: str, dec_col: str,
                    version_col: str) -> CatalogColumns:
    if version_col not in schema.names:
        msg = f"the changes have no version column {version_col!r}"
        raise RefCatalogError(msg)
    fields = [f for f in schema if f.name != version_col]
    return plan_columns(pa.schema(fields), id_col, ra_col, dec_col)


def _prepare_changes(upserts: pa.Table, deletes: Iterable[tuple[Any, int]],
                     columns: CatalogColumns, version_col: str, chunker: Chunker,
                     overlap_deg: float) -> _Changes:
    data = upserts.select([n for n in upserts.column_names if n != version_col])
    prepared = prepare_batch(data, columns, chunker, overlap_deg)
    if prepared.skipped:
        msg = (f"{prepared.skipped} upserts have a null id or coordinates that are null, NaN or "
               "out of range: validate changes before applying them")
        raise RefCatalogError(msg)
    deletes = list(deletes)
    versions = upserts.column(version_col).to_pylist()
    ids = prepared.ids.to_pylist()
    as_key = int if columns.id.kind == "int64" else str
    by_id: dict[Any, tuple[int, int | None]] = {}
    for row, (key, version) in enumerate(zip(ids, versions, strict=True)):
        by_id[key] = (_version(version), row)
    for key, version in deletes:
        by_id[as_key(key)] = (_version(version), None)
    if len(by_id) != len(ids) + len(deletes):
        msg = "an id appears more than once in one set of changes: collapse them first"
        raise RefCatalogError(msg)
    rows = list(zip(*(c.to_pylist() for c in prepared.table.columns), strict=True))
    halos: dict[int, list[int]] = {}
    for row, chunk in zip(prepared.overlap_index.tolist(), prepared.overlap_chunk.tolist(),
                          strict=True):
        halos.setdefault(row, []).append(chunk)
    return _Changes(prepared, by_id, rows, halos)


def _version(value: Any) -> int:
    if value is None or int(value) < 0:
        msg = f"a change has no valid version ({value!r})"
        raise RefCatalogError(msg)
    return int(value)


def _halos(chunker: Chunker, positions: list[tuple[float, float]],
           overlap_deg: float) -> list[list[int]]:
    """The halo chunks of each position, as a load computes them."""
    out: list[list[int]] = [[] for _ in positions]
    if not positions or overlap_deg <= 0:
        return out
    ra = np.array([p[0] for p in positions], dtype=np.float64)
    dec = np.array([p[1] for p in positions], dtype=np.float64)
    index, chunks = halo_pairs(chunker, ra, dec, overlap_deg)
    for i, chunk in zip(index.tolist(), chunks.tolist(), strict=True):
        out[i].append(chunk)
    return out


def _batches(values: list[T], size: int = 1000) -> Iterable[list[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@dataclass(slots=True)
class _ShardWrites:
    main_delete: set = field(default_factory=set)
    halo_delete: dict[int, set] = field(default_factory=dict)
    main_insert: list[tuple] = field(default_factory=list)
    halo_insert: list[tuple] = field(default_factory=list)


def _intent_writer(state: str, rows: list[tuple]) -> Callable[[Any], None]:
    def work(cursor: Any) -> None:
        cursor.executemany(
            f"INSERT INTO {state} (id, version, deleted, ra, `dec`, pending) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE pending = VALUES(pending)",
            rows)
    return work


def _data_writer(main: str, halo: str, names: str, part: _ShardWrites) -> Callable[[Any], None]:
    def work(cursor: Any) -> None:
        for keys in _batches(sorted(part.main_delete, key=str)):
            cursor.execute(f"DELETE FROM {main} WHERE id IN ({','.join(['%s'] * len(keys))})",
                           keys)
        for chunk, members in sorted(part.halo_delete.items()):
            for keys in _batches(sorted(members, key=str)):
                cursor.execute(f"DELETE FROM {halo} WHERE chunk_id = %s AND id IN "
                               f"({','.join(['%s'] * len(keys))})", [chunk, *keys])
        if part.main_insert:
            marks = ", ".join(["%s"] * len(part.main_insert[0]))
            cursor.executemany(f"REPLACE INTO {main} ({names}) VALUES ({marks})",
                               part.main_insert)
        if part.halo_insert:
            cursor.executemany(f"REPLACE INTO {halo} (chunk_id, id, hpx29, ra, `dec`) "
                               "VALUES (%s, %s, %s, %s, %s)", part.halo_insert)
    return work


def _director_writer(director: str, state: str, keys: list, directors: list[tuple],
                     states: list[tuple]) -> Callable[[Any], None]:
    def work(cursor: Any) -> None:
        for part in _batches(keys):
            cursor.execute(f"DELETE FROM {director} WHERE id IN ({','.join(['%s'] * len(part))})",
                           part)
        if directors:
            cursor.executemany(f"INSERT INTO {director} (id, chunk_id) VALUES (%s, %s)", directors)
        # Every value a parameter, so that PyMySQL sends one multi-row statement.
        cursor.executemany(f"REPLACE INTO {state} (id, version, deleted, ra, `dec`, pending, "
                           "changed_at) VALUES (%s, %s, %s, %s, %s, %s, %s)", states)
    return work


def _id_value(entry: dict[str, Any], object_id: Any) -> Any:
    kind = dict(map(tuple, entry["columns"]))["id"]
    if kind != "int64":
        return str(object_id)
    try:
        return int(object_id)
    except (TypeError, ValueError):
        return None


def _group_chunk_rows(wanted: list[int], rows: list[tuple]) -> ChunkRows:
    out: ChunkRows = {}
    groups: dict[int, list[tuple]] = {c: [] for c in wanted}
    for row in rows:
        groups.setdefault(int(row[0]), []).append(row)
    for chunk, members in groups.items():
        ids = np.array([r[1] for r in members])
        out[chunk] = (ids, np.array([r[2] for r in members], dtype=np.float64),
                      np.array([r[3] for r in members], dtype=np.float64))
    return out


# ---- embedded: one SQLite file ------------------------------------------------------------

_SQLITE_REGISTRY = """
CREATE TABLE IF NOT EXISTS refcat_registry (
    name TEXT NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL,
    "rows" INTEGER NOT NULL,
    "columns" TEXT NOT NULL,
    overlap_deg REAL NOT NULL,
    loaded_at TEXT NOT NULL,
    status TEXT NOT NULL
)
"""


def _upgrade_sqlite_state(connection: sqlite3.Connection, state: str) -> None:
    """Add ``changed_at`` to a state table made by an earlier release, and the index of the
    tombstones. Existing tombstones get the time of the upgrade (at least that old, so none is
    purged early). Run inside the caller's write transaction."""
    columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{state}")')}
    if "changed_at" not in columns:
        connection.execute(f'ALTER TABLE "{state}" ADD COLUMN changed_at TEXT')
        connection.execute(f'UPDATE "{state}" SET changed_at = ? WHERE deleted = 1',
                           [_sqlite_time(_utc_now())])
    connection.execute(f'CREATE INDEX IF NOT EXISTS "{state}_tombstones" ON "{state}" '
                       "(changed_at) WHERE deleted = 1")


#: One lock per (lock file) in this process: threads wait here rather than poll the file lock.
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(path: Path) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(str(path.resolve()), threading.Lock())


def _lock_holder(path: Path) -> str | None:
    """Who holds a catalog's lock file, as written by the holder (best effort)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        return None
    return f"pid {pid}" if pid.isdigit() else None


def _sqlite_create(main: str, halo: str, columns: CatalogColumns,
                   exists_ok: str = "") -> list[str]:
    """CREATE statements of a version's main and halo tables (``exists_ok``: "IF NOT EXISTS")."""
    id_type = "INTEGER" if columns.id.kind == "int64" else "TEXT"
    data = "".join(f', "{c.name}" {_SQLITE_TYPES[c.kind]}' for c in columns.data)
    return [
        f'CREATE TABLE {exists_ok} "{main}" (chunk_id INTEGER NOT NULL, '
        f'hpx29 INTEGER NOT NULL, id {id_type} NOT NULL PRIMARY KEY, ra REAL NOT NULL, '
        f'"dec" REAL NOT NULL{data})',
        f'CREATE TABLE {exists_ok} "{halo}" (chunk_id INTEGER NOT NULL, '
        f'id {id_type} NOT NULL, hpx29 INTEGER NOT NULL, ra REAL NOT NULL, '
        '"dec" REAL NOT NULL, PRIMARY KEY (chunk_id, id)) WITHOUT ROWID',
    ]


class SQLiteRefCatalogs:
    """Reference catalogs in one SQLite file, with the same versioned tables as the shards.

    The director is the main table's primary key (one file: the id finds the row directly), so
    there is no separate director table. Every batch is one transaction; the registry flip is
    another; a reader runs its version lookup and its query in one read transaction, so under
    WAL it sees one version from start to end.
    """

    #: Seconds `apply`, `drop` and `purge_tombstones` wait for the catalog's lock.
    lock_wait_s = LOCK_WAIT_S

    def __init__(self, path: Path, chunker: Chunker,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> None:
        self.path = Path(path)
        self.chunker = chunker
        self.overlap_deg = float(overlap_deg)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def _lock_path(self, name: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{validate_name(name)}.lock")

    @contextlib.contextmanager
    def _exclusive(self, name: str, wait_s: float) -> Iterator[None]:
        """Hold the catalog's lock for the block (`CatalogBusyError` after ``wait_s`` seconds;
        0 fails at once): a thread lock for this process, then an exclusive ``flock`` on the file
        ``<database>.<name>.lock`` for other processes.

        SQLite's own write lock is no substitute: a load is many write transactions (one per
        batch), and two loads of one catalog would interleave them. The ``flock`` goes with
        the open file, so the kernel releases it when the process dies; the holder writes its
        pid in the file for the message of the one refused.
        """
        path = self._lock_path(name)
        deadline = time.monotonic() + wait_s
        local = _process_lock(path)
        if not local.acquire(timeout=max(wait_s, 0)):
            raise CatalogBusyError(name, f"another thread of this process, pid {os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise CatalogBusyError(name, _lock_holder(path)) from None
                        time.sleep(0.05)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            local.release()

    def _conn(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=60,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SQLITE_REGISTRY)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def setup(self) -> None:
        self._conn()

    def _registry(self, connection: sqlite3.Connection, name: str) -> dict[str, Any] | None:
        row = connection.execute(
            'SELECT version, "rows", "columns", overlap_deg, loaded_at FROM refcat_registry '
            "WHERE name = ? AND status = 'ready'", [name]).fetchone()
        if row is None:
            return None
        return {"version": int(row[0]), "rows": int(row[1]), "columns": json.loads(row[2]),
                "overlap_deg": float(row[3]), "loaded_at": row[4]}

    def _read(self, name: str, query: Callable[[sqlite3.Connection, dict[str, Any]], T]) -> T:
        validate_name(name)
        connection = self._conn()
        connection.execute("BEGIN")
        try:
            entry = self._registry(connection, name)
            if entry is None:
                raise UnknownCatalogError(name)
            return query(connection, entry)
        finally:
            connection.execute("COMMIT")

    def list(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            'SELECT name, "rows", version, loaded_at, "columns", overlap_deg '
            "FROM refcat_registry WHERE status = 'ready' ORDER BY name").fetchall()
        return [{"name": r[0], "rows": int(r[1]), "version": int(r[2]), "loaded_at": r[3],
                 "columns": json.loads(r[4]), "overlap_deg": float(r[5])} for r in rows]

    def describe(self, name: str) -> dict[str, Any]:
        """The registry entry of one catalog; `UnknownCatalogError` if none is loaded."""
        entry = self._registry(self._conn(), validate_name(name))
        if entry is None:
            raise UnknownCatalogError(name)
        return entry

    def _drop_tables(self, connection: sqlite3.Connection, tables: Iterable[str]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for table in tables:
                connection.execute(f'DROP TABLE IF EXISTS "{table}"')
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
             dec_col: str, progress: Progress | None = None) -> LoadReport:
        """As `ShardedRefCatalogs.load`: `CatalogBusyError` at once if the catalog is locked."""
        validate_name(name)
        with self._exclusive(name, 0):
            return self._load(name, batches, id_col, ra_col, dec_col, progress)

    def _load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
              dec_col: str, progress: Progress | None) -> LoadReport:
        started = time.perf_counter()
        first, rest, columns = _plan_input(name, batches, id_col, ra_col, dec_col)
        connection = self._conn()
        current = self._registry(connection, name)
        version = (current["version"] if current else 0) + 1
        main, halo, _ = table_names(name, version)
        self._drop_tables(connection, (main, halo, state_table(name, version)))
        rows = skipped = overlap = 0
        try:
            for statement in _sqlite_create(main, halo, columns):
                connection.execute(statement)
            for one in itertools.chain([first], rest):
                if one.schema.names != first.schema.names:
                    msg = "the input's columns changed between batches"
                    raise RefCatalogError(msg)
                prepared = prepare_batch(one, columns, self.chunker, self.overlap_deg)
                self._insert(connection, main, halo, prepared)
                rows += prepared.rows
                skipped += prepared.skipped
                overlap += len(prepared.overlap_index)
                if progress is not None:
                    progress(one.num_rows)
            connection.execute(f'CREATE INDEX "{main}_chunk_hpx29" ON "{main}" '
                               "(chunk_id, hpx29)")
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                'INSERT INTO refcat_registry (name, version, "rows", "columns", overlap_deg, '
                "loaded_at, status) VALUES (?, ?, ?, ?, ?, ?, 'ready') ON CONFLICT(name) DO "
                'UPDATE SET version = excluded.version, "rows" = excluded."rows", '
                '"columns" = excluded."columns", overlap_deg = excluded.overlap_deg, '
                "loaded_at = excluded.loaded_at, status = excluded.status",
                [name, version, rows, json.dumps(_columns_of(columns)), self.overlap_deg,
                 datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                self._drop_tables(connection, (main, halo))
            raise
        if current is not None:
            with contextlib.suppress(sqlite3.Error):
                self._drop_tables(connection, _sqlite_tables(name, current["version"]))
        return LoadReport(rows=rows, skipped=skipped, overlap_rows=overlap,
                          seconds=time.perf_counter() - started, version=version)

    @staticmethod
    def _insert(connection: sqlite3.Connection, main: str, halo: str,
                prepared: PreparedBatch) -> None:
        table = prepared.table
        names = ", ".join(f'"{c}"' for c in table.column_names)
        marks = ", ".join("?" * table.num_columns)
        columns = [c.to_pylist() for c in table.columns]
        index = prepared.overlap_index
        halo_rows = zip(prepared.overlap_chunk.tolist(),
                        table.column("id").take(pa.array(index)).to_pylist(),
                        prepared.hpx29[index].tolist(), prepared.ra[index].tolist(),
                        prepared.dec[index].tolist(), strict=True)
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(f'INSERT INTO "{main}" ({names}) VALUES ({marks})',
                                   zip(*columns, strict=True))
            connection.executemany(f'INSERT INTO "{halo}" (chunk_id, id, hpx29, ra, "dec") '
                                   "VALUES (?, ?, ?, ?, ?)", halo_rows)
            connection.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            connection.execute("ROLLBACK")
            msg = f"the input holds duplicate ids ({exc})"
            raise RefCatalogError(msg) from exc
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def drop(self, name: str) -> None:
        validate_name(name)
        with self._exclusive(name, self.lock_wait_s):
            connection = self._conn()
            entry = self._registry(connection, name)
            if entry is None:
                raise UnknownCatalogError(name)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM refcat_registry WHERE name = ?", [name])
            connection.execute("COMMIT")
            self._drop_tables(connection, _sqlite_tables(name, entry["version"]))

    def cone(self, name: str, ra: float, dec: float, radius_deg: float,
             limit: int = 1000) -> Rows:
        cover = cone_cover(self.chunker, ra, dec, radius_deg)
        if not cover.chunks:
            return []
        ranges = " OR ".join(["(hpx29 >= ? AND hpx29 < ?)"] * len(cover.ranges))
        args = [*cover.chunks, *(v for pair in cover.ranges for v in pair)]

        def query(connection: sqlite3.Connection, entry: dict[str, Any]) -> list[Row]:
            names = [c[0] for c in entry["columns"]]
            select = ", ".join(f'"{c}"' for c in names)
            table = table_names(name, entry["version"])[0]
            marks = ",".join("?" * len(cover.chunks))
            found = connection.execute(
                f'SELECT {select} FROM "{table}" WHERE chunk_id IN ({marks}) AND ({ranges})',
                args).fetchall()
            return [dict(zip(names, r, strict=True)) for r in found]

        return nearest_rows(self._read(name, query), ra, dec, radius_deg, limit)

    def chunk_rows(self, name: str, chunk_ids: Iterable[int]) -> ChunkRows:
        wanted = sorted({int(c) for c in chunk_ids})

        def query(connection: sqlite3.Connection, entry: dict[str, Any]) -> list[tuple]:
            main, halo, _ = table_names(name, entry["version"])
            if not wanted:
                return []
            marks = ",".join("?" * len(wanted))
            return connection.execute(
                f'SELECT chunk_id, id, ra, "dec" FROM "{main}" WHERE chunk_id IN ({marks}) '
                f'UNION ALL SELECT chunk_id, id, ra, "dec" FROM "{halo}" '
                f"WHERE chunk_id IN ({marks})", [*wanted, *wanted]).fetchall()

        return _group_chunk_rows(wanted, self._read(name, query))

    def get(self, name: str, object_id: Any) -> Row | None:
        def query(connection: sqlite3.Connection, entry: dict[str, Any]) -> Row | None:
            key = _id_value(entry, object_id)
            if key is None:
                return None
            names = [c[0] for c in entry["columns"]]
            select = ", ".join(f'"{c}"' for c in names)
            table = table_names(name, entry["version"])[0]
            row = connection.execute(f'SELECT {select} FROM "{table}" WHERE id = ?',
                                     [key]).fetchone()
            return None if row is None else dict(zip(names, row, strict=True))

        return self._read(name, query)

    # -- row-level changes

    def apply(self, name: str, upserts: pa.Table, deletes: Iterable[tuple[Any, int]] = (), *,
              id_col: str, ra_col: str, dec_col: str,
              version_col: str = "version") -> ApplyReport:
        """Upsert and delete single rows, guarded by versions: as `ShardedRefCatalogs.apply`.

        One file, so the whole call is one transaction: the old main and halo rows (found from
        the stored position), the new rows, the state rows and the registry's row count change
        together or not at all.
        """
        validate_name(name)
        columns = _change_columns(upserts.schema, id_col, ra_col, dec_col, version_col)
        with self._exclusive(name, self.lock_wait_s):
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                report = self._apply(connection, name, columns, upserts, deletes, version_col)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        return report

    def _apply(self, connection: sqlite3.Connection, name: str, columns: CatalogColumns,
               upserts: pa.Table, deletes: Iterable[tuple[Any, int]],
               version_col: str) -> ApplyReport:
        entry = self._registry(connection, name)
        created = entry is None
        main, halo, state = _sqlite_tables(name, entry["version"] if entry else 1)
        if entry is None:
            for statement in _sqlite_create(main, halo, columns, "IF NOT EXISTS"):
                connection.execute(statement)
            connection.execute(f'CREATE INDEX IF NOT EXISTS "{main}_chunk_hpx29" ON "{main}" '
                               "(chunk_id, hpx29)")
            connection.execute(
                'INSERT INTO refcat_registry (name, version, "rows", "columns", overlap_deg, '
                "loaded_at, status) VALUES (?, 1, 0, ?, ?, ?, 'ready')",
                [name, json.dumps(_columns_of(columns)), self.overlap_deg,
                 datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")])
            entry = self._registry(connection, name)
            assert entry is not None
        if entry["columns"] != _columns_of(columns):
            msg = (f"catalog {name!r} has the columns {entry['columns']}, the changes "
                   f"{_columns_of(columns)}")
            raise RefCatalogError(msg)
        id_type = "INTEGER" if columns.id.kind == "int64" else "TEXT"
        connection.execute(f'CREATE TABLE IF NOT EXISTS "{state}" (id {id_type} NOT NULL '
                           "PRIMARY KEY, version INTEGER, deleted INTEGER NOT NULL, "
                           "changed_at TEXT)")
        _upgrade_sqlite_state(connection, state)
        changes = _prepare_changes(upserts, deletes, columns, version_col, self.chunker,
                                   entry["overlap_deg"])
        keys = list(changes.by_id)
        versions: dict[Any, int | None] = {}
        positions: dict[Any, tuple[float, float]] = {}
        for part in _batches(keys, 500):
            marks = ",".join("?" * len(part))
            versions.update(connection.execute(
                f'SELECT id, version FROM "{state}" WHERE id IN ({marks})', part).fetchall())
            positions.update((r[0], (r[1], r[2])) for r in connection.execute(
                f'SELECT id, ra, "dec" FROM "{main}" WHERE id IN ({marks})', part).fetchall())
        applicable = {key: change for key, change in changes.by_id.items()
                      if (known := versions.get(key)) is None or change[0] > known}
        if not applicable:
            return ApplyReport(ignored=len(keys), created=created)
        gone = [key for key in applicable if key in positions]
        halos = _halos(self.chunker, [positions[key] for key in gone], entry["overlap_deg"])
        connection.executemany(f'DELETE FROM "{main}" WHERE id = ?', [(k,) for k in gone])
        connection.executemany(f'DELETE FROM "{halo}" WHERE chunk_id = ? AND id = ?',
                               [(c, k) for k, cs in zip(gone, halos, strict=True) for c in cs])
        prepared = changes.prepared
        names = ", ".join(f'"{c}"' for c in prepared.table.column_names)
        marks = ", ".join("?" * prepared.table.num_columns)
        new_rows = [row for _, row in applicable.values() if row is not None]
        connection.executemany(f'INSERT INTO "{main}" ({names}) VALUES ({marks})',
                               [changes.rows[row] for row in new_rows])
        connection.executemany(
            f'INSERT INTO "{halo}" (chunk_id, id, hpx29, ra, "dec") VALUES (?, ?, ?, ?, ?)',
            [(c, changes.rows[row][2], int(prepared.hpx29[row]), float(prepared.ra[row]),
              float(prepared.dec[row])) for row in new_rows for c in changes.halo_of(row)])
        now = _sqlite_time(_utc_now())
        connection.executemany(
            f'INSERT OR REPLACE INTO "{state}" (id, version, deleted, changed_at) '
            "VALUES (?, ?, ?, ?)",
            [(key, version, int(row is None), now)
             for key, (version, row) in applicable.items()])
        connection.execute('UPDATE refcat_registry SET "rows" = "rows" + ? WHERE name = ?',
                           [len(new_rows) - len(gone), name])
        return ApplyReport(upserted=len(new_rows), deleted=len(applicable) - len(new_rows),
                           ignored=len(keys) - len(applicable), created=created)

    def purge_tombstones(self, name: str, older_than_s: float) -> int:
        """Delete the tombstones older than ``older_than_s``: as
        `ShardedRefCatalogs.purge_tombstones`, whose docstring gives the rule for the grace."""
        validate_name(name)
        cutoff = _sqlite_time(_cutoff(older_than_s))
        with self._exclusive(name, self.lock_wait_s):
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                entry = self._registry(connection, name)
                if entry is None:
                    raise UnknownCatalogError(name)
                state = state_table(name, entry["version"])
                removed = 0
                if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                      "name = ?", [state]).fetchone():
                    _upgrade_sqlite_state(connection, state)
                    removed = connection.execute(
                        f'DELETE FROM "{state}" WHERE deleted = 1 AND changed_at < ?',
                        [cutoff]).rowcount
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        return removed

    def tables(self) -> Names:
        rows = self._conn().execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rc\\_%' "
            "ESCAPE '\\'").fetchall()
        return sorted(r[0] for r in rows)

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                with contextlib.suppress(Exception):
                    connection.close()
            self._all.clear()
        self._local = threading.local()


# ---- inputs and construction ----------------------------------------------------------------


class _CountingReader:
    """A binary file that counts the bytes read from it (progress of a streamed CSV)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.bytes_read = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()
        self.closed = True


@dataclass
class CatalogInput:
    """Record batches of a Parquet or CSV file, and how far through the file they are.

    ``total`` and ``position()`` are rows for Parquet (from the file metadata) and bytes for CSV
    (streamed, so the row count is not known in advance); ``unit`` says which.
    """

    batches: Iterable[pa.RecordBatch]
    total: int
    unit: str
    position: Callable[[], int]
    close: Callable[[], None]


def open_catalog_file(path: Path, batch_rows: int = 100_000) -> CatalogInput:
    """Stream a Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``) file as batches."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - only the loader needs it

    path = Path(path)
    if not path.is_file():
        msg = f"{path} is not a file"
        raise RefCatalogError(msg)
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            parquet = pq.ParquetFile(path)
            done = [0]

            def parquet_batches() -> Iterable[pa.RecordBatch]:
                for batch in parquet.iter_batches(batch_size=batch_rows):
                    yield batch
                    done[0] += batch.num_rows

            return CatalogInput(parquet_batches(), parquet.metadata.num_rows, "rows",
                                lambda: done[0], parquet.close)
        if path.suffix.lower() == ".csv" or suffix == ".csv.gz":
            if suffix == ".csv.gz":
                source: Any = pa.CompressedInputStream(pa.OSFile(str(path)), "gzip")
                counter = None
            else:
                counter = _CountingReader(path)
                source = counter
            # Column types are inferred from the first block: a large one makes a late
            # "-135.7" in a column of integers far less likely to end the load.
            reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(
                block_size=max(32 << 20, batch_rows * 200)))
            size = path.stat().st_size

            def csv_batches() -> Iterable[pa.RecordBatch]:
                for block in reader:
                    for start in range(0, block.num_rows, batch_rows):
                        yield block.slice(start, batch_rows)

            return CatalogInput(csv_batches(), size, "bytes",
                                (lambda: counter.bytes_read) if counter else (lambda: 0),
                                source.close)
    except (pa.ArrowException, OSError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise RefCatalogError(msg) from exc
    msg = f"{path}: unknown format (give a .parquet or .csv file)"
    raise RefCatalogError(msg)


def open_reference_catalogs(settings: Any, chunker: Chunker,
                            overlap_deg: float = DEFAULT_OVERLAP_DEG) -> Any:
    """The reference catalogs of the configured backend (SQLite file or MariaDB shards)."""
    from broker.config import Backend  # noqa: PLC0415

    if settings.backend is Backend.embedded:
        return SQLiteRefCatalogs(settings.embedded_path / "archive.sqlite3", chunker, overlap_deg)
    return ShardedRefCatalogs(ShardSet.from_settings(settings), chunker, overlap_deg)
