"""The enrich stage as a faust-streaming agent (``lanner enrich --engine faust``).

The same work as the confluent-kafka loop of `consumers.enrich`, on the same code: each batch
goes through `consumers.enrich.EnrichBatches` (decode, `broker.enricher.Enricher`, store with
`ObjectCatalog.write_enrichment`, build the ``lanner.enriched`` records and the dead letters);
only fetching, publishing and committing are faust's. docs/architecture.md says which engine is
the default, and why (bench/enrich.py measures both).

At-least-once, step by step:

1. The agent takes batches with ``Stream.noack_take``: faust never acknowledges these events
   itself. (``Stream.take`` would: it acks a batch's events when the agent asks for the next
   batch, and also when the stream closes the generator at shutdown, so a batch whose
   processing raised would be acked on the way out and its offsets committed.)
2. Decoding, enriching and storing run in one worker thread of the process (the store clients
   block; one thread, so that batches are serial as in the confluent loop, the enricher's
   chunk cache has one user, and the MariaDB shard set, which keeps a connection per thread,
   keeps one set). The event loop stays free: the consumer keeps its group membership and
   heartbeats while a store is slow. A store that fails transiently is retried there with
   back-off (`consumers.stage.retry`), committing nothing meanwhile.
3. Every enriched record and dead letter is sent (acks from all in-sync replicas, the same
   bytes as the confluent loop's, keyed and partitioned alike: `librdkafka_partition`) and
   every delivery awaited; only then are the batch's events acknowledged.
4. faust commits, every `COMMIT_INTERVAL_S`, on a rebalance and on a clean stop, for each
   partition the offset just past the run of acknowledged events that follows the committed
   offset (it flushes its producer first). An event that is not acknowledged (the batch in
   hand, a batch that failed) holds its partition's committed offset where it is.
5. Any other exception ends the process with an error: the agent runs under mode's crashing
   supervisor, because faust's default one restarts a crashed agent, which would go on past the
   failed batch's unacknowledged events (its partition's offset stuck behind them until the
   next restart, redoing all the work since). ``lanner run`` restarts the process.

So a crash, kill -9 included, redelivers from the last committed offset: the batch in hand and
the batches acknowledged since the last commit (at most `COMMIT_INTERVAL_S` of work). A
redelivered batch stores the same rows (each object keeps its newest alert's results) and
publishes its records again with the same alert ids, which readers deduplicate on.

Consumer group: the stage's own, `Settings.enrich_group`, whichever engine runs. The group's
committed offsets are the stage's progress, so a switch of engine resumes where the other
stopped instead of enriching the whole retained topic again. The two engines cannot be members
of the group at the same time (faust's partition assignor is its own, and Kafka refuses a
member whose assignors share none with the group's), which stops the stage from running twice
side by side by mistake.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import faust
import mode
import structlog

from broker.config import Settings
from broker.exceptions import LannerError
from broker.factory import Factory
from broker.storage.kafka import PRODUCER_DEFAULTS
from broker.streaming.queue import Message
from consumers.enrich import STAGE, EnrichBatches, EnrichReport, EnrichTopics, PreparedBatch
from consumers.stage import Backoff, dead_letter_headers, retry

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Seconds between two offset commits of the faust engine (faust's default is 2.8 s): the
#: most acknowledged work a crash makes it redo, besides the batch in hand.
COMMIT_INTERVAL_S = 1.0


def librdkafka_partition(key: bytes | None, all_partitions: Sequence[int],
                         available: Sequence[int]) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``) gives a key: its
    CRC-32 modulo the partition count; a record without a key goes to a random available one.

    aiokafka's default hashes keys with murmur2, as the Java client does: without this, an
    object's records would go to another partition of ``internal.enriched`` than under the
    confluent-kafka engine.
    """
    if not key:
        return random.choice(list(available) or list(all_partitions))
    return sorted(all_partitions)[zlib.crc32(key) % len(all_partitions)]


def faust_app(settings: Settings, *, group: str, instance_id: str | None = None) -> faust.App:
    """A faust app on the settings' Kafka cluster, member of consumer group ``group``.

    No web server, tables in memory (it has none), and nothing that creates topics: the
    command creates the stage's topics as the confluent loop does (`Factory.ensure_topics`),
    and faust's leader topic is not needed by an app without tables.
    """
    session_s = settings.kafka_session_timeout_s
    return faust.App(
        group,
        broker=[f"kafka://{address.strip()}" for address in settings.kafka_bootstrap.split(",")],
        broker_client_id=f"{group}-faust-{uuid.uuid4().hex[:8]}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        # faust makes a data folder even for an app without tables: a temporary one
        # (`FaustEnrich.run` removes it).
        datadir=tempfile.mkdtemp(prefix=f"lanner-faust-{group}-"),
        topic_allow_declare=False,
        topic_disable_leader=True,
        agent_supervisor=mode.CrashingSupervisor,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=instance_id,
        consumer_max_fetch_size=10_485_760,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.1, min(3.0, session_s / 3)),
        broker_commit_interval=COMMIT_INTERVAL_S,
        # A stopping worker commits what was acknowledged and abandons the rest: it does not
        # wait for the events in hand to be acknowledged (the agent is stopping too).
        stream_wait_empty=False,
        stream_ack_exceptions=False,
        stream_ack_cancelled_tasks=False,
        producer_acks=-1,
        producer_compression_type=str(PRODUCER_DEFAULTS["compression.type"]),
        producer_linger=float(str(PRODUCER_DEFAULTS["linger.ms"])) / 1000.0,
        producer_max_batch_size=int(str(PRODUCER_DEFAULTS["batch.size"])),
        producer_max_request_size=int(str(PRODUCER_DEFAULTS["message.max.bytes"])),
        producer_partitioner=librdkafka_partition,
    )


def build(factory: Factory, *, batch_size: int | None = None,
          within: float | None = None, backoff: Backoff | None = None) -> FaustEnrich:
    """The faust engine of ``lanner enrich``, from the factory's settings and stores."""
    s = factory.settings
    return FaustEnrich(
        app=faust_app(s, group=s.enrich_group, instance_id=s.enrich_instance_id),
        factory=factory,
        topics=EnrichTopics(ingested=s.topic_ingested, enriched=s.topic_enriched,
                            dlq=s.topic_dlq),
        radii=s.enrich_radius_arcsec, cache_rows=s.enrich_cache_rows,
        batch_size=s.enrich_batch_size if batch_size is None else batch_size,
        within=s.ingest_poll_timeout_s if within is None else within,
        backoff=backoff,
    )


class FaustEnrich:
    """The enrich stage as a faust agent on ``internal.ingested``; `run` runs its worker."""

    def __init__(self, *, app: faust.App, factory: Factory, topics: EnrichTopics,
                 radii: dict[str, float] | None = None, cache_rows: int = 20_000_000,
                 batch_size: int = 1000, within: float = 0.2,
                 backoff: Backoff | None = None) -> None:
        self.app = app
        self.topics = topics
        self.batch_size = batch_size
        self.within = within
        self.backoff = backoff or Backoff()
        #: Set when the agent stops: a store retry in the worker thread then gives up.
        self.stopping = threading.Event()
        self.total = EnrichReport()
        # The stores are built (connected, tables created) here, before the event loop runs.
        self.batches = EnrichBatches(
            catalog=factory.catalog, refcats=factory.refcats, lightcurves=factory.lightcurves,
            chunker=factory.chunker, retry=self._retry, radii=radii, cache_rows=cache_rows,
            watchlists=factory.watchlists, watchmaps=factory.watchmaps,
            watch_poll_s=factory.settings.watch_poll_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enrich-stores")
        self.source = self._raw_topic(topics.ingested)
        self.enriched = self._raw_topic(topics.enriched)
        self.dlq = self._raw_topic(topics.dlq)
        app.agent(self.source, name=STAGE)(self._agent)

    def _raw_topic(self, name: str) -> faust.TopicT:
        """A topic of bytes as they are on the wire (the shared code decodes and encodes)."""
        return self.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw")

    def _retry(self, store: str, action: Callable[[], T]) -> T:
        return retry(STAGE, store, action, backoff=self.backoff, stopping=self.stopping)

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        # An agent is handed a faust.Stream; noack_take is not on its StreamT interface. It
        # yields the events themselves, typed as values.
        take = cast("faust.Stream[bytes]", stream).noack_take
        try:
            async for events in take(self.batch_size, within=self.within):
                batch: list[faust.EventT[bytes]] = list(events)  # type: ignore[arg-type]
                await self.process(batch)
                for event in batch:
                    await stream.ack(event)
        finally:
            self.stopping.set()

    async def process(self, events: Sequence[faust.EventT[bytes]]) -> EnrichReport:
        """Enrich and store a batch in the worker thread, then publish its records and wait
        for every acknowledgement (the caller acknowledges the events after that)."""
        messages = [event_message(event) for event in events]
        loop = asyncio.get_running_loop()
        batch = await loop.run_in_executor(self.executor, self.batches.prepare, messages)
        await self._publish(batch)
        report = batch.report()
        self.total.add(report)
        return report

    async def _publish(self, batch: PreparedBatch) -> None:
        deliveries: list[Any] = []
        for key, value in batch.enriched:
            deliveries.append(await self.enriched.send(key=key, value=value, force=True))
        for message, error in batch.rejected:
            deliveries.append(await self.dlq.send(
                key=message.key, value=message.value, force=True,
                headers=list(dead_letter_headers(STAGE, message, error).items())))
        # Each send returned the producer's delivery future: a failed delivery raises here,
        # before any event of the batch is acknowledged.
        await asyncio.gather(*deliveries)

    def run(self) -> EnrichReport:
        """Run the faust worker until SIGTERM or SIGINT (a clean stop) or a crash (raised as a
        `LannerError`); the report of every batch done."""
        run_worker(self.app, self.executor, self.stopping, STAGE)
        return self.total


def run_worker(app: faust.App, executor: ThreadPoolExecutor, stopping: threading.Event,
               stage: str) -> None:
    """Run a stage's faust worker until SIGTERM or SIGINT (a clean stop) or a crash, raised
    as a `LannerError`; then stop its store thread and remove faust's data folder."""
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None  # a terminal spinner: control characters in the command's output
    code: object = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
    finally:
        stopping.set()
        executor.shutdown(wait=True)
        shutil.rmtree(app.conf.datadir, ignore_errors=True)
    reason = worker.crash_reason or app.crash_reason
    if reason is not None or code not in (0, None):
        msg = f"the faust {stage} worker stopped on an error: {reason or f'exit {code}'}"
        raise LannerError(msg)


def event_message(event: faust.EventT[bytes]) -> Message:
    """A consumed event as the stage's shared code takes messages."""
    message = event.message
    timestamp = message.timestamp
    return Message(topic=message.topic, partition=message.partition, offset=message.offset,
                   value=bytes(event.value or b""), key=message.key,
                   timestamp_ms=None if timestamp is None else round(timestamp * 1000))
