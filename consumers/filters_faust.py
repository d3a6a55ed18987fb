"""The filters stage as a faust-streaming agent (``lanner filters --engine faust``).

Issue 11 asks for the faust-streaming against confluent-kafka choice to be measured again for
this stage, whose shape differs from enrich's: little work per alert, many filters, and its
output spread over one topic per filter. bench/filters_engines.py runs both engines on the
same records and filters; docs/architecture.md records which is the default and why.

The work is the confluent loop's, on the same code: each batch goes through
`consumers.filters.FiltersStage.process` unchanged (decode, reload the filters, run them,
publish, record counts and progress in one transaction), in one worker thread, as the enrich
engine runs `consumers.enrich.EnrichBatches`. Only fetching, publishing and committing are
faust's:

- the stage's publisher here queues what the stage publishes and, when the stage flushes,
  sends it all with faust's producer (aiokafka) on the event loop and waits for every
  acknowledgement; a failed delivery is a `ServiceUnavailableError`, which the stage retries
  as it retries the confluent producer;
- the stage's "commit" does nothing: the agent acknowledges the batch's events once
  `process` has returned, and faust commits acknowledged offsets every `COMMIT_INTERVAL_S`
  (`consumers.enrich_faust` says how, and why the agent takes batches with ``noack_take``
  under a crashing supervisor).

Redelivery after a crash is handled as in the confluent loop: the stage skips, per filter,
the records at or before the progress it recorded, so a redelivered batch publishes and counts
nothing twice. The consumer group is the stage's own, whichever engine runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

import faust
import structlog

from broker.exceptions import LannerError, ServiceUnavailableError
from broker.factory import Factory
from broker.streaming.queue import Message
from consumers import filters as filters_stage
from consumers.enrich_faust import event_message, faust_app, run_worker
from consumers.filters import FiltersReport, FiltersStage

log = structlog.get_logger(__name__)


class LoopPublisher:
    """The stage's `Publisher` in the worker thread: what it publishes is queued, then sent by
    faust's producer on the event loop when the stage flushes (one hop between threads per
    batch, not per record)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []

    def publish(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Mapping[str, bytes] | None = None) -> None:
        self._queued.append((topic, key, value, list(headers.items()) if headers else None))

    def flush(self, timeout: float) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return
        if self.loop is None:
            raise LannerError("the faust publisher has no event loop (the agent is not running)")
        future = asyncio.run_coroutine_threadsafe(self._send(queued), self.loop)
        try:
            future.result(timeout)
        except FutureTimeout:
            future.cancel()
            msg = f"{len(queued)} messages not acknowledged within {timeout:.0f} s"
            raise ServiceUnavailableError(msg) from None
        except Exception as exc:  # aiokafka's errors: the stage retries the batch's publish
            msg = f"{len(queued)} messages not delivered: {type(exc).__name__}: {exc}"
            raise ServiceUnavailableError(msg) from exc

    async def _send(self, queued: Sequence[tuple[str, bytes | None, bytes,
                                                 list[tuple[str, bytes]] | None]]) -> None:
        producer = self.app.producer
        deliveries = [await producer.send(topic, key, value, None, None, headers)
                      for topic, key, value, headers in queued]
        await asyncio.gather(*deliveries)

    def close(self) -> None:
        self._queued.clear()


class AckedSource:
    """The stage's `MessageSource` under faust: batches come from the agent, and offsets are
    committed by faust once the agent acknowledges the events; only ``commit`` is called."""

    group: str

    def __init__(self, group: str) -> None:
        self.group = group

    def commit(self, messages: Sequence[Message]) -> None:
        """Nothing here: the agent acknowledges the batch after `FiltersStage.process`."""

    def close(self) -> None:
        pass


def build(factory: Factory, *, batch_size: int | None = None,
          within: float | None = None) -> FaustFilters:
    """The faust engine of ``lanner filters``, from the factory's settings and stores."""
    s = factory.settings
    app = faust_app(s, group=s.filters_group, instance_id=s.filters_instance_id)
    publisher = LoopPublisher(app)
    stage = filters_stage.build(factory, source=cast(Any, AckedSource(s.filters_group)),
                                publisher=publisher)
    return FaustFilters(app=app, stage=stage, publisher=publisher,
                        topics=[s.topic_enriched, s.topic_annotations],
                        batch_size=s.filters_batch_size if batch_size is None else batch_size,
                        within=s.ingest_poll_timeout_s if within is None else within)


class FaustFilters:
    """The filters stage as a faust agent on ``internal.enriched`` and
    ``internal.annotations``; `run` runs its worker."""

    def __init__(self, *, app: faust.App, stage: FiltersStage, publisher: LoopPublisher,
                 topics: list[str], batch_size: int = 2000, within: float = 0.2) -> None:
        self.app = app
        self.stage = stage
        self.publisher = publisher
        self.batch_size = batch_size
        self.within = within
        self.total = FiltersReport()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filters-stores")
        self.source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                                value_serializer="raw")
        app.agent(self.source, name=filters_stage.STAGE)(self._agent)

    @property
    def stopping(self) -> threading.Event:
        """Set when the agent stops: a store retry in the worker thread then gives up."""
        return self.stage.stopping

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        self.publisher.loop = asyncio.get_running_loop()
        take = cast("faust.Stream[bytes]", stream).noack_take
        try:
            async for events in take(self.batch_size, within=self.within):
                batch: list[faust.EventT[bytes]] = list(events)  # type: ignore[arg-type]
                messages = [event_message(event) for event in batch]
                loop = asyncio.get_running_loop()
                report = await loop.run_in_executor(self.executor, self.stage.process, messages)
                self.total.add(report)
                for event in batch:
                    await stream.ack(event)
        finally:
            self.stopping.set()

    def run(self) -> FiltersReport:
        """Run the faust worker until SIGTERM or SIGINT (a clean stop) or a crash (raised as a
        `LannerError`); the report of every batch done."""
        run_worker(self.app, self.executor, self.stopping, filters_stage.STAGE)
        return self.total
