"""Cassandra through the DataStax driver: the connection and the light-curve archive."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from cassandra import OperationTimedOut
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.concurrent import execute_concurrent
from cassandra.connection import ConnectionBusy
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType

from broker.config import Settings
from broker.domain.archive import ArchiveBatch
from broker.exceptions import ArchiveIntegrityError, ServiceUnavailableError
from broker.storage.archive import DETECTION_COLUMNS, FORCED_COLUMNS
from broker.storage.stores import History, Origin, Row
from broker.streaming import packets

#: The single local node starts in this data centre (SimpleSnitch's name for it).
LOCAL_DC = "datacenter1"

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

# The driver warns at INFO about defaults we set on purpose; keep its chatter out of our logs.
logging.getLogger("cassandra").setLevel(logging.WARNING)
log = structlog.get_logger(__name__)


def make_cluster(hosts: list[str], port: int, *, connect_timeout: float = 10.0) -> Cluster:
    """A driver cluster with token-aware routing in the local data centre."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=LOCAL_DC)),
        request_timeout=30.0,
    )
    return Cluster(hosts, port=port, protocol_version=5, connect_timeout=connect_timeout,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


class CassandraConnection:
    """Owns the driver cluster of one process and hands out the archive keyspace's session."""

    def __init__(self, *, hosts: list[str], port: int, keyspace: str) -> None:
        if not _IDENTIFIER.fullmatch(keyspace):
            msg = f"keyspace name {keyspace!r} is not a plain lower-case identifier"
            raise ValueError(msg)
        self.hosts = hosts
        self.port = port
        self.keyspace = keyspace
        self._cluster: Cluster | None = None
        self._session: Session | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CassandraConnection:
        return cls(hosts=settings.cassandra_hosts, port=settings.cassandra_port,
                   keyspace=settings.cassandra_keyspace)

    def session(self) -> Session:
        """A session bound to the keyspace, created (replication factor 1) if missing."""
        if self._session is not None:
            return self._session
        self._cluster = make_cluster(self.hosts, self.port)
        try:
            session = self._cluster.connect()
        except Exception as exc:
            self._cluster.shutdown()
            self._cluster = None
            where = ",".join(self.hosts)
            msg = f"Cassandra at {where}:{self.port} does not answer: {exc}"
            raise ServiceUnavailableError(msg) from exc
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.set_keyspace(self.keyspace)
        self._session = session
        return session

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = None
        self._session = None


#: ``schemas/cql`` of the repository, carried by the package as ``broker/data/schemas``.
_SCHEMA_FILE = Path(str(resources.files("broker") / "data" / "schemas" / "cql" / "archive.cql"))

_INSERTS = {
    "detections": ("object_id", "mjd", "source_id", "survey", "chunk_id", "hpx29", "ra", "dec",
                   "band", "psf_flux", "psf_flux_err", "science_flux", "science_flux_err", "snr",
                   "reliability"),
    "forced_photometry": ("object_id", "mjd", "forced_id", "band", "psf_flux", "psf_flux_err",
                          "science_flux", "science_flux_err"),
    "cutouts": ("source_id", "kind", "data"),
    "packets": ("alert_id", "object_id", "survey", "alert_schema", "topic", "kafka_partition",
                "kafka_offset", "data", "stripped"),
}


class CassandraLightCurves:
    """`LightCurveArchive` in Cassandra: one partition per object, rows clustered by time.

    A batch is written as one unlogged batch of prepared inserts per partition, sent
    concurrently (up to ``concurrency`` requests in flight); the call returns only when every
    request is acknowledged, so the stage can commit its offsets after it.
    """

    def __init__(self, *, connection: CassandraConnection, concurrency: int = 96) -> None:
        self.connection = connection
        self.concurrency = concurrency
        self._prepared: dict[str, Any] = {}

    def setup(self) -> None:
        session = self.connection.session()
        text = "\n".join(line for line in _SCHEMA_FILE.read_text().splitlines()
                         if not line.lstrip().startswith("--"))
        for statement in (s.strip() for s in text.split(";")):
            if statement:
                session.execute(statement, timeout=60)

    def _insert(self, table: str) -> Any:
        prepared = self._prepared.get(table)
        if prepared is None:
            columns = _INSERTS[table]
            prepared = self.connection.session().prepare(
                f"INSERT INTO {self.connection.keyspace}.{table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})"
            )
            self._prepared[table] = prepared
        return prepared

    def write(self, batch: ArchiveBatch, origins: Mapping[int, Origin]) -> None:
        # Rows sharing a partition go as one unlogged batch: a single mutation on the replica,
        # one request instead of dozens (an object's first packet carries a year of history).
        per_partition: dict[tuple[str, object], BatchStatement] = {}

        def add(table: str, key: tuple[str, object], values: tuple) -> None:
            statement = per_partition.get(key)
            if statement is None:
                statement = BatchStatement(batch_type=BatchType.UNLOGGED)
                per_partition[key] = statement
            statement.add(self._insert(table), values)

        for placed in batch.detections:
            d = placed.detection
            add("detections", ("detections", d.object_id), (
                d.object_id, d.mjd, d.source_id, placed.survey, placed.chunk_id, placed.hpx29,
                d.ra, d.dec, d.band, d.psf_flux, d.psf_flux_err, d.science_flux,
                d.science_flux_err, d.snr, d.reliability))
        for f in batch.forced:
            add("forced_photometry", ("forced_photometry", f.object_id), (
                f.object_id, f.mjd, f.forced_id, f.band, f.psf_flux, f.psf_flux_err,
                f.science_flux, f.science_flux_err))
        for alert in batch.alerts:
            # The cutouts and the packet share the partition key value (the alert id), so one
            # unlogged batch of both is a single mutation: applied together, never half (a
            # packet stored without its cutouts is rebuilt from them).
            key = ("alert", alert.alert_id)
            for kind, data in alert.cutouts.items():
                add("cutouts", key, (alert.alert_id, kind, data))
            data, stripped = alert.packet, None
            schema_id = packets.schema_id_of(alert.schema)
            if schema_id is not None:
                head = packets.strip(alert.packet, schema_id, alert.cutouts)
                if head is not None:
                    data = head
                    stripped = [k for k in packets.trailing_cutouts(schema_id)
                                if alert.cutouts.get(k) is not None]
            origin = origins.get(alert.alert_id)
            add("packets", key, (
                alert.alert_id, alert.object_id, alert.survey.value, alert.schema,
                origin.topic if origin else None, origin.partition if origin else None,
                origin.offset if origin else None, data, stripped))
        if not per_partition:
            return
        self._send([(statement, ()) for statement in per_partition.values()])

    def _send(self, statements: list[tuple[BatchStatement, tuple]]) -> None:
        """Send every statement, up to ``concurrency`` in flight; raise if any fails.

        The driver refuses a request outright (`ConnectionBusy`, never sent) while the
        connection's socket buffer is full, which large requests in flight cause: an object's
        first realistic packet carries a year of history and its stamps, a few hundred kB.
        Sending the whole batch again refuses about as many again (realistic batches of 500
        alerts failed that way for minutes on end), so the refused statements alone are sent
        again, half as many at a time, as long as each round gets some through; any other
        failure, or a round that gets none through, is a `ServiceUnavailableError` for the
        stage to retry.
        """
        session = self.connection.session()
        pending, concurrency = statements, self.concurrency
        while True:
            try:
                results = execute_concurrent(session, pending, concurrency=concurrency,
                                             raise_on_first_error=False)
            except (NoHostAvailable, OperationTimedOut) as exc:
                raise ServiceUnavailableError(f"Cassandra write failed: {exc}") from exc
            failed = [(statement, result) for statement, (ok, result)
                      in zip(pending, results, strict=True) if not ok]
            if not failed:
                return
            refused = [statement for statement, result in failed if _refused_busy(result)]
            if len(refused) < len(failed) or len(failed) == len(pending):
                msg = (f"{len(failed)} of {len(statements)} Cassandra writes failed: "
                       f"{failed[0][1]}")
                raise ServiceUnavailableError(msg)
            log.debug("Cassandra connection busy, sending refused writes again",
                      refused=len(refused), of=len(statements))
            pending, concurrency = refused, max(1, concurrency // 2)

    def _rows(self, query: str, args: tuple) -> list[Row]:
        try:
            result = self.connection.session().execute(query, args, timeout=30)
        except (NoHostAvailable, OperationTimedOut) as exc:
            raise ServiceUnavailableError(f"Cassandra read failed: {exc}") from exc
        return [dict(row._asdict()) for row in result]

    def _table(self, name: str) -> str:
        return f"{self.connection.keyspace}.{name}"

    def lightcurve(self, object_id: str) -> list[Row]:
        rows = self._rows(f"SELECT {', '.join(DETECTION_COLUMNS)} FROM "
                          f"{self._table('detections')} WHERE object_id = %s", (object_id,))
        return [{c: r[c] for c in DETECTION_COLUMNS} for r in rows]

    def forced_photometry(self, object_id: str) -> list[Row]:
        rows = self._rows(f"SELECT {', '.join(FORCED_COLUMNS)} FROM "
                          f"{self._table('forced_photometry')} WHERE object_id = %s",
                          (object_id,))
        return [{c: r[c] for c in FORCED_COLUMNS} for r in rows]

    def histories(self, object_ids: Iterable[str]) -> dict[str, History]:
        """Every detection and forced measurement of each object: two prepared queries per
        object, up to ``concurrency`` in flight (one partition each, read whole)."""
        ids = sorted(set(object_ids))
        if not ids:
            return {}
        statements = [(self._select(table), (object_id,))
                      for object_id in ids for table in ("detections", "forced_photometry")]
        try:
            results = execute_concurrent(self.connection.session(), statements,
                                         concurrency=self.concurrency,
                                         raise_on_first_error=False, results_generator=False)
        except (NoHostAvailable, OperationTimedOut) as exc:
            raise ServiceUnavailableError(f"Cassandra read failed: {exc}") from exc
        out: dict[str, History] = {}
        for i, object_id in enumerate(ids):
            (ok_d, det), (ok_f, forced) = results[2 * i], results[2 * i + 1]
            if not (ok_d and ok_f):
                raise ServiceUnavailableError(
                    f"Cassandra read failed: {det if not ok_d else forced}")
            out[object_id] = History(
                [dict(zip(DETECTION_COLUMNS, row, strict=True)) for row in det],
                [dict(zip(FORCED_COLUMNS, row, strict=True)) for row in forced])
        return out

    def _select(self, table: str) -> Any:
        key = f"select:{table}"
        prepared = self._prepared.get(key)
        if prepared is None:
            columns = DETECTION_COLUMNS if table == "detections" else FORCED_COLUMNS
            prepared = self.connection.session().prepare(
                f"SELECT {', '.join(columns)} FROM {self.connection.keyspace}.{table} "
                "WHERE object_id = ?")
            prepared.fetch_size = None  # a light curve is read whole, never paged
            self._prepared[key] = prepared
        return prepared

    def cutout(self, source_id: int, kind: str) -> bytes | None:
        rows = self._rows(f"SELECT data FROM {self._table('cutouts')} "
                          "WHERE source_id = %s AND kind = %s", (source_id, kind))
        return rows[0]["data"] if rows else None

    def packet(self, alert_id: int) -> bytes | None:
        """The original packet bytes, rebuilt from the head and the cutouts if stored split;
        None when the alert is unknown or was stored without its bytes (as embedded)."""
        rows = self._rows(f"SELECT data, alert_schema, stripped FROM {self._table('packets')} "
                          "WHERE alert_id = %s", (alert_id,))
        if not rows:
            return None
        row = rows[0]
        if not row["stripped"]:
            return row["data"] or None
        schema_id = packets.schema_id_of(row["alert_schema"])
        cutouts = {r["kind"]: r["data"] for r in self._rows(
            f"SELECT kind, data FROM {self._table('cutouts')} WHERE source_id = %s",
            (alert_id,))}
        missing = [k for k in row["stripped"] if k not in cutouts]
        if schema_id is None or missing:
            msg = (f"packet of alert {alert_id} cannot be rebuilt: it was stored without its "
                   f"cutouts and {', '.join(missing) or 'its schema'} is gone")
            raise ArchiveIntegrityError(msg)
        return packets.rebuild(row["data"], schema_id, {k: cutouts[k] for k in row["stripped"]})

    def counts(self) -> Mapping[str, int]:
        # Full scans: for tests and small archives only.
        return {table: int(self._rows(f"SELECT COUNT(*) AS n FROM {self._table(table)}",
                                      ())[0]["n"])
                for table in _INSERTS}

    def close(self) -> None:
        self.connection.close()


def _refused_busy(error: object) -> bool:
    """True for a request the driver refused because the connection was busy (not sent)."""
    if isinstance(error, ConnectionBusy):
        return True
    if not isinstance(error, NoHostAvailable) or not error.errors:
        return False
    return all(isinstance(e, ConnectionBusy) for e in error.errors.values())
