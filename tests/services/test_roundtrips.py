"""Real round trips on every service: Kafka, Cassandra and each MariaDB shard."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer

from broker.storage.kafka import produce_all
from tests.support.stack import ServiceStack


def test_kafka_produce_consume(stack: ServiceStack, kafka_topics) -> None:
    topic = kafka_topics("roundtrip", partitions=3)
    sent = [(f"k{i}".encode(), f"value-{i}".encode() * 100) for i in range(500)]
    assert produce_all(stack.kafka.producer(), topic, sent) == 500

    consumer = Consumer({
        "bootstrap.servers": stack.kafka.bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    received = []
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            for message in consumer.consume(num_messages=500, timeout=1.0):
                assert message.error() is None
                received.append((message.key(), message.value()))
            if len(received) >= len(sent):
                break
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)


def test_cassandra_write_read(cassandra_session) -> None:
    session = cassandra_session
    session.execute(
        "CREATE TABLE IF NOT EXISTS probe (object_id bigint, mjd double, flux float, "
        "PRIMARY KEY ((object_id), mjd)) WITH CLUSTERING ORDER BY (mjd ASC)"
    )
    insert = session.prepare("INSERT INTO probe (object_id, mjd, flux) VALUES (?, ?, ?)")
    for i in range(50):
        session.execute(insert, (42, 61000.0 + i, float(i) * 1.5))
    # Writing the same key again changes nothing: primary keys make writes idempotent.
    session.execute(insert, (42, 61003.0, 4.5))
    rows = list(session.execute("SELECT mjd, flux FROM probe WHERE object_id = 42"))
    assert len(rows) == 50
    assert [r.mjd for r in rows] == [61000.0 + i for i in range(50)]
    assert rows[10].flux == 15.0


def test_cassandra_is_reset_between_tests(cassandra_session) -> None:
    # The previous test left 50 rows; the fixture truncates every table of the test keyspace.
    session = cassandra_session
    session.execute(
        "CREATE TABLE IF NOT EXISTS probe (object_id bigint, mjd double, flux float, "
        "PRIMARY KEY ((object_id), mjd))"
    )
    assert list(session.execute("SELECT * FROM probe")) == []


def test_every_mariadb_shard_writes_and_reads(shards) -> None:
    ports = set()
    for shard in range(len(shards)):
        with shards.connection(shard) as connection, connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE probe (id BIGINT PRIMARY KEY, ra DOUBLE, `dec` DOUBLE) ENGINE=InnoDB"
            )
            rows = [(shard * 1000 + i, 10.0 * i, -5.0 + i) for i in range(100)]
            cursor.executemany("INSERT INTO probe VALUES (%s, %s, %s)", rows)
            connection.commit()
            cursor.execute("SELECT COUNT(*), MIN(id), MAX(`dec`) FROM probe")
            assert cursor.fetchone() == (100, shard * 1000, 94.0)
            cursor.execute("SELECT @@port")
            ports.add(cursor.fetchone()[0])
    # Distinct servers, not one server reached twice.
    assert len(shards) >= 2
    assert len(ports) == len(shards)
