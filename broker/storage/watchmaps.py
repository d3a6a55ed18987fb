"""Watchmaps and their hits, on shard 0 (`broker.storage.shard0`).

A watchmap is kept as its MOC's ASCII serialisation with its area; the rules (parsing, skymap
credible regions, containment) are in `broker.domain.watchmaps`. Ownership as for watchlists:
another user's private watchmap does not exist for the caller (404), a public one can be read
by anyone and changed by its owner only. A replacement bumps the version, which the enrich
stage polls.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mocpy import MOC

from broker.domain.watchmaps import area_sq_deg, to_text
from broker.exceptions import ConflictError
from broker.storage import schema
from broker.storage.dialect import column_list
from broker.storage.shard0 import OwnedRows, utc
from broker.storage.watchlists import check_visibility

TABLES = ("watchmaps", "watchmap_hits")
_COLUMNS = schema.columns("watchmaps")
_LISTED = tuple(c for c in _COLUMNS if c != "moc")
_HIT_COLUMNS = schema.columns("watchmap_hits")


@dataclass(frozen=True, slots=True)
class Watchmap:
    """A watchmap's row (its MOC apart)."""

    watchmap_id: int
    owner: str
    name: str
    visibility: str
    source: str
    credible_level: float | None
    area_sq_deg: float
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MapHit:
    """An alert whose object lay in a watchmap."""

    watchmap_id: int
    alert_id: int
    object_id: str
    ra: float
    dec: float
    mjd: float
    live: bool


def _watchmap(row: Sequence[Any]) -> Watchmap:
    values = dict(zip(_LISTED, row, strict=True))
    return Watchmap(int(values["watchmap_id"]), values["owner"], values["name"],
                    values["visibility"], values["source"],
                    None if values["credible_level"] is None else float(values["credible_level"]),
                    float(values["area_sq_deg"]), int(values["version"]),
                    utc(values["created_at"]), utc(values["updated_at"]))


class WatchmapStore(OwnedRows[Watchmap]):
    """Watchmaps over a shard set (tables on shard 0); `get`, `owned` and `visible` come
    from `OwnedRows`."""

    TABLES = TABLES
    WHAT = "watchmap"
    TABLE = "watchmaps"
    KEY = "watchmap_id"
    LISTED = _LISTED

    def _make(self, row: Sequence[Any]) -> Watchmap:
        return _watchmap(row)

    def hits_for_alerts(self, alert_ids: Sequence[int]) -> list[tuple[int, int]]:
        """(alert id, watchmap id) of every stored hit of these alerts, of every watchmap."""
        found: list[tuple[int, int]] = []
        ids = sorted(set(alert_ids))
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]

            def work(cursor: Any, part: list[int] = part) -> list[tuple]:
                cursor.execute("SELECT alert_id, watchmap_id FROM watchmap_hits WHERE alert_id "
                               f"IN ({', '.join(['%s'] * len(part))})", part)
                return list(cursor.fetchall())

            found += [(int(a), int(m)) for a, m in self._run(work, write=False)]
        return found

    def moc(self, watchmap_id: int) -> str:
        """A watchmap's MOC, as stored (ASCII)."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute("SELECT moc FROM watchmaps WHERE watchmap_id = %s", [watchmap_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        return "" if row is None else str(row[0])

    def for_object(self, object_id: str, caller: str | None) -> list[dict[str, Any]]:
        """The watchmaps an object has been found in that ``caller`` may see."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(
                "SELECT DISTINCT m.watchmap_id, m.owner, m.name FROM watchmap_hits h JOIN "
                "watchmaps m ON m.watchmap_id = h.watchmap_id WHERE h.object_id = %s AND "
                "(m.owner = %s OR m.visibility = 'public') ORDER BY m.watchmap_id",
                [object_id, caller or ""])
            return list(cursor.fetchall())

        return [{"watchmap_id": int(r[0]), "owner": r[1], "name": r[2]}
                for r in self._run(work, write=False)]

    def versions(self) -> dict[int, int]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT watchmap_id, version FROM watchmaps")
            return list(cursor.fetchall())

        return {int(a): int(b) for a, b in self._run(work, write=False)}

    def create(self, owner: str, name: str, moc: MOC, *, source: str,
               credible_level: float | None = None, visibility: str = "private") -> Watchmap:
        check_visibility(visibility)
        if not name or len(name) > 64 or not name.isprintable():
            msg = "a watchmap's name is 1 to 64 printable characters"
            raise ValueError(msg)
        now = self._now()
        watchmap_id = secrets.randbits(53) or 1
        values = [watchmap_id, owner, name, visibility, source, credible_level,
                  area_sq_deg(moc), to_text(moc), 1, now, now]

        def work(cursor: Any) -> int:
            cursor.execute(self.dialect.insert_ignore("watchmaps", _COLUMNS), values)
            return int(cursor.rowcount)

        if self._run(work) == 0:
            msg = f"you have a watchmap named {name!r} already"
            raise ConflictError(msg)
        return self.get(watchmap_id, owner)

    def replace(self, watchmap_id: int, caller: str, moc: MOC, *, source: str,
                credible_level: float | None = None,
                visibility: str | None = None) -> Watchmap:
        current = self.owned(watchmap_id, caller)
        visibility = check_visibility(visibility or current.visibility)
        self._run(lambda cursor: cursor.execute(
            "UPDATE watchmaps SET moc = %s, area_sq_deg = %s, source = %s, credible_level = %s, "
            "visibility = %s, version = version + 1, updated_at = %s WHERE watchmap_id = %s",
            [to_text(moc), area_sq_deg(moc), source, credible_level, visibility, self._now(),
             watchmap_id]))
        return self.get(watchmap_id, caller)

    def delete(self, watchmap_id: int, caller: str) -> None:
        self.owned(watchmap_id, caller)

        def work(cursor: Any) -> None:
            for table in ("watchmap_hits", "watchmaps"):
                cursor.execute(f"DELETE FROM {table} WHERE watchmap_id = %s", [watchmap_id])

        self._run(work)

    def add_hits(self, hits: Iterable[MapHit]) -> int:
        now = self._now()
        rows = [(h.watchmap_id, h.alert_id, h.object_id, h.ra, h.dec, h.mjd, h.live, now)
                for h in hits]
        if not rows:
            return 0

        def work(cursor: Any) -> int:
            cursor.executemany(self.dialect.insert_ignore("watchmap_hits", _HIT_COLUMNS), rows)
            return int(cursor.rowcount)

        return self._run(work)

    def hits(self, watchmap_id: int, caller: str | None, *, limit: int = 100,
             after: tuple[float, int] | None = None) -> list[dict[str, Any]]:
        """A readable watchmap's hits, newest alert first; ``after`` is the (mjd, alert_id) of
        the last hit of the previous page."""
        self.get(watchmap_id, caller)
        where = "watchmap_id = %s"
        params: list[Any] = [watchmap_id]
        if after is not None:
            where += " AND (mjd < %s OR (mjd = %s AND alert_id > %s))"
            params += [after[0], after[0], after[1]]
        columns = ("alert_id", "object_id", "ra", "dec", "mjd", "live", "found_at")

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(columns)} FROM watchmap_hits WHERE {where} "
                           "ORDER BY mjd DESC, alert_id LIMIT %s", [*params, limit])
            return list(cursor.fetchall())

        return [{"alert_id": int(r[0]), "object_id": r[1], "ra": float(r[2]),
                 "dec": float(r[3]), "mjd": float(r[4]), "live": bool(r[5]),
                 "found_at": utc(r[6])} for r in self._run(work, write=False)]
