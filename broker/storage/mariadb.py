"""MariaDB shard servers through PyMySQL: one connection factory per shard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql
from pymysql.connections import Connection

from broker.config import Settings
from broker.exceptions import ServiceUnavailableError

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

    def connect(self, shard: int, *, database: bool = True) -> Connection:
        """A new connection to one shard (autocommit off, local infile on for bulk loads)."""
        host, port = self.addresses[shard]
        try:
            return pymysql.connect(
                host=host, port=port, user=self.user, password=self._password,
                database=self.database if database else None, autocommit=False,
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
