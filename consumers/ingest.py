"""The ingest stage: alert packets from Kafka into the archive, with nothing lost.

Per batch: decode and normalise every packet (bad ones go to the dead-letter topic with their
bytes, reason, topic, partition and offset), decide what is new (`broker.domain.archive.plan`),
write the light-curve archive and then the chunked catalog, publish one compact record per alert
on ``internal.ingested``, wait for every acknowledgement, and only then commit the offsets. A
store that fails makes the stage retry the same batch with back-off, committing nothing; a
process killed at any instant leaves offsets behind the archive, never ahead, and every write
is keyed by source ids, so the redelivered batch changes nothing that was already written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from broker import metrics
from broker.config import DEFAULT_ONCE_WAIT_S
from broker.domain.alerts import Alert, from_rubin, rubin_object_id
from broker.domain.archive import ArchiveBatch, ObjectUpdate, Seen, plan
from broker.domain.features import dia_object_values
from broker.domain.sky import Chunker
from broker.domain.ztf import from_ztf
from broker.exceptions import PermanentError
from broker.factory import Factory
from broker.storage.stores import LightCurveArchive, ObjectCatalog, Origin
from broker.streaming import lanner_schemas, wire
from broker.streaming.queue import Message, MessageSource, Publisher
from broker.streaming.ztf import decode_container
from consumers.stage import Backoff, Stage, unexpected

log = structlog.get_logger(__name__)

STAGE = "ingest"


@dataclass(frozen=True, slots=True)
class IngestTopics:
    """The topics the stage reads and writes."""

    lsst: str = "alerts.lsst"
    ztf: str = "alerts.ztf"
    ingested: str = "internal.ingested"
    dlq: str = "alerts.dlq"

    @property
    def inputs(self) -> list[str]:
        return [self.lsst, self.ztf]


@dataclass(slots=True)
class BatchReport:
    """What one batch did (or several, added up)."""

    consumed: int = 0
    archived: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchReport) -> None:
        self.consumed += other.consumed
        self.archived += other.archived
        self.dead_lettered += other.dead_lettered
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n


def build(factory: Factory, *, source: MessageSource | None = None,
          publisher: Publisher | None = None, batch_size: int | None = None,
          poll_timeout: float | None = None, backoff: Backoff | None = None) -> IngestStage:
    """The ingest stage of ``lanner ingest``: topics, group, batch size and poll timeout from the
    factory's settings, the queue clients and stores from the factory (which closes them).

    A keyword argument given replaces what the factory would give (``lanner demo`` polls its
    in-process queue with a shorter timeout).
    """
    s = factory.settings
    topics = IngestTopics(lsst=s.topic_alerts_lsst, ztf=s.topic_alerts_ztf,
                          ingested=s.topic_ingested, dlq=s.topic_dlq)
    if source is None:
        source = factory.source(group=s.ingest_group, topics=topics.inputs,
                                instance_id=s.ingest_instance_id)
    return IngestStage(
        source=source,
        publisher=factory.publisher() if publisher is None else publisher,
        lightcurves=factory.lightcurves, catalog=factory.catalog, chunker=factory.chunker,
        topics=topics,
        batch_size=s.ingest_batch_size if batch_size is None else batch_size,
        poll_timeout=s.ingest_poll_timeout_s if poll_timeout is None else poll_timeout,
        backoff=backoff,
        once_wait=s.once_wait_limit_s,
    )


class IngestStage(Stage[BatchReport]):
    """Turns batches of packets into archive rows and ``internal.ingested`` records."""

    name = STAGE

    def __init__(
        self,
        *,
        source: MessageSource,
        publisher: Publisher,
        lightcurves: LightCurveArchive,
        catalog: ObjectCatalog,
        chunker: Chunker,
        topics: IngestTopics | None = None,
        batch_size: int = 500,
        poll_timeout: float = 1.0,
        backoff: Backoff | None = None,
        once_wait: float = DEFAULT_ONCE_WAIT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(source=source, publisher=publisher, batch_size=batch_size,
                         poll_timeout=poll_timeout, backoff=backoff, once_wait=once_wait)
        self.lightcurves = lightcurves
        self.catalog = catalog
        self.chunker = chunker
        self.topics = topics or IngestTopics()
        self.clock = clock

    def new_report(self) -> BatchReport:
        return BatchReport()

    # -- one batch

    def process(self, messages: Sequence[Message]) -> BatchReport:
        """Archive a batch, publish its outputs, then commit its offsets."""
        started = time.monotonic()
        report = BatchReport(consumed=len(messages))
        alerts: list[Alert] = []
        origins: dict[int, Origin] = {}
        received: dict[int, Message] = {}
        rejected: list[tuple[Message, PermanentError]] = []
        decoded: list[tuple[Message, DecodedPacket]] = []
        for message in messages:
            metrics.ALERTS_IN.labels(STAGE, message.topic).inc()
            try:
                decoded.append((message, self.read(message)))
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))

        # What the archive holds already decides how much of each packet's repeated history
        # is worth normalising at all.
        object_ids = {oid for _, packet in decoded if (oid := packet.object_id) is not None}
        seen = self.retry("catalog", lambda: self.catalog.seen(object_ids)) if object_ids else {}
        for message, packet in decoded:
            try:
                alert = packet.normalise(seen.get(packet.object_id or ""))
            except PermanentError as exc:
                rejected.append((message, exc))
                continue
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))
                continue
            alerts.append(alert)
            origins[alert.alert_id] = Origin(message.topic, message.partition, message.offset)
            received[alert.alert_id] = message

        batch = ArchiveBatch()
        if alerts:
            batch = plan(alerts, seen, self.chunker)
            self.retry("lightcurves", lambda: self.lightcurves.write(batch, origins))
            self.retry("catalog", lambda: self.catalog.write(batch))

        self.retry("kafka", lambda: self._publish(batch, origins, received, rejected))
        self.retry("kafka", lambda: self.source.commit(messages))

        report.archived = len(batch.alerts)
        report.dead_lettered = len(rejected)
        self.count_rejections(report.reasons, rejected)
        metrics.ALERTS_OUT.labels(STAGE).inc(report.archived)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - started)
        now_ms = self.clock() * 1000.0
        for message in received.values():
            if message.timestamp_ms:
                metrics.LATENCY_SECONDS.labels(STAGE).observe(
                    max(0.0, now_ms - message.timestamp_ms) / 1000.0)
        return report

    def read(self, message: Message) -> DecodedPacket:
        """Decode one packet, by the topic it came from (normalising comes later)."""
        if message.topic == self.topics.lsst:
            schema_id, record = wire.decode(message.value)
            return DecodedPacket(message, "lsst", record, schema_id=schema_id,
                                 object_id=rubin_object_id(record))
        if message.topic == self.topics.ztf:
            version, record = decode_container(message.value)
            object_id = record.get("objectId")
            return DecodedPacket(message, "ztf", record, version=version,
                                 object_id=str(object_id) if object_id else None)
        error = PermanentError(f"no decoder for topic {message.topic}")
        error.reason = "unknown_topic"
        raise error

    def decode(self, message: Message) -> Alert:
        """Decode and normalise one packet as if the archive held nothing of its object."""
        return self.read(message).normalise(None)

    def _publish(self, batch: ArchiveBatch, origins: dict[int, Origin],
                 received: dict[int, Message], rejected: list[tuple[Message, PermanentError]]
                 ) -> None:
        objects = {o.object_id: o for o in batch.objects}
        now_ms = int(self.clock() * 1000)
        for alert in batch.alerts:
            origin = origins[alert.alert_id]
            record = ingested_record(alert, objects[alert.object_id], origin,
                                     received[alert.alert_id].timestamp_ms, now_ms)
            self.publisher.publish(self.topics.ingested, lanner_schemas.encode("ingested", record),
                                   key=alert.object_id.encode())
        self.dead_letter(self.topics.dlq, rejected)
        self.publisher.flush(60.0)


@dataclass(slots=True)
class DecodedPacket:
    """A packet read off its wire format, not yet normalised."""

    message: Message
    survey: str
    record: dict
    schema_id: int = 0
    version: str | None = None
    object_id: str | None = None

    def normalise(self, seen: Seen | None) -> Alert:
        if self.survey == "lsst":
            if seen is None:
                return from_rubin(self.record, self.schema_id, self.message.value)
            return from_rubin(self.record, self.schema_id, self.message.value,
                              detections_after=seen.last_detection_mjd,
                              forced_after=seen.last_forced_mjd)
        return from_ztf(self.record, self.message.value, self.version)


def ingested_record(alert: Alert, obj: ObjectUpdate, origin: Origin, source_ms: int | None,
                    now_ms: int) -> dict:
    """The ``internal.ingested`` record of an archived alert."""
    d = alert.detection
    mag = d.mag
    return {
        "alert_id": alert.alert_id,
        "object_id": alert.object_id,
        "survey": alert.survey.value,
        "alert_schema": alert.schema,
        "mjd": d.mjd,
        "ra": d.ra,
        "dec": d.dec,
        "band": d.band,
        "psf_flux": _num(d.psf_flux),
        "psf_flux_err": _num(d.psf_flux_err),
        "mag": mag,
        "snr": _num(d.snr),
        "reliability": _num(d.reliability),
        "object_ra": obj.ra,
        "object_dec": obj.dec,
        "chunk_id": obj.chunk_id,
        "hpx29": obj.hpx29,
        "n_detections": alert.n_detections,
        "n_forced": alert.n_forced,
        "has_cutouts": bool(alert.cutouts),
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "source_timestamp_ms": source_ms,
        "ingested_ms": now_ms,
        "ss_object_id": alert.ss_object_id,
        "dia_object": dia_object_values(alert.dia_object),
    }


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
