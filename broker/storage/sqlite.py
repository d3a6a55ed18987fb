"""The embedded light-curve archive: Cassandra's role, in one SQLite file.

In embedded mode there is no Cassandra: `SQLiteLightCurves` keeps detections, forced
photometry, cutouts and packets in the felis tables ``embedded_detections``,
``embedded_forced_photometry``, ``embedded_cutouts`` and ``embedded_packets`` of a one-file
`SQLiteShards`. The object catalog is not here: it is the same `ChunkedCatalog` as on the real
stack, over SQLite shard files (`broker.storage.catalog`). As on the real stack, a detection is
stored twice, once in the light curve and once as an alert row in its object's chunk.

Every write is one transaction; detections and forced measurements are keyed by their source
ids and inserted ``OR IGNORE``; cutouts and packets, keyed by the alert, are rewritten by a
repeated alert, harmlessly since the bytes are the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.domain.archive import ArchiveBatch
from broker.storage import schema
from broker.storage.dialect import column_list
from broker.storage.shards import SQLiteShards
from broker.storage.stores import History, Origin, Row

DETECTION_COLUMNS = schema.columns("embedded_detections")
FORCED_COLUMNS = schema.columns("embedded_forced_photometry")
_PACKET_COLUMNS = schema.columns("embedded_packets")
_TABLES = {"detections": "embedded_detections", "forced_photometry": "embedded_forced_photometry",
           "cutouts": "embedded_cutouts", "packets": "embedded_packets"}


#: Object ids per ``IN (...)`` list of a history read.
_IN_BATCH = 500


class SQLiteLightCurves:
    """`LightCurveArchive` in one SQLite file (embedded mode)."""

    def __init__(self, shards: SQLiteShards) -> None:
        if len(shards) != 1:
            msg = "the embedded light curves live in one SQLite file"
            raise ValueError(msg)
        self.shards = shards
        dialect = shards.dialect
        self._insert_detection = dialect.insert_ignore("embedded_detections", DETECTION_COLUMNS)
        self._insert_forced = dialect.insert_ignore("embedded_forced_photometry", FORCED_COLUMNS)
        self._replace_cutout = dialect.upsert(
            "embedded_cutouts", ("source_id", "kind", "data"), ("source_id", "kind"),
            [("data", dialect.new("data"))])
        self._replace_packet = dialect.upsert(
            "embedded_packets", _PACKET_COLUMNS, ("alert_id",),
            [(c, dialect.new(c)) for c in _PACKET_COLUMNS if c != "alert_id"])

    def setup(self) -> None:
        statements = [s for t in _TABLES.values()
                      for s in self.shards.dialect.create_statements(schema.table(t))]

        def work(cursor: Any) -> None:
            for statement in statements:
                cursor.execute(statement)

        self.shards.run(0, work)

    def write(self, batch: ArchiveBatch, origins: Mapping[int, Origin]) -> None:
        """Write detections, forced photometry, cutouts and packets in one transaction."""
        def work(cursor: Any) -> None:
            cursor.executemany(self._insert_detection, [
                (d.source_id, d.object_id, p.survey, p.chunk_id, p.hpx29, d.mjd, d.ra, d.dec,
                 d.band, d.psf_flux, d.psf_flux_err, d.science_flux, d.science_flux_err, d.snr,
                 d.reliability)
                for p in batch.detections for d in (p.detection,)])
            cursor.executemany(self._insert_forced, [
                (f.forced_id, f.object_id, f.mjd, f.band, f.psf_flux, f.psf_flux_err,
                 f.science_flux, f.science_flux_err) for f in batch.forced])
            cursor.executemany(self._replace_cutout, [
                (alert.alert_id, kind, data)
                for alert in batch.alerts for kind, data in alert.cutouts.items()])
            packets = []
            for alert in batch.alerts:
                origin = origins.get(alert.alert_id)
                packets.append((
                    alert.alert_id, alert.object_id, alert.survey.value, alert.schema,
                    origin.topic if origin else None, origin.partition if origin else None,
                    origin.offset if origin else None, alert.packet,
                ))
            cursor.executemany(self._replace_packet, packets)

        self.shards.run(0, work)

    def _rows(self, sql: str, params: list[Any]) -> list[tuple]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

        return self.shards.run(0, work, write=False)

    def lightcurve(self, object_id: str) -> list[Row]:
        """Detections of an object, oldest first (by mjd, then source id)."""
        rows = self._rows(f"SELECT {column_list(DETECTION_COLUMNS)} FROM embedded_detections "
                          "WHERE object_id = %s ORDER BY mjd, source_id", [object_id])
        return [dict(zip(DETECTION_COLUMNS, r, strict=True)) for r in rows]

    def forced_photometry(self, object_id: str) -> list[Row]:
        rows = self._rows(f"SELECT {column_list(FORCED_COLUMNS)} FROM embedded_forced_photometry "
                          "WHERE object_id = %s ORDER BY mjd, forced_id", [object_id])
        return [dict(zip(FORCED_COLUMNS, r, strict=True)) for r in rows]

    def histories(self, object_ids: Iterable[str]) -> dict[str, History]:
        """Every detection and forced measurement of each object, in one read transaction
        (the ids go in batches of `_IN_BATCH`, within SQLite's bound-parameter limit)."""
        ids = sorted(set(object_ids))
        out = {object_id: History([], []) for object_id in ids}

        def work(cursor: Any) -> None:
            for start in range(0, len(ids), _IN_BATCH):
                part = ids[start:start + _IN_BATCH]
                marks = ", ".join(["%s"] * len(part))
                for table, columns, target in (
                        ("embedded_detections", DETECTION_COLUMNS, "detections"),
                        ("embedded_forced_photometry", FORCED_COLUMNS, "forced")):
                    cursor.execute(f"SELECT {column_list(columns)} FROM {table} "
                                   f"WHERE object_id IN ({marks})", part)
                    position = columns.index("object_id")
                    for row in cursor.fetchall():
                        getattr(out[row[position]], target).append(
                            dict(zip(columns, row, strict=True)))

        if ids:
            self.shards.run(0, work, write=False)
        return out

    def cutout(self, source_id: int, kind: str) -> bytes | None:
        rows = self._rows("SELECT data FROM embedded_cutouts WHERE source_id = %s AND kind = %s",
                          [source_id, kind])
        return bytes(rows[0][0]) if rows else None

    def packet(self, alert_id: int) -> bytes | None:
        """The packet bytes, or None when the alert is unknown or was stored without them."""
        rows = self._rows("SELECT data FROM embedded_packets WHERE alert_id = %s", [alert_id])
        return bytes(rows[0][0]) if rows and rows[0][0] else None

    def origin(self, alert_id: int) -> Origin | None:
        """Where the stored packet of an alert was read from, when known."""
        rows = self._rows("SELECT topic, `partition`, `offset` FROM embedded_packets "
                          "WHERE alert_id = %s", [alert_id])
        if not rows or rows[0][0] is None:
            return None
        topic, partition, offset = rows[0]
        return Origin(topic=topic, partition=partition, offset=offset)

    def counts(self) -> dict[str, int]:
        """Rows in ``detections``, ``forced_photometry``, ``cutouts`` and ``packets``."""
        return {name: int(self._rows(f"SELECT COUNT(*) FROM {table}", [])[0][0])
                for name, table in _TABLES.items()}

    def close(self) -> None:
        """Nothing of its own to release: the shard set belongs to whoever made it."""
