"""Small tables every process reads, kept on shard 0 of the catalog's shard set.

Accounts (`broker.storage.accounts`) and watchlists (`broker.storage.watchlists`) are not
chunked: they are small, read whole or by key, and written in transactions that span several
of their tables. They live on one shard, like the reference-catalog registry: a MariaDB server,
or the first SQLite file in embedded mode. `Shard0Tables` creates them once per process (and
adds the columns the felis description gained since) and runs work on that shard.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from broker.exceptions import NotFoundError
from broker.storage import schema
from broker.storage.dialect import column_list
from broker.storage.shards import ShardSet

T = TypeVar("T")
R = TypeVar("R")

#: The shard that holds these tables.
SHARD = 0


class Shard0Tables:
    """A store of felis tables (`TABLES`) on shard 0, made on first use."""

    #: The felis tables of the store.
    TABLES: tuple[str, ...] = ()

    def __init__(self, shards: ShardSet, *, clock: Callable[[], datetime] | None = None) -> None:
        self.shards = shards
        self.dialect = shards.dialect
        self.clock = clock or (lambda: datetime.now(UTC))
        self._ready = False
        self._setup_lock = threading.Lock()

    def setup(self) -> None:
        """Create the tables if they are missing (idempotent, cheap after the first call)."""
        with self._setup_lock:
            if self._ready:
                return
            self.shards.ensure_database()
            statements = [s for t in self.TABLES
                          for s in self.dialect.create_statements(schema.table(t))]

            def work(cursor: Any) -> None:
                for statement in statements:
                    cursor.execute(statement)
                for table in self.TABLES:
                    self.dialect.add_missing_columns(cursor, schema.table(table))

            self.shards.run(SHARD, work)
            self._ready = True

    def _run(self, work: Callable[[Any], T], *, write: bool = True) -> T:
        self.setup()
        return self.shards.run(SHARD, work, write=write)

    def _now(self) -> Any:
        return self.dialect.time_value(self.clock())


class OwnedRows(Shard0Tables, Generic[R]):
    """A store of things users own (watchlists, watchmaps, filters): rows of `TABLE` keyed by
    `KEY`, with ``owner`` and ``visibility`` columns, read as `R` by `_make` from the columns
    `LISTED`. Ownership is checked here, once for every caller (see `readable`, `owned`)."""

    #: What the thing is called in messages ("watchlist").
    WHAT = ""
    #: Its table, key column, and the columns `get` reads, in `_make`'s order.
    TABLE = ""
    KEY = ""
    LISTED: tuple[str, ...] = ()

    def _make(self, row: Sequence[Any]) -> R:
        raise NotImplementedError

    def get(self, key: int, caller: str | None) -> R:
        """A thing ``caller`` may read (its own, or a public one); `NotFoundError` for any
        other, as for one that does not exist."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute(f"SELECT {column_list(self.LISTED)} FROM {self.TABLE} "
                           f"WHERE {self.KEY} = %s", [key])
            return cursor.fetchone()

        row = self._run(work, write=False)
        values = None if row is None else dict(zip(self.LISTED, row, strict=True))
        readable(self.WHAT, key, values["owner"] if values else None,
                 values["visibility"] if values else None, caller)
        assert row is not None
        return self._make(row)

    def owned(self, key: int, caller: str | None) -> R:
        """A thing ``caller`` owns; `NotFoundError` otherwise (a public thing of another user
        can be read, not changed: that is 404 too, as if it were not there to change)."""
        found = self.get(key, caller)
        owned(self.WHAT, key, found.owner, caller)  # type: ignore[attr-defined]
        return found

    def signature(self) -> tuple[tuple[int, str, str], ...]:
        """(key, owner, visibility) of every row: what changes who may name what."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {self.KEY}, owner, visibility FROM {self.TABLE} "
                           f"ORDER BY {self.KEY}")
            return list(cursor.fetchall())

        return tuple((int(k), o, v) for k, o, v in self._run(work, write=False))

    def visible(self, caller: str | None) -> list[R]:
        """The caller's things and everyone's public ones, by owner then name."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(self.LISTED)} FROM {self.TABLE} WHERE "
                           "owner = %s OR visibility = 'public' ORDER BY owner, name",
                           [caller or ""])
            return list(cursor.fetchall())

        return [self._make(r) for r in self._run(work, write=False)]


def readable(what: str, key: int, owner: str | None, visibility: str | None,
             caller: str | None) -> None:
    """Raise `NotFoundError` unless ``caller`` may read the thing (it exists, and is public or
    the caller's): another user's private thing does not exist, as far as the caller can tell
    (404, never 403)."""
    if owner is None or (visibility != "public" and owner != caller):
        msg = f"no {what} {key}"
        raise NotFoundError(msg)


def owned(what: str, key: int, owner: str, caller: str | None) -> None:
    """Raise `NotFoundError` unless ``caller`` owns a thing it may read: a public thing of
    another user can be read, not changed."""
    if owner != caller:
        msg = f"no {what} {key} of yours"
        raise NotFoundError(msg)


def utc(value: Any) -> datetime:
    """A stored time as an aware UTC datetime (MariaDB gives naive ones, SQLite text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
