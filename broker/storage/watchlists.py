"""Watchlists, their cones and their hits, on shard 0 of the catalog's shard set.

Ownership is checked here, once for every caller: a private watchlist is found only by its
owner; for anyone else it does not exist (`NotFoundError`, which the API answers 404, never
403). A public one may be read by anyone and changed only by its owner.

A watchlist is made or replaced in one transaction (its row, then its cones by the backend's
bulk insert: MariaDB's LOAD DATA, or SQLite's executemany), so a reader sees the old cones or
the new ones, never a mix, and a failed upload leaves nothing behind. Its ``version`` grows by
one at each replacement: the enrich stage polls the versions to know what to reload.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from broker.domain.watchlists import MAX_RADIUS_ARCSEC, Cones
from broker.exceptions import ConflictError
from broker.storage import schema
from broker.storage.dialect import column_list
from broker.storage.shard0 import OwnedRows, utc

T = TypeVar("T")

TABLES = ("watchlists", "watchlist_cones", "watchlist_packs", "watch_hits")
#: Hits stored by plain INSERTs at most; more go by the backend's bulk insert.
BULK_HITS = 5_000
#: Largest part of a packed list (below MariaDB's default 16 MiB packet, with room to spare).
PACK_PART_BYTES = 4 * 2**20
_COLUMNS = schema.columns("watchlists")
_CONE_COLUMNS = schema.columns("watchlist_cones")
_HIT_COLUMNS = schema.columns("watch_hits")
VISIBILITIES = ("private", "public")


@dataclass(frozen=True, slots=True)
class Watchlist:
    """A watchlist's row (its cones apart)."""

    watchlist_id: int
    owner: str
    name: str
    visibility: str
    default_radius_arcsec: float
    cones: int
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Hit:
    """An alert in a watchlist's cone."""

    watchlist_id: int
    cone_id: int
    alert_id: int
    object_id: str
    separation_arcsec: float
    mjd: float
    live: bool


@dataclass(frozen=True, slots=True)
class HitColumns:
    """Many hits as columns (numpy arrays, and a list of object ids)."""

    watchlist_id: np.ndarray
    cone_id: np.ndarray
    alert_id: np.ndarray
    object_id: list[str]
    separation_arcsec: np.ndarray
    mjd: np.ndarray
    live: np.ndarray

    def rows(self) -> list[Hit]:
        return [Hit(int(w), int(c), int(a), o, float(s), float(m), bool(v))
                for w, c, a, o, s, m, v in zip(
                    self.watchlist_id.tolist(), self.cone_id.tolist(), self.alert_id.tolist(),
                    self.object_id, self.separation_arcsec.tolist(), self.mjd.tolist(),
                    self.live.tolist(), strict=True)]


def _watchlist(row: Sequence[Any]) -> Watchlist:
    return Watchlist(int(row[0]), row[1], row[2], row[3], float(row[4]), int(row[5]),
                     int(row[6]), utc(row[7]), utc(row[8]))


def check_visibility(visibility: str) -> str:
    if visibility not in VISIBILITIES:
        msg = f"visibility {visibility!r} is not private or public"
        raise ValueError(msg)
    return visibility


class WatchlistStore(OwnedRows[Watchlist]):
    """Watchlists over a shard set (tables on shard 0)."""

    TABLES = TABLES
    WHAT = "watchlist"
    TABLE = "watchlists"
    KEY = "watchlist_id"
    LISTED = _COLUMNS

    # -- reads (get, owned, visible: `OwnedRows`)

    def _make(self, row: Sequence[Any]) -> Watchlist:
        return _watchlist(row)

    def cones(self, watchlist_id: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """A watchlist's cones as columns: cone ids, names, ra, dec, radius (by cone id), from
        its packed copy (a few rows: a million cones load in well under a second) or, for a
        list stored before packs existed, its rows."""
        def packed(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT data FROM watchlist_packs WHERE watchlist_id = %s "
                           "ORDER BY part", [watchlist_id])
            return list(cursor.fetchall())

        parts = self._run(packed, write=False)
        if parts:
            table = pa.ipc.open_stream(b"".join(bytes(p[0]) for p in parts)).read_all()
            return (table.column("cone_id").to_numpy(), table.column("name").to_pylist(),
                    table.column("ra").to_numpy(), table.column("dec").to_numpy(),
                    table.column("radius_arcsec").to_numpy())
        return self._cone_rows(watchlist_id)

    def _cone_rows(self, watchlist_id: int) -> tuple[np.ndarray, list[str], np.ndarray,
                                                     np.ndarray, np.ndarray]:
        def work(cursor: Any) -> list[tuple]:
            columns = column_list(("cone_id", "name", "ra", "dec", "radius_arcsec"))
            cursor.execute(f"SELECT {columns} FROM watchlist_cones WHERE watchlist_id = %s "
                           "ORDER BY cone_id", [watchlist_id])
            return list(cursor.fetchall())

        rows = self._run(work, write=False)
        return (np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows],
                np.array([r[2] for r in rows], dtype=np.float64),
                np.array([r[3] for r in rows], dtype=np.float64),
                np.array([r[4] for r in rows], dtype=np.float64))

    def versions(self) -> dict[int, int]:
        """Every watchlist's version: what the enrich stage polls."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT watchlist_id, version FROM watchlists")
            return list(cursor.fetchall())

        return {int(a): int(b) for a, b in self._run(work, write=False)}

    def for_object(self, object_id: str, caller: str | None) -> list[dict[str, Any]]:
        """The watchlist cones an object has been found in that ``caller`` may see (their own
        lists and public ones), by watchlist then cone."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(
                "SELECT DISTINCT w.watchlist_id, w.owner, w.name, c.cone_id, c.name FROM "
                "watch_hits h JOIN watchlists w ON w.watchlist_id = h.watchlist_id JOIN "
                "watchlist_cones c ON c.watchlist_id = h.watchlist_id AND c.cone_id = h.cone_id "
                "WHERE h.object_id = %s AND (w.owner = %s OR w.visibility = 'public') "
                "ORDER BY w.watchlist_id, c.cone_id", [object_id, caller or ""])
            return list(cursor.fetchall())

        return [{"watchlist_id": int(r[0]), "owner": r[1], "name": r[2], "cone_id": int(r[3]),
                 "cone_name": r[4]} for r in self._run(work, write=False)]

    def hits_for_alerts(self, alert_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Every stored hit of these alerts, of every watchlist (a filter's test run adds them
        to archived alerts; what a filter may name is checked before)."""
        found: list[tuple] = []
        ids = sorted(set(alert_ids))
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]

            def work(cursor: Any, part: list[int] = part) -> list[tuple]:
                cursor.execute(
                    "SELECT h.alert_id, h.watchlist_id, h.cone_id, c.name, h.separation_arcsec "
                    "FROM watch_hits h JOIN watchlist_cones c ON c.watchlist_id = "
                    "h.watchlist_id AND c.cone_id = h.cone_id WHERE h.alert_id IN "
                    f"({', '.join(['%s'] * len(part))})", part)
                return list(cursor.fetchall())

            found += self._run(work, write=False)
        return [{"alert_id": int(r[0]), "watchlist_id": int(r[1]), "cone_id": int(r[2]),
                 "cone_name": r[3], "separation_arcsec": float(r[4])} for r in found]

    # -- writes

    def create(self, owner: str, name: str, cones: Cones, *, visibility: str = "private",
               default_radius_arcsec: float = 2.0) -> Watchlist:
        """Make a watchlist with its cones; `ConflictError` if the owner has one of that
        name."""
        check_visibility(visibility)
        _check_list_name(name, default_radius_arcsec)
        now = self.dialect.time_value(self.clock())
        watchlist_id = secrets.randbits(53) or 1

        def work(cursor: Any) -> int:
            cursor.execute(self.dialect.insert_ignore("watchlists", _COLUMNS), [
                watchlist_id, owner, name, visibility, default_radius_arcsec, len(cones), 1,
                now, now])
            if int(cursor.rowcount) == 0:
                return 0
            self._insert_cones(cursor, watchlist_id, cones)
            return 1

        if self._run(work) == 0:
            msg = f"you have a watchlist named {name!r} already"
            raise ConflictError(msg)
        return self.get(watchlist_id, owner)

    def replace(self, watchlist_id: int, caller: str, cones: Cones, *,
                visibility: str | None = None,
                default_radius_arcsec: float | None = None) -> Watchlist:
        """Replace an owned watchlist's cones (and optionally its visibility and default
        radius) in one transaction; its version grows by one."""
        current = self.owned(watchlist_id, caller)
        visibility = check_visibility(visibility or current.visibility)
        radius = (current.default_radius_arcsec if default_radius_arcsec is None
                  else default_radius_arcsec)
        _check_list_name(current.name, radius)
        now = self.dialect.time_value(self.clock())

        def work(cursor: Any) -> None:
            for table in ("watchlist_cones", "watchlist_packs"):
                cursor.execute(f"DELETE FROM {table} WHERE watchlist_id = %s", [watchlist_id])
            self._insert_cones(cursor, watchlist_id, cones)
            cursor.execute("UPDATE watchlists SET cones = %s, version = version + 1, "
                           "visibility = %s, default_radius_arcsec = %s, updated_at = %s "
                           "WHERE watchlist_id = %s",
                           [len(cones), visibility, radius, now, watchlist_id])

        self._run(work)
        return self.get(watchlist_id, caller)

    def delete(self, watchlist_id: int, caller: str) -> None:
        """Delete an owned watchlist, its cones and its hits."""
        self.owned(watchlist_id, caller)

        def work(cursor: Any) -> None:
            for table in ("watch_hits", "watchlist_cones", "watchlist_packs", "watchlists"):
                cursor.execute(f"DELETE FROM {table} WHERE watchlist_id = %s", [watchlist_id])

        self._run(work)

    def _insert_cones(self, cursor: Any, watchlist_id: int, cones: Cones) -> None:
        n = len(cones)
        table = pa.table({
            "watchlist_id": pa.array(np.full(n, watchlist_id, dtype=np.int64)),
            "cone_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "name": pa.array(cones.name, type=pa.string()),
            "ra": pa.array(cones.ra), "dec": pa.array(cones.dec),
            "radius_arcsec": pa.array(cones.radius_arcsec)})
        with tempfile.TemporaryDirectory(prefix="lanner-cones-") as folder:
            stored = self.dialect.bulk_insert(cursor, "watchlist_cones", _CONE_COLUMNS, table,
                                              folder)
        if stored != n:
            msg = f"stored {stored} of {n} cones of watchlist {watchlist_id}"
            raise RuntimeError(msg)
        sink = pa.BufferOutputStream()
        packed = table.drop_columns(["watchlist_id"])
        with pa.ipc.new_stream(sink, packed.schema) as writer:
            writer.write_table(packed)
        data = sink.getvalue().to_pybytes()
        cursor.executemany(
            "INSERT INTO watchlist_packs (watchlist_id, part, data) VALUES (%s, %s, %s)",
            [(watchlist_id, i, data[start:start + PACK_PART_BYTES])
             for i, start in enumerate(range(0, len(data), PACK_PART_BYTES))])

    # -- hits

    def add_hits(self, hits: Iterable[Hit]) -> int:
        """Store hits, each once (a hit found again changes nothing); how many were new."""
        rows = [(h.watchlist_id, h.cone_id, h.alert_id, h.object_id, h.separation_arcsec,
                 h.mjd, h.live) for h in hits]
        if not rows:
            return 0
        now = self.dialect.time_value(self.clock())
        if len(rows) <= BULK_HITS or not isinstance(now, datetime):
            def work(cursor: Any) -> int:
                cursor.executemany(self.dialect.insert_ignore("watch_hits", _HIT_COLUMNS),
                                   [(*r, now) for r in rows])
                return int(cursor.rowcount)

            return self._run(work)
        columns = list(zip(*rows, strict=True))
        return self.add_hit_columns(
            HitColumns(np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=np.int64),
                       np.array(columns[2], dtype=np.int64), list(columns[3]),
                       np.array(columns[4]), np.array(columns[5]),
                       np.array(columns[6], dtype=bool)))

    def add_hit_columns(self, hits: HitColumns) -> int:
        """`add_hits` for many hits held as columns (a retroactive match's page), with no
        Python object per hit: MariaDB's LOAD DATA, which skips stored keys too, of rows in
        primary-key order (the cheapest order for InnoDB to insert)."""
        if hits.cone_id.size == 0:
            return 0
        now = self.dialect.time_value(self.clock())
        if not isinstance(now, datetime):  # SQLite: plain INSERTs
            return self.add_hits(hits.rows())
        order = np.lexsort((hits.alert_id, hits.cone_id, hits.watchlist_id))
        table = pa.table({
            "watchlist_id": hits.watchlist_id[order], "cone_id": hits.cone_id[order],
            "alert_id": hits.alert_id[order],
            "object_id": pa.array(hits.object_id, type=pa.string()).take(pa.array(order)),
            "separation_arcsec": hits.separation_arcsec[order], "mjd": hits.mjd[order],
            "live": hits.live[order].astype(np.int8),  # BOOLEAN is TINYINT: 0 or 1
            "found_at": pa.nulls(order.size, pa.timestamp("us")).fill_null(
                pa.scalar(now, pa.timestamp("us")))})
        with tempfile.TemporaryDirectory(prefix="lanner-hits-") as folder:
            return self._run(lambda cursor: self.dialect.bulk_insert(
                cursor, "watch_hits", _HIT_COLUMNS, table.select(list(_HIT_COLUMNS)), folder))

    def hits(self, watchlist_id: int, caller: str | None, *, limit: int = 100,
             after: tuple[float, int, int] | None = None) -> list[dict[str, Any]]:
        """A readable watchlist's hits, newest alert first, ``limit`` at a time; ``after`` is
        the (mjd, cone_id, alert_id) of the last hit of the previous page."""
        self.get(watchlist_id, caller)
        where = "h.watchlist_id = %s"
        params: list[Any] = [watchlist_id]
        if after is not None:
            where += (" AND (h.mjd < %s OR (h.mjd = %s AND (h.cone_id > %s OR (h.cone_id = %s "
                      "AND h.alert_id > %s))))")
            params += [after[0], after[0], after[1], after[1], after[2]]

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(
                "SELECT h.cone_id, c.name, h.alert_id, h.object_id, h.separation_arcsec, h.mjd, "
                "h.live, h.found_at FROM watch_hits h JOIN watchlist_cones c ON "
                "c.watchlist_id = h.watchlist_id AND c.cone_id = h.cone_id "
                f"WHERE {where} ORDER BY h.mjd DESC, h.cone_id, h.alert_id LIMIT %s",
                [*params, limit])
            return list(cursor.fetchall())

        return [{"cone_id": int(r[0]), "cone_name": r[1], "alert_id": int(r[2]),
                 "object_id": r[3], "separation_arcsec": float(r[4]), "mjd": float(r[5]),
                 "live": bool(r[6]), "found_at": utc(r[7])}
                for r in self._run(work, write=False)]


def _check_list_name(name: str, default_radius_arcsec: float) -> None:
    if not name or len(name) > 64 or not name.isprintable():
        msg = "a watchlist's name is 1 to 64 printable characters"
        raise ValueError(msg)
    if not 0.0 < default_radius_arcsec <= MAX_RADIUS_ARCSEC:
        msg = (f"the default radius {default_radius_arcsec:g} is not in "
               f"(0, {MAX_RADIUS_ARCSEC:g}] arcsec")
        raise ValueError(msg)
