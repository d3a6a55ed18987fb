"""Stores for the contract suites, over each backend: embedded SQLite files and the real
services (MariaDB with two shards, Cassandra). A suite takes ``archive`` or ``shard_set`` and
never asks which backend it runs on."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.domain.sky import Chunker
from broker.storage.catalog import ChunkedCatalog
from broker.storage.shards import MariaDBShards, ShardSet, SQLiteShards
from broker.storage.sqlite import SQLiteLightCurves
from broker.storage.stores import LightCurveArchive

CHUNKER = Chunker(85, 12)
CATALOG_TABLES = ("objects", "alert_rows", "director")


@dataclass
class Archive:
    """Both archive roles on one backend, with what a test needs to look inside."""

    name: str
    shards: ShardSet
    lightcurves: LightCurveArchive
    catalog: ChunkedCatalog

    def rows(self, table: str) -> list[tuple]:
        """Every row of a catalog table on every shard, with its shard, in key order."""
        found = self.shards.all_shards(
            lambda cursor: (cursor.execute(f"SELECT * FROM {table}"), cursor.fetchall())[1],
            write=False)
        return sorted((shard, *map(_plain, row)) for shard, part in found.items()
                      for row in part)

    def dump(self) -> dict[str, Any]:
        """Every catalog row, and every object's light curve and forced photometry."""
        out: dict[str, Any] = {t: self.rows(t) for t in CATALOG_TABLES}
        ids = sorted(row[1] for row in out["objects"])
        out["lightcurves"] = {i: (self.lightcurves.lightcurve(i),
                                  self.lightcurves.forced_photometry(i)) for i in ids}
        out["counts"] = dict(self.lightcurves.counts())
        return out


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def mariadb_shards(stack: Any, database: str) -> MariaDBShards:
    settings = stack.settings
    return MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                         password=settings.mariadb_password.get_secret_value(),
                         database=database)


def sqlite_archive(folder: Path) -> tuple[Archive, list[Any]]:
    files = SQLiteShards(folder, 1, stem="lightcurves")
    shards = SQLiteShards(folder, 2, stem="catalog")
    lightcurves = SQLiteLightCurves(files)
    lightcurves.setup()
    catalog = ChunkedCatalog(shards=shards, chunker=CHUNKER)
    catalog.setup()
    return Archive("embedded", shards, lightcurves, catalog), [files, shards]


@pytest.fixture(params=["embedded", "services"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    """A fresh archive: SQLite files, or the test database on two MariaDB shards with the
    Cassandra test keyspace truncated."""
    if request.param == "embedded":
        made, closers = sqlite_archive(tmp_path)
        try:
            yield made
        finally:
            for closer in closers:
                closer.close()
        return
    from broker.storage.cassandra import CassandraLightCurves

    stack = request.getfixturevalue("stack")
    shards = request.getfixturevalue("shards")
    request.getfixturevalue("cassandra_session")
    lightcurves = CassandraLightCurves(connection=stack.cassandra)
    lightcurves.setup()
    catalog = ChunkedCatalog(shards=shards, chunker=CHUNKER)
    catalog.setup()
    yield Archive("services", shards, lightcurves, catalog)


@pytest.fixture
def make_archive(request: pytest.FixtureRequest, archive: Archive,
                 tmp_path: Path) -> Iterator[Any]:
    """Further fresh archives on the same backend as ``archive`` (their light curves in
    SQLite: the catalog is what these tests compare)."""
    made: list[Any] = []
    databases: list[MariaDBShards] = []
    counter = itertools.count()

    def make() -> Archive:
        folder = tmp_path / f"other-{next(counter)}"
        other, closers = sqlite_archive(folder)
        made.extend(closers)
        if archive.name == "embedded":
            return other
        shards = mariadb_shards(request.getfixturevalue("stack"),
                                f"lanner_t{uuid.uuid4().hex[:8]}")
        databases.append(shards)
        catalog = ChunkedCatalog(shards=shards, chunker=CHUNKER)
        catalog.setup()
        return Archive("services", shards, other.lightcurves, catalog)

    try:
        yield make
    finally:
        for closer in made:
            closer.close()
        for shards in databases:
            with contextlib.suppress(Exception):
                shards.drop_database()
            shards.close()


def reopen(shards: ShardSet) -> ShardSet:
    """A second shard set on the same files or databases (as another process would open)."""
    if isinstance(shards, SQLiteShards):
        return SQLiteShards(shards.folder, len(shards), stem=shards.stem)
    assert isinstance(shards, MariaDBShards)
    return MariaDBShards(addresses=list(shards.addresses), user=shards.user,
                         password=shards._password, database=shards.database)
