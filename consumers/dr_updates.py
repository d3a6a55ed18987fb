"""The dr-updates stage: data-release Object changes from ``dr.updates`` into a reference catalog.

Per batch: decode every ``lanner.dr_update`` record (bad bytes, unknown schema ids, a missing id
or version, and upserts whose coordinates are missing, NaN or out of range go to the
dead-letter topic with their bytes, reason, topic, partition and offset), collapse the batch to
the newest version of each object, apply the upserts and deletes to the catalog in one call
(`ChunkedRefCatalogs.apply`: version-guarded, tombstones for
deletes, rows moved between chunks, halos and shards as their positions change), publish the
dead letters and wait for them, and only then commit the offsets. A store that fails makes the
stage retry the same batch with back-off, committing nothing. Every change carries its version,
so a replay, a duplicate or an older record arriving late changes nothing: the catalog ends as a
fresh load of the newest state of every object would leave it.

A catalog being loaded (or changed by another process) makes `apply` raise `CatalogBusyError`,
a `TransientError`: the batch is retried with back-off like a store outage, never dead-lettered.

Deletes leave tombstones (state rows saying "deleted at version v") so that an older insert
arriving late loses. After a batch is committed, at most once per ``purge_interval_s``, the
stage removes the tombstones older than ``tombstone_grace_s``, which must exceed the retention
of ``dr.updates`` plus its segment roll time (see `ChunkedRefCatalogs.purge_tombstones`). The
purge deletes nothing a reader sees and no offset depends on it, so a failed purge is logged and
the stream goes on; the next one is tried an interval later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pyarrow as pa
import structlog

from broker import metrics
from broker.config import (
    DEFAULT_ONCE_WAIT_S,
    DEFAULT_TOMBSTONE_GRACE_S,
    DEFAULT_TOMBSTONE_PURGE_INTERVAL_S,
)
from broker.exceptions import (
    PermanentError,
    UnknownCatalogError,
)
from broker.factory import Factory
from broker.storage.stores import ReferenceCatalogs
from broker.streaming import lanner_schemas
from broker.streaming.queue import Message, MessageSource, Publisher
from consumers.stage import Backoff, Stage, unexpected

log = structlog.get_logger(__name__)

STAGE = "dr-updates"
FAMILY = "dr_update"
#: Columns of a ``lanner.dr_update`` record with a role (the rest are catalog data columns).
ID_COL, RA_COL, DEC_COL, VERSION_COL, OP_COL = "objectId", "coord_ra", "coord_dec", "version", "op"

_ARROW = {"long": pa.int64(), "int": pa.int64(), "double": pa.float64(), "float": pa.float64(),
          "string": pa.string(), "boolean": pa.bool_()}


@dataclass(frozen=True, slots=True)
class DRTopics:
    """The topics the stage reads and writes."""

    updates: str = "dr.updates"
    dlq: str = "alerts.dlq"


@dataclass(slots=True)
class DRBatchReport:
    """What one batch (or a whole run) did."""

    consumed: int = 0
    upserted: int = 0
    deleted: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    #: Tombstones removed by the purge that followed the batch (if one was due).
    purged: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: DRBatchReport) -> None:
        self.consumed += other.consumed
        self.upserted += other.upserted
        self.deleted += other.deleted
        self.ignored += other.ignored
        self.dead_lettered += other.dead_lettered
        self.purged += other.purged
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n


@dataclass(frozen=True, slots=True)
class DRChange:
    """One decoded, valid change."""

    op: str
    object_id: int
    version: int
    record: dict[str, Any]

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"


@cache
def row_schema() -> pa.Schema:
    """The catalog input columns of the latest schema: every field but ``op``, as Arrow types."""
    fields = []
    for f in lanner_schemas.parsed(FAMILY)["fields"]:
        if f["name"] == OP_COL:
            continue
        kinds = f["type"] if isinstance(f["type"], list) else [f["type"]]
        kind = next(k for k in kinds if k != "null")
        fields.append(pa.field(f["name"], _ARROW[kind], nullable="null" in kinds))
    return pa.schema(fields)


def _rejected(reason: str, message: str) -> PermanentError:
    error = PermanentError(message)
    error.reason = reason
    return error


def decode_change(value: bytes) -> DRChange:
    """Decode and check one ``lanner.dr_update`` message; PermanentError says what is wrong."""
    record = lanner_schemas.decode(FAMILY, value)
    object_id = record.get(ID_COL)
    if object_id is None or object_id <= 0:
        raise _rejected("missing_id", f"objectId {object_id!r} is not an object id")
    version = record.get(VERSION_COL)
    if version is None or version < 0:
        raise _rejected("bad_version", f"version {version!r} of object {object_id} is not >= 0")
    op = record.get(OP_COL)
    if op not in ("insert", "update", "delete"):
        raise _rejected("bad_op", f"op {op!r} of object {object_id} is not insert/update/delete")
    if op != "delete":
        ra, dec = record.get(RA_COL), record.get(DEC_COL)
        if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
            raise _rejected("bad_coordinates",
                            f"object {object_id}: coordinates ({ra}, {dec}) are not numbers")
        if not 0.0 <= ra <= 360.0:
            raise _rejected("ra_out_of_range", f"object {object_id}: ra {ra} not in [0, 360]")
        if not -90.0 <= dec <= 90.0:
            raise _rejected("dec_out_of_range", f"object {object_id}: dec {dec} not in [-90, 90]")
        # NaN and infinities mean "not measured" in DP1; SQL has no NaN, so they are stored NULL.
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in record.items()}
    return DRChange(op, int(object_id), int(version), record)


def collapse(changes: Sequence[DRChange]) -> list[DRChange]:
    """The newest change of each object (the first one seen among equal versions)."""
    newest: dict[int, DRChange] = {}
    for change in changes:
        kept = newest.get(change.object_id)
        if kept is None or change.version > kept.version:
            newest[change.object_id] = change
    return list(newest.values())


def as_table(changes: Sequence[DRChange]) -> pa.Table:
    """The upserts as an Arrow table of the catalog's input columns (and ``version``)."""
    schema = row_schema()
    return pa.Table.from_pylist([c.record for c in changes if not c.is_delete], schema=schema)


def build(factory: Factory, *, source: MessageSource | None = None,
          publisher: Publisher | None = None, catalogs: ReferenceCatalogs | None = None,
          batch_size: int | None = None, poll_timeout: float | None = None,
          backoff: Backoff | None = None) -> DRUpdateStage:
    """The dr-updates stage of ``lanner dr-updates``: topics, group, catalog, batch size, poll
    timeout and tombstone timing from the factory's settings, the queue clients and reference
    catalogs from the factory (which closes them).

    A keyword argument given replaces what the factory would give.
    """
    s = factory.settings
    topics = DRTopics(updates=s.topic_dr_updates, dlq=s.topic_dlq)
    if source is None:
        source = factory.source(group=s.dr_group, topics=[topics.updates])
    return DRUpdateStage(
        source=source,
        publisher=factory.publisher() if publisher is None else publisher,
        catalogs=factory.refcats if catalogs is None else catalogs,
        topics=topics, catalog=s.dr_catalog,
        batch_size=s.ingest_batch_size if batch_size is None else batch_size,
        poll_timeout=s.ingest_poll_timeout_s if poll_timeout is None else poll_timeout,
        backoff=backoff,
        once_wait=s.once_wait_limit_s,
        tombstone_grace_s=s.dr_tombstone_grace_s,
        purge_interval_s=s.dr_tombstone_purge_interval_s,
    )


class DRUpdateStage(Stage[DRBatchReport]):
    """Applies batches of ``lanner.dr_update`` records to a reference catalog."""

    name = STAGE

    def __init__(
        self,
        *,
        source: MessageSource,
        publisher: Publisher,
        catalogs: ReferenceCatalogs,
        topics: DRTopics | None = None,
        catalog: str = "dr_objects",
        batch_size: int = 500,
        poll_timeout: float = 1.0,
        backoff: Backoff | None = None,
        once_wait: float = DEFAULT_ONCE_WAIT_S,
        tombstone_grace_s: float = DEFAULT_TOMBSTONE_GRACE_S,
        purge_interval_s: float = DEFAULT_TOMBSTONE_PURGE_INTERVAL_S,
    ) -> None:
        super().__init__(source=source, publisher=publisher, batch_size=batch_size,
                         poll_timeout=poll_timeout, backoff=backoff, once_wait=once_wait)
        self.catalogs = catalogs
        self.topics = topics or DRTopics()
        self.catalog = catalog
        self.tombstone_grace_s = tombstone_grace_s
        #: Seconds between purges; 0 never purges.
        self.purge_interval_s = purge_interval_s
        self._last_purge: float | None = None

    def new_report(self) -> DRBatchReport:
        return DRBatchReport()

    # -- one batch

    def process(self, messages: Sequence[Message]) -> DRBatchReport:
        """Apply a batch, dead-letter its bad records, then commit its offsets."""
        started = time.monotonic()
        report = DRBatchReport(consumed=len(messages))
        changes: list[DRChange] = []
        rejected: list[tuple[Message, PermanentError]] = []
        for message in messages:
            metrics.ALERTS_IN.labels(STAGE, message.topic).inc()
            try:
                changes.append(decode_change(message.value))
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))

        newest = collapse(changes)
        report.ignored = len(changes) - len(newest)
        if newest:
            upserts = as_table(newest)
            deletes = [(c.object_id, c.version) for c in newest if c.is_delete]
            applied = self.retry("catalog", lambda: self.catalogs.apply(
                self.catalog, upserts, deletes, id_col=ID_COL, ra_col=RA_COL, dec_col=DEC_COL,
                version_col=VERSION_COL))
            report.upserted = applied.upserted
            report.deleted = applied.deleted
            report.ignored += applied.ignored

        if rejected:
            self.retry("kafka", lambda: self._dead_letter(rejected))
        self.retry("kafka", lambda: self.source.commit(messages))

        report.dead_lettered = len(rejected)
        self.count_rejections(report.reasons, rejected)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - started)
        # After the commit: the batch is done whatever the purge does.
        report.purged = self.purge_if_due()
        return report

    def purge_if_due(self) -> int:
        """Purge the catalog's old tombstones if ``purge_interval_s`` has passed since the last
        attempt (the first batch of a run always tries); the number removed.

        Never raises: a purge only deletes tombstones older than the grace, which no reader
        sees and no offset depends on, so a failure (the catalog busy, a shard down) is
        logged and counted, and tried again an interval later.
        """
        if self.purge_interval_s <= 0:
            return 0
        now = time.monotonic()
        if self._last_purge is not None and now - self._last_purge < self.purge_interval_s:
            return 0
        self._last_purge = now
        try:
            purged = int(self.catalogs.purge_tombstones(self.catalog, self.tombstone_grace_s))
        except UnknownCatalogError:
            return 0  # no change has created the catalog yet
        except Exception as exc:
            metrics.PURGE_FAILURES.labels(STAGE).inc()
            log.warning("purging tombstones failed; trying again after the interval",
                        stage=STAGE, catalog=self.catalog, error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=self.purge_interval_s)
            return 0
        if purged:
            metrics.TOMBSTONES_PURGED.labels(STAGE).inc(purged)
            log.info("purged tombstones", stage=STAGE, catalog=self.catalog, count=purged,
                     older_than_s=self.tombstone_grace_s)
        return purged

    def _dead_letter(self, rejected: list[tuple[Message, PermanentError]]) -> None:
        self.dead_letter(self.topics.dlq, rejected)
        self.publisher.flush(60.0)


def encode_change(record: dict[str, Any]) -> bytes:
    """A ``lanner.dr_update`` record in the wire format (producers and tests)."""
    return lanner_schemas.encode(FAMILY, record)
