"""What differs between the SQL backends, and nothing else: MariaDB and SQLite.

Every store writes its statements once, in the SQL both backends accept (``%s`` parameters,
backquoted identifiers, window functions, ``CASE``), and asks its shard set's `Dialect` for the
few things that cannot be written once:

- an insert that skips existing keys (``INSERT IGNORE`` / ``INSERT OR IGNORE``);
- an upsert (``ON DUPLICATE KEY UPDATE`` with ``VALUES(c)`` / ``ON CONFLICT DO UPDATE`` with
  ``excluded.c``). MariaDB applies the assignments left to right with the values already
  updated, SQLite with the old ones: callers put every column that a condition reads last;
- a bulk load (``LOAD DATA LOCAL INFILE`` of tab-separated text written by pyarrow / batched
  ``executemany``) and the MyISAM key switch around it;
- a row lock inside a write (``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already excludes
  every other writer);
- listing and dropping tables, telling a missing table from other errors;
- a catalog's exclusive lock (a MariaDB named lock on shard 0 / ``flock`` on a file);
- DDL, compiled from the felis metadata by SQLAlchemy (`broker.storage.schema`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pymysql
from sqlalchemy import Table
from sqlalchemy.dialects import mysql as sa_mysql
from sqlalchemy.dialects import sqlite as sa_sqlite
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.schema import CreateColumn

from broker.domain.catalogs import validate_name
from broker.exceptions import CatalogBusyError
from broker.storage import schema

_NO_SUCH_TABLE = 1146
#: MariaDB's limit on the length of a GET_LOCK name.
_LOCK_NAME_MAX = 64
#: A named lock is held by its session: this session may sit idle for as long as a load runs.
_LOCK_SESSION_TIMEOUT_S = 31_536_000


def q(identifier: str) -> str:
    """A validated identifier in backquotes (both backends accept them)."""
    return f"`{identifier}`"


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(q(c) for c in columns)


def marks(n: int) -> str:
    return ", ".join(["%s"] * n)


Lock = contextlib.AbstractContextManager[None]


class Dialect(ABC):
    """The SQL that differs between backends (see the module docstring)."""

    name: str
    sqlalchemy: SADialect
    #: Appended to a SELECT that must lock the rows it reads inside a write.
    for_update: str

    # -- DDL

    def create_statements(self, table: Table) -> list[str]:
        """CREATE TABLE / INDEX IF NOT EXISTS of a felis table (or a refcat instance)."""
        return schema.create_statements(table, self.sqlalchemy)

    def add_missing_columns(self, cursor: Any, table: Table) -> list[str]:
        """Add to an existing table the columns the felis description has gained since it was
        made (with their defaults); the names added. Both backends accept
        ``ALTER TABLE ... ADD COLUMN`` of one compiled column."""
        cursor.execute(f"SELECT * FROM {q(table.name)} WHERE 1 = 0")
        present = {d[0] for d in cursor.description}
        added = []
        for column in table.columns:
            if column.name not in present:
                spec = str(CreateColumn(column).compile(dialect=self.sqlalchemy)).strip()
                cursor.execute(f"ALTER TABLE {q(table.name)} ADD COLUMN {spec}")
                added.append(column.name)
        return added

    @abstractmethod
    def drop_tables(self, cursor: Any, tables: Sequence[str]) -> None:
        """Drop tables if they exist."""

    @abstractmethod
    def list_tables(self, cursor: Any, prefix: str) -> list[str]:
        """The tables whose name starts with ``prefix`` (a plain identifier)."""

    @abstractmethod
    def is_missing_table(self, exc: BaseException) -> bool:
        """True if ``exc`` says a table does not exist."""

    # -- writes

    #: The verb of an insert that skips rows whose key exists.
    insert_ignore_verb: str

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """INSERT of one row per parameter tuple that skips rows whose key exists."""
        return (f"{self.insert_ignore_verb} INTO {q(table)} ({column_list(columns)}) "
                f"VALUES ({marks(len(columns))})")

    @abstractmethod
    def new(self, column: str) -> str:
        """The value an upsert proposes for ``column`` (in its update assignments)."""

    @abstractmethod
    def on_conflict(self, key: Sequence[str], sets: str) -> str:
        """The clause of an upsert that applies the assignments ``sets`` on a key conflict."""

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str],
               updates: Sequence[tuple[str, str]]) -> str:
        """INSERT of one row per parameter tuple; on a key conflict, the ``(column, expr)``
        assignments instead (expressions use `new` for the proposed values)."""
        sets = ", ".join(f"{q(c)} = {e}" for c, e in updates)
        return (f"INSERT INTO {q(table)} ({column_list(columns)}) VALUES "
                f"({marks(len(columns))}) {self.on_conflict(key, sets)}")

    def newer(self, column: str) -> str:
        """``column`` := the proposed value when it is not null and greater (or the old one
        is null); otherwise unchanged."""
        new = self.new(column)
        return (f"CASE WHEN {new} IS NOT NULL AND ({q(column)} IS NULL OR {new} > {q(column)}) "
                f"THEN {new} ELSE {q(column)} END")

    @abstractmethod
    def bulk_insert(self, cursor: Any, table: str, columns: Sequence[str],
                    rows: pa.Table, folder: str) -> int:
        """Insert the rows of ``rows`` (whose columns are ``columns``, in order) into a table,
        skipping any whose key is stored already (a temporary file may go in ``folder``); the
        number stored."""

    def disable_keys(self, cursor: Any, table: str) -> None:  # noqa: B027 - optional hook
        """Stop maintaining non-unique keys during a bulk load (MyISAM only)."""

    def enable_keys(self, cursor: Any, table: str) -> None:  # noqa: B027 - optional hook
        """Rebuild the keys after a bulk load."""

    @abstractmethod
    def time_value(self, moment: datetime) -> Any:
        """A UTC time as the backend stores it."""

    @abstractmethod
    def upgrade_state(self, cursor: Any, state: str, now: datetime) -> None:
        """Bring a reference catalog's state table made before ``changed_at`` existed up to
        date (a no-op afterwards). Its tombstones get the time of the upgrade: they are at
        least that old, so a purge's grace counts from there and none goes early. Rows with
        pending positions are left alone (the apply that wrote them sets the time)."""

    # -- the catalog lock

    @abstractmethod
    def catalog_lock(self, shards: Any, name: str, wait_s: float) -> Lock:
        """Hold catalog ``name``'s exclusive lock for a block (`CatalogBusyError` after
        ``wait_s`` seconds)."""


class MariaDBDialect(Dialect):
    name = "mariadb"
    insert_ignore_verb = "INSERT IGNORE"
    sqlalchemy = sa_mysql.dialect()
    for_update = " FOR UPDATE"

    _LOAD_SQL = ("LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4 "
                 "FIELDS TERMINATED BY '\\t' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
                 "LINES TERMINATED BY '\\n' ({columns})")
    _TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="needed",
                              null_string="NULL", batch_size=65536)

    def drop_tables(self, cursor: Any, tables: Sequence[str]) -> None:
        if tables:
            cursor.execute(f"DROP TABLE IF EXISTS {column_list(tables)}")

    def list_tables(self, cursor: Any, prefix: str) -> list[str]:
        escaped = prefix.replace("_", "\\_")
        cursor.execute("SHOW TABLES LIKE %s", [f"{escaped}%"])
        return [r[0] for r in cursor.fetchall()]

    def is_missing_table(self, exc: BaseException) -> bool:
        return (isinstance(exc, pymysql.err.ProgrammingError) and bool(exc.args)
                and exc.args[0] == _NO_SUCH_TABLE)

    def new(self, column: str) -> str:
        return f"VALUES({q(column)})"

    def on_conflict(self, key: Sequence[str], sets: str) -> str:
        return f"ON DUPLICATE KEY UPDATE {sets}"

    def bulk_insert(self, cursor: Any, table: str, columns: Sequence[str],
                    rows: pa.Table, folder: str) -> int:
        # LOAD DATA of pyarrow's TSV is several times faster than multi-row INSERTs: the
        # text is written by Arrow's C++ writer and parsed by the server, with no Python per row.
        if rows.num_rows == 0:
            return 0
        path = os.path.join(folder, f"{table}-{threading.get_ident()}.tsv")
        pacsv.write_csv(rows, path, write_options=self._TSV)
        try:
            return int(cursor.execute(
                self._LOAD_SQL.format(table=q(table), columns=column_list(columns)), [path]))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def disable_keys(self, cursor: Any, table: str) -> None:
        cursor.execute(f"ALTER TABLE {q(table)} DISABLE KEYS")

    def enable_keys(self, cursor: Any, table: str) -> None:
        cursor.execute(f"ALTER TABLE {q(table)} ENABLE KEYS")

    def time_value(self, moment: datetime) -> Any:
        return moment.replace(tzinfo=None)

    def upgrade_state(self, cursor: Any, state: str, now: datetime) -> None:
        cursor.execute(f"ALTER TABLE {q(state)} ADD COLUMN IF NOT EXISTS changed_at "
                       f"DATETIME(6) NULL, ADD INDEX IF NOT EXISTS {q(state + '_tombstones')} "
                       "(deleted, changed_at)")
        cursor.execute(f"UPDATE {q(state)} SET changed_at = %s "
                       "WHERE deleted = 1 AND changed_at IS NULL AND pending IS NULL",
                       [self.time_value(now)])

    def catalog_lock(self, shards: Any, name: str, wait_s: float) -> Lock:
        return _named_lock(shards, name, wait_s)


def catalog_lock_name(database: str, name: str) -> str:
    """The MariaDB lock name of a catalog: named locks are server-wide, so the database is part
    of it; a name longer than MariaDB's 64 characters is hashed."""
    lock = f"lanner_refcat.{database}.{validate_name(name)}"
    if len(lock) <= _LOCK_NAME_MAX:
        return lock
    return f"lanner_refcat.{hashlib.sha256(f'{database}.{name}'.encode()).hexdigest()[:48]}"


@contextlib.contextmanager
def _named_lock(shards: Any, name: str, wait_s: float) -> Iterator[None]:
    """A MariaDB named lock on shard 0, held by a connection of its own for the block."""
    lock = catalog_lock_name(shards.database, name)
    connection = shards.connect(0)
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
            raise shards.unavailable(0, exc) from exc
        try:
            yield
        finally:
            with contextlib.suppress(pymysql.err.Error), connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [lock])
    finally:
        with contextlib.suppress(Exception):
            connection.close()


class SQLiteDialect(Dialect):
    name = "sqlite"
    insert_ignore_verb = "INSERT OR IGNORE"
    sqlalchemy = sa_sqlite.dialect()
    for_update = ""

    def drop_tables(self, cursor: Any, tables: Sequence[str]) -> None:
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {q(table)}")

    def list_tables(self, cursor: Any, prefix: str) -> list[str]:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                       "AND substr(name, 1, %s) = %s", [len(prefix), prefix])
        return [r[0] for r in cursor.fetchall()]

    def is_missing_table(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table")

    def new(self, column: str) -> str:
        return f"excluded.{q(column)}"

    def on_conflict(self, key: Sequence[str], sets: str) -> str:
        return f"ON CONFLICT ({column_list(key)}) DO UPDATE SET {sets}"

    def bulk_insert(self, cursor: Any, table: str, columns: Sequence[str],
                    rows: pa.Table, folder: str) -> int:
        sql = self.insert_ignore(table, columns)
        stored = 0
        for batch in rows.to_batches(max_chunksize=50_000):
            cursor.executemany(sql, zip(*(c.to_pylist() for c in batch.columns), strict=True))
            stored += max(cursor.rowcount, 0)
        return stored

    def time_value(self, moment: datetime) -> Any:
        # Fixed-width ISO text, so that SQLite compares times as text in time order.
        return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def upgrade_state(self, cursor: Any, state: str, now: datetime) -> None:
        cursor.execute(f"PRAGMA table_info({q(state)})")
        if "changed_at" not in {row[1] for row in cursor.fetchall()}:
            cursor.execute(f"ALTER TABLE {q(state)} ADD COLUMN changed_at TIMESTAMP")
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {q(state + '_tombstones')} ON {q(state)} "
                       "(deleted, changed_at)")
        cursor.execute(f"UPDATE {q(state)} SET changed_at = %s "
                       "WHERE deleted = 1 AND changed_at IS NULL AND pending IS NULL",
                       [self.time_value(now)])

    def catalog_lock(self, shards: Any, name: str, wait_s: float) -> Lock:
        return _file_lock(Path(shards.folder) / f"refcat.{validate_name(name)}.lock", name, wait_s)


_PROCESS_LOCKS_GUARD = threading.Lock()
_PROCESS_LOCKS: dict[Path, threading.Lock] = {}


def _process_lock(path: Path) -> threading.Lock:
    # flock is per open file, so two threads of one process would both get it: a thread lock
    # per path serialises them first.
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(path.resolve(), threading.Lock())


def _lock_holder(path: Path) -> str | None:
    """Who holds a catalog's lock file, as written by the holder (best effort)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        return None
    return f"pid {pid}" if pid.isdigit() else None


@contextlib.contextmanager
def _file_lock(path: Path, name: str, wait_s: float) -> Iterator[None]:
    """A thread lock for this process, then an exclusive ``flock`` on ``path`` for other
    processes (`CatalogBusyError` after ``wait_s`` seconds; 0 fails at once).

    SQLite's own write lock is no substitute: a load is many write transactions (one per
    batch), and two loads of one catalog would interleave them. The ``flock`` goes with the
    open file, so the kernel releases it when the process dies; the holder writes its pid in
    the file for the message of the one refused.
    """
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


_PYFORMAT = re.compile(r"%[s%]")


def qmark(sql: str) -> str:
    """``%s`` parameters (PyMySQL's style, the stores' one style) as SQLite's ``?``."""
    return _PYFORMAT.sub(lambda m: "?" if m.group(0) == "%s" else "%", sql)


