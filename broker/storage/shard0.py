"""Small tables every process reads, kept on shard 0 of the catalog's shard set.

Accounts (`broker.storage.accounts`) and watchlists (`broker.storage.watchlists`) are not
chunked: they are small, read whole or by key, and written in transactions that span several
of their tables. They live on one shard, like the reference-catalog registry: a MariaDB server,
or the first SQLite file in embedded mode. `Shard0Tables` creates them once per process (and
adds the columns the felis description gained since) and runs work on that shard.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from broker.exceptions import NotFoundError
from broker.storage import schema
from broker.storage.shards import ShardSet

T = TypeVar("T")

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
