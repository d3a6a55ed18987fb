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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from broker import metrics
from broker.domain.alerts import Alert, from_rubin, rubin_object_id
from broker.domain.archive import ArchiveBatch, Seen, plan
from broker.domain.sky import Chunker
from broker.domain.ztf import from_ztf
from broker.exceptions import PermanentError, TransientError
from broker.storage.archive import LightCurveArchive, ObjectCatalog, Origin
from broker.streaming import lanner_schemas, wire
from broker.streaming.queue import Message, MessageSource, Publisher
from broker.streaming.ztf import decode_container

log = structlog.get_logger(__name__)

STAGE = "ingest"
#: `run(once=True)` stops after this many empty polls even if it never owned a partition.
MAX_IDLE_POLLS = 120
T = TypeVar("T")


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
    """What one batch did."""

    consumed: int = 0
    archived: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: doubling from ``first`` up to ``most`` seconds."""

    first: float = 0.25
    most: float = 30.0

    def delays(self) -> Callable[[], float]:
        state = {"next": self.first}

        def next_delay() -> float:
            delay = state["next"]
            state["next"] = min(self.most, delay * 2)
            return delay

        return next_delay


class IngestStage:
    """Turns batches of packets into archive rows and ``internal.ingested`` records."""

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.lightcurves = lightcurves
        self.catalog = catalog
        self.chunker = chunker
        self.topics = topics or IngestTopics()
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.stopping = threading.Event()

    # -- the loop

    def run(self, *, once: bool = False, idle_polls: int = 3,
            on_batch: Callable[[BatchReport], None] | None = None) -> BatchReport:
        """Process batches until stopped; with ``once``, until ``idle_polls`` empty polls."""
        total = BatchReport()
        idle = 0
        while not self.stopping.is_set():
            messages = self._retry("kafka", lambda: self.source.poll(self.batch_size,
                                                                     self.poll_timeout))
            if not messages:
                idle += 1
                # "Once" means: drain what is there. An empty poll is not enough (a consumer
                # that just joined its group may not own partitions yet), so also ask whether
                # the owned partitions are read to their ends; give up after many idle polls.
                if once and idle >= idle_polls and (idle >= MAX_IDLE_POLLS
                                                    or self._retry("kafka", self.source.drained)):
                    break
                continue
            idle = 0
            report = self.process(messages)
            total.consumed += report.consumed
            total.archived += report.archived
            total.dead_lettered += report.dead_lettered
            for reason, n in report.reasons.items():
                total.reasons[reason] = total.reasons.get(reason, 0) + n
            if on_batch is not None:
                on_batch(report)
        return total

    def stop(self) -> None:
        self.stopping.set()

    # -- one batch

    def process(self, messages: Sequence[Message]) -> BatchReport:
        """Archive a batch, publish its outputs, then commit its offsets."""
        started = time.monotonic()
        report = BatchReport(consumed=len(messages))
        alerts: list[Alert] = []
        origins: dict[int, Origin] = {}
        received: dict[int, Message] = {}
        rejected: list[tuple[Message, PermanentError]] = []
        decoded: list[tuple[Message, object]] = []
        for message in messages:
            metrics.ALERTS_IN.labels(STAGE, message.topic).inc()
            try:
                decoded.append((message, self.read(message)))
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, self._unexpected(message, exc)))

        # What the archive holds already decides how much of each packet's repeated history
        # is worth normalising at all.
        object_ids = {oid for _, packet in decoded if (oid := packet.object_id) is not None}
        seen = self._retry("catalog", lambda: self.catalog.seen(object_ids)) if object_ids else {}
        for message, packet in decoded:
            try:
                alert = packet.normalise(seen.get(packet.object_id or ""))
            except PermanentError as exc:
                rejected.append((message, exc))
                continue
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, self._unexpected(message, exc)))
                continue
            alerts.append(alert)
            origins[alert.alert_id] = Origin(message.topic, message.partition, message.offset)
            received[alert.alert_id] = message

        batch = ArchiveBatch()
        if alerts:
            batch = plan(alerts, seen, self.chunker)
            self._retry("lightcurves", lambda: self.lightcurves.write(batch, origins))
            self._retry("catalog", lambda: self.catalog.write(batch))

        self._retry("kafka", lambda: self._publish(batch, origins, received, rejected))
        self._retry("kafka", lambda: self.source.commit(messages))

        report.archived = len(batch.alerts)
        report.dead_lettered = len(rejected)
        for _, error in rejected:
            report.reasons[error.reason] = report.reasons.get(error.reason, 0) + 1
            metrics.ALERTS_DLQ.labels(STAGE, error.reason).inc()
        metrics.ALERTS_OUT.labels(STAGE).inc(report.archived)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - started)
        now_ms = self.clock() * 1000.0
        for message in received.values():
            if message.timestamp_ms:
                metrics.LATENCY_SECONDS.labels(STAGE).observe(
                    max(0.0, now_ms - message.timestamp_ms) / 1000.0)
        if rejected:
            log.info("dead-lettered packets", count=len(rejected), reasons=report.reasons)
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

    @staticmethod
    def _unexpected(message: Message, exc: Exception) -> PermanentError:
        log.exception("unexpected error reading a packet", topic=message.topic,
                      partition=message.partition, offset=message.offset)
        error = PermanentError(f"unexpected {type(exc).__name__}: {exc}")
        error.reason = "unexpected_error"
        return error

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
        for message, error in rejected:
            self.publisher.publish(self.topics.dlq, message.value, key=message.key, headers={
                "reason": error.reason.encode(),
                "error": str(error).encode()[:4000],
                "stage": STAGE.encode(),
                "topic": message.topic.encode(),
                "partition": str(message.partition).encode(),
                "offset": str(message.offset).encode(),
            })
        self.publisher.flush(60.0)

    def _retry(self, store: str, action: Callable[[], T]) -> T:
        """Run ``action``; on a transient failure wait and run it again until it works."""
        next_delay = self.backoff.delays()
        while True:
            try:
                return action()
            except TransientError as exc:
                if self.stopping.is_set():
                    raise
                delay = next_delay()
                metrics.RETRIES.labels(STAGE, store).inc()
                log.warning("store unavailable, retrying", store=store, error=str(exc),
                            retry_in_s=delay)
                self.stopping.wait(delay)


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


def ingested_record(alert: Alert, obj: object, origin: Origin, source_ms: int | None,
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
        "object_ra": obj.ra,  # type: ignore[attr-defined]
        "object_dec": obj.dec,  # type: ignore[attr-defined]
        "chunk_id": obj.chunk_id,  # type: ignore[attr-defined]
        "hpx29": obj.hpx29,  # type: ignore[attr-defined]
        "n_detections": alert.n_detections,
        "n_forced": alert.n_forced,
        "has_cutouts": bool(alert.cutouts),
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "source_timestamp_ms": source_ms,
        "ingested_ms": now_ms,
    }


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
