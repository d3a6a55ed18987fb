"""The chunked object catalog: objects, alert rows and the director, over any shard set.

One implementation for the MariaDB servers and the embedded SQLite files (`ShardSet`). Tables
and columns come from the felis schema (``objects``, ``alert_rows``, ``director``, ``layout``).

Placement (`ChunkPlacement`): an object and all its alert rows live on the shard of the chunk
the object was first placed in; its director row (object id → chunk, newest stored detection
and forced-measurement times) on the shard given by a hash of its id. Each batch costs one
transaction per touched chunk shard, in parallel, then one per touched director shard.

Idempotency of a write
----------------------
In each chunk shard's transaction: (1) the new alert rows are inserted, skipping stored ones;
(2) the touched objects' rows are locked (MariaDB; SQLite's writer already excludes others);
(3) per object and band, the count, first time and newest detection by ``(mjd, source_id)``
are read back from the stored alert rows; (4) the object rows are upserted with those values.
The position (``ra``, ``dec``, ``hpx29``) moves only if the batch's newest detection of the
object is at least as new, by ``(mjd, source_id)``, as the one that gave the stored position
(``position_mjd``, ``position_source_id``); ``last_forced_mjd`` only grows. So a batch written
twice, batches written in any order, or an older packet after a newer one leave identical rows.

The director is written last: until it is, a repeated batch rewrites the history, which is
harmless, whereas a director ahead of the rows would make ingest skip unwritten history.

Why one file: `ChunkedCatalog` is one store whose writes (alert rows, object rows, director,
enrichment results) share one placement, one transaction per shard and one idempotency rule,
stated above; the reads use the same placement, and the archived-alert reads that filters'
test runs, backfills and annotation re-runs need (`alerts_between`, `newest_alerts`) are the
same shard-local join of those tables. Past 600 lines it stays whole for that reason; a second
table family would get its own store, as the reference catalogs (`broker.storage.refcat`) and
the shard-0 tables (`broker.storage.shard0`) have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from broker.domain.alerts import flux_to_mag
from broker.domain.archive import BANDS, ArchiveBatch, ObjectUpdate, PlacedDetection, Seen
from broker.domain.enrichment import ObjectEnrichment, newest_per_object
from broker.domain.sky import (
    HPX_ORDER,
    Chunker,
    ChunkPlacement,
    SkyCells,
    check_cone,
    cone_cover,
    nearest_first,
)
from broker.exceptions import LannerError
from broker.storage import schema
from broker.storage.archive import DETECTION_COLUMNS, FEATURE_COLUMNS, OBJECT_COLUMNS
from broker.storage.dialect import column_list, marks, q
from broker.storage.shards import ShardSet
from broker.storage.stores import Row

#: Every column of the objects table (what a read returns is `OBJECT_COLUMNS`), of an alert
#: row and of a director row.
_OBJECT_TABLE_COLUMNS = tuple(c for c in schema.columns("objects") if c not in FEATURE_COLUMNS)
ALERT_ROW_COLUMNS = DETECTION_COLUMNS
DIRECTOR_COLUMNS = schema.columns("director")

#: The tables of the catalog, in creation order.
TABLES = ("objects", "alert_rows", "director", "layout", "object_context", "object_matches")

#: What `ChunkedCatalog.positions` reads of an object.
_POSITION_COLUMNS = ("object_id", "ra", "dec", "position_source_id", "position_mjd")

#: Columns of the enrich stage's results (from the felis schema).
CONTEXT_COLUMNS = schema.columns("object_context")
MATCH_COLUMNS = schema.columns("object_matches")

#: Ids per ``IN (...)`` list.
_ID_BATCH = 500


class LayoutMismatchError(LannerError):
    """The shards hold an archive laid out with other chunking or another shard count."""

    reason = "layout_mismatch"


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _batches(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _ID_BATCH):
        yield ids[start:start + _ID_BATCH]


def _alert_row(placed: PlacedDetection, chunk_id: int) -> tuple:
    d = placed.detection
    return (d.source_id, d.object_id, placed.survey, chunk_id, placed.hpx29, d.mjd, d.ra,
            d.dec, d.band, d.psf_flux, d.psf_flux_err, d.science_flux, d.science_flux_err,
            d.snr, d.reliability)


def _position_epoch(update: ObjectUpdate) -> tuple[float, int]:
    """``(mjd, source_id)`` of the batch's newest detection of the object: the packet the
    position comes from (`plan` places an object at its newest alert)."""
    if not update.latest:
        return -math.inf, 0
    newest = max(update.latest.values(), key=lambda d: (d.mjd, d.source_id))
    return newest.mjd, newest.source_id


#: Per object and band: the stored count, the first time and the newest detection.
_BAND_SUMMARY = """
SELECT object_id, band, n, first_mjd, mjd, psf_flux, psf_flux_err FROM (
  SELECT object_id, band, mjd, psf_flux, psf_flux_err,
         COUNT(*) OVER (PARTITION BY object_id, band) AS n,
         MIN(mjd) OVER (PARTITION BY object_id, band) AS first_mjd,
         ROW_NUMBER() OVER (PARTITION BY object_id, band
                            ORDER BY mjd DESC, source_id DESC) AS newest
  FROM alert_rows WHERE object_id IN ({marks})
) per_band WHERE newest = 1
"""


class ChunkedCatalog:
    """`ObjectCatalog` over a shard set (MariaDB servers or SQLite files)."""

    def __init__(self, *, shards: ShardSet, chunker: Chunker) -> None:
        self.shards = shards
        self.chunker = chunker
        self.placement = ChunkPlacement(len(shards))
        dialect = shards.dialect
        self._insert_alert_row = dialect.insert_ignore("alert_rows", ALERT_ROW_COLUMNS)
        self._upsert_object = self._object_upsert()
        self._upsert_director = dialect.upsert(
            "director", DIRECTOR_COLUMNS, ["object_id"],
            [("last_detection_mjd", dialect.newer("last_detection_mjd")),
             ("last_forced_mjd", dialect.newer("last_forced_mjd"))])
        self._insert_layout = dialect.insert_ignore("layout", ("name", "value"))

    def _object_upsert(self) -> str:
        dialect = self.shards.dialect
        new = dialect.new
        newer_position = (
            f"({new('position_mjd')} > {q('position_mjd')} OR ({new('position_mjd')} = "
            f"{q('position_mjd')} AND {new('position_source_id')} >= {q('position_source_id')}))")
        aggregates = [c for c in _OBJECT_TABLE_COLUMNS if c in (
            "first_mjd", "last_mjd", "n_detections") or c.endswith(
            ("_n", "_last_mjd", "_last_flux", "_last_flux_err"))]
        updates = [(c, new(c)) for c in aggregates]
        updates.append(("last_forced_mjd", dialect.newer("last_forced_mjd")))
        # The position columns go last, position_mjd last of all: MariaDB assigns left to
        # right with the values already assigned, and the condition reads position_mjd.
        updates += [(c, f"CASE WHEN {newer_position} THEN {new(c)} ELSE {q(c)} END")
                    for c in ("ra", "dec", "hpx29", "position_source_id", "position_mjd")]
        return dialect.upsert("objects", _OBJECT_TABLE_COLUMNS, ["object_id"], updates)

    # -- set-up

    def setup(self) -> None:
        """Create the tables on every shard; record the layout, or check it matches."""
        self.shards.ensure_database()
        statements = [s for t in TABLES
                      for s in self.shards.dialect.create_statements(schema.table(t))]
        layout = self.layout()

        def create(shard: int) -> Callable[[Any], str | None]:
            def work(cursor: Any) -> str | None:
                for statement in statements:
                    cursor.execute(statement)
                for table in TABLES:  # columns the description gained since the tables were made
                    self.shards.dialect.add_missing_columns(cursor, schema.table(table))
                # The first setup records the layout on every shard; later ones must match it,
                # or rows would be looked for on the wrong shard or in the wrong chunk.
                wanted = {**layout, "shard": str(shard)}
                cursor.executemany(self._insert_layout, list(wanted.items()))
                cursor.execute("SELECT name, value FROM layout")
                found = dict(cursor.fetchall())
                if found != wanted:
                    return (f"shard {shard} holds an archive laid out as {found}, but the "
                            f"settings give {wanted}")
                return None
            return work

        problems = self.shards.on_shards({s: create(s) for s in range(len(self.shards))})
        mismatch = next((p for p in problems.values() if p), None)
        if mismatch:
            raise LayoutMismatchError(mismatch)

    def layout(self) -> dict[str, str]:
        """What fixes where a row lives: the chunking and the shard count."""
        return {"chunk_stripes": str(self.chunker.num_stripes),
                "chunk_sub_stripes": str(self.chunker.num_sub_stripes),
                "shards": str(len(self.shards)), "placement": "chunk_id mod shards"}

    # -- writes

    def seen(self, object_ids: Iterable[str]) -> dict[str, Seen]:
        """What the director holds of each known object."""
        by_shard: dict[int, list[str]] = {}
        for object_id in dict.fromkeys(object_ids):
            by_shard.setdefault(self.placement.director_shard(object_id), []).append(object_id)

        def lookup(ids: list[str]) -> Callable[[Any], list[tuple]]:
            def work(cursor: Any) -> list[tuple]:
                rows: list[tuple] = []
                for part in _batches(ids):
                    cursor.execute(
                        "SELECT object_id, chunk_id, last_detection_mjd, last_forced_mjd "
                        f"FROM director WHERE object_id IN ({marks(len(part))})", list(part))
                    rows += cursor.fetchall()
                return rows
            return work

        found = self.shards.on_shards({s: lookup(ids) for s, ids in by_shard.items()},
                                      write=False)
        seen = {}
        for rows in found.values():
            for object_id, chunk_id, last_det, last_forced in rows:
                seen[object_id] = Seen(
                    last_detection_mjd=-math.inf if last_det is None else last_det,
                    last_forced_mjd=-math.inf if last_forced is None else last_forced,
                    chunk_id=int(chunk_id),
                )
        return seen

    def write(self, batch: ArchiveBatch) -> None:
        """Insert new alert rows and upsert object rows, then the director (idempotent).

        An object known to the director stays in the chunk the director gives, whatever chunk
        the batch was planned with (another process may have placed it meanwhile), so that its
        rows never split over two chunks.
        """
        if not batch.objects:
            return
        chunk_of: dict[str, int] = {u.object_id: u.chunk_id for u in batch.objects}
        for object_id, known in self.seen(chunk_of).items():
            if known.chunk_id is not None:
                chunk_of[object_id] = known.chunk_id
        forced_max: dict[str, float] = {}
        for measurement in batch.forced:
            forced_max[measurement.object_id] = max(
                forced_max.get(measurement.object_id, -math.inf), measurement.mjd)
        rows_by_shard: dict[int, list[tuple]] = {}
        for placed_row in batch.detections:
            chunk = chunk_of.get(placed_row.detection.object_id, placed_row.chunk_id)
            rows_by_shard.setdefault(self.placement.shard_of(chunk), []).append(
                _alert_row(placed_row, chunk))
        objects_by_shard: dict[int, list[ObjectUpdate]] = {}
        for update in sorted(batch.objects, key=lambda u: u.object_id):
            chunk = chunk_of[update.object_id]
            if chunk != update.chunk_id:
                update = dataclasses.replace(update, chunk_id=chunk)  # noqa: PLW2901
            objects_by_shard.setdefault(self.placement.shard_of(chunk), []).append(update)

        def chunk_work(shard: int) -> Callable[[Any], None]:
            def work(cursor: Any) -> None:
                rows = rows_by_shard.get(shard, [])
                if rows:
                    cursor.executemany(self._insert_alert_row, rows)
                updates = objects_by_shard[shard]
                summaries = self._band_summaries(cursor, [u.object_id for u in updates])
                cursor.executemany(self._upsert_object, [
                    _object_values(u, summaries.get(u.object_id, {}),
                                   forced_max.get(u.object_id)) for u in updates])
            return work

        self.shards.on_shards({shard: chunk_work(shard) for shard in objects_by_shard})

        last_det: dict[str, float] = {}
        for placed in batch.detections:
            object_id = placed.detection.object_id
            last_det[object_id] = max(last_det.get(object_id, -math.inf), placed.detection.mjd)
        director_by_shard: dict[int, list[tuple]] = {}
        for update in batch.objects:
            director_by_shard.setdefault(self.placement.director_shard(update.object_id),
                                         []).append((
                update.object_id, chunk_of[update.object_id],
                _finite_or_none(last_det.get(update.object_id)),
                _finite_or_none(forced_max.get(update.object_id)),
            ))

        def director_work(rows: list[tuple]) -> Callable[[Any], None]:
            def work(cursor: Any) -> None:
                cursor.executemany(self._upsert_director, sorted(rows))
            return work

        self.shards.on_shards({s: director_work(rows) for s, rows in director_by_shard.items()})

    def _band_summaries(self, cursor: Any,
                        object_ids: list[str]) -> dict[str, dict[str, tuple]]:
        """Lock the objects' rows, then read per band ``(n, first_mjd, mjd, flux, flux_err)``
        of the newest stored detection, from the stored alert rows."""
        summaries: dict[str, dict[str, tuple]] = {}
        for part in _batches(object_ids):
            if self.shards.dialect.for_update:
                cursor.execute(f"SELECT object_id FROM objects WHERE object_id IN "
                               f"({marks(len(part))}){self.shards.dialect.for_update}",
                               list(part))
                cursor.fetchall()
            cursor.execute(_BAND_SUMMARY.format(marks=marks(len(part))), list(part))
            for object_id, band, n, first, mjd, flux, flux_err in cursor.fetchall():
                summaries.setdefault(object_id, {})[band] = (int(n), first, mjd, flux, flux_err)
        return summaries

    # -- enrichment

    def write_enrichment(self, results: Iterable[ObjectEnrichment]) -> int:
        """Store the context, counterparts and features of objects, each on the shard of its
        chunk; the number of objects whose rows were (re)written.

        Only the newest alert's result per object is kept: in each shard's transaction the
        stored ``(alert_mjd, alert_id)`` of the objects are read (locked on MariaDB), and an
        object whose stored result is newer is left alone; the others get their context row
        replaced, their matches deleted and written again and their feature columns in
        ``objects`` set (a result without features leaves them as they are). So a redelivered
        or late batch changes nothing.
        """
        newest = newest_per_object(results)
        by_shard: dict[int, list[ObjectEnrichment]] = {}
        for result in sorted(newest, key=lambda r: r.object_id):
            by_shard.setdefault(self.placement.shard_of(result.chunk_id), []).append(result)
        dialect = self.shards.dialect
        upsert = dialect.upsert("object_context", CONTEXT_COLUMNS, ["object_id"],
                                [(c, dialect.new(c)) for c in CONTEXT_COLUMNS[1:]])
        insert = dialect.insert_ignore("object_matches", MATCH_COLUMNS)
        set_features = (f"UPDATE objects SET {', '.join(f'{q(c)} = %s' for c in FEATURE_COLUMNS)} "
                        "WHERE object_id = %s")

        def work(results: list[ObjectEnrichment]) -> Callable[[Any], int]:
            def run(cursor: Any) -> int:
                stored: dict[str, tuple[float, int]] = {}
                ids = [r.object_id for r in results]
                for part in _batches(ids):
                    cursor.execute(
                        f"SELECT object_id, alert_mjd, alert_id FROM object_context WHERE "
                        f"object_id IN ({marks(len(part))}){dialect.for_update}", list(part))
                    stored.update({r[0]: (float(r[1]), int(r[2])) for r in cursor.fetchall()})
                fresh = [r for r in results if r.object_id not in stored
                         or r.epoch >= stored[r.object_id]]
                if not fresh:
                    return 0
                for part in _batches([r.object_id for r in fresh]):
                    cursor.execute(f"DELETE FROM object_matches WHERE object_id IN "
                                   f"({marks(len(part))})", list(part))
                cursor.executemany(upsert, [_context_values(r) for r in fresh])
                matches = [(r.object_id, m.catalog, m.source_id, r.chunk_id, r.hpx29, m.rank,
                            m.separation_arcsec) for r in fresh for m in r.matches]
                if matches:
                    cursor.executemany(insert, matches)
                features = [(*(r.features.get(c) for c in FEATURE_COLUMNS), r.object_id)
                            for r in fresh if r.features]
                if features:
                    cursor.executemany(set_features, features)
                return len(fresh)
            return run

        written = self.shards.on_shards({s: work(rs) for s, rs in by_shard.items()})
        return sum(written.values())

    def context(self, object_id: str) -> Row | None:
        """The stored context of an object (`CONTEXT_COLUMNS`), or None."""
        rows = self._on_object_shard(
            object_id, f"SELECT {column_list(CONTEXT_COLUMNS)} FROM object_context "
                       "WHERE object_id = %s")
        return dict(zip(CONTEXT_COLUMNS, rows[0], strict=True)) if rows else None

    def features(self, object_id: str) -> Row | None:
        """The stored features of an object (`FEATURE_COLUMNS`; None each until its first
        enrichment), or None for an unknown object."""
        rows = self._on_object_shard(
            object_id, f"SELECT {column_list(FEATURE_COLUMNS)} FROM objects WHERE object_id = %s")
        return dict(zip(FEATURE_COLUMNS, rows[0], strict=True)) if rows else None

    def matches(self, object_id: str) -> list[Row]:
        """The stored counterparts of an object, by catalog, nearest first."""
        rows = self._on_object_shard(
            object_id, f"SELECT {column_list(MATCH_COLUMNS)} FROM object_matches "
                       "WHERE object_id = %s ORDER BY catalog, `rank`")
        return [dict(zip(MATCH_COLUMNS, r, strict=True)) for r in rows]

    # -- reads

    def locate_object(self, object_id: str) -> int | None:
        """The chunk of an object, from the director index."""
        def work(cursor: Any) -> int | None:
            cursor.execute("SELECT chunk_id FROM director WHERE object_id = %s", [object_id])
            row = cursor.fetchone()
            return None if row is None else int(row[0])

        return self.shards.run(self.placement.director_shard(object_id), work, write=False)

    def _on_object_shard(self, object_id: str, sql: str) -> list[tuple]:
        chunk_id = self.locate_object(object_id)
        if chunk_id is None:
            return []

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(sql, [object_id])
            return list(cursor.fetchall())

        return self.shards.run(self.placement.shard_of(chunk_id), work, write=False)

    def get_object(self, object_id: str) -> Row | None:
        rows = self._on_object_shard(
            object_id, f"SELECT {column_list(OBJECT_COLUMNS)} FROM objects WHERE object_id = %s")
        return dict(zip(OBJECT_COLUMNS, rows[0], strict=True)) if rows else None

    def alert_rows(self, object_id: str) -> list[Row]:
        """Alert rows of an object, oldest first (by mjd, then source id)."""
        rows = self._on_object_shard(
            object_id, f"SELECT {column_list(ALERT_ROW_COLUMNS)} FROM alert_rows "
                       "WHERE object_id = %s ORDER BY mjd, source_id")
        return [dict(zip(ALERT_ROW_COLUMNS, r, strict=True)) for r in rows]

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int) -> list[Row]:
        """Objects within ``radius_deg`` of (ra, dec), nearest first (ties by object id).

        Raises
        ------
        ValueError
            For a non-finite centre, dec outside [-90, 90], a radius outside [0, 180] deg or a
            negative limit.
        """
        check_cone(ra, dec, radius_deg, limit)
        if limit == 0:
            return []
        cover = cone_cover(self.chunker, ra, dec, radius_deg)
        found = cover_rows(self.shards, self.placement, cover, "objects",
                           column_list(OBJECT_COLUMNS))
        rows = [dict(zip(OBJECT_COLUMNS, r, strict=True)) for r in found]
        return nearest_first(rows, ra, dec, radius_deg, limit, key="object_id")

    def positions(self, shard: int, after: str = "", limit: int = 100_000,
                  cells: SkyCells | None = None) -> list[tuple[str, float, float, int, float]]:
        """One page of the objects of a shard, by object id after ``after``: id, ra, dec, and
        the source id and time of the detection that gave the position (what a retroactive
        watchlist or watchmap match reports as the alert). With ``cells``, only the objects
        in those HEALPix cells, chosen by the server (so the others never cross the wire)."""
        where = "object_id > %s"
        if cells is not None:
            # Integers of our own making, written out: an IN list of constants, which the
            # server sorts once and bisects per row (and SQLite's host-parameter cap is lower
            # than a cover's cell count).
            where += (f" AND (hpx29 >> {2 * (HPX_ORDER - int(cells.order))}) IN "
                      f"({','.join(str(int(c)) for c in cells.cells)})")

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_POSITION_COLUMNS)} FROM objects WHERE "
                           f"{where} ORDER BY object_id LIMIT %s", [after, limit])
            return list(cursor.fetchall())

        return [(r[0], float(r[1]), float(r[2]), int(r[3]), float(r[4]))
                for r in self.shards.run(shard, work, write=False)]

    def newest_alert_mjd(self) -> float | None:
        """The time of the newest archived alert (None for an empty archive)."""
        def work(cursor: Any) -> float | None:
            cursor.execute("SELECT MAX(mjd) FROM alert_rows")
            row = cursor.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        found = [v for v in self.shards.all_shards(work, write=False).values() if v is not None]
        return max(found) if found else None

    def count_alerts_between(self, since_mjd: float, until_mjd: float) -> int:
        """How many archived alerts have ``since_mjd <= mjd < until_mjd``."""
        def work(cursor: Any) -> int:
            cursor.execute("SELECT COUNT(*) FROM alert_rows WHERE mjd >= %s AND mjd < %s",
                           [since_mjd, until_mjd])
            return int(cursor.fetchone()[0])

        return sum(self.shards.all_shards(work, write=False).values())

    def alerts_between(self, since_mjd: float, until_mjd: float, limit: int, *,
                       features: Sequence[str] = (), matches: bool = False,
                       after: tuple[float, int] | None = None) -> list[Row]:
        """The archived alerts with ``since_mjd <= mjd < until_mjd``, newest first, at most
        ``limit``, as records shaped like ``lanner.enriched`` ones (what a filter's test run
        and backfill read); with ``after`` (the ``(mjd, alert_id)`` of the last record of the
        previous page), the oldest ``limit`` after it instead, oldest first, for paging. Each
        holds the alert row, its object's position, stored context and the named ``features``
        (as they are now: an object's features are kept for its newest alert only), and with
        ``matches`` its counterparts. Memberships of watchlists and watchmaps are the caller's
        to add (their hits are on shard 0). One read per shard, in parallel: an object's alert
        rows, row and context share its chunk's shard."""
        wanted = _wanted(features)
        where = "a.mjd >= %s AND a.mjd < %s"
        params: list[Any] = [since_mjd, until_mjd]
        order = "a.mjd DESC, a.source_id DESC"
        if after is not None:
            where += " AND (a.mjd > %s OR (a.mjd = %s AND a.source_id > %s))"
            params += [after[0], after[0], after[1]]
            order = "a.mjd, a.source_id"

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"{_alert_select(wanted)} WHERE {where} ORDER BY {order} LIMIT %s",
                           [*params, limit])
            return list(cursor.fetchall())

        found = [(shard, row) for shard, rows in self.shards.all_shards(work, write=False).items()
                 for row in rows]
        sign = 1 if after is not None else -1
        found.sort(key=lambda pair: (sign * float(pair[1][3]), sign * int(pair[1][0])))
        return self._alert_records(found[:limit], wanted, matches)

    def newest_alerts(self, object_ids: Sequence[str], *, features: Sequence[str] = (),
                      matches: bool = False) -> list[Row]:
        """The newest archived alert of each object (none for an unknown object), shaped as
        `alerts_between` shapes them: what the filters stage runs again when an object is
        annotated."""
        wanted = _wanted(features)
        found: list[tuple[int, tuple]] = []
        for object_id in dict.fromkeys(object_ids):
            chunk_id = self.locate_object(object_id)
            if chunk_id is None:
                continue
            shard = self.placement.shard_of(chunk_id)

            def work(cursor: Any, object_id: str = object_id) -> list[tuple]:
                cursor.execute(f"{_alert_select(wanted)} WHERE a.object_id = %s "
                               "ORDER BY a.mjd DESC, a.source_id DESC LIMIT 1", [object_id])
                return list(cursor.fetchall())

            found += [(shard, row) for row in self.shards.run(shard, work, write=False)]
        return self._alert_records(found, wanted, matches)

    def _alert_records(self, found: list[tuple[int, tuple]], wanted: tuple[str, ...],
                       matches: bool) -> list[Row]:
        records: list[Row] = []
        for _, r in found:
            records.append({
                "alert_id": int(r[0]), "object_id": r[1], "survey": r[2], "mjd": float(r[3]),
                "band": r[4], "mag": flux_to_mag(None if r[5] is None else float(r[5])),
                "ra": float(r[6]), "dec": float(r[7]), "context": r[8] or "unclear",
                "context_catalog": r[9], "context_source_id": r[10],
                "context_separation_arcsec": r[11], "context_offset_semimajor": r[12],
                "context_reason": r[13] or "",
                "features": dict(zip(wanted, r[14:], strict=True)), "matches": [],
                "watchlists": [], "watchmaps": []})
        if matches and records:
            by_shard: dict[int, set[str]] = {}
            for (shard, row) in found:
                by_shard.setdefault(shard, set()).add(row[1])
            of: dict[str, list[Row]] = {}
            for part in self.shards.on_shards(
                    {shard: _matches_of(sorted(ids)) for shard, ids in by_shard.items()},
                    write=False).values():
                for object_id, catalog, source_id, separation, rank in part:
                    of.setdefault(object_id, []).append(
                        {"catalog": catalog, "source_id": source_id,
                         "separation_arcsec": float(separation), "rank": int(rank)})
            for record in records:
                record["matches"] = of.get(record["object_id"], [])
        return records

    def shard_count(self) -> int:
        return len(self.shards)

    def counts(self) -> Mapping[str, int]:
        def work(cursor: Any) -> dict[str, int]:
            result = {}
            for table in ("objects", "alert_rows", "director"):
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                result[table] = int(cursor.fetchone()[0])
            return result

        totals: dict[str, int] = {}
        for part in self.shards.all_shards(work, write=False).values():
            for table, n in part.items():
                totals[table] = totals.get(table, 0) + n
        return totals

    def close(self) -> None:
        """Nothing of its own to release: the shard set belongs to whoever made it."""


def _wanted(features: Sequence[str]) -> tuple[str, ...]:
    unknown = set(features) - set(FEATURE_COLUMNS)
    if unknown:
        msg = f"not feature columns: {', '.join(sorted(unknown))}"
        raise ValueError(msg)
    return tuple(dict.fromkeys(features))


def _alert_select(wanted: tuple[str, ...]) -> str:
    """An alert row with its object's position, context and the wanted features (feature
    names are checked against the felis columns before they get here)."""
    extra = "".join(f", o.{q(f)}" for f in wanted)
    return ("SELECT a.source_id, a.object_id, a.survey, a.mjd, a.band, a.psf_flux, o.ra, "
            "o.`dec`, c.context, c.catalog, c.source_id, c.separation_arcsec, "
            f"c.offset_semimajor, c.reason{extra} FROM alert_rows a JOIN objects o ON "
            "o.object_id = a.object_id LEFT JOIN object_context c ON c.object_id = a.object_id")


def _matches_of(object_ids: list[str]) -> Callable[[Any], list[tuple]]:
    def work(cursor: Any) -> list[tuple]:
        found: list[tuple] = []
        for start in range(0, len(object_ids), 1000):
            part = object_ids[start:start + 1000]
            cursor.execute("SELECT object_id, catalog, source_id, separation_arcsec, `rank` FROM "
                           f"object_matches WHERE object_id IN ({marks(len(part))}) "
                           "ORDER BY object_id, catalog, `rank`", part)
            found += list(cursor.fetchall())
        return found
    return work


def cover_rows(shards: ShardSet, placement: ChunkPlacement, cover: Any, table: str,
               columns: str) -> list[tuple]:
    """The rows of a chunked table (``chunk_id`` and ``hpx29`` under one index) inside a cone's
    cover: one read per shard holding a touched chunk, in parallel. ``table`` is a plain
    identifier and ``columns`` quoted SQL; the distance cut is the caller's."""
    if not cover.chunks or not cover.ranges:
        return []
    ranges = " OR ".join(["(hpx29 >= %s AND hpx29 < %s)"] * len(cover.ranges))
    range_args = [v for pair in cover.ranges for v in pair]

    def on(chunks: list[int]) -> Callable[[Any], list[tuple]]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {columns} FROM {q(table)} WHERE chunk_id IN "
                           f"({marks(len(chunks))}) AND ({ranges})", [*chunks, *range_args])
            return list(cursor.fetchall())
        return work

    found = shards.on_shards({s: on(chunks)
                              for s, chunks in placement.by_shard(cover.chunks).items()},
                             write=False)
    return [row for part in found.values() for row in part]


def _context_values(result: ObjectEnrichment) -> tuple:
    values = {"object_id": result.object_id, "chunk_id": result.chunk_id,
              "hpx29": result.hpx29, "ra": result.ra, "dec": result.dec,
              "context": result.context, "catalog": result.catalog,
              "source_id": result.source_id, "separation_arcsec": result.separation_arcsec,
              "offset_semimajor": result.offset_semimajor, "reason": result.reason[:64],
              "alert_id": result.alert_id, "alert_mjd": result.alert_mjd}
    return tuple(values[c] for c in CONTEXT_COLUMNS)


def _object_values(update: ObjectUpdate, bands: Mapping[str, tuple],
                   last_forced: float | None) -> tuple:
    """The full object row a batch upserts: counts, times and per-band latest values as read
    back from the stored alert rows, the batch's position and its epoch."""
    n_total = sum(summary[0] for summary in bands.values())
    first = min((s[1] for s in bands.values()), default=None)
    last = max((s[2] for s in bands.values()), default=None)
    mjd, source_id = _position_epoch(update)
    values: dict[str, Any] = {
        "object_id": update.object_id, "survey": update.survey, "chunk_id": update.chunk_id,
        "hpx29": update.hpx29, "ra": update.ra, "dec": update.dec, "first_mjd": first,
        "last_mjd": last, "n_detections": n_total,
        "last_forced_mjd": _finite_or_none(last_forced),
        "position_mjd": mjd if math.isfinite(mjd) else -1e300, "position_source_id": source_id,
    }
    for band in BANDS:
        summary = bands.get(band)
        if summary is None:
            values.update({f"{band}_n": 0, f"{band}_last_mjd": None, f"{band}_last_flux": None,
                           f"{band}_last_flux_err": None})
        else:
            n, _, band_mjd, flux, flux_err = summary
            values.update({f"{band}_n": n, f"{band}_last_mjd": band_mjd,
                           f"{band}_last_flux": flux, f"{band}_last_flux_err": flux_err})
    return tuple(values[c] for c in _OBJECT_TABLE_COLUMNS)
