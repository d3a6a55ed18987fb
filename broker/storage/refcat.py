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
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
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
    nearest_rows,
    plan_columns,
    prepare_batch,
    validate_name,
)
from broker.domain.sky import Chunker, ChunkPlacement, cone_cover
from broker.exceptions import LannerError, ServiceUnavailableError
from broker.storage.mariadb import ShardSet

T = TypeVar("T")

Row = dict[str, Any]
#: Return types of methods of classes that define ``list`` (which hides the builtin there).
Rows = list[Row]
Names = list[str]
ChunkRows = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
Progress = Callable[[int], None]

_SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "sql" / "mariadb_refcat.sql"
_MYSQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "text": "TEXT", "bool": "TINYINT"}
_SQLITE_TYPES = {"int64": "INTEGER", "float64": "REAL", "text": "TEXT", "bool": "INTEGER"}
_NO_SUCH_TABLE = 1146
_RETRIES = 5


class RefCatalogError(LannerError):
    """A reference catalog cannot be loaded or read as asked."""

    reason = "refcat"


class UnknownCatalogError(RefCatalogError):
    """No catalog of that name is loaded."""

    reason = "unknown_catalog"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no reference catalog named {name!r} is loaded")


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


def _columns_of(prepared_columns: CatalogColumns) -> list[list[str]]:
    return [[n, k] for n, k in prepared_columns.stored]


def _first_batch(batches: Iterable[pa.RecordBatch]) -> tuple[pa.RecordBatch | None, Any]:
    iterator = iter(batches)
    for batch in iterator:
        return batch, iterator
    return None, iterator


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

    def __init__(self, shards: ShardSet, chunker: Chunker,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> None:
        self.shards = shards
        self.chunker = chunker
        self.overlap_deg = float(overlap_deg)
        self.placement = ChunkPlacement(len(shards))
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(shards)),
                                        thread_name_prefix="refcat")
        self._ready = False

    # -- connections

    def _conn(self, shard: int) -> Connection:
        cache: dict[int, Connection] | None = getattr(self._local, "connections", None)
        if cache is None:
            cache = {}
            self._local.connections = cache
        connection = cache.get(shard)
        if connection is not None:
            try:
                connection.ping(reconnect=False)
                return connection
            except pymysql.err.Error:
                cache.pop(shard, None)
        connection = self.shards.connect(shard)
        cache[shard] = connection
        return connection

    def _drop_conn(self, shard: int) -> None:
        connection = getattr(self._local, "connections", {}).pop(shard, None)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _unavailable(self, shard: int, exc: Exception) -> ServiceUnavailableError:
        host, port = self.shards.addresses[shard]
        return ServiceUnavailableError(f"MariaDB shard {shard} at {host}:{port} failed: {exc}")

    def _run(self, shard: int, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` on a shard and commit; a dead shard is a transient error."""
        try:
            connection = self._conn(shard)
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
            self._drop_conn(shard)
            raise self._unavailable(shard, exc) from exc

    def _on_shards(self, work: Mapping[int, Callable[[Any], T]]) -> dict[int, T]:
        futures = {shard: self._pool.submit(self._run, shard, fn) for shard, fn in work.items()}
        results, error = {}, None
        for shard, future in futures.items():
            try:
                results[shard] = future.result()
            except BaseException as exc:  # wait for every shard before raising the first error
                error = error or exc
        if error is not None:
            raise error
        return results

    def _all_shards(self, fn: Callable[[Any], T]) -> dict[int, T]:
        return self._on_shards(dict.fromkeys(range(len(self.shards)), fn))

    # -- setup and registry

    def setup(self) -> None:
        """Create the database on every shard and the registry on shard 0 (idempotent)."""
        if self._ready:
            return
        self.shards.ensure_database()
        self._run(0, lambda cursor: cursor.execute(_DDL["registry"]))
        self._ready = True

    def _registry(self, name: str) -> dict[str, Any] | None:
        def work(cursor: Any) -> tuple | None:
            cursor.execute("SELECT version, `rows`, `columns`, overlap_deg, loaded_at "
                           "FROM refcat_registry WHERE name = %s AND status = 'ready'", [name])
            return cursor.fetchone()

        try:
            row = self._run(0, work)
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] == _NO_SUCH_TABLE:
                return None
            raise
        if row is None:
            return None
        return {"version": int(row[0]), "rows": int(row[1]), "columns": json.loads(row[2]),
                "overlap_deg": float(row[3]), "loaded_at": row[4]}

    def _current(self, name: str) -> dict[str, Any]:
        self.setup()
        entry = self._registry(validate_name(name))
        if entry is None:
            raise UnknownCatalogError(name)
        return entry

    def _read(self, name: str, query: Callable[[dict[str, Any]], T]) -> T:
        """Run a read against the current version, resolving again if it was just replaced."""
        for attempt in range(_RETRIES):
            entry = self._current(name)
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
        rows = self._run(0, work)
        return [{"name": r[0], "rows": int(r[1]), "version": int(r[2]), "loaded_at": r[3],
                 "columns": json.loads(r[4]), "overlap_deg": float(r[5])} for r in rows]

    # -- load

    def _drop_tables(self, tables: Iterable[str]) -> None:
        names = ", ".join(_q(t) for t in tables)
        self._all_shards(lambda cursor: cursor.execute(f"DROP TABLE IF EXISTS {names}"))

    def load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
             dec_col: str, progress: Progress | None = None) -> LoadReport:
        """Load a catalog from record batches, replacing any loaded version atomically."""
        validate_name(name)
        started = time.perf_counter()
        first, rest = _first_batch(batches)
        if first is None:
            msg = f"the input of catalog {name!r} holds no rows"
            raise RefCatalogError(msg)
        columns = plan_columns(first.schema, id_col, ra_col, dec_col)
        self.setup()
        current = self._registry(name)
        version = (current["version"] if current else 0) + 1
        tables = table_names(name, version)
        self._drop_tables(tables)  # left over by a load that died without cleaning up
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
            with contextlib.suppress(LannerError, pymysql.err.Error):
                self._drop_tables(table_names(name, current["version"]))
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
        """Forget a catalog and drop its tables."""
        entry = self._current(name)
        self._run(0, lambda cursor: cursor.execute(
            "DELETE FROM refcat_registry WHERE name = %s", [name]))
        self._drop_tables(table_names(name, entry["version"]))

    # -- reads

    def cone(self, name: str, ra: float, dec: float, radius_deg: float,
             limit: int = 1000) -> Rows:
        """Rows within ``radius_deg`` of (ra, dec), nearest first, with ``distance_arcsec``."""
        cover = cone_cover(self.chunker, ra, dec, radius_deg)
        by_shard: dict[int, list[int]] = {}
        for chunk in cover.chunks:
            by_shard.setdefault(self.placement.shard_of(chunk), []).append(chunk)
        ranges = " OR ".join(["(hpx29 >= %s AND hpx29 < %s)"] * len(cover.ranges))
        range_args = [v for pair in cover.ranges for v in pair]

        def query(entry: dict[str, Any]) -> list[Row]:
            names = [c[0] for c in entry["columns"]]
            select = ", ".join(_q(c) for c in names)
            table = _q(table_names(name, entry["version"])[0])

            def on(chunks: list[int]) -> Callable[[Any], list[tuple]]:
                def work(cursor: Any) -> list[tuple]:
                    marks = ",".join(["%s"] * len(chunks))
                    cursor.execute(f"SELECT {select} FROM {table} WHERE chunk_id IN ({marks}) "
                                   f"AND ({ranges})", [*chunks, *range_args])
                    return list(cursor.fetchall())
                return work

            found = self._on_shards({s: on(chunks) for s, chunks in by_shard.items()})
            return [dict(zip(names, r, strict=True)) for part in found.values() for r in part]

        rows = self._read(name, query)
        return nearest_rows(rows, ra, dec, radius_deg, limit)

    def chunk_rows(self, name: str, chunk_ids: Iterable[int]) -> ChunkRows:
        """Ids and positions of the rows of each chunk and of its halo (one query per shard)."""
        wanted = sorted({int(c) for c in chunk_ids})
        by_shard: dict[int, list[int]] = {}
        for chunk in wanted:
            by_shard.setdefault(self.placement.shard_of(chunk), []).append(chunk)

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

            found = self._on_shards({s: on(chunks) for s, chunks in by_shard.items()})
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

            chunk = self._run(shard, locate)
            if chunk is None:
                return None
            names = [c[0] for c in entry["columns"]]
            select = ", ".join(_q(c) for c in names)

            def fetch(cursor: Any) -> tuple | None:
                cursor.execute(f"SELECT {select} FROM {_q(main)} WHERE id = %s", [key])
                return cursor.fetchone()

            row = self._run(self.placement.shard_of(chunk), fetch)
            return None if row is None else dict(zip(names, row, strict=True))

        return self._read(name, query)

    def tables(self) -> Names:
        """Every ``rc_*`` table on any shard (tests check that old versions are dropped)."""
        def work(cursor: Any) -> list[str]:
            cursor.execute("SHOW TABLES LIKE 'rc\\_%%'")
            return [r[0] for r in cursor.fetchall()]

        return sorted({t for part in self._all_shards(work).values() for t in part})

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for connection in getattr(self._local, "connections", {}).values():
            with contextlib.suppress(Exception):
                connection.close()


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


class SQLiteRefCatalogs:
    """Reference catalogs in one SQLite file, with the same versioned tables as the shards.

    The director is the main table's primary key (one file: the id finds the row directly), so
    there is no separate director table. Every batch is one transaction; the registry flip is
    another; a reader runs its version lookup and its query in one read transaction, so under
    WAL it sees one version from start to end.
    """

    def __init__(self, path: Path, chunker: Chunker,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> None:
        self.path = Path(path)
        self.chunker = chunker
        self.overlap_deg = float(overlap_deg)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

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
        validate_name(name)
        started = time.perf_counter()
        first, rest = _first_batch(batches)
        if first is None:
            msg = f"the input of catalog {name!r} holds no rows"
            raise RefCatalogError(msg)
        columns = plan_columns(first.schema, id_col, ra_col, dec_col)
        connection = self._conn()
        current = self._registry(connection, name)
        version = (current["version"] if current else 0) + 1
        main, halo, _ = table_names(name, version)
        self._drop_tables(connection, (main, halo))
        rows = skipped = overlap = 0
        try:
            id_type = "INTEGER" if columns.id.kind == "int64" else "TEXT"
            data = "".join(f', "{c.name}" {_SQLITE_TYPES[c.kind]}' for c in columns.data)
            connection.execute(
                f'CREATE TABLE "{main}" (chunk_id INTEGER NOT NULL, hpx29 INTEGER NOT NULL, '
                f'id {id_type} NOT NULL PRIMARY KEY, ra REAL NOT NULL, "dec" REAL NOT NULL'
                f"{data})")
            connection.execute(
                f'CREATE TABLE "{halo}" (chunk_id INTEGER NOT NULL, id {id_type} NOT NULL, '
                'hpx29 INTEGER NOT NULL, ra REAL NOT NULL, "dec" REAL NOT NULL, '
                "PRIMARY KEY (chunk_id, id)) WITHOUT ROWID")
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
                self._drop_tables(connection, table_names(name, current["version"])[:2])
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
        connection = self._conn()
        entry = self._registry(connection, name)
        if entry is None:
            raise UnknownCatalogError(name)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("DELETE FROM refcat_registry WHERE name = ?", [name])
        connection.execute("COMMIT")
        self._drop_tables(connection, table_names(name, entry["version"])[:2])

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
