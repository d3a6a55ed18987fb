"""One test harness per backend, so one scenario base runs unchanged over both.

In the manner of lsst/dax_apdb's test base: scenario tests take a `Harness` and never ask which
backend they are on. The embedded harness is an in-process queue and a SQLite file; the
services harness is fresh Kafka topics, a fresh Cassandra keyspace and fresh MariaDB databases
on the real services started for the session.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from broker.config import Backend, Settings
from broker.domain.sky import Chunker
from broker.factory import Factory
from broker.storage.stores import LightCurveArchive, ObjectCatalog
from broker.streaming.queue import Message
from consumers.ingest import IngestStage, IngestTopics

CHUNKER = Chunker(85, 12)

#: The parameters of a fixture that runs a scenario over each backend (tests/conftest.py marks
#: the "services" case as needing the services).
BACKENDS = ("embedded", "services")


class Harness:
    """What a scenario needs: topics to produce to, stages, the stores and the outputs."""

    name: str
    topics: IngestTopics
    lightcurves: LightCurveArchive
    catalog: ObjectCatalog

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make everything produced visible to consumers."""

    def stage(self, **overrides: Any) -> IngestStage:
        raise NotImplementedError

    def outputs(self, topic: str) -> list[Message]:
        raise NotImplementedError

    #: The reference catalogs on the harness's shards, and the enrich stage's output topic.
    refcats: Any
    enriched: str

    def source(self, group: str, topics: list[str]) -> Any:
        """A consumer of ``topics`` in ``group`` (closed with the harness)."""
        raise NotImplementedError

    def publisher(self) -> Any:
        raise NotImplementedError

    def enrich_stage(self, **overrides: Any) -> Any:
        """An enrich stage on this harness's ingested topic, stores and reference catalogs."""
        from consumers.enrich import EnrichStage, EnrichTopics

        self.flush()
        group = overrides.pop("group", "lanner-enrich")
        arguments: dict[str, Any] = {
            "source": self.source(group, [self.topics.ingested]),
            "publisher": self.publisher(), "catalog": self.catalog, "refcats": self.refcats,
            "lightcurves": self.lightcurves,
            "chunker": CHUNKER, "batch_size": 300, "poll_timeout": 0.2,
            "topics": EnrichTopics(ingested=self.topics.ingested, enriched=self.enriched,
                                   dlq=self.topics.dlq),
        }
        arguments.update(overrides)
        return EnrichStage(**arguments)

    def enrich_once(self, **overrides: Any) -> Any:
        """Build an enrich stage, drain the ingested topic, leave the group; the report."""
        stage = self.enrich_stage(**overrides)
        try:
            return stage.run(once=True, idle_polls=3)
        finally:
            stage.source.close()

    def factory(self, tmp_path: Path) -> Factory:
        """A real `Factory` of this backend whose light curves and catalog are this harness's
        (owned by the harness, not closed with the factory) and whose reference catalogs are
        its own, empty at first: in ``tmp_path``, or in a fresh database on the shards dropped
        with the harness. Tests that load catalogs into their factories do not see each other's.
        """
        raise NotImplementedError

    def ingest_once(self, **overrides: Any) -> Any:
        """Build a stage, drain the input topics, leave the consumer group; the report."""
        idle_polls = overrides.pop("idle_polls", 3)
        stage = self.stage(**overrides)
        try:
            return stage.run(once=True, idle_polls=idle_polls)
        finally:
            stage.source.close()

    def made(self, factory: Factory) -> Factory:
        """Hand out a factory closed with the harness: a factory left to the garbage collector
        would destroy its Kafka clients at a random moment of a later test."""
        self.__dict__.setdefault("_factories", []).append(factory)
        return factory

    def close(self) -> None:
        for factory in reversed(self.__dict__.pop("_factories", [])):
            factory.close()


class EmbeddedHarness(Harness):
    name = "embedded"

    def __init__(self, tmp_path: Path) -> None:
        from broker.storage.catalog import ChunkedCatalog
        from broker.storage.refcat import ChunkedRefCatalogs
        from broker.storage.shards import SQLiteShards
        from broker.storage.sqlite import SQLiteLightCurves
        from broker.streaming.memory import MemoryBroker

        self.broker = MemoryBroker(partitions=3)
        self.topics = IngestTopics()
        self.files = SQLiteShards(tmp_path, 1, stem="lightcurves")
        self.shards = SQLiteShards(tmp_path, 2, stem="catalog")
        self.lightcurves = SQLiteLightCurves(self.files)
        self.lightcurves.setup()
        self.catalog = ChunkedCatalog(shards=self.shards, chunker=CHUNKER)
        self.catalog.setup()
        self.refcats = ChunkedRefCatalogs(self.shards, CHUNKER)
        self.enriched = "internal.enriched"

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.broker.produce(topic, value, key=key)

    def source(self, group: str, topics: list[str]) -> Any:
        from broker.streaming.memory import MemorySource

        return MemorySource(self.broker, group=group, topics=topics)

    def publisher(self) -> Any:
        from broker.streaming.memory import MemoryPublisher

        return MemoryPublisher(self.broker)

    def stage(self, **overrides: Any) -> IngestStage:
        from broker.streaming.memory import MemoryPublisher, MemorySource

        group = overrides.pop("group", "lanner-ingest")
        arguments: dict[str, Any] = {
            "source": MemorySource(self.broker, group=group, topics=self.topics.inputs),
            "publisher": MemoryPublisher(self.broker),
            "lightcurves": self.lightcurves, "catalog": self.catalog, "chunker": CHUNKER,
            "topics": self.topics, "batch_size": 200, "poll_timeout": 0.05,
        }
        arguments.update(overrides)
        return IngestStage(**arguments)

    def outputs(self, topic: str) -> list[Message]:
        return self.broker.messages(topic)

    def factory(self, tmp_path: Path) -> Factory:
        factory = Factory(Settings(backend=Backend.embedded, embedded_dir=tmp_path))
        factory.__dict__.update(lightcurves=self.lightcurves, catalog=self.catalog)
        return self.made(factory)

    def close(self) -> None:
        super().close()
        self.files.close()
        self.shards.close()


class ServicesHarness(Harness):
    name = "services"

    def __init__(self, stack: Any, topic_factory: Any) -> None:
        from broker.storage.cassandra import CassandraConnection, CassandraLightCurves
        from broker.storage.catalog import ChunkedCatalog
        from broker.storage.kafka import KafkaPublisher
        from broker.storage.refcat import ChunkedRefCatalogs
        from broker.storage.shards import MariaDBShards

        self.stack = stack
        suffix = uuid.uuid4().hex[:8]
        self.topics = IngestTopics(
            lsst=topic_factory("alerts.lsst", partitions=3),
            ztf=topic_factory("alerts.ztf", partitions=3),
            ingested=topic_factory("internal.ingested", partitions=3),
            dlq=topic_factory("alerts.dlq", partitions=1),
        )
        self.enriched = topic_factory("internal.enriched", partitions=3)
        settings = stack.settings
        self.group = f"ingest-{suffix}"
        self.keyspace = f"lanner_t{suffix}"
        self.database = f"lanner_t{suffix}"
        self.lightcurves = CassandraLightCurves(connection=CassandraConnection(
            hosts=settings.cassandra_hosts, port=settings.cassandra_port, keyspace=self.keyspace))
        self.lightcurves.setup()
        self.shards = MariaDBShards(addresses=settings.shard_addresses,
                                    user=settings.mariadb_user,
                                    password=settings.mariadb_password.get_secret_value(),
                                    database=self.database)
        self.catalog = ChunkedCatalog(shards=self.shards, chunker=CHUNKER)
        self.catalog.setup()
        self.refcats = ChunkedRefCatalogs(self.shards, CHUNKER)
        self._producer = KafkaPublisher(bootstrap=stack.kafka.bootstrap)
        self._publishers: list[Any] = []
        self._sources: list[Any] = []
        self._refcat_settings: list[Settings] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._producer.publish(topic, value, key=key)

    def process_env(self, **extra: str) -> dict[str, str]:
        """The environment of a `lanner` child process working on this harness's topics,
        keyspace, database and consumer group (``extra``: more LANNER_* settings)."""
        return {
            **os.environ,
            "LANNER_BACKEND": "services",
            "LANNER_TOPIC_ALERTS_LSST": self.topics.lsst,
            "LANNER_TOPIC_ALERTS_ZTF": self.topics.ztf,
            "LANNER_TOPIC_INGESTED": self.topics.ingested,
            "LANNER_TOPIC_DLQ": self.topics.dlq,
            "LANNER_CASSANDRA_KEYSPACE": self.keyspace,
            "LANNER_MARIADB_DATABASE": self.database,
            "LANNER_INGEST_GROUP": self.group,
            "LANNER_TOPIC_ENRICHED": self.enriched,
            "LANNER_ENRICH_GROUP": f"enrich-{self.group}",
            "LANNER_LOG_LEVEL": "WARNING",
            **extra,
        }

    def flush(self) -> None:
        self._producer.flush(60)

    def stage(self, **overrides: Any) -> IngestStage:
        from broker.storage.kafka import KafkaPublisher, KafkaSource

        group = overrides.pop("group", self.group)
        self.flush()
        source = KafkaSource(bootstrap=self.stack.kafka.bootstrap, group=group,
                             topics=self.topics.inputs)
        publisher = KafkaPublisher(bootstrap=self.stack.kafka.bootstrap)
        self._sources.append(source)
        self._publishers.append(publisher)
        arguments: dict[str, Any] = {
            "source": source, "publisher": publisher, "lightcurves": self.lightcurves,
            "catalog": self.catalog, "chunker": CHUNKER, "topics": self.topics,
            "batch_size": 200, "poll_timeout": 1.0,
        }
        arguments.update(overrides)
        return IngestStage(**arguments)

    def outputs(self, topic: str) -> list[Message]:
        return read_topic(self.stack.kafka.bootstrap, topic)

    def source(self, group: str, topics: list[str]) -> Any:
        from broker.storage.kafka import KafkaSource

        source = KafkaSource(bootstrap=self.stack.kafka.bootstrap, group=f"{group}-{self.group}",
                             topics=topics)
        self._sources.append(source)
        return source

    def publisher(self) -> Any:
        from broker.storage.kafka import KafkaPublisher

        publisher = KafkaPublisher(bootstrap=self.stack.kafka.bootstrap)
        self._publishers.append(publisher)
        return publisher

    def factory(self, tmp_path: Path) -> Factory:
        settings = self.stack.settings.model_copy(update={
            "backend": Backend.services, "embedded_dir": tmp_path,
            "cassandra_keyspace": self.keyspace,
            "mariadb_database": f"{self.database}_r{len(self._refcat_settings)}",
            "chunk_stripes": CHUNKER.num_stripes, "chunk_sub_stripes": CHUNKER.num_sub_stripes,
        })
        self._refcat_settings.append(settings)
        factory = Factory(settings)
        factory.__dict__.update(lightcurves=self.lightcurves, catalog=self.catalog)
        return self.made(factory)

    def close(self) -> None:
        from broker.storage.shards import MariaDBShards

        super().close()
        for source in self._sources:
            with contextlib.suppress(RuntimeError):
                source.close()
        for publisher in (*self._publishers, self._producer):
            publisher.close()
        self.lightcurves.connection.session().execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}")
        self.lightcurves.close()
        self.catalog.close()
        self.shards.drop_database()
        self.shards.close()
        for settings in self._refcat_settings:
            refcat_shards = MariaDBShards.from_settings(settings)
            refcat_shards.drop_database()
            refcat_shards.close()


def read_topic(bootstrap: str, topic: str) -> list[Message]:
    """Every message of a Kafka topic, read from the beginning by a fresh group to the end of
    each partition."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "enable.partition.eof": True,
    })
    out: list[Message] = []
    try:
        consumer.subscribe([topic])
        idle = 0
        eof: set[int] = set()
        while idle < 5:
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            if not batch:
                idle += 1
                continue
            for m in batch:
                if m.error() is not None:
                    eof.add(m.partition())
                    continue
                out.append(Message(topic=m.topic(), partition=m.partition(),
                                   offset=m.offset(), value=m.value(), key=m.key(),
                                   headers=dict(m.headers() or [])))
            partitions = len(consumer.assignment())
            if partitions and len(eof) >= partitions:
                break
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str
                      ) -> tuple[dict[int, int], dict[int, int]]:
    """A consumer group's committed offsets on each partition of ``topic``, and the
    partitions' ends."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                       timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed}, ends


def plain_rows(harness: Harness, sql: str) -> list[dict[str, Any]]:
    """The rows of ``sql`` read plainly on every shard of the harness's catalog, as dicts:
    what the TAP tests compare the engine's answers with."""
    def work(cursor: Any) -> list[dict[str, Any]]:
        cursor.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    return [row for rows in harness.catalog.shards.all_shards(work, write=False).values()
            for row in rows]


def object_ids(harness: Harness) -> list[str]:
    """Every archived object's id, sorted."""
    return sorted(r["object_id"] for r in plain_rows(harness, "SELECT object_id FROM objects"))


def separation_deg(a1: float, d1: float, a2: float, d2: float) -> float:
    """The angle between two positions in degrees, by the haversine formula, in plain Python:
    the brute force the TAP tests hold the engine's geometry to."""
    r = math.radians
    h = (math.sin((r(d2) - r(d1)) / 2) ** 2
         + math.cos(r(d1)) * math.cos(r(d2)) * math.sin((r(a2) - r(a1)) / 2) ** 2)
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))
