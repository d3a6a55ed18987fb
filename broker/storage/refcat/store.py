"""`ChunkedRefCatalogs`: reference catalogs over a shard set (MariaDB servers or SQLite files).

Longer than 500 lines because it is the one class of the store, whose public methods (registry,
bulk load, reads, apply, purge) share its version cache and lock; the change protocol and the
file input are already their own modules.

See the package docstring for the versioned tables, the bulk load and the lock; the row-level
change protocol is in `broker.storage.refcat.changes`.

Why one file of about 700 lines: it is one class, `ChunkedRefCatalogs`, whose parts share its
lock, registry cache and version resolution (a load writes version k+1 and flips the registry;
`apply` and the reads resolve the same registry). The parts that stand alone already live beside
it: the row-level change protocol in `changes.py`, the input files in `files.py`, the domain
planning in `broker.domain.catalogs`. Splitting the class by method would spread one locking and
versioning story over several files.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from broker.domain.catalogs import (
    DEFAULT_OVERLAP_DEG,
    CatalogColumns,
    CatalogMotion,
    CatalogShape,
    MotionSpec,
    PreparedBatch,
    ShapeSpec,
    plan_columns,
    plan_motion,
    plan_profile,
    prepare_batch,
    profile_json,
    validate_name,
)
from broker.domain.described import CatalogDescription, plan_description
from broker.domain.sky import Chunker, ChunkPlacement, check_cone, cone_cover, nearest_first
from broker.exceptions import (
    CatalogReloadedError,
    LannerError,
    RefCatalogError,
    UnknownCatalogError,
)
from broker.storage import schema
from broker.storage.catalog import cover_rows
from broker.storage.dialect import column_list, q
from broker.storage.refcat import changes
from broker.storage.shards import ShardSet
from broker.storage.stores import ApplyReport, ChunkRows, LoadReport, Progress, Row

T = TypeVar("T")

#: Attempts of a read whose catalog version is dropped under it by a reload.
_RETRIES = 5
#: How long a reader trusts the catalog version it last read.
_REGISTRY_TTL_S = 2.0
#: Seconds `apply`, `drop` and `purge_tombstones` wait for a catalog's lock by default.
LOCK_WAIT_S = 10.0
_REGISTRY_COLUMNS = schema.columns("refcat_registry")


def table_names(name: str, version: int) -> tuple[str, str, str]:
    """The main, overlap and director tables of one version of a catalog."""
    base = f"rc_{validate_name(name)}_v{int(version)}"
    return base, f"{base}_overlap", f"{base}_director"


def state_table(name: str, version: int) -> str:
    """The row-level state table (version and tombstone per id) of one version of a catalog."""
    return f"{table_names(name, version)[0]}_state"


def all_tables(name: str, version: int) -> tuple[str, str, str, str]:
    """Main, overlap, director and state tables of one version."""
    return (*table_names(name, version), state_table(name, version))


def _columns_of(columns: CatalogColumns) -> list[list[str]]:
    return [[n, k] for n, k in columns.stored]


_TEMPLATES = ("refcat_rows", "refcat_overlap", "refcat_director", "refcat_state")


def _instance(template: str, table: str, columns: CatalogColumns) -> Any:
    """A felis template made into one table of a catalog version."""
    data = [(c.name, c.kind) for c in columns.data] if template == "refcat_rows" else []
    return schema.refcat_table(template, table, text_ids=columns.id.kind != "int64",
                               data_columns=data)


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


def _split(prepared: PreparedBatch, placement: ChunkPlacement) -> dict[int, _ShardParts]:
    """One prepared batch's main, halo and director rows, per shard."""
    table = prepared.table
    main_shard = placement.shards_of(prepared.chunk_id)
    halo = pa.Table.from_arrays(
        [pa.array(prepared.overlap_chunk, pa.int64()),
         table.column("id").take(pa.array(prepared.overlap_index)),
         pa.array(prepared.hpx29[prepared.overlap_index], pa.int64()),
         pa.array(prepared.ra[prepared.overlap_index], pa.float64()),
         pa.array(prepared.dec[prepared.overlap_index], pa.float64())],
        names=["chunk_id", "id", "hpx29", "ra", "dec"])
    halo_shard = placement.shards_of(prepared.overlap_chunk)
    director = table.select(["id", "chunk_id"])
    director_shard = placement.director_shards(prepared.ids)
    return {shard: _ShardParts(
        main=table.take(pa.array(np.nonzero(main_shard == shard)[0])),
        overlap=halo.take(pa.array(np.nonzero(halo_shard == shard)[0])),
        director=director.take(pa.array(np.nonzero(director_shard == shard)[0])),
    ) for shard in range(placement.shards)}


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


#: The largest overlap a catalog may be loaded with: a tenth of a chunk's height at the default
#: 85 stripes (2.1 degrees), so that a halo stays a thin border of its chunk.
MAX_OVERLAP_DEG = 0.2


class ChunkedRefCatalogs:
    """`ReferenceCatalogs` on a shard set, chunk-placed with overlap and a director."""

    #: Seconds `apply`, `drop` and `purge_tombstones` wait for the catalog's lock.
    lock_wait_s = LOCK_WAIT_S

    def __init__(self, shards: ShardSet, chunker: Chunker,
                 overlap_deg: float = DEFAULT_OVERLAP_DEG) -> None:
        self.shards = shards
        self.chunker = chunker
        self.overlap_deg = float(overlap_deg)
        self.placement = ChunkPlacement(len(shards))
        self.dialect = shards.dialect
        self._ready = False
        self._states: set[str] = set()
        self._registry_cache: dict[str, tuple[float, dict[str, Any]]] = {}

    # -- setup and registry

    def setup(self) -> None:
        """Create the database on every shard and the registry on shard 0 (idempotent)."""
        if self._ready:
            return
        self.shards.ensure_database()
        registry = schema.table("refcat_registry")
        statements = self.dialect.create_statements(registry)

        def work(cursor: Any) -> None:
            for statement in statements:
                cursor.execute(statement)
            self.dialect.add_missing_columns(cursor, registry)  # made by an earlier release

        self.shards.run(0, work)
        self._ready = True

    def _exclusive(self, name: str, wait_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the catalog's lock for a block (`CatalogBusyError` after ``wait_s`` seconds;
        0 fails at once): a MariaDB named lock on shard 0, held by a session of its own (the
        server frees it if the process dies), or an ``flock`` beside the SQLite files."""
        return self.dialect.catalog_lock(self.shards, name, wait_s)

    def _registry(self, name: str) -> dict[str, Any] | None:
        def work(cursor: Any) -> tuple | None:
            cursor.execute("SELECT version, `rows`, `columns`, overlap_deg, loaded_at, kind, shape "
                           "FROM refcat_registry WHERE name = %s AND status = 'ready'", [name])
            return cursor.fetchone()

        try:
            row = self.shards.run(0, work, write=False)
        except Exception as exc:
            if self.dialect.is_missing_table(exc):
                return None
            raise
        if row is None:
            return None
        return {"version": int(row[0]), "rows": int(row[1]), "columns": json.loads(row[2]),
                "overlap_deg": float(row[3]), "loaded_at": row[4], "kind": row[5],
                "shape": json.loads(row[6]) if row[6] else None}

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
            except Exception as exc:
                if not self.dialect.is_missing_table(exc) or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def list(self) -> list[dict[str, Any]]:
        """Every loaded catalog: name, rows, version, loaded_at, columns, overlap_deg, kind,
        shape, and the metadata its load recorded (`broker.domain.described`; None if
        none)."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT name, `rows`, version, loaded_at, `columns`, overlap_deg, kind, "
                           "shape, metadata FROM refcat_registry WHERE status = 'ready' "
                           "ORDER BY name")
            return list(cursor.fetchall())

        self.setup()
        rows = self.shards.run(0, work, write=False)
        return [{"name": r[0], "rows": int(r[1]), "version": int(r[2]), "loaded_at": r[3],
                 "columns": json.loads(r[4]), "overlap_deg": float(r[5]), "kind": r[6],
                 "shape": json.loads(r[7]) if r[7] else None,
                 "metadata": json.loads(r[8]) if r[8] else None} for r in rows]

    def versions(self) -> dict[str, tuple[int, str]]:
        """The current version of every loaded catalog and when it was made current, read
        afresh (no cache): one small read on shard 0, cheap enough to run per request. A
        reload changes both; a catalog dropped and loaded again starts at version 1 again
        and is told apart by the time."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT name, version, loaded_at FROM refcat_registry "
                           "WHERE status = 'ready'")
            return list(cursor.fetchall())

        self.setup()
        return {r[0]: (int(r[1]), str(r[2])) for r in self.shards.run(0, work, write=False)}

    def describe(self, name: str) -> dict[str, Any]:
        """The registry entry of one catalog (version, rows, columns, ...), from the same
        short-lived cache as the reads: no round trip on most calls.

        Raises `UnknownCatalogError` (and ValueError for a name that cannot be a catalog's).
        """
        return dict(self._current(name))

    def _write_registry(self, name: str, version: int, rows: int, columns: CatalogColumns, *,
                        replace: bool, kind: str = "generic",
                        shape: CatalogShape | None = None,
                        motion: CatalogMotion | None = None,
                        overlap_deg: float | None = None,
                        metadata: dict[str, Any] | None = None) -> None:
        profile = profile_json(shape, motion)
        overlap = self.overlap_deg if overlap_deg is None else overlap_deg
        values = [name, version, rows, json.dumps(_columns_of(columns)), overlap,
                  self.dialect.time_value(changes.utc_now()), "ready", kind,
                  json.dumps(profile) if profile else None,
                  json.dumps(metadata) if metadata is not None else None]
        if replace:
            sql = self.dialect.upsert("refcat_registry", _REGISTRY_COLUMNS, ["name"],
                                      [(c, self.dialect.new(c)) for c in _REGISTRY_COLUMNS[1:]])
        else:
            sql = self.dialect.insert_ignore("refcat_registry", _REGISTRY_COLUMNS)
        self.shards.run(0, lambda cursor: cursor.execute(sql, values))

    # -- load

    def _drop_tables(self, tables: Iterable[str]) -> None:
        names = builtins.list(tables)
        self.shards.all_shards(lambda cursor: self.dialect.drop_tables(cursor, names))

    def load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
             dec_col: str, progress: Progress | None = None, *, kind: str = "generic",
             shape: ShapeSpec | None = None, motion: MotionSpec | None = None,
             overlap_deg: float | None = None,
             description: CatalogDescription | None = None) -> LoadReport:
        """Load a catalog from record batches, replacing any loaded version atomically.

        ``overlap_deg`` is this catalog's overlap (halo) radius, by default the store's (1'):
        nothing further from an alert than its catalog's overlap can be matched, so a catalog
        of large galaxies needs a larger one. At most `MAX_OVERLAP_DEG`.

        ``kind``, ``shape`` (the input's shape columns) and ``motion`` (its proper-motion
        columns and epoch) are checked against the input's columns before anything is written
        (`plan_profile`, `plan_motion`) and kept in the registry.

        ``description`` (the catalog's and its columns' units, UCDs and descriptions, by input
        column name), with what the input's schema says of its columns, is checked (felis's
        units and UCDs) before anything is written and kept in the registry for TAP_SCHEMA
        (`broker.domain.described`).

        The catalog's lock is held throughout; if another process holds it (a load, or a
        change being applied), `CatalogBusyError` is raised at once and nothing is written.
        """
        validate_name(name)
        overlap = self.overlap_deg if overlap_deg is None else float(overlap_deg)
        if not 0.0 < overlap <= MAX_OVERLAP_DEG:
            msg = (f"overlap {overlap * 60:g}' is out of range: give more than 0 and at most "
                   f"{MAX_OVERLAP_DEG * 60:g}'")
            raise ValueError(msg)
        self.setup()
        with self._exclusive(name, 0):
            return self._load(name, batches, id_col, ra_col, dec_col, progress, kind, shape,
                              motion, overlap, description)

    def _load(self, name: str, batches: Iterable[pa.RecordBatch], id_col: str, ra_col: str,
              dec_col: str, progress: Progress | None, kind: str,
              shape_spec: ShapeSpec | None, motion_spec: MotionSpec | None,
              overlap_deg: float, description: CatalogDescription | None) -> LoadReport:
        started = time.perf_counter()
        first, rest, columns = _plan_input(name, batches, id_col, ra_col, dec_col)
        kind, shape = plan_profile(kind, shape_spec, columns)
        motion = plan_motion(motion_spec, columns)
        metadata = plan_description(description, columns, first.schema)
        schema.check_notes(metadata)
        current = self._registry(name)
        version = (current["version"] if current else 0) + 1
        tables = table_names(name, version)
        # Left over by a load that died without cleaning up (and row-level state of that version).
        self._states.discard(state_table(name, version))
        self._drop_tables(all_tables(name, version))
        try:
            self._create(tables, columns, disable_keys=True)
            rows, skipped, overlap = self._stream(tables, columns, first, rest, progress,
                                                  overlap_deg)
            def enable(cursor: Any) -> None:
                for table in tables:
                    self.dialect.enable_keys(cursor, table)

            self.shards.all_shards(enable)
            self._write_registry(name, version, rows, columns, replace=True, kind=kind,
                                 shape=shape, motion=motion, overlap_deg=overlap_deg,
                                 metadata=metadata)
        except BaseException:
            with contextlib.suppress(Exception):
                self._drop_tables(tables)
            raise
        if current is not None:
            self._states.discard(state_table(name, current["version"]))
            with contextlib.suppress(LannerError):
                self._drop_tables(all_tables(name, current["version"]))
        return LoadReport(rows=rows, skipped=skipped, overlap_rows=overlap,
                          seconds=time.perf_counter() - started, version=version)

    def _create(self, tables: tuple[str, ...], columns: CatalogColumns, *,
                disable_keys: bool = False) -> None:
        statements = [s for template, table in zip(_TEMPLATES, tables, strict=False)
                      for s in self.dialect.create_statements(
                          _instance(template, table, columns))]

        def work(cursor: Any) -> None:
            for statement in statements:
                cursor.execute(statement)
            if disable_keys:
                for table in tables:
                    self.dialect.disable_keys(cursor, table)

        self.shards.all_shards(work)

    def _stream(self, tables: tuple[str, str, str], columns: CatalogColumns,
                first: pa.RecordBatch, rest: Iterable[pa.RecordBatch],
                progress: Progress | None, overlap_deg: float) -> tuple[int, int, int]:
        """Prepare each batch while the previous one is being stored on every shard."""
        folder = _tsv_dir()
        rows = skipped = overlap = 0
        pending: builtins.list[Future] = []

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

        try:
            batch: pa.RecordBatch | None = first
            iterator = iter(rest)
            while batch is not None:
                if batch.schema.names != first.schema.names:
                    msg = "the input's columns changed between batches"
                    raise RefCatalogError(msg)
                prepared = prepare_batch(batch, columns, self.chunker, overlap_deg)
                parts = _split(prepared, self.placement)
                wait()  # the previous batch is stored before this one is sent
                pending.extend(self.shards.pool.submit(self.shards.run, s,
                                                       self._sender(s, folder, tables, p))
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
            shutil.rmtree(folder, ignore_errors=True)
        return rows, skipped, overlap

    def _sender(self, shard: int, folder: str, tables: tuple[str, str, str],
                parts: _ShardParts) -> Callable[[Any], None]:
        """Bulk-load one batch's rows of one shard, checking that every row was stored."""
        def work(cursor: Any) -> None:
            for table, part in zip(tables, (parts.main, parts.overlap, parts.director),
                                   strict=True):
                stored = self.dialect.bulk_insert(cursor, table, part.column_names, part,
                                                  folder)
                if stored != part.num_rows:
                    msg = (f"{part.num_rows - stored} rows of a batch were not stored in "
                           f"{table} on shard {shard}: does the input repeat ids?")
                    raise RefCatalogError(msg)
        return work

    def drop(self, name: str) -> None:
        """Forget a catalog and drop its tables (waits for the catalog's lock)."""
        validate_name(name)
        self.setup()
        with self._exclusive(name, self.lock_wait_s):
            entry = self._current(name, fresh=True)
            self._registry_cache.pop(name, None)
            self.shards.run(0, lambda cursor: cursor.execute(
                "DELETE FROM refcat_registry WHERE name = %s", [name]))
            self._states.discard(state_table(name, entry["version"]))
            self._drop_tables(all_tables(name, entry["version"]))

    # -- reads

    def cone(self, name: str, ra: float, dec: float, radius_deg: float,
             limit: int = 1000) -> builtins.list[Row]:
        """Rows within ``radius_deg`` of (ra, dec), nearest first (ties by id), with
        ``distance_arcsec`` (ValueError for a bad centre, radius or limit)."""
        check_cone(ra, dec, radius_deg, limit)
        cover = cone_cover(self.chunker, ra, dec, radius_deg)

        def query(entry: dict[str, Any]) -> builtins.list[Row]:
            names = [c[0] for c in entry["columns"]]
            found = cover_rows(self.shards, self.placement, cover,
                               table_names(name, entry["version"])[0], column_list(names))
            return [dict(zip(names, r, strict=True)) for r in found]

        rows = self._read(name, query)
        return nearest_first(rows, ra, dec, radius_deg, limit, key="id") if limit else []

    def _at_version(self, name: str, version: int | None,
                    query: Callable[[dict[str, Any]], T]) -> T:
        """Run a read on the current version, or on ``version`` exactly: a reader that must not
        mix versions (the enrich stage's chunk cache) names the one it resolved, and gets
        `CatalogReloadedError` once that version is gone."""
        if version is None:
            return self._read(name, query)
        entry = self._current(name)
        if entry["version"] != version:
            entry = self._current(name, fresh=True)
        if entry["version"] != version:
            raise CatalogReloadedError(name, version, entry["version"])
        try:
            return query(entry)
        except Exception as exc:
            if self.dialect.is_missing_table(exc):
                current = self._registry(name)
                raise CatalogReloadedError(
                    name, version, current["version"] if current else None) from exc
            raise

    def chunk_rows(self, name: str, chunk_ids: Iterable[int], *,
                   version: int | None = None) -> ChunkRows:
        """Ids and positions of the rows of each chunk and of its halo (one query per shard),
        from the current version or from ``version`` exactly."""
        wanted = sorted({int(c) for c in chunk_ids})
        by_shard = self.placement.by_shard(wanted)

        def query(entry: dict[str, Any]) -> builtins.list[tuple]:
            main, halo, _ = (q(t) for t in table_names(name, entry["version"]))

            def on(chunks: builtins.list[int]) -> Callable[[Any], builtins.list[tuple]]:
                def work(cursor: Any) -> builtins.list[tuple]:
                    marks = ",".join(["%s"] * len(chunks))
                    cursor.execute(
                        f"SELECT chunk_id, id, ra, `dec` FROM {main} WHERE chunk_id IN ({marks}) "
                        f"UNION ALL SELECT chunk_id, id, ra, `dec` FROM {halo} "
                        f"WHERE chunk_id IN ({marks})", [*chunks, *chunks])
                    return builtins.list(cursor.fetchall())
                return work

            found = self.shards.on_shards({s: on(chunks) for s, chunks in by_shard.items()},
                                          write=False)
            return [r for part in found.values() for r in part]

        rows = self._at_version(name, version, query)
        return _group_chunk_rows(wanted, rows)

    def rows(self, name: str, ids: Iterable[Any], *, version: int | None = None) -> dict[Any, Row]:
        """Rows by id, many at once: the director shards in parallel, then the chunk shards in
        parallel (two rounds whatever the number of ids). Unknown ids are left out."""
        def query(entry: dict[str, Any]) -> dict[Any, Row]:
            keys = [k for k in (_id_value(entry, i) for i in dict.fromkeys(ids)) if k is not None]
            main, _, director = table_names(name, entry["version"])
            by_home: dict[int, builtins.list[Any]] = {}
            for key in keys:
                by_home.setdefault(self.placement.director_shard(key), []).append(key)

            def select(table: str, columns: str,
                       wanted: builtins.list[Any]) -> Callable[[Any], builtins.list[tuple]]:
                def work(cursor: Any) -> builtins.list[tuple]:
                    found: builtins.list[tuple] = []
                    for part in changes.batches(wanted):
                        cursor.execute(f"SELECT {columns} FROM {q(table)} WHERE id IN "
                                       f"({','.join(['%s'] * len(part))})", part)
                        found += cursor.fetchall()
                    return found
                return work

            located = self.shards.on_shards(
                {s: select(director, "id, chunk_id", k) for s, k in by_home.items()},
                write=False)
            by_chunk_shard: dict[int, builtins.list[Any]] = {}
            for part in located.values():
                for key, chunk in part:
                    by_chunk_shard.setdefault(self.placement.shard_of(chunk), []).append(key)
            names = [c[0] for c in entry["columns"]]
            fetched = self.shards.on_shards(
                {s: select(main, column_list(names), k) for s, k in by_chunk_shard.items()},
                write=False)
            return {row[0]: dict(zip(names, row, strict=True))
                    for part in fetched.values() for row in part}

        return self._at_version(name, version, query)

    def get(self, name: str, object_id: Any) -> Row | None:
        """One row by id: the director gives its chunk, so one shard is read."""
        def query(entry: dict[str, Any]) -> Row | None:
            key = _id_value(entry, object_id)
            if key is None:
                return None
            main, _, director = table_names(name, entry["version"])

            def locate(cursor: Any) -> int | None:
                cursor.execute(f"SELECT chunk_id FROM {q(director)} WHERE id = %s", [key])
                row = cursor.fetchone()
                return None if row is None else int(row[0])

            chunk = self.shards.run(self.placement.director_shard(key), locate, write=False)
            if chunk is None:
                return None
            names = [c[0] for c in entry["columns"]]

            def fetch(cursor: Any) -> tuple | None:
                cursor.execute(f"SELECT {column_list(names)} FROM {q(main)} WHERE id = %s",
                               [key])
                return cursor.fetchone()

            row = self.shards.run(self.placement.shard_of(chunk), fetch, write=False)
            return None if row is None else dict(zip(names, row, strict=True))

        return self._read(name, query)

    # -- row-level changes

    def apply(self, name: str, upserts: pa.Table, deletes: Iterable[tuple[Any, int]] = (), *,
              id_col: str, ra_col: str, dec_col: str,
              version_col: str = "version") -> ApplyReport:
        """Upsert and delete single rows, each guarded by its version (see
        `broker.storage.refcat.changes`).

        ``upserts`` has the catalog's input columns (as a load would read them) and
        ``version_col``; ``deletes`` are ``(id, version)``. Every id at most once. The catalog is
        created (version 1, no rows) on first use with the columns of ``upserts``.

        The catalog's lock is held throughout, waiting up to ``lock_wait_s`` for a load or
        another change to finish (then `CatalogBusyError`, a transient error).
        """
        validate_name(name)
        self.setup()
        columns = changes.change_columns(upserts.schema, id_col, ra_col, dec_col, version_col)
        with self._exclusive(name, self.lock_wait_s):
            entry, created = self._ensure_catalog(name, columns)
            prepared = changes.prepare_changes(upserts, deletes, columns, version_col,
                                               self.chunker, entry["overlap_deg"])
            if not prepared.by_id:
                return ApplyReport(created=created)
            report = changes.apply_changes(
                self.shards, self.chunker, all_tables(name, entry["version"]), prepared,
                entry["overlap_deg"], created)
            if report.upserted or report.deleted:
                self._recount(name, entry["version"])
            return report

    def _ensure_catalog(self, name: str,
                        columns: CatalogColumns) -> tuple[dict[str, Any], bool]:
        """The registry entry of a catalog, creating it empty (version 1) if there is none,
        and its state table."""
        entry = self._registry(name)
        created = False
        if entry is None:
            self._create(table_names(name, 1), columns)
            self._write_registry(name, 1, 0, columns, replace=False)
            entry = self._current(name, fresh=True)
            created = True
        if entry["columns"] != _columns_of(columns):
            msg = (f"catalog {name!r} has the columns {entry['columns']}, the changes "
                   f"{_columns_of(columns)}")
            raise RefCatalogError(msg)
        state = state_table(name, entry["version"])
        if state not in self._states:
            # The table, then its index through the upgrade, which also brings a table made
            # by an earlier release (no changed_at) up to date.
            create_table = self.dialect.create_statements(
                _instance("refcat_state", state, columns))[0]
            now = changes.utc_now()

            def create(cursor: Any) -> None:
                cursor.execute(create_table)
                self.dialect.upgrade_state(cursor, state, now)

            self.shards.all_shards(create)
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
        before = changes.cutoff(older_than_s)
        self.setup()
        with self._exclusive(name, self.lock_wait_s):
            entry = self._current(name, fresh=True)
            state = state_table(name, entry["version"])
            if state not in self._states:
                now = changes.utc_now()

                def upgrade(cursor: Any) -> bool:
                    try:
                        self.dialect.upgrade_state(cursor, state, now)
                    except Exception as exc:
                        if self.dialect.is_missing_table(exc):
                            return False
                        raise
                    return True

                if all(self.shards.all_shards(upgrade).values()):
                    self._states.add(state)
            found = {shard: changes.purge_shard(self.shards, shard, state, before)
                     for shard in range(len(self.shards))}
        return sum(n or 0 for n in found.values())

    def _recount(self, name: str, version: int) -> None:
        """Set the registry's row count from the main tables (MyISAM counts are free)."""
        main = q(table_names(name, version)[0])

        def count(cursor: Any) -> int:
            cursor.execute(f"SELECT COUNT(*) FROM {main}")
            return int(cursor.fetchone()[0])

        total = sum(self.shards.all_shards(count, write=False).values())
        self.shards.run(0, lambda cursor: cursor.execute(
            "UPDATE refcat_registry SET `rows` = %s WHERE name = %s AND version = %s",
            [total, name, version]))

    def tables(self) -> builtins.list[str]:
        """Every ``rc_*`` table on any shard (tests check that old versions are dropped)."""
        found = self.shards.all_shards(lambda cursor: self.dialect.list_tables(cursor, "rc_"),
                                       write=False)
        return sorted({t for part in found.values() for t in part})

    def close(self) -> None:
        """Nothing of its own to release: the shard set belongs to whoever made it."""
