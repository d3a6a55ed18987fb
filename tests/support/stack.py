"""The real service stack as the tests see it."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field

from cassandra.cluster import Session

from broker.config import Settings
from broker.services import manager
from broker.storage.cassandra import CassandraConnection
from broker.storage.kafka import KafkaClients
from broker.storage.shards import MariaDBShards

#: Appended to the fixed test keyspace and database names. Two pytest sessions on the same services
#: would otherwise recreate each other's database mid-test: give each its own, e.g.
#: ``LANNER_TEST_SUFFIX=_$USER pytest`` (letters, digits and underscores only).
TEST_SUFFIX = os.environ.get("LANNER_TEST_SUFFIX", "").lower()
if not re.fullmatch(r"[a-z0-9_]{0,30}", TEST_SUFFIX):
    msg = f"LANNER_TEST_SUFFIX={TEST_SUFFIX!r}: at most 30 letters, digits or underscores"
    raise ValueError(msg)
TEST_KEYSPACE = f"lanner_test{TEST_SUFFIX}"
TEST_DATABASE = f"lanner_test{TEST_SUFFIX}"


@dataclass
class TopicFactory:
    """Creates uniquely named topics for one test and deletes them afterwards."""

    clients: KafkaClients
    created: list[str] = field(default_factory=list)

    def __call__(self, prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        self.clients.ensure_topics([name], partitions=partitions)
        self.created.append(name)
        return name

    def cleanup(self) -> None:
        if not self.created:
            return
        admin = self.clients.admin()  # keep a reference: the futures die with their client
        futures = admin.delete_topics(self.created, operation_timeout=30)
        for future in futures.values():
            future.result(30)
        self.created.clear()


class ServiceStack:
    """Kafka, Cassandra and the MariaDB shards, started by the same code as `services up`."""

    def __init__(self, settings: Settings, *, started_here: bool) -> None:
        self.settings = settings
        self.started_here = started_here
        self.kafka = KafkaClients.from_settings(settings)
        self.cassandra = CassandraConnection(hosts=settings.cassandra_hosts,
                                             port=settings.cassandra_port, keyspace=TEST_KEYSPACE)
        self.shards = MariaDBShards(addresses=settings.shard_addresses,
                                    user=settings.mariadb_user,
                                    password=settings.mariadb_password.get_secret_value(),
                                    database=TEST_DATABASE)

    @classmethod
    def start(cls, settings: Settings) -> ServiceStack:
        """Bring the services up (a no-op for those already running) and connect."""
        was_running = all(s.state == "running" for s in manager.status(settings))
        manager.up(settings)
        # Re-read: `up` records the addresses it used, which the settings now reflect.
        return cls(Settings(), started_here=not was_running)

    def topic_factory(self) -> TopicFactory:
        return TopicFactory(self.kafka)

    def fresh_cassandra(self) -> Session:
        session = self.cassandra.session()
        tables = session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [TEST_KEYSPACE]
        )
        for row in tables:
            session.execute(f"TRUNCATE {TEST_KEYSPACE}.{row.table_name}")
        return session

    def fresh_shards(self) -> MariaDBShards:
        self.shards.drop_database()
        self.shards.ensure_database()
        return self.shards

    def close(self) -> None:
        self.cassandra.close()
        # A session with a suffix shares the services with other sessions running at once:
        # it leaves them up even if it started them.
        if self.started_here and not TEST_SUFFIX:
            manager.down(self.settings)
