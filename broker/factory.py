"""Builds each process's collaborators from the settings: one place that knows the backends.

Entry points (the CLI, the stages in ``consumers/``, the API) ask the factory for what they
need and never construct a driver themselves. The factory gives stores and queue clients, typed
by their interfaces (`broker.storage.stores`, `broker.streaming.queue`); it knows no stage:
each stage module in ``consumers/`` has a ``build(factory)`` that assembles its stage from
these parts, so that ``broker/`` (the library) never imports ``consumers/`` (the processes).
"""

from __future__ import annotations

import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from broker.config import Backend, Settings
from broker.domain.sky import Chunker
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs
from broker.streaming.queue import MessageSource, Publisher

if TYPE_CHECKING:
    from broker.retro import JobStore
    from broker.storage.accounts import AccountStore
    from broker.storage.annotations import AnnotationStore
    from broker.storage.filters import FilterStore
    from broker.storage.shards import ShardSet
    from broker.storage.watchlists import WatchlistStore
    from broker.storage.watchmaps import WatchmapStore
    from broker.streaming.memory import MemoryBroker
    from broker.tap.jobs import TapJobStore


class _Closeable(Protocol):
    def close(self) -> None: ...


class Factory:
    """Per-process context owning the store connections and queue clients of one backend.

    Everything it builds is closed by `close`, newest first.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closers: list[_Closeable] = []

    @cached_property
    def chunker(self) -> Chunker:
        return Chunker(self.settings.chunk_stripes, self.settings.chunk_sub_stripes)

    # -- stores

    @cached_property
    def shards(self) -> ShardSet:
        """The shard set of the chunked catalogs: MariaDB servers, or SQLite files embedded."""
        shards: ShardSet
        if self.settings.backend is Backend.embedded:
            from broker.storage.shards import SQLiteShards  # noqa: PLC0415

            shards = SQLiteShards(self.settings.embedded_path,
                                  self.settings.embedded_shards, stem="catalog")
        else:
            from broker.storage.shards import MariaDBShards  # noqa: PLC0415

            shards = MariaDBShards.from_settings(self.settings)
        self._closers.append(shards)
        return shards

    @cached_property
    def lightcurves(self) -> LightCurveArchive:
        if self.settings.backend is Backend.embedded:
            from broker.storage.shards import SQLiteShards  # noqa: PLC0415
            from broker.storage.sqlite import SQLiteLightCurves  # noqa: PLC0415

            files = SQLiteShards(self.settings.embedded_path, 1, stem="lightcurves")
            self._closers.append(files)
            embedded = SQLiteLightCurves(files)
            embedded.setup()
            return embedded
        from broker.storage.cassandra import (  # noqa: PLC0415
            CassandraConnection,
            CassandraLightCurves,
        )

        store = CassandraLightCurves(connection=CassandraConnection.from_settings(self.settings))
        store.setup()
        self._closers.append(store)
        return store

    @cached_property
    def catalog(self) -> ObjectCatalog:
        from broker.storage.catalog import ChunkedCatalog  # noqa: PLC0415

        store = ChunkedCatalog(shards=self.shards, chunker=self.chunker)
        store.setup()
        return store

    @cached_property
    def refcats(self) -> ReferenceCatalogs:
        """The reference catalogs (on the same shard set as the object catalog)."""
        from broker.storage.refcat import ChunkedRefCatalogs  # noqa: PLC0415

        return ChunkedRefCatalogs(self.shards, self.chunker)

    @cached_property
    def accounts(self) -> AccountStore:
        """Users, tokens and request counts (shard 0 of the catalog's shard set)."""
        from broker.storage.accounts import AccountStore  # noqa: PLC0415

        store = AccountStore(self.shards)
        store.setup()
        return store

    @cached_property
    def watchlists(self) -> WatchlistStore:
        """Watchlists, their cones and hits (shard 0 of the catalog's shard set)."""
        from broker.storage.watchlists import WatchlistStore  # noqa: PLC0415

        store = WatchlistStore(self.shards)
        store.setup()
        return store

    @cached_property
    def watchmaps(self) -> WatchmapStore:
        """Watchmaps and their hits (shard 0 of the catalog's shard set)."""
        from broker.storage.watchmaps import WatchmapStore  # noqa: PLC0415

        store = WatchmapStore(self.shards)
        store.setup()
        return store

    @cached_property
    def annotations(self) -> AnnotationStore:
        """Annotations of objects by annotators (shard 0 of the catalog's shard set)."""
        from broker.storage.annotations import AnnotationStore  # noqa: PLC0415

        store = AnnotationStore(self.shards)
        store.setup()
        return store

    @cached_property
    def filters(self) -> FilterStore:
        """Users' filters and their versions (shard 0 of the catalog's shard set)."""
        from broker.storage.filters import FilterStore  # noqa: PLC0415

        store = FilterStore(self.shards)
        store.setup()
        return store

    @cached_property
    def tap_jobs(self) -> TapJobStore:
        """Asynchronous TAP queries (shard 0 of the catalog's shard set)."""
        from broker.tap.jobs import TapJobStore  # noqa: PLC0415

        store = TapJobStore(self.shards)
        store.setup()
        return store

    @cached_property
    def jobs(self) -> JobStore:
        """Background jobs (shard 0 of the catalog's shard set)."""
        from broker.retro import JobStore  # noqa: PLC0415

        store = JobStore(self.shards)
        store.setup()
        return store

    # -- queues

    @cached_property
    def memory_broker(self) -> MemoryBroker:
        from broker.streaming.memory import MemoryBroker  # noqa: PLC0415

        return MemoryBroker()

    def source(self, *, group: str, topics: list[str],
               instance_id: str | None = None) -> MessageSource:
        """A new member of consumer group ``group`` on ``topics`` (closed with the factory)."""
        source: MessageSource
        if self.settings.backend is Backend.embedded:
            from broker.streaming.memory import MemorySource  # noqa: PLC0415

            source = MemorySource(self.memory_broker, group=group, topics=topics)
        else:
            from broker.storage.kafka import KafkaSource  # noqa: PLC0415

            source = KafkaSource(bootstrap=self.settings.kafka_bootstrap, group=group,
                                 topics=topics, instance_id=instance_id,
                                 session_timeout_s=self.settings.kafka_session_timeout_s,
                                 **{"client.id": f"{group}-{uuid.uuid4().hex[:8]}"})
        self._closers.append(source)
        return source

    def publisher(self) -> Publisher:
        """A new producer (flushed and closed with the factory)."""
        publisher: Publisher
        if self.settings.backend is Backend.embedded:
            from broker.streaming.memory import MemoryPublisher  # noqa: PLC0415

            publisher = MemoryPublisher(self.memory_broker)
        else:
            from broker.storage.kafka import KafkaPublisher  # noqa: PLC0415

            publisher = KafkaPublisher(bootstrap=self.settings.kafka_bootstrap)
        self._closers.append(publisher)
        return publisher

    def ensure_topics(self) -> None:
        """Create the topics of the pipeline (Kafka only; the memory broker needs none)."""
        if self.settings.backend is Backend.embedded:
            return
        from broker.storage.kafka import KafkaClients  # noqa: PLC0415

        s = self.settings
        KafkaClients.from_settings(s).ensure_topics(
            [s.topic_alerts_lsst, s.topic_alerts_ztf, s.topic_ingested, s.topic_enriched,
             s.topic_dlq, s.topic_annotations])

    def create_topics(self, names: list[str]) -> None:
        """Create topics that do not exist yet (a filter's, when it is enabled), so that a
        subscriber never meets an unknown topic."""
        if self.settings.backend is Backend.embedded:
            for name in names:
                if name not in self.memory_broker.topics():
                    self.memory_broker.create_topic(name)
            return
        from broker.storage.kafka import KafkaClients  # noqa: PLC0415

        KafkaClients.from_settings(self.settings).ensure_topics(names)

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer.close()
        self._closers.clear()
