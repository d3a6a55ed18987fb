"""Kafka through confluent-kafka: client configuration, topic creation and bulk produce."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from broker.config import Settings
from broker.exceptions import ServiceUnavailableError

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
