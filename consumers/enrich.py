"""The enrich stage: every ingested alert's object cross-matched, placed in context, described
by its features, published.

Per batch of ``internal.ingested`` records: decode them (a bad record goes to the dead-letter
topic with its reason); enrich them (`broker.enricher.Enricher`: counterparts in every loaded
reference catalog, context, features from the object's whole stored history); store the
results (`ObjectCatalog.write_enrichment`, which keeps each object's newest alert's); publish
one ``lanner.enriched`` record per alert; wait for every acknowledgement; commit the offsets.
A store that fails makes the stage retry the step with back-off, committing nothing.

This is the confluent-kafka loop; `consumers.enrich_faust` runs the same `Enricher` as a
faust-streaming agent (docs/architecture.md says which is the default, and why).

Redelivery: the stored results are keyed by object and only a newer alert replaces them, so a
batch processed twice stores the same rows; its ``internal.enriched`` records are published
again with the same alert ids (at-least-once), and readers deduplicate by ``alert_id``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker import metrics
from broker.config import DEFAULT_ONCE_WAIT_S
from broker.domain.context import ContextRules
from broker.domain.enrichment import ObjectEnrichment
from broker.domain.sky import Chunker
from broker.enricher import Enricher
from broker.exceptions import PermanentError
from broker.factory import Factory
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs
from broker.storage.watchlists import Hit, WatchlistStore
from broker.storage.watchmaps import MapHit, WatchmapStore
from broker.streaming import lanner_schemas
from broker.streaming.queue import Message, MessageSource, Publisher
from broker.watching import WatchMatcher
from consumers.stage import Backoff, Retry, Stage, count_rejections, unexpected

log = structlog.get_logger(__name__)

STAGE = "enrich"


@dataclass(frozen=True, slots=True)
class EnrichTopics:
    """The topics the stage reads and writes."""

    ingested: str = "internal.ingested"
    enriched: str = "internal.enriched"
    dlq: str = "alerts.dlq"


@dataclass(slots=True)
class EnrichReport:
    """What one batch did (or several, added up)."""

    consumed: int = 0
    enriched: int = 0
    dead_lettered: int = 0
    contexts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: EnrichReport) -> None:
        self.consumed += other.consumed
        self.enriched += other.enriched
        self.dead_lettered += other.dead_lettered
        for target, source in ((self.contexts, other.contexts), (self.reasons, other.reasons)):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n


def build(factory: Factory, *, source: MessageSource | None = None,
          publisher: Publisher | None = None, batch_size: int | None = None,
          poll_timeout: float | None = None, backoff: Backoff | None = None) -> EnrichStage:
    """The enrich stage of ``lanner enrich``, from the factory's settings and stores."""
    s = factory.settings
    topics = EnrichTopics(ingested=s.topic_ingested, enriched=s.topic_enriched,
                          dlq=s.topic_dlq)
    if source is None:
        source = factory.source(group=s.enrich_group, topics=[topics.ingested],
                                instance_id=s.enrich_instance_id)
    return EnrichStage(
        source=source,
        publisher=factory.publisher() if publisher is None else publisher,
        catalog=factory.catalog, refcats=factory.refcats, lightcurves=factory.lightcurves,
        chunker=factory.chunker, watchlists=factory.watchlists, watchmaps=factory.watchmaps,
        watch_poll_s=s.watch_poll_s,
        topics=topics, radii=s.enrich_radius_arcsec, cache_rows=s.enrich_cache_rows,
        batch_size=s.enrich_batch_size if batch_size is None else batch_size,
        poll_timeout=s.ingest_poll_timeout_s if poll_timeout is None else poll_timeout,
        backoff=backoff,
        once_wait=s.once_wait_limit_s,
    )


def read_ingested(message: Message) -> dict[str, Any]:
    """Decode one ``internal.ingested`` record and check the position it carries."""
    record = lanner_schemas.decode("ingested", message.value)
    ra, dec = record["object_ra"], record["object_dec"]
    if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
        error = PermanentError(f"object position ({ra}, {dec}) is not a sky position")
        error.reason = "bad_position"
        raise error
    return record


def enriched_record(message: Message, record: Mapping[str, Any], result: ObjectEnrichment,
                    enriched_ms: int) -> tuple[bytes, bytes]:
    """The key and value of one alert's ``lanner.enriched`` record: keyed like its input (the
    object id when the input had no key), so an object's records stay on one partition."""
    value = lanner_schemas.encode("enriched", {
        "alert_id": record["alert_id"], "object_id": record["object_id"],
        "survey": record["survey"], "mjd": record["mjd"], "band": record["band"],
        "mag": record.get("mag"), "ra": result.ra, "dec": result.dec,
        "chunk_id": result.chunk_id, "context": result.context,
        "context_catalog": result.catalog, "context_source_id": result.source_id,
        "context_separation_arcsec": result.separation_arcsec,
        "context_offset_semimajor": result.offset_semimajor,
        "context_reason": result.reason,
        "matches": [{"catalog": m.catalog, "source_id": m.source_id,
                     "separation_arcsec": m.separation_arcsec, "rank": m.rank}
                    for m in result.matches],
        "features": {name: None if value is None else float(value)
                     for name, value in result.features.items()},
        "watchlists": [{"watchlist_id": w.watchlist_id, "cone_id": w.cone_id,
                        "cone_name": w.cone_name, "separation_arcsec": w.separation_arcsec}
                       for w in result.watches],
        "watchmaps": list(result.maps),
        "source_timestamp_ms": record.get("source_timestamp_ms"),
        "ingested_ms": record["ingested_ms"], "enriched_ms": enriched_ms,
    })
    return message.key or record["object_id"].encode(), value


@dataclass(slots=True)
class PreparedBatch:
    """A batch enriched and stored, with what is left to publish before its offsets may be
    committed."""

    #: Key and value of each alert's ``lanner.enriched`` record, in input order.
    enriched: list[tuple[bytes, bytes]]
    #: The messages that go to the dead-letter topic, and why.
    rejected: list[tuple[Message, PermanentError]]
    results: list[ObjectEnrichment]
    consumed: int
    started: float

    def report(self) -> EnrichReport:
        """What the batch did, once published and committed (counted in the metrics too)."""
        report = EnrichReport(consumed=self.consumed, enriched=len(self.results),
                              dead_lettered=len(self.rejected))
        for result in self.results:
            report.contexts[result.context] = report.contexts.get(result.context, 0) + 1
        count_rejections(STAGE, report.reasons, self.rejected)
        metrics.ALERTS_OUT.labels(STAGE).inc(report.enriched)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - self.started)
        return report


class EnrichBatches:
    """The enrich stage's work on a batch apart from Kafka: decode, enrich, store, and the
    records to publish.

    Both engines run it (`EnrichStage`, the confluent-kafka loop, and
    `consumers.enrich_faust`, the faust-streaming agent); they differ only in how they fetch
    the batch, publish its records and commit its offsets. Blocking: a store call may wait on
    a store coming back (``retry``).
    """

    def __init__(self, *, catalog: ObjectCatalog, refcats: ReferenceCatalogs,
                 lightcurves: LightCurveArchive, chunker: Chunker, retry: Retry,
                 radii: Mapping[str, float] | None = None, rules: ContextRules | None = None,
                 cache_rows: int = 20_000_000, clock: Callable[[], float] = time.time,
                 watchlists: WatchlistStore | None = None,
                 watchmaps: WatchmapStore | None = None, watch_poll_s: float = 1.0) -> None:
        self.catalog = catalog
        self.retry = retry
        self.watchlists = watchlists
        self.watchmaps = watchmaps
        watch = (None if watchlists is None
                 else WatchMatcher(watchlists, maps=watchmaps, poll_s=watch_poll_s))
        self.enricher = Enricher(refcats=refcats, lightcurves=lightcurves, chunker=chunker,
                                 radii=radii, rules=rules, cache_rows=cache_rows, watch=watch)
        self.clock = clock

    def prepare(self, messages: Sequence[Message]) -> PreparedBatch:
        """Decode the batch (a bad record is set aside for the dead-letter topic), enrich its
        alerts, store the results (retrying until the stores take them), build its records."""
        started = time.monotonic()
        records: list[tuple[Message, dict[str, Any]]] = []
        rejected: list[tuple[Message, PermanentError]] = []
        for message in messages:
            try:
                records.append((message, read_ingested(message)))
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))

        results: list[ObjectEnrichment] = []
        if records:
            results = self.retry("stores", lambda: self.enricher.enrich([r for _, r in records]))
            self.retry("catalog", lambda: self.catalog.write_enrichment(results))
            hits = [Hit(w.watchlist_id, w.cone_id, r.alert_id, r.object_id,
                        w.separation_arcsec, r.alert_mjd, live=True)
                    for r in results for w in r.watches]
            if hits and self.watchlists is not None:
                store = self.watchlists
                self.retry("watchlists", lambda: store.add_hits(hits))
            in_maps = [MapHit(m, r.alert_id, r.object_id, r.ra, r.dec, r.alert_mjd, live=True)
                       for r in results for m in r.maps]
            if in_maps and self.watchmaps is not None:
                maps = self.watchmaps
                self.retry("watchmaps", lambda: maps.add_hits(in_maps))
        now_ms = int(self.clock() * 1000)
        enriched = [enriched_record(message, record, result, now_ms)
                    for (message, record), result in zip(records, results, strict=True)]
        return PreparedBatch(enriched=enriched, rejected=rejected, results=results,
                             consumed=len(messages), started=started)


class EnrichStage(Stage[EnrichReport]):
    """Turns ``internal.ingested`` records into stored contexts and ``internal.enriched``."""

    name = STAGE

    def __init__(
        self,
        *,
        source: MessageSource,
        publisher: Publisher,
        catalog: ObjectCatalog,
        refcats: ReferenceCatalogs,
        lightcurves: LightCurveArchive,
        chunker: Chunker,
        topics: EnrichTopics | None = None,
        radii: Mapping[str, float] | None = None,
        rules: ContextRules | None = None,
        cache_rows: int = 20_000_000,
        batch_size: int = 1000,
        poll_timeout: float = 0.2,
        backoff: Backoff | None = None,
        once_wait: float = DEFAULT_ONCE_WAIT_S,
        clock: Callable[[], float] = time.time,
        watchlists: WatchlistStore | None = None,
        watchmaps: WatchmapStore | None = None,
        watch_poll_s: float = 1.0,
    ) -> None:
        super().__init__(source=source, publisher=publisher, batch_size=batch_size,
                         poll_timeout=poll_timeout, backoff=backoff, once_wait=once_wait)
        self.catalog = catalog
        self.topics = topics or EnrichTopics()
        self.batches = EnrichBatches(catalog=catalog, refcats=refcats, lightcurves=lightcurves,
                                     chunker=chunker, retry=self.retry, radii=radii,
                                     rules=rules, cache_rows=cache_rows, clock=clock,
                                     watchlists=watchlists, watchmaps=watchmaps,
                                     watch_poll_s=watch_poll_s)
        self.enricher = self.batches.enricher

    def new_report(self) -> EnrichReport:
        return EnrichReport()

    def process(self, messages: Sequence[Message]) -> EnrichReport:
        """Enrich a batch, store and publish its results, then commit its offsets."""
        batch = self.batches.prepare(messages)
        self.retry("kafka", lambda: self._publish(batch))
        self.retry("kafka", lambda: self.source.commit(messages))
        return batch.report()

    def _publish(self, batch: PreparedBatch) -> None:
        for key, value in batch.enriched:
            self.publisher.publish(self.topics.enriched, value, key=key)
        self.dead_letter(self.topics.dlq, batch.rejected)
        self.publisher.flush(60.0)
