"""Row-level changes of a reference catalog (the dr-updates stage): `apply` and its tombstones.

`apply` upserts and deletes single rows of a catalog, guarded by a version per id. Each version
of a catalog gets a state table ``rc_<name>_v<k>_state`` (felis template ``refcat_state``: id,
version, deleted, the stored position and the positions being written, ``changed_at``), on the
director shard of the id: a change applies only if its version is newer than the stored one,
and a delete leaves its row there with ``deleted = 1``, a tombstone, so an older insert
delivered late cannot bring the object back. Rows that a bulk load wrote have no state row:
any change applies to them. `purge_tombstones` deletes the tombstones older than a grace period
that must exceed the change topic's retention (the rule is in its docstring).

The shards cannot share a transaction (and the data tables are MyISAM), so the writes are
ordered to make a repeat of the same call, after a failure at any point, finish the job:
(0) the position each upsert is going to is added to its state row's ``pending`` list; (1) on
every data shard in parallel, the object's main and halo rows are deleted wherever its stored
or pending positions put them, and the new rows are written; (2) on the director shards, the
director row and the state row (version, position, tombstone, ``changed_at``; pending cleared)
are written. Until (2) is done the stored version is the old one, so a repeat applies the
change again and cleans every place a row may have gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from broker.domain.catalogs import CatalogColumns, PreparedBatch, halo_pairs, plan_columns
from broker.domain.catalogs import prepare_batch as prepare_rows
from broker.domain.sky import Chunker, ChunkPlacement
from broker.exceptions import RefCatalogError
from broker.storage import schema
from broker.storage.dialect import Dialect, column_list, marks, q
from broker.storage.shards import ShardSet
from broker.storage.stores import ApplyReport

T = TypeVar("T")

#: Columns of a state row (felis template ``refcat_state``).
STATE_COLUMNS = schema.columns("refcat_state")
#: Tombstones deleted per statement (a short transaction each).
PURGE_BATCH = 10_000


def utc_now() -> datetime:
    """Now in UTC, naive (how DATETIME columns and SQLite text store it)."""
    return datetime.now(UTC).replace(tzinfo=None)


def cutoff(older_than_s: float) -> datetime:
    """The ``changed_at`` before which a tombstone is old enough to purge."""
    if not (isinstance(older_than_s, int | float) and 0 <= older_than_s < float("inf")):
        msg = f"older_than_s must be a number of seconds >= 0, not {older_than_s!r}"
        raise ValueError(msg)
    try:
        return utc_now() - timedelta(seconds=float(older_than_s))
    except OverflowError:
        return datetime(1, 1, 1)  # older than anything stored: nothing is purged


def batches(values: list[T], size: int = 1000) -> Iterable[list[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@dataclass(slots=True)
class Changes:
    """One `apply` call's changes, prepared."""

    prepared: PreparedBatch
    #: id -> (version, row of ``prepared.table``, or None for a delete)
    by_id: dict[Any, tuple[int, int | None]]
    rows: list[tuple]
    halos: dict[int, list[int]]

    def halo_of(self, row: int) -> list[int]:
        return self.halos.get(row, [])


@dataclass(slots=True)
class Stored:
    """What the shards hold of one id."""

    version: int | None
    live: bool
    position: tuple[float, float] | None = None
    pending: list[tuple[float, float]] | None = None

    def positions(self) -> list[tuple[float, float]]:
        """Every place the object's rows may be: where it is, and where a write was going."""
        out = [self.position] if self.position is not None else []
        return out + [p for p in self.pending or () if p not in out]


@dataclass(slots=True)
class ShardWrites:
    """What one data shard deletes and writes for one `apply`."""

    main_delete: set = field(default_factory=set)
    halo_delete: dict[int, set] = field(default_factory=dict)
    main_insert: list[tuple] = field(default_factory=list)
    halo_insert: list[tuple] = field(default_factory=list)


def change_columns(arrow_schema: pa.Schema, id_col: str, ra_col: str, dec_col: str,
                   version_col: str) -> CatalogColumns:
    if version_col not in arrow_schema.names:
        msg = f"the changes have no version column {version_col!r}"
        raise RefCatalogError(msg)
    fields = [f for f in arrow_schema if f.name != version_col]
    return plan_columns(pa.schema(fields), id_col, ra_col, dec_col)


def prepare_changes(upserts: pa.Table, deletes: Iterable[tuple[Any, int]],
                    columns: CatalogColumns, version_col: str, chunker: Chunker,
                    overlap_deg: float) -> Changes:
    data = upserts.select([n for n in upserts.column_names if n != version_col])
    prepared = prepare_rows(data, columns, chunker, overlap_deg)
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
    return Changes(prepared, by_id, rows, halos)


def _version(value: Any) -> int:
    if value is None or int(value) < 0:
        msg = f"a change has no valid version ({value!r})"
        raise RefCatalogError(msg)
    return int(value)


def halos(chunker: Chunker, positions: list[tuple[float, float]],
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


def plan_writes(chunker: Chunker, placement: ChunkPlacement, changes: Changes,
                applicable: dict[Any, tuple[int, int | None]], stored: dict[Any, Stored],
                overlap_deg: float) -> dict[int, ShardWrites]:
    """Per data shard: the main and halo rows to delete, and those to write."""
    prepared = changes.prepared
    writes: dict[int, ShardWrites] = {}
    cleanup = [(key, p) for key in applicable
               for p in (stored[key].positions() if key in stored else [])]
    for (key, (ra, dec)), halo_chunks in zip(cleanup, halos(chunker, [p for _, p in cleanup],
                                                            overlap_deg), strict=True):
        chunk = chunker.locate_one(ra, dec)
        writes.setdefault(placement.shard_of(chunk), ShardWrites()).main_delete.add(key)
        for hc in halo_chunks:
            part = writes.setdefault(placement.shard_of(hc), ShardWrites())
            part.halo_delete.setdefault(hc, set()).add(key)
    for key, (_, row) in applicable.items():
        if row is None:
            continue
        chunk = int(prepared.chunk_id[row])
        writes.setdefault(placement.shard_of(chunk),
                          ShardWrites()).main_insert.append(changes.rows[row])
        for hc in changes.halo_of(row):
            writes.setdefault(placement.shard_of(hc), ShardWrites()).halo_insert.append(
                (hc, key, int(prepared.hpx29[row]), float(prepared.ra[row]),
                 float(prepared.dec[row])))
    return writes


class StateTables:
    """The SQL of the row-level change protocol on one shard set (one dialect)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def intent_writer(self, state: str, rows: list[tuple]) -> Callable[[Any], None]:
        sql = self.dialect.upsert(state, STATE_COLUMNS[:6], ["id"],
                                  [("pending", self.dialect.new("pending"))])

        def work(cursor: Any) -> None:
            cursor.executemany(sql, rows)
        return work

    def data_writer(self, main: str, halo: str, names: list[str],
                    part: ShardWrites) -> Callable[[Any], None]:
        def work(cursor: Any) -> None:
            for keys in batches(sorted(part.main_delete, key=str)):
                cursor.execute(f"DELETE FROM {q(main)} WHERE id IN ({marks(len(keys))})", keys)
            for chunk, members in sorted(part.halo_delete.items()):
                for keys in batches(sorted(members, key=str)):
                    cursor.execute(f"DELETE FROM {q(halo)} WHERE chunk_id = %s AND id IN "
                                   f"({marks(len(keys))})", [chunk, *keys])
            if part.main_insert:
                cursor.executemany(f"REPLACE INTO {q(main)} ({column_list(names)}) "
                                   f"VALUES ({marks(len(names))})", part.main_insert)
            if part.halo_insert:
                cursor.executemany(f"REPLACE INTO {q(halo)} (chunk_id, id, hpx29, ra, `dec`) "
                                   "VALUES (%s, %s, %s, %s, %s)", part.halo_insert)
        return work

    def director_writer(self, director: str, state: str, keys: list, directors: list[tuple],
                        states: list[tuple]) -> Callable[[Any], None]:
        def work(cursor: Any) -> None:
            for part in batches(keys):
                cursor.execute(f"DELETE FROM {q(director)} WHERE id IN ({marks(len(part))})",
                               part)
            if directors:
                cursor.executemany(f"INSERT INTO {q(director)} (id, chunk_id) VALUES (%s, %s)",
                                   directors)
            # Every value a parameter, so that PyMySQL sends one multi-row statement.
            cursor.executemany(f"REPLACE INTO {q(state)} ({column_list(STATE_COLUMNS)}) "
                               f"VALUES ({marks(len(STATE_COLUMNS))})", states)
        return work


def read_stored(shards: ShardSet, placement: ChunkPlacement, main: str, state: str,
                director: str, by_home: dict[int, list]) -> dict[Any, Stored]:
    """What the shards hold of each id: state rows, or (bulk-loaded rows) director + main."""
    def read(keys: list) -> Callable[[Any], tuple[list, list]]:
        def work(cursor: Any) -> tuple[list, list]:
            states, directors = [], []
            for part in batches(keys):
                cursor.execute(f"SELECT id, version, deleted, ra, `dec`, pending FROM {q(state)} "
                               f"WHERE id IN ({marks(len(part))})", part)
                states.extend(cursor.fetchall())
                cursor.execute(f"SELECT id, chunk_id FROM {q(director)} WHERE id IN "
                               f"({marks(len(part))})", part)
                directors.extend(cursor.fetchall())
            return states, directors
        return work

    found = shards.on_shards({shard: read(keys) for shard, keys in by_home.items()})
    stored: dict[Any, Stored] = {}
    unversioned: dict[int, list] = {}
    for states, directors in found.values():
        for key, version, deleted, ra, dec, pending in states:
            stored[key] = Stored(
                None if version is None else int(version), live=not deleted,
                position=None if ra is None else (float(ra), float(dec)),
                pending=[tuple(p) for p in json.loads(pending)] if pending else None)
        for key, chunk in directors:
            if key not in stored:
                unversioned.setdefault(placement.shard_of(chunk), []).append(key)
    if unversioned:
        def locate(keys: list) -> Callable[[Any], list]:
            def work(cursor: Any) -> list:
                rows = []
                for part in batches(keys):
                    cursor.execute(f"SELECT id, ra, `dec` FROM {q(main)} WHERE id IN "
                                   f"({marks(len(part))})", part)
                    rows.extend(cursor.fetchall())
                return rows
            return work

        for rows in shards.on_shards({s: locate(k) for s, k in unversioned.items()}).values():
            for key, ra, dec in rows:
                stored[key] = Stored(None, live=True, position=(float(ra), float(dec)))
    return stored


def apply_changes(shards: ShardSet, chunker: Chunker, tables: tuple[str, str, str, str],
                  changes: Changes, overlap_deg: float, created: bool) -> ApplyReport:
    """Steps (0) to (2) of the module docstring for one prepared set of changes."""
    main, halo, director, state = tables
    placement = ChunkPlacement(len(shards))
    sql = StateTables(shards.dialect)
    by_home: dict[int, list] = {}
    for key in changes.by_id:
        by_home.setdefault(placement.director_shard(key), []).append(key)

    stored = read_stored(shards, placement, main, state, director, by_home)
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
        old = stored.get(key) or Stored(None, live=False)
        pending = [*(old.pending or []), (float(prepared.ra[row]), float(prepared.dec[row]))]
        position = old.position or (None, None)
        intents.setdefault(placement.director_shard(key), []).append(
            (key, old.version, 0 if old.live else 1, *position, json.dumps(pending)))
    if intents:
        shards.on_shards({shard: sql.intent_writer(state, rows)
                          for shard, rows in intents.items()})

    # (1) The data shards: clean every place the rows may be, then write the new ones.
    writes = plan_writes(chunker, placement, changes, applicable, stored, overlap_deg)
    if writes:
        shards.on_shards({shard: sql.data_writer(main, halo, prepared.table.column_names, part)
                          for shard, part in writes.items()})

    # (2) The director shards: director rows and state rows (versions and tombstones).
    finals: dict[int, tuple[list, list, list]] = {}
    now = shards.dialect.time_value(utc_now())
    for key, (version, row) in applicable.items():
        keys, directors, states = finals.setdefault(placement.director_shard(key), ([], [], []))
        keys.append(key)
        if row is None:
            states.append((key, version, 1, None, None, None, now))
        else:
            directors.append((key, int(prepared.chunk_id[row])))
            states.append((key, version, 0, float(prepared.ra[row]),
                           float(prepared.dec[row]), None, now))
    shards.on_shards({shard: sql.director_writer(director, state, *parts)
                      for shard, parts in finals.items()})
    upserted = sum(1 for _, row in applicable.values() if row is not None)
    return ApplyReport(upserted=upserted, deleted=len(applicable) - upserted,
                       ignored=ignored, created=created)


def purge_shard(shards: ShardSet, shard: int, state: str, before: datetime) -> int | None:
    """Delete the old tombstones of one shard, `PURGE_BATCH` per transaction; how many (None
    if the shard has no state table: no change was ever applied to this version)."""
    dialect = shards.dialect
    when = dialect.time_value(before)
    removed = 0

    def one_batch(cursor: Any) -> int:
        cursor.execute(f"SELECT id FROM {q(state)} WHERE deleted = 1 AND changed_at < %s "
                       "AND pending IS NULL LIMIT %s", [when, PURGE_BATCH])
        keys = [r[0] for r in cursor.fetchall()]
        for part in batches(keys):
            cursor.execute(f"DELETE FROM {q(state)} WHERE id IN ({marks(len(part))}) "
                           "AND deleted = 1 AND pending IS NULL", part)
        return len(keys)

    while True:
        try:
            done = shards.run(shard, one_batch)
        except Exception as exc:
            if dialect.is_missing_table(exc):
                return None
            raise
        removed += done
        if done < PURGE_BATCH:
            return removed
