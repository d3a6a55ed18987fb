"""Kafka through confluent-kafka: topics, bulk produce, and the stage source and publisher."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from broker.config import DEFAULT_SESSION_TIMEOUT_S, Settings
from broker.exceptions import ServiceUnavailableError
from broker.streaming.queue import Message

#: Producer settings for alert traffic: idempotent, acknowledged by all in-sync replicas,
#: batched and compressed (cutouts compress well).
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "batch.size": 1_048_576,
    "compression.type": "lz4",
    "message.max.bytes": 10_485_760,
    "queue.buffering.max.kbytes": 262_144,
}


class KafkaClients:
    """Builds confluent-kafka clients for one cluster."""

    def __init__(self, *, bootstrap: str, partitions: int = 4) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaClients:
        return cls(bootstrap=settings.kafka_bootstrap, partitions=settings.kafka_partitions)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def producer(self, **overrides: object) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, **PRODUCER_DEFAULTS, **overrides})

    def ensure_topics(self, names: Iterable[str], *, partitions: int | None = None,
                      timeout: float = 30.0) -> None:
        """Create the topics that do not exist yet; existing ones are left as they are."""
        admin = self.admin()
        try:
            existing = set(admin.list_topics(timeout=timeout).topics)
        except KafkaException as exc:
            raise ServiceUnavailableError(f"Kafka at {self.bootstrap}: {exc}") from exc
        wanted = [
            NewTopic(name, num_partitions=partitions or self.partitions, replication_factor=1)
            for name in dict.fromkeys(names) if name not in existing
        ]
        if not wanted:
            return
        for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ServiceUnavailableError(f"cannot create topic {name}: {exc}") from exc


class DeliveryTracker:
    """Counts acknowledged and failed deliveries of a producer."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed: list[str] = []

    def __call__(self, error: KafkaError | None, _message: object) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.failed.append(str(error))


def produce_at_rate(producer: Producer, topic: str,
                    messages: Iterable[tuple[bytes | None, bytes]], rate: float, *,
                    flush_timeout: float = 60.0) -> int:
    """Produce every (key, value) at a steady ``rate`` per second (message i at i / rate s
    after the first), then flush; how many. The benchmarks' latency runs produce so."""
    started = time.monotonic()
    sent = 0
    for key, value in messages:
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
        sent += 1
    producer.flush(flush_timeout)
    return sent


def produce_all(producer: Producer, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
                *, flush_timeout: float = 120.0) -> int:
    """Produce every (key, value) and wait until all are acknowledged; return how many.

    Raises
    ------
    ServiceUnavailableError
        If a delivery fails or the acknowledgements do not arrive within ``flush_timeout``.
    """
    tracker = DeliveryTracker()
    sent = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    if remaining or tracker.failed:
        reason = tracker.failed[0] if tracker.failed else f"{remaining} not acknowledged"
        msg = f"{sent - tracker.delivered} of {sent} messages to {topic} failed: {reason}"
        raise ServiceUnavailableError(msg)
    return sent


#: The partition assignor the members of a faust-streaming app announce (faust's own); those of
#: librdkafka are range, roundrobin and cooperative-sticky. A group's members must share one.
FAUST_ASSIGNOR = "faust"


def group_assignor(bootstrap: str, group: str, *, timeout: float = 15.0) -> tuple[str, int]:
    """The partition assignor the live members of consumer group ``group`` agreed on, and how
    many members it has (``""`` and 0 for a group without members, or unknown).

    Raises
    ------
    ServiceUnavailableError
        If Kafka does not answer within ``timeout`` seconds.
    """
    # Kept referenced until the answer is in: the futures die with their client.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        futures = admin.describe_consumer_groups([group], request_timeout=timeout)
        description = futures[group].result(timeout)
    except (KafkaException, TimeoutError) as exc:
        raise ServiceUnavailableError(f"cannot describe consumer group {group}: {exc}") from exc
    return description.partition_assignor or "", len(description.members)


def _headers(raw: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]]
             | None) -> dict[str, bytes]:
    """The headers of a consumed message as `Message` holds them: a null value (Kafka allows
    one) becomes empty bytes; text, which confluent-kafka's types allow but a consumer never
    returns, is UTF-8 encoded."""
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    return {name: b"" if value is None else value.encode() if isinstance(value, str) else value
            for name, value in items}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class KafkaSource:
    """A `MessageSource` over a confluent-kafka consumer in a consumer group.

    Auto-commit is off: `commit` is called by the stage after its writes are durable, and it is
    synchronous, so an offset is never ahead of the archive.
    """

    def __init__(self, *, bootstrap: str, group: str, topics: list[str],
                 instance_id: str | None = None,
                 session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
                 **overrides: object) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.topics = topics
        self.session_timeout_ms = round(session_timeout_s * 1000)
        # Static membership: a restarted process with the same instance id takes its
        # partitions back at once instead of waiting for the dead member's session to expire.
        static = {"group.instance.id": instance_id} if instance_id else {}
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            # A batch may wait on a store coming back; don't get evicted meanwhile.
            "max.poll.interval.ms": 600_000,
            # A member whose process died holds its partitions this long after its last
            # heartbeat; heartbeats stay at librdkafka's 3 s unless a short session (tests)
            # needs them closer than a third of it.
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(3_000, self.session_timeout_ms // 3)),
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
            **static,
            **overrides,
        })
        self._consumer.subscribe(topics)

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        try:
            raw = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        except KafkaException as exc:
            raise ServiceUnavailableError(f"Kafka consume failed: {exc}") from exc
        messages = []
        for m in raw:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.retriable() or not error.fatal():
                    continue
                raise ServiceUnavailableError(f"Kafka consumer error: {error}")
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is None or partition is None or offset is None:
                # librdkafka sets all three on every consumed message without an error.
                msg = (f"Kafka returned a message without its position: topic {topic!r}, "
                       f"partition {partition!r}, offset {offset!r}")
                raise RuntimeError(msg)
            timestamp_type, timestamp = m.timestamp()
            value = m.value()
            messages.append(Message(
                # A null value (a producer's tombstone) is read as empty bytes, which the stages
                # reject like any other packet that is too short and dead-letter.
                topic=topic, partition=partition, offset=offset,
                value=b"" if value is None else value,
                key=m.key(),
                timestamp_ms=timestamp if timestamp_type != TIMESTAMP_NOT_AVAILABLE else None,
                headers=_headers(m.headers()),
            ))
        return messages

    def commit(self, messages: Sequence[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            next_offsets[key] = max(next_offsets.get(key, -1), m.offset + 1)
        if not next_offsets:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            # After a rebalance the partitions may belong to another consumer now; it will
            # reprocess those messages, and idempotent writes make that harmless.
            if error.code() in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                                KafkaError.UNKNOWN_MEMBER_ID, KafkaError._NO_OFFSET):
                return
            raise ServiceUnavailableError(f"Kafka commit failed: {exc}") from exc

    def assignment(self) -> list[tuple[str, int]]:
        # The assignment the last rebalance gave this member (served inside `poll`); local,
        # no request to the broker.
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def describe_group(self) -> str:
        timeout = (f"a member of a crashed process holds its partitions until its session "
                   f"times out (session.timeout.ms = {self.session_timeout_ms} here), a live one "
                   f"until it leaves")
        # Kept referenced until the answer is in: the futures die with their client.
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            futures = admin.describe_consumer_groups([self.group], request_timeout=10)
            description = futures[self.group].result(15)
            me = self._consumer.memberid()
        except (KafkaException, TimeoutError, RuntimeError) as exc:
            return f"the group could not be described: {exc}; {timeout}"
        others = [m for m in description.members if m.member_id != me]
        held = sum(len(m.assignment.topic_partitions) for m in others)
        state = getattr(description.state, "name", description.state)
        hold = "holds" if len(others) == 1 else "hold"
        return (f"{_count(len(others), 'other member')} {hold} {_count(held, 'partition')}, "
                f"group state {state}; {timeout}")

    def drained(self) -> bool:
        assignment = self._consumer.assignment()
        if not assignment:
            return False
        try:
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self._consumer.committed(assignment, timeout=10)}
            for tp in self._consumer.position(assignment):
                low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                # No position until the first fetch: it will start at the committed offset,
                # or at the beginning (auto.offset.reset=earliest) if nothing was committed.
                start = tp.offset
                if start < 0:
                    start = committed.get((tp.topic, tp.partition), -1)
                if start < 0:
                    start = low
                if start < high:
                    return False
        except KafkaException as exc:
            raise ServiceUnavailableError(f"Kafka offsets unavailable: {exc}") from exc
        return True

    def rewind(self) -> None:
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for tp in self._consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def close(self) -> None:
        self._consumer.close()


class KafkaPublisher:
    """A `Publisher` over an idempotent confluent-kafka producer."""

    def __init__(self, *, bootstrap: str, **overrides: object) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS,
                                   **overrides})
        self._tracker = DeliveryTracker()
        self._sent = 0
        self._closed = False

    def publish(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Mapping[str, bytes] | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key,
                                       headers=list((headers or {}).items()) or None,
                                       on_delivery=self._tracker)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._sent += 1
        self._producer.poll(0)

    def flush(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        tracker, sent = self._tracker, self._sent
        self._tracker, self._sent = DeliveryTracker(), 0
        if remaining or tracker.failed:
            reason = tracker.failed[0] if tracker.failed else f"{remaining} not acknowledged"
            msg = f"{sent - tracker.delivered} of {sent} messages were not delivered: {reason}"
            raise ServiceUnavailableError(msg)

    def close(self) -> None:
        """Deliver what is queued, then destroy the producer now rather than whenever the
        garbage collector reaches it (librdkafka's threads then run into a freed client)."""
        if not self._closed:
            self._closed = True
            self._producer.flush(30)
            self._producer.close()
