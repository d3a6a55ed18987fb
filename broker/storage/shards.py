"""Shard sets: the SQL databases a chunked store is spread over, addressed by index.

A store (the object catalog, the reference catalogs) is written once against `ShardSet`: it
asks for work to be run on one shard (`run`) or on several in parallel (`on_shards`) and gets a
DB-API cursor that takes ``%s`` parameters. Two kinds exist:

- `MariaDBShards`: N MariaDB servers (one database on each), through PyMySQL.
- `SQLiteShards`: N SQLite files in one folder (embedded mode). One file is a complete archive;
  several make the embedded mode scatter and gather exactly as the servers do.

Both run a read (``write=False``) as plain statements on an autocommit connection (no
transaction, no COMMIT round trip) and a write inside one transaction (MariaDB ``BEGIN``,
SQLite ``BEGIN IMMEDIATE``), rolled back on error. Each thread has its own connection per
shard. A shard that does not answer is a `ServiceUnavailableError` naming it.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import pymysql
from pymysql.connections import Connection

from broker.config import Settings
from broker.exceptions import ServiceUnavailableError, StatementTimeoutError
from broker.storage.dialect import Dialect, MariaDBDialect, SQLiteDialect, qmark

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

#: Seconds a SQLite connection waits for another connection's write lock.
BUSY_TIMEOUT_S = 30.0


class ShardSet(ABC):
    """N SQL databases holding the chunks, with a connection per shard and thread."""

    dialect: Dialect

    def __init__(self, count: int, *, name: str) -> None:
        if count < 1:
            msg = "at least one shard is needed"
            raise ValueError(msg)
        self.count = count
        self._name = name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Any] = []
        self._generation = 0
        self.pool = ThreadPoolExecutor(max_workers=max(2, count), thread_name_prefix=name)

    def __len__(self) -> int:
        return self.count

    # -- what a kind of shard provides

    @abstractmethod
    def open(self, shard: int) -> Any:
        """A new autocommit connection to a shard (`ServiceUnavailableError` if it fails)."""

    @abstractmethod
    def where(self, shard: int) -> str:
        """The shard's address or file, for messages."""

    @abstractmethod
    def failed(self, exc: BaseException) -> bool:
        """True for an error that means the shard failed (rather than the statement)."""

    @abstractmethod
    def lost(self, exc: BaseException) -> bool:
        """True for the error of a connection the server has closed (worth one retry)."""

    @abstractmethod
    def begin(self, connection: Any) -> None:
        """Start a write transaction."""

    @abstractmethod
    def cursor(self, connection: Any) -> contextlib.AbstractContextManager[Any]:
        """A cursor taking ``%s`` parameters."""

    @abstractmethod
    def query(self, cursor: Any, sql: str, *,
              seconds: float | None = None) -> tuple[list[str], list[tuple]]:
        """A read's column names and rows, stopped by the database (`StatementTimeoutError`)
        once it has run ``seconds`` (None: no limit)."""

    @abstractmethod
    def ensure_database(self) -> None:
        """Create the database on every shard if missing."""

    @abstractmethod
    def drop_database(self) -> None:
        """Drop everything on every shard (tests and benchmarks clean up with it)."""

    # -- running work

    def connection(self, shard: int) -> Any:
        """This thread's connection to a shard (opened on first use, and again after
        `reset`)."""
        cache: dict[int, Any] | None = getattr(self._local, "connections", None)
        if cache is None or getattr(self._local, "generation", None) != self._generation:
            cache = {}
            self._local.connections = cache
            self._local.generation = self._generation
        connection = cache.get(shard)
        if connection is None:
            connection = self.open(shard)
            cache[shard] = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def reset(self) -> None:
        """Close every thread's connections (after the databases were dropped under them); each
        thread opens new ones on its next use. Not while work is running."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._generation += 1
        for connection in opened:
            with contextlib.suppress(Exception):
                connection.close()

    def forget(self, shard: int) -> None:
        """Close and forget this thread's connection to a shard."""
        connection = getattr(self._local, "connections", {}).pop(shard, None)
        if connection is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._opened.remove(connection)
            with contextlib.suppress(Exception):
                connection.close()

    def unavailable(self, shard: int, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"shard {shard} ({self.where(shard)}) failed: {exc}")

    def run(self, shard: int, work: Callable[[Any], T], *, write: bool = True) -> T:
        """Run ``work(cursor)`` on a shard: in one committed transaction, or as a plain read.

        A cached connection that fails at once (the server restarted since) is replaced and
        the work tried once more before the shard is reported unavailable.
        """
        for attempt in (1, 2):
            cached = shard in getattr(self._local, "connections", {})
            try:
                connection = self.connection(shard)
                if not write:
                    with self.cursor(connection) as cursor:
                        return work(cursor)
                self.begin(connection)
                try:
                    with self.cursor(connection) as cursor:
                        result = work(cursor)
                    connection.commit()
                    return result
                except BaseException:
                    with contextlib.suppress(Exception):
                        connection.rollback()
                    raise
            except Exception as exc:
                if not self.failed(exc):
                    raise
                self.forget(shard)
                if attempt == 1 and cached and self.lost(exc):
                    continue
                raise self.unavailable(shard, exc) from exc
        raise AssertionError("unreachable")

    def on_shards(self, work: Mapping[int, Callable[[Any], T]], *,
                  write: bool = True) -> dict[int, T]:
        """Run work on several shards in parallel; wait for all before raising the first error.

        The first shard's work runs on the calling thread and only the others go to the pool:
        a read of one shard costs no thread hand-off at all, and one of two shards a single one
        (each hand-off is a wait for the GIL under load).
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

    def all_shards(self, fn: Callable[[Any], T], *, write: bool = True) -> dict[int, T]:
        return self.on_shards(dict.fromkeys(range(self.count), fn), write=write)

    def close(self) -> None:
        """Close every connection and stop the pool; a later use starts afresh."""
        self.pool.shutdown(wait=True)
        self.reset()
        self.pool = ThreadPoolExecutor(max_workers=max(2, self.count),
                                       thread_name_prefix=self._name)


class MariaDBShards(ShardSet):
    """MariaDB servers, one database on each, through PyMySQL."""

    dialect = MariaDBDialect()

    def __init__(self, *, addresses: list[tuple[str, int]], user: str, password: str,
                 database: str) -> None:
        if not addresses:
            msg = "at least one MariaDB shard is needed"
            raise ValueError(msg)
        if not _IDENTIFIER.fullmatch(database):
            msg = f"database name {database!r} is not a plain identifier"
            raise ValueError(msg)
        super().__init__(len(addresses), name="mariadb")
        self.addresses = addresses
        self.user = user
        self._password = password
        self.database = database

    @classmethod
    def from_settings(cls, settings: Settings) -> MariaDBShards:
        return cls(addresses=settings.shard_addresses, user=settings.mariadb_user,
                   password=settings.mariadb_password.get_secret_value(),
                   database=settings.mariadb_database)

    def where(self, shard: int) -> str:
        host, port = self.addresses[shard]
        return f"MariaDB at {host}:{port}"

    def connect(self, shard: int, *, database: bool = True,
                autocommit: bool = False) -> Connection:
        """A new connection to one shard (local infile on)."""
        host, port = self.addresses[shard]
        try:
            return pymysql.connect(
                host=host, port=port, user=self.user, password=self._password,
                database=self.database if database else None, autocommit=autocommit,
                local_infile=True, charset="utf8mb4", connect_timeout=5,
            )
        except pymysql.err.OperationalError as exc:
            msg = f"shard {shard} ({self.where(shard)}) does not answer: {exc.args[-1]}"
            raise ServiceUnavailableError(msg) from exc

    def open(self, shard: int) -> Connection:
        return self.connect(shard, autocommit=True)

    def failed(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError)

    def lost(self, exc: BaseException) -> bool:
        code = exc.args[0] if exc.args else None
        return isinstance(exc, pymysql.err.InterfaceError) or code in (2006, 2013)

    def begin(self, connection: Any) -> None:
        connection.begin()

    def cursor(self, connection: Any) -> contextlib.AbstractContextManager[Any]:
        return connection.cursor()

    def query(self, cursor: Any, sql: str, *,
              seconds: float | None = None) -> tuple[list[str], list[tuple]]:
        if seconds is not None:
            # MariaDB stops the statement itself (error 1969) and keeps the connection.
            sql = f"SET STATEMENT max_statement_time={max(seconds, 0.001):.3f} FOR {sql}"
        try:
            cursor.execute(sql)
            return [d[0] for d in cursor.description], list(cursor.fetchall())
        except pymysql.err.OperationalError as exc:
            if seconds is not None and exc.args and exc.args[0] == _STATEMENT_TIMEOUT:
                raise StatementTimeoutError(seconds) from None
            raise

    def _on_server(self, statement: str) -> None:
        for shard in range(self.count):
            connection = self.connect(shard, database=False)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(statement)
                connection.commit()
            finally:
                connection.close()

    def ensure_database(self) -> None:
        self._on_server(f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")

    def drop_database(self) -> None:
        self.reset()
        self._on_server(f"DROP DATABASE IF EXISTS `{self.database}`")


#: MariaDB's ER_STATEMENT_TIMEOUT: max_statement_time reached.
_STATEMENT_TIMEOUT = 1969


class _SQLiteConnection:
    """A sqlite3 connection with the DB-API surface the stores use (PyMySQL's)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.raw = connection

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class _SQLiteCursor:
    """A sqlite3 cursor that takes ``%s`` parameters."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Any = None) -> _SQLiteCursor:
        if params is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(_qmark(sql), params)
        return self

    def executemany(self, sql: str, rows: Any) -> _SQLiteCursor:
        self._cursor.executemany(_qmark(sql), rows)
        return self

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall()

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def connection(self) -> sqlite3.Connection:
        return self._cursor.connection

    @property
    def description(self) -> Any:
        return self._cursor.description

    def close(self) -> None:
        self._cursor.close()


@lru_cache(maxsize=4096)
def _qmark(sql: str) -> str:
    return qmark(sql)


#: The messages of sqlite3.OperationalError that mean the file, not the statement, failed.
_SQLITE_FAILURES = ("database is locked", "unable to open", "disk i/o error",
                    "database or disk is full", "readonly database")


class SQLiteShards(ShardSet):
    """N SQLite files in one folder (``shard-0.sqlite3`` ...), in WAL mode.

    Every thread has its own connection per file; a write takes SQLite's write lock with
    ``BEGIN IMMEDIATE`` (waiting up to `BUSY_TIMEOUT_S` for another writer, in this process or
    another), so concurrent writers are serialised per file and readers never wait.
    """

    dialect = SQLiteDialect()

    def __init__(self, folder: Path, count: int = 1, *, stem: str = "shard") -> None:
        super().__init__(count, name="sqlite")
        self.folder = Path(folder)
        self.stem = stem

    def path(self, shard: int) -> Path:
        return self.folder / f"{self.stem}-{shard}.sqlite3"

    def where(self, shard: int) -> str:
        return f"SQLite file {self.path(shard)}"

    def open(self, shard: int) -> _SQLiteConnection:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path(shard), timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        except (sqlite3.OperationalError, OSError) as exc:
            raise self.unavailable(shard, exc) from exc
        return _SQLiteConnection(connection)

    def failed(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and str(exc).lower().startswith(
            _SQLITE_FAILURES)

    def lost(self, exc: BaseException) -> bool:
        return False

    def begin(self, connection: Any) -> None:
        connection.raw.execute("BEGIN IMMEDIATE")

    def query(self, cursor: Any, sql: str, *,
              seconds: float | None = None) -> tuple[list[str], list[tuple]]:
        if seconds is None:
            cursor.execute(sql)
            return [d[0] for d in cursor.description], cursor.fetchall()
        # SQLite runs a statement as its rows are fetched: the handler watches both.
        deadline = time.monotonic() + seconds
        raw = cursor.connection
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 20_000)
        try:
            cursor.execute(sql)
            return [d[0] for d in cursor.description], cursor.fetchall()
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted":
                raise StatementTimeoutError(seconds) from None
            raise
        finally:
            raw.set_progress_handler(None, 0)

    @contextlib.contextmanager
    def _cursor(self, connection: Any) -> Iterator[_SQLiteCursor]:
        cursor = connection.raw.cursor()
        try:
            yield _SQLiteCursor(cursor)
        finally:
            cursor.close()

    def cursor(self, connection: Any) -> contextlib.AbstractContextManager[Any]:
        return self._cursor(connection)

    def ensure_database(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.unavailable(0, exc) from exc

    def drop_database(self) -> None:
        self.reset()
        for shard in range(self.count):
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self.path(shard)}{suffix}").unlink()
