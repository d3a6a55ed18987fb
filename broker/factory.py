"""Builds each process's collaborators from the settings: one place that knows the backends.

Entry points (the CLI, the stages in ``consumers/``, the API) ask the factory for what they
need and never construct a driver themselves.
"""

from __future__ import annotations

import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Any

from broker.config import Backend, Settings
from broker.domain.sky import Chunker
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs

if TYPE_CHECKING:
    from broker.storage.shards import ShardSet


class Factory:
    """Per-process context owning the store connections of one backend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closers: list[Any] = []

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

    # -- queues

    @cached_property
    def memory_broker(self) -> Any:
        from broker.streaming.memory import MemoryBroker  # noqa: PLC0415

        return MemoryBroker()

    def source(self, *, group: str, topics: list[str], instance_id: str | None = None) -> Any:
        if self.settings.backend is Backend.embedded:
            from broker.streaming.memory import MemorySource  # noqa: PLC0415

            return MemorySource(self.memory_broker, group=group, topics=topics)
        from broker.storage.kafka import KafkaSource  # noqa: PLC0415

        return KafkaSource(bootstrap=self.settings.kafka_bootstrap, group=group, topics=topics,
                           instance_id=instance_id,
                           **{"client.id": f"{group}-{uuid.uuid4().hex[:8]}"})

    def publisher(self) -> Any:
        if self.settings.backend is Backend.embedded:
            from broker.streaming.memory import MemoryPublisher  # noqa: PLC0415

            return MemoryPublisher(self.memory_broker)
        from broker.storage.kafka import KafkaPublisher  # noqa: PLC0415

        return KafkaPublisher(bootstrap=self.settings.kafka_bootstrap)

    def ensure_topics(self) -> None:
        """Create the topics of the pipeline (Kafka only; the memory broker needs none)."""
        if self.settings.backend is Backend.embedded:
            return
        from broker.storage.kafka import KafkaClients  # noqa: PLC0415

        s = self.settings
        KafkaClients.from_settings(s).ensure_topics(
            [s.topic_alerts_lsst, s.topic_alerts_ztf, s.topic_ingested, s.topic_dlq])

    # -- stages

    def ingest_stage(self, **overrides: Any) -> Any:
        from consumers.ingest import IngestStage, IngestTopics  # noqa: PLC0415

        s = self.settings
        topics = IngestTopics(lsst=s.topic_alerts_lsst, ztf=s.topic_alerts_ztf,
                              ingested=s.topic_ingested, dlq=s.topic_dlq)
        arguments: dict[str, Any] = {
            "source": None, "publisher": None, "lightcurves": None, "catalog": None,
            "chunker": self.chunker, "topics": topics, "batch_size": s.ingest_batch_size,
            "poll_timeout": s.ingest_poll_timeout_s,
        }
        arguments.update(overrides)
        if arguments["source"] is None:
            arguments["source"] = self.source(group=s.ingest_group, topics=topics.inputs,
                                              instance_id=s.ingest_instance_id)
            self._closers.append(arguments["source"])
        if arguments["publisher"] is None:
            arguments["publisher"] = self.publisher()
            self._closers.append(arguments["publisher"])
        if arguments["lightcurves"] is None:
            arguments["lightcurves"] = self.lightcurves
        if arguments["catalog"] is None:
            arguments["catalog"] = self.catalog
        return IngestStage(**arguments)

    def dr_stage(self, **overrides: Any) -> Any:
        """The dr-updates stage: ``dr.updates`` into the ``dr_objects`` reference catalog."""
        from consumers.dr_updates import DRTopics, DRUpdateStage  # noqa: PLC0415

        s = self.settings
        arguments: dict[str, Any] = {
            "source": None, "publisher": None, "catalogs": None,
            "topics": DRTopics(updates=s.topic_dr_updates, dlq=s.topic_dlq),
            "catalog": s.dr_catalog, "batch_size": s.ingest_batch_size,
            "poll_timeout": s.ingest_poll_timeout_s,
            "tombstone_grace_s": s.dr_tombstone_grace_s,
            "purge_interval_s": s.dr_tombstone_purge_interval_s,
        }
        arguments.update(overrides)
        topics = arguments["topics"]
        if arguments["source"] is None:
            arguments["source"] = self.source(group=s.dr_group, topics=[topics.updates])
            self._closers.append(arguments["source"])
        if arguments["publisher"] is None:
            arguments["publisher"] = self.publisher()
            self._closers.append(arguments["publisher"])
        if arguments["catalogs"] is None:
            arguments["catalogs"] = self.refcats
        return DRUpdateStage(**arguments)

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer.close()
        self._closers.clear()
